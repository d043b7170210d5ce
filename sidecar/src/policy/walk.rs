//! One pass over every node of a parse tree, whatever its type.
//!
//! `pg_query`'s own node iterator visits only the node types it cares about;
//! a policy must see a function call wherever the grammar allows one (a
//! DEFAULT, an index expression, a CHECK constraint, a subquery in a
//! RETURNING list). Every generated tree type implements `serde::Serialize`,
//! so this walk is a serializer that writes nothing: serde hands it every
//! struct by name and every field by name, including node types that did not
//! exist when this code was written. It allocates only for what it keeps.

use std::fmt;

use cardgate_crds::v1alpha1::StatementClass;
use serde::Serialize;
use serde::ser::{
    self, SerializeMap, SerializeSeq, SerializeStruct, SerializeStructVariant, SerializeTuple,
    SerializeTupleStruct, SerializeTupleVariant,
};

use super::functions::{self, Effect};
use super::statements;

/// How a statement uses a relation it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Read by a query (FROM, JOIN, subqueries, MERGE's source…).
    Read,
    /// The target of INSERT/UPDATE/DELETE/MERGE, SELECT INTO, a sequence
    /// function, large-object writes.
    Write,
    /// Named by a utility statement (DDL, COPY, LOCK, GRANT…); the statement
    /// decides whether that is a read or a write.
    Utility,
}

/// A relation as written in the statement.
#[derive(Debug)]
pub(crate) struct FoundRel {
    pub schema: Option<String>,
    pub name: String,
    pub role: Role,
    /// The innermost query (SELECT/INSERT/UPDATE/DELETE/MERGE) it is in.
    pub query: Option<usize>,
}

/// A query level: where CTE names are defined and looked up.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pub parent: Option<usize>,
    /// When this query is the body of a CTE of `parent`: that CTE's position.
    pub parent_cte: Option<usize>,
    pub ctes: Vec<String>,
    pub recursive: bool,
    /// Has FOR UPDATE/SHARE: the rows it reads are locked.
    pub locking: bool,
}

/// What one walk found.
#[derive(Debug)]
pub(crate) struct Walk {
    frames: Vec<Frame>,
    open: Vec<usize>,
    plan_only: bool,
    own_class: bool,
    pub queries: Vec<Query>,
    pub rels: Vec<FoundRel>,
    /// The most restrictive class any node asked for.
    pub class: StatementClass,
    /// Names of prepared statements run by EXECUTE.
    pub executes: Vec<String>,
    /// Why listed functions changed the class, for people reading decisions.
    pub notes: Vec<String>,
    /// A built-in metadata function was called (or a harmless setting read
    /// or set): with only catalog relations, the query is `metadata`.
    pub metadata_calls: bool,
    /// A function not reviewed as metadata or pure was called (or a listed
    /// one under a schema other than pg_catalog): the query is not metadata.
    pub unvetted_calls: bool,
}

#[derive(Debug)]
struct Frame {
    name: &'static str,
    field: &'static str,
    index: usize,
    data: Data,
}

#[derive(Debug)]
enum Data {
    None,
    Rel {
        schema: String,
        name: String,
    },
    Func {
        schema: String,
        last: String,
        arg0: Option<String>,
    },
    Query,
}

const QUERY_NODES: [&str; 5] = [
    "SelectStmt",
    "InsertStmt",
    "UpdateStmt",
    "DeleteStmt",
    "MergeStmt",
];

/// ALTER TABLE actions that change security rather than shape: owners,
/// triggers (audit triggers can be switched off), rules, row-level security,
/// foreign-table options.
const SECURITY_ALTERS: [pg_query::protobuf::AlterTableType; 19] = {
    use pg_query::protobuf::AlterTableType::*;
    [
        AtChangeOwner,
        AtEnableTrig,
        AtEnableAlwaysTrig,
        AtEnableReplicaTrig,
        AtDisableTrig,
        AtEnableTrigAll,
        AtDisableTrigAll,
        AtEnableTrigUser,
        AtDisableTrigUser,
        AtEnableRule,
        AtEnableAlwaysRule,
        AtEnableReplicaRule,
        AtDisableRule,
        AtEnableRowSecurity,
        AtDisableRowSecurity,
        AtForceRowSecurity,
        AtNoForceRowSecurity,
        AtGenericOptions,
        AtAlterColumnGenericOptions,
    ]
};

impl Walk {
    /// Walks `node`. In `plan_only` mode (EXPLAIN without ANALYZE) nothing is
    /// executed, so writes count as reads — except dangerous functions, which
    /// stay dangerous (fail closed). Without `own_class` the outermost node's
    /// entry in the statement table is skipped: the caller refines it.
    pub(crate) fn run<T: Serialize + ?Sized>(node: &T, plan_only: bool, own_class: bool) -> Walk {
        let mut walk = Walk {
            frames: Vec::with_capacity(32),
            open: Vec::new(),
            plan_only,
            own_class,
            queries: Vec::new(),
            rels: Vec::new(),
            class: StatementClass::Control,
            executes: Vec::new(),
            notes: Vec::new(),
            metadata_calls: false,
            unvetted_calls: false,
        };
        // The walk's serializer cannot fail: every method returns Ok.
        let _ = node.serialize(&mut walk);
        walk
    }

    /// Whether the walk treated the statement as not executed.
    pub(crate) fn plan_only(&self) -> bool {
        self.plan_only
    }

    /// Raises the class to at least `c` (capped at read in plan-only mode).
    fn raise(&mut self, c: StatementClass) {
        let c = if self.plan_only && c < StatementClass::Dangerous {
            c.min(StatementClass::Read)
        } else {
            c
        };
        self.class = self.class.max(c);
    }

    /// The `n`th enclosing struct (0 = innermost), skipping `Node` wrappers:
    /// its name, the field being walked and the position in that field.
    fn ancestor(&self, n: usize) -> Option<(&'static str, &'static str, usize)> {
        self.frames
            .iter()
            .rev()
            .filter(|f| f.name != "Node")
            .nth(n)
            .map(|f| (f.name, f.field, f.index))
    }

    fn enter(&mut self, name: &'static str) {
        let mut data = Data::None;
        if let Some(c) = statements::class_of(name)
            && (self.own_class || !self.frames.is_empty())
        {
            self.raise(c);
        }
        match name {
            "RangeVar" => {
                data = Data::Rel {
                    schema: String::new(),
                    name: String::new(),
                }
            }
            "FuncCall" => {
                data = Data::Func {
                    schema: String::new(),
                    last: String::new(),
                    arg0: None,
                }
            }
            "LockingClause" => {
                if self
                    .ancestor(0)
                    .is_some_and(|(name, _, _)| name == "SelectStmt")
                    && let Some(&q) = self.open.last()
                {
                    self.queries[q].locking = true;
                    self.raise(StatementClass::Write);
                }
            }
            // SELECT … INTO creates and fills a table.
            "IntoClause"
                if self
                    .ancestor(0)
                    .is_some_and(|(name, _, _)| name == "SelectStmt") =>
            {
                self.raise(StatementClass::Ddl);
            }
            _ if QUERY_NODES.contains(&name) => {
                let parent_cte = match (self.ancestor(0), self.ancestor(1)) {
                    (Some(("CommonTableExpr", "ctequery", _)), Some(("WithClause", _, i))) => {
                        Some(i)
                    }
                    _ => None,
                };
                self.queries.push(Query {
                    parent: self.open.last().copied(),
                    parent_cte,
                    ..Query::default()
                });
                self.open.push(self.queries.len() - 1);
                data = Data::Query;
            }
            _ => {}
        }
        self.frames.push(Frame {
            name,
            field: "",
            index: 0,
            data,
        });
    }

    fn leave(&mut self) {
        let Some(frame) = self.frames.pop() else {
            return;
        };
        match frame.data {
            Data::None => {}
            Data::Query => {
                self.open.pop();
            }
            Data::Rel { schema, name } => {
                // FOR UPDATE OF names aliases of the FROM list, not relations.
                if self
                    .ancestor(0)
                    .is_some_and(|(n, f, _)| n == "LockingClause" && f == "locked_rels")
                {
                    return;
                }
                let role = match self.ancestor(0) {
                    Some((
                        "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt",
                        "relation",
                        _,
                    )) => Role::Write,
                    Some(("IntoClause", "rel", _)) => Role::Write,
                    _ if !self.open.is_empty() => Role::Read,
                    _ => Role::Utility,
                };
                self.found(schema, name, role);
            }
            Data::Func { schema, last, arg0 } => self.call(&schema, &last, arg0),
        }
    }

    fn found(&mut self, schema: String, name: String, role: Role) {
        self.rels.push(FoundRel {
            schema: (!schema.is_empty()).then_some(schema),
            name,
            role,
            query: self.open.last().copied(),
        });
    }

    /// Applies the reviewed function list to a call of `schema.name`
    /// (`schema` empty when unqualified).
    fn call(&mut self, schema: &str, name: &str, arg0: Option<String>) {
        let Some(entry) = functions::lookup(name) else {
            self.unvetted_calls = true;
            return;
        };
        // Only the built-in is known to be harmless; a dangerous name is
        // dangerous under any schema (fail closed).
        let builtin = schema.is_empty() || schema.eq_ignore_ascii_case("pg_catalog");
        let class = match entry.effect {
            Effect::Metadata | Effect::ReadSetting | Effect::Pure => {
                let metadata = match entry.effect {
                    Effect::Metadata => true,
                    Effect::ReadSetting => arg0.as_deref().is_some_and(functions::readable_setting),
                    _ => false,
                };
                if builtin && (metadata || entry.effect == Effect::Pure) {
                    self.metadata_calls |= metadata;
                } else {
                    self.unvetted_calls = true;
                }
                return;
            }
            Effect::SetConfig => {
                let harmless = arg0.as_deref().is_some_and(|s| {
                    functions::harmless_setting(s) && !s.eq_ignore_ascii_case("search_path")
                });
                if harmless {
                    self.metadata_calls |= builtin;
                    self.unvetted_calls |= !builtin;
                    return;
                }
                StatementClass::Dangerous
            }
            Effect::WritesRelationArg => {
                match arg0.as_deref().and_then(super::names::parse_qualified) {
                    Some((schema, rel)) => {
                        self.found(schema.unwrap_or_default(), rel, Role::Write);
                        functions::class_of(entry.effect)
                    }
                    // A sequence chosen at run time cannot be checked.
                    None => StatementClass::Dangerous,
                }
            }
            Effect::ReadsLargeObjects | Effect::WritesLargeObjects => {
                let role = if entry.effect == Effect::ReadsLargeObjects {
                    Role::Read
                } else {
                    Role::Write
                };
                self.found("pg_catalog".into(), "pg_largeobject".into(), role);
                functions::class_of(entry.effect)
            }
            Effect::Dangerous | Effect::Write => functions::class_of(entry.effect),
        };
        self.raise(class);
        let note = format!("{}: {}", name.to_ascii_lowercase(), entry.why);
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    fn string(&mut self, v: &str) {
        let mut up = self.frames.iter_mut().rev().filter(|f| f.name != "Node");
        let Some(top) = up.next() else {
            return;
        };
        match (top.name, top.field) {
            ("RangeVar", "schemaname") => {
                if let Data::Rel { schema, .. } = &mut top.data {
                    v.clone_into(schema);
                }
            }
            ("RangeVar", "relname") => {
                if let Data::Rel { name, .. } = &mut top.data {
                    v.clone_into(name);
                }
            }
            ("String", "sval") => match up.next() {
                Some(Frame {
                    name: "FuncCall",
                    field: "funcname",
                    data: Data::Func { schema, last, .. },
                    ..
                }) => {
                    // Name parts arrive in order: the one before the last
                    // is the schema.
                    *schema = std::mem::take(last);
                    v.clone_into(last);
                }
                Some(Frame {
                    name: "AConst",
                    field: "val",
                    ..
                }) => {
                    let mut next = up.next();
                    if next
                        .as_ref()
                        .is_some_and(|f| f.name == "TypeCast" && f.field == "arg")
                    {
                        next = up.next();
                    }
                    if let Some(Frame {
                        name: "FuncCall",
                        field: "args",
                        index: 0,
                        data: Data::Func { arg0, .. },
                    }) = next
                    {
                        *arg0 = Some(v.to_owned());
                    }
                }
                _ => {}
            },
            ("CommonTableExpr", "ctename") => {
                if let Some(&q) = self.open.last() {
                    self.queries[q].ctes.push(v.to_owned());
                }
            }
            ("ExecuteStmt", "name") => self.executes.push(v.to_owned()),
            _ => {}
        }
    }

    fn boolean(&mut self, v: bool) {
        if v && let Some(top) = self.frames.last()
            && top.name == "WithClause"
            && top.field == "recursive"
            && let Some(&q) = self.open.last()
        {
            self.queries[q].recursive = true;
        }
    }

    fn int(&mut self, v: i32) {
        let Some(top) = self.frames.last() else {
            return;
        };
        match (top.name, top.field) {
            ("AlterTableCmd", "subtype")
                if pg_query::protobuf::AlterTableType::try_from(v)
                    .is_ok_and(|t| SECURITY_ALTERS.contains(&t)) =>
            {
                self.raise(StatementClass::Dangerous);
            }
            ("TruncateStmt", "behavior")
                if v == pg_query::protobuf::DropBehavior::DropCascade as i32 =>
            {
                self.raise(StatementClass::Dangerous);
                self.notes.push(
                    "TRUNCATE … CASCADE also empties tables the statement does not name".into(),
                );
            }
            _ => {}
        }
    }

    fn set_field(&mut self, key: &'static str) {
        if let Some(top) = self.frames.last_mut() {
            top.field = key;
            top.index = 0;
        }
    }

    fn set_index(&mut self, i: usize) {
        if let Some(top) = self.frames.last_mut() {
            top.index = i;
        }
    }
}

/// The walk's serializer never fails; serde still needs an error type.
#[derive(Debug)]
pub(crate) struct Never;

impl fmt::Display for Never {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("walk error")
    }
}

impl std::error::Error for Never {}

impl ser::Error for Never {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Never
    }
}

/// A struct, sequence or map being walked.
pub(crate) struct Compound<'a> {
    walk: &'a mut Walk,
    index: usize,
    is_struct: bool,
}

impl Compound<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        self.walk.set_index(self.index);
        self.index += 1;
        value.serialize(&mut *self.walk)
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Never> {
        self.walk.set_field(key);
        value.serialize(&mut *self.walk)
    }

    fn finish(self) -> Result<(), Never> {
        if self.is_struct {
            self.walk.leave();
        }
        Ok(())
    }
}

impl<'a> ser::Serializer for &'a mut Walk {
    type Ok = ();
    type Error = Never;
    type SerializeSeq = Compound<'a>;
    type SerializeTuple = Compound<'a>;
    type SerializeTupleStruct = Compound<'a>;
    type SerializeTupleVariant = Compound<'a>;
    type SerializeMap = Compound<'a>;
    type SerializeStruct = Compound<'a>;
    type SerializeStructVariant = Compound<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Never> {
        self.boolean(v);
        Ok(())
    }
    fn serialize_i8(self, _: i8) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_i16(self, _: i16) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_i32(self, v: i32) -> Result<(), Never> {
        self.int(v);
        Ok(())
    }
    fn serialize_i64(self, _: i64) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u8(self, _: u8) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u16(self, _: u16) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u32(self, _: u32) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_u64(self, _: u64) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_f32(self, _: f32) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_f64(self, _: f64) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_char(self, _: char) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Never> {
        self.string(v);
        Ok(())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_none(self) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        value.serialize(self)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, Never> {
        Ok(Compound {
            walk: self,
            index: 0,
            is_struct: false,
        })
    }
    fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Compound<'a>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, Never> {
        self.serialize_seq(None)
    }
    fn serialize_struct(self, name: &'static str, _: usize) -> Result<Compound<'a>, Never> {
        self.enter(name);
        Ok(Compound {
            walk: self,
            index: 0,
            is_struct: true,
        })
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Compound<'a>, Never> {
        self.serialize_struct(variant, len)
    }
}

impl SerializeSeq for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        self.element(value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

impl SerializeTuple for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        self.element(value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

impl SerializeTupleStruct for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        self.element(value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

impl SerializeTupleVariant for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        self.element(value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

impl SerializeMap for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, _: &T) -> Result<(), Never> {
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Never> {
        self.element(value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

impl SerializeStruct for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

impl SerializeStructVariant for Compound<'_> {
    type Ok = ();
    type Error = Never;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Never> {
        self.field(key, value)
    }
    fn end(self) -> Result<(), Never> {
        self.finish()
    }
}

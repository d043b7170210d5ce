//! Classification of one query string with PostgreSQL's own grammar.
//!
//! Each statement is parsed by libpg_query, walked node by node
//! ([`super::walk`]), and refined where its class depends on its arguments
//! (SET, COPY, EXPLAIN, DROP, transaction control, PREPARE/EXECUTE). The
//! result does not depend on any session, so one cached result serves them
//! all: unqualified names are reported in the default schema, and
//! [`super::SqlSession`] re-qualifies them with a session's search_path and
//! resolves EXECUTE.

use std::sync::Arc;

use cardgate_crds::v1alpha1::StatementClass;
use pg_query::NodeEnum;
use pg_query::protobuf::{self, ObjectType as Obj, TransactionStmtKind, VariableSetKind};

use super::functions;
use super::names::{self, DEFAULT_SCHEMA};
use super::walk::{Role, Walk};

/// Result of parsing one query string (possibly several statements).
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    /// The most restrictive class of its statements:
    /// unparseable > dangerous > ddl > write > read > metadata > control.
    pub class: StatementClass,
    /// Relations read, qualified `schema.table`, sorted.
    pub reads: Vec<String>,
    /// Relations written (or created, altered, dropped, locked), sorted.
    pub writes: Vec<String>,
    /// Statements in the string; 0 for an empty string or only comments.
    pub statements: usize,
    /// Why the class is `unparseable`: the parser's message (digit runs
    /// that could be card numbers are hidden), or an unknown EXECUTE.
    pub error: Option<String>,
    /// What raised the class beyond the statement's kind (a listed
    /// function, a setting, a bulk COPY…), for people reading decisions.
    pub notes: Vec<String>,
    pub(crate) parts: Vec<Part>,
}

/// What a statement does to the session's SQL state, in statement order.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEffect {
    /// `PREPARE name AS body`: a later EXECUTE runs `body`.
    Prepare {
        /// The statement name.
        name: String,
        /// The body, classified on its own.
        body: Arc<Classification>,
    },
    /// `EXECUTE name`: the statement counts as the prepared body.
    Execute {
        /// The statement name.
        name: String,
        /// `EXPLAIN EXECUTE` without ANALYZE: the body is only planned, so
        /// its relations count as reads and its writes do not happen.
        plan_only: bool,
    },
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` (`None`).
    Deallocate {
        /// The statement name; `None` for ALL.
        name: Option<String>,
    },
    /// `DISCARD ALL`: prepared statements and settings are reset.
    DiscardAll,
    /// `SET [LOCAL] search_path …`; `None` restores the server default
    /// (`SET … TO DEFAULT`, `RESET search_path`, `RESET ALL`).
    SearchPath {
        /// The new path, entries as PostgreSQL stores them.
        schemas: Option<Arc<[String]>>,
        /// SET LOCAL: only until the end of the transaction.
        local: bool,
    },
    /// Transaction control, which decides whether settings survive.
    Transaction(TransactionEffect),
}

/// Transaction boundaries, for undoing settings on rollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransactionEffect {
    /// BEGIN / START TRANSACTION.
    Begin,
    /// COMMIT [AND CHAIN].
    Commit {
        /// AND CHAIN starts a new transaction at once.
        chain: bool,
    },
    /// ROLLBACK [AND CHAIN], and PREPARE TRANSACTION (which, for the
    /// session, ends the transaction like a rollback).
    Rollback {
        /// AND CHAIN starts a new transaction at once.
        chain: bool,
    },
    /// SAVEPOINT name.
    Savepoint(String),
    /// RELEASE [SAVEPOINT] name.
    Release(String),
    /// ROLLBACK TO [SAVEPOINT] name.
    RollbackTo(String),
}

/// One statement of the string.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    /// Its own class (an EXECUTE adds the prepared body's in the session).
    pub class: StatementClass,
    pub rels: Vec<Rel>,
    pub effect: Option<SessionEffect>,
    pub notes: Vec<String>,
}

/// A relation as written: `schema` is `None` when unqualified.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Rel {
    pub schema: Option<Box<str>>,
    pub name: Box<str>,
    pub write: bool,
}

impl Classification {
    /// The session effects of the string's statements, in order.
    pub fn effects(&self) -> impl Iterator<Item = &SessionEffect> {
        self.parts.iter().filter_map(|p| p.effect.as_ref())
    }

    /// Whether the session must look at this string: it has effects, or
    /// names to qualify with a search_path other than the default.
    pub(crate) fn needs_session(&self, schema: &str) -> bool {
        self.parts.iter().any(|p| {
            p.effect.is_some()
                || (schema != DEFAULT_SCHEMA && p.rels.iter().any(|r| r.schema.is_none()))
        })
    }

    /// A string that did not parse.
    fn unparseable(message: String) -> Classification {
        Classification {
            class: StatementClass::Unparseable,
            reads: Vec::new(),
            writes: Vec::new(),
            statements: 0,
            error: Some(message),
            notes: Vec::new(),
            parts: Vec::new(),
        }
    }

    /// Builds the session-independent result: names qualified with the
    /// default schema; an EXECUTE cannot be known without the session.
    pub(crate) fn from_parts(parts: Vec<Part>) -> Classification {
        let mut rels = Relations::default();
        let mut class = StatementClass::Control;
        let mut error = None;
        let mut notes = Vec::new();
        for p in &parts {
            class = class.max(p.class);
            rels.add_all(&p.rels, DEFAULT_SCHEMA);
            add_notes(&mut notes, &p.notes);
            if let Some(SessionEffect::Execute { name, .. }) = &p.effect {
                class = StatementClass::Unparseable;
                error = Some(format!(
                    "EXECUTE {name:?} runs a prepared statement only the session knows"
                ));
            }
        }
        let (reads, writes) = rels.finish();
        Classification {
            class,
            reads,
            writes,
            statements: parts.len(),
            error,
            notes,
            parts,
        }
    }
}

/// Appends the notes not already present.
pub(crate) fn add_notes(into: &mut Vec<String>, notes: &[String]) {
    for n in notes {
        if !into.contains(n) {
            into.push(n.clone());
        }
    }
}

/// Collects qualified relation names without duplicates.
#[derive(Default)]
pub(crate) struct Relations {
    reads: Vec<String>,
    writes: Vec<String>,
}

impl Relations {
    pub(crate) fn add_all(&mut self, rels: &[Rel], schema: &str) {
        for r in rels {
            self.add(r, r.write, schema);
        }
    }

    /// Adds every relation as read (a statement that is only planned).
    pub(crate) fn add_reads(&mut self, rels: &[Rel], schema: &str) {
        for r in rels {
            self.add(r, false, schema);
        }
    }

    fn add(&mut self, r: &Rel, write: bool, schema: &str) {
        let name = names::qualify(r.schema.as_deref(), &r.name, schema);
        let list = if write {
            &mut self.writes
        } else {
            &mut self.reads
        };
        if !list.contains(&name) {
            list.push(name);
        }
    }

    pub(crate) fn finish(mut self) -> (Vec<String>, Vec<String>) {
        self.reads.sort_unstable();
        self.writes.sort_unstable();
        (self.reads, self.writes)
    }
}

/// Parses and classifies `sql`; never fails: what does not parse is
/// `unparseable`.
pub fn classify(sql: &str) -> Classification {
    match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
        Ok(result) => Classification::from_parts(
            result
                .protobuf
                .stmts
                .iter()
                .map(|raw| statement(raw.stmt.as_deref().and_then(|n| n.node.as_ref())))
                .collect(),
        ),
        Err(pg_query::Error::Parse(message)) => {
            Classification::unparseable(hide_digit_runs(&message))
        }
        // The tree decoder stops at 100 levels of nesting, which also bounds
        // the stack the walk needs.
        Err(pg_query::Error::Decode(_)) => {
            Classification::unparseable("statement is nested too deeply to classify".into())
        }
        Err(pg_query::Error::Conversion(_)) => {
            Classification::unparseable("statement contains a NUL byte".into())
        }
        Err(e) => Classification::unparseable(hide_digit_runs(&e.to_string())),
    }
}

/// Parser messages quote the offending token, which may be a card number:
/// every run of 12 or more digits (spaces and dashes between them allowed)
/// has its digits replaced by `#`.
pub(crate) fn hide_digit_runs(message: &str) -> String {
    let bytes = message.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut digits = 0;
        let mut j = i;
        while j < bytes.len() {
            if bytes[j].is_ascii_digit() {
                digits += 1;
                end = j + 1;
                j += 1;
            } else if (bytes[j] == b' ' || bytes[j] == b'-')
                && bytes.get(j + 1).is_some_and(u8::is_ascii_digit)
            {
                j += 1;
            } else {
                break;
            }
        }
        if digits >= 12 {
            for b in &mut out[start..end] {
                if b.is_ascii_digit() {
                    *b = b'#';
                }
            }
        }
        i = end.max(i + 1);
    }
    // Only ASCII digits were replaced by an ASCII byte: still UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

/// How a utility statement uses the relations it names.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Utility {
    Read,
    Write,
}

/// Classifies one statement node.
fn statement(node: Option<&NodeEnum>) -> Part {
    let Some(node) = node else {
        return fixed(StatementClass::Dangerous, None);
    };
    match node {
        NodeEnum::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| match &o.node {
                Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => {
                    option_is_true(d.arg.as_deref())
                }
                _ => false,
            });
            let walk = Walk::run(node, !analyze, true);
            let effect = walk.executes.first().map(|name| SessionEffect::Execute {
                name: name.clone(),
                plan_only: !analyze,
            });
            from_walk(walk, StatementClass::Read, Utility::Read, effect)
        }
        NodeEnum::VariableSetStmt(s) => set(s),
        NodeEnum::TransactionStmt(t) => transaction(t),
        NodeEnum::DiscardStmt(d) => {
            let all = d.target == protobuf::DiscardMode::DiscardAll as i32;
            fixed(
                StatementClass::Control,
                all.then_some(SessionEffect::DiscardAll),
            )
        }
        NodeEnum::DeallocateStmt(d) => fixed(
            StatementClass::Control,
            Some(SessionEffect::Deallocate {
                name: (!d.isall).then(|| d.name.clone()),
            }),
        ),
        NodeEnum::PrepareStmt(p) => {
            let body = match p.query.as_deref().and_then(|n| n.node.as_ref()) {
                Some(q) => statement(Some(q)),
                None => fixed(StatementClass::Dangerous, None),
            };
            let prepared = Classification::from_parts(vec![Part {
                effect: None,
                ..body.clone()
            }]);
            Part {
                class: body.class,
                rels: body.rels,
                notes: body.notes,
                effect: Some(SessionEffect::Prepare {
                    name: p.name.clone(),
                    body: Arc::new(prepared),
                }),
            }
        }
        NodeEnum::CopyStmt(c) => {
            let walk = Walk::run(node, false, false);
            let utility = if c.is_from {
                Utility::Write
            } else {
                Utility::Read
            };
            let (base, note) = if c.is_program {
                (
                    StatementClass::Dangerous,
                    Some("COPY … PROGRAM runs a program on the database server"),
                )
            } else if !c.filename.is_empty() {
                (
                    StatementClass::Dangerous,
                    Some("COPY with a file name reads or writes files on the database server"),
                )
            } else if c.is_from {
                (StatementClass::Write, None)
            } else if c.relation.is_some() {
                (
                    StatementClass::Dangerous,
                    Some("COPY of a whole table to the client is a bulk export"),
                )
            } else {
                (StatementClass::Read, None)
            };
            let mut part = from_walk(walk, base, utility, None);
            if let Some(n) = note {
                part.notes.insert(0, n.to_owned());
            }
            part
        }
        NodeEnum::DropStmt(d) => drop(d),
        NodeEnum::CreateSchemaStmt(cs) => {
            let walk = Walk::run(node, false, true);
            let mut part = from_walk(walk, StatementClass::Control, Utility::Write, None);
            // Its elements are created in (and resolve names against) the
            // new schema, named after the owner when not given.
            let schema = match (&cs.schemaname, &cs.authrole) {
                (name, _) if !name.is_empty() => Some(name.as_str()),
                (_, Some(role)) if !role.rolename.is_empty() => Some(role.rolename.as_str()),
                _ => None,
            };
            if let Some(schema) = schema {
                for r in part.rels.iter_mut().filter(|r| r.schema.is_none()) {
                    r.schema = Some(schema.into());
                }
            }
            part
        }
        _ => {
            let walk = Walk::run(node, false, true);
            let effect = walk.executes.first().map(|name| SessionEffect::Execute {
                name: name.clone(),
                plan_only: false,
            });
            let calls = (walk.metadata_calls, walk.unvetted_calls);
            let mut part = from_walk(walk, StatementClass::Control, Utility::Write, effect);
            if is_metadata(&part, calls) {
                part.class = StatementClass::Metadata;
            }
            part
        }
    }
}

/// Whether a read is only what drivers and ORMs read to set themselves up:
/// it reads no relation but the metadata catalogs, calls only reviewed
/// metadata and pure functions, and reads at least one catalog or calls at
/// least one metadata function (so `SELECT 1` stays a read). The rule is
/// documented in docs/statements.md ("Metadata").
fn is_metadata(part: &Part, (metadata_calls, unvetted_calls): (bool, bool)) -> bool {
    part.class == StatementClass::Read
        && !unvetted_calls
        && (metadata_calls || !part.rels.is_empty())
        && part.rels.iter().all(|r| {
            !r.write
                && functions::metadata_catalog(&names::qualify(
                    r.schema.as_deref(),
                    &r.name,
                    DEFAULT_SCHEMA,
                ))
        })
}

fn fixed(class: StatementClass, effect: Option<SessionEffect>) -> Part {
    Part {
        class,
        rels: Vec::new(),
        effect,
        notes: Vec::new(),
    }
}

/// A statement decided by its arguments alone, with the reason.
fn noted(class: StatementClass, note: String) -> Part {
    Part {
        notes: vec![note],
        ..fixed(class, None)
    }
}

/// `EXPLAIN (ANALYZE x)`: anything but an explicit false runs the query.
fn option_is_true(arg: Option<&protobuf::Node>) -> bool {
    match arg.and_then(|n| n.node.as_ref()) {
        None => true,
        Some(NodeEnum::String(s)) => !matches!(
            s.sval.to_ascii_lowercase().as_str(),
            "false" | "off" | "0" | "no"
        ),
        Some(NodeEnum::Boolean(b)) => b.boolval,
        Some(NodeEnum::Integer(i)) => i.ival != 0,
        Some(_) => true,
    }
}

/// Turns what the walk found into a statement: CTE references dropped,
/// utility relations given the statement's role, rows locked by FOR
/// UPDATE/SHARE counted as written.
fn from_walk(
    walk: Walk,
    base: StatementClass,
    utility: Utility,
    effect: Option<SessionEffect>,
) -> Part {
    let plan_only = walk.plan_only();
    let mut rels = Vec::with_capacity(walk.rels.len());
    for r in &walk.rels {
        if r.role == Role::Read && r.schema.is_none() && is_cte(&walk, r) {
            continue;
        }
        let write = !plan_only
            && match r.role {
                Role::Read => false,
                Role::Write => true,
                Role::Utility => utility == Utility::Write,
            };
        let rel = Rel {
            schema: r.schema.as_deref().map(Into::into),
            name: r.name.as_str().into(),
            write,
        };
        if !plan_only && r.role == Role::Read && locked(&walk, r.query) {
            rels.push(Rel {
                write: true,
                ..rel.clone()
            });
        }
        rels.push(rel);
    }
    Part {
        class: base.max(walk.class),
        rels,
        effect,
        notes: walk.notes,
    }
}

/// Whether an unqualified name read in a query refers to a CTE in scope: one
/// of its own query's, or an enclosing query's (for the body of a CTE, only
/// the CTEs before it unless the WITH is RECURSIVE).
fn is_cte(walk: &Walk, r: &super::walk::FoundRel) -> bool {
    let mut query = r.query;
    let mut before: Option<usize> = None;
    while let Some(i) = query {
        let q = &walk.queries[i];
        let visible = match before {
            Some(n) if !q.recursive => &q.ctes[..n.min(q.ctes.len())],
            _ => &q.ctes[..],
        };
        if visible.contains(&r.name) {
            return true;
        }
        before = q.parent_cte;
        query = q.parent;
    }
    false
}

/// Whether a query or one enclosing it locks the rows it reads.
fn locked(walk: &Walk, mut query: Option<usize>) -> bool {
    while let Some(i) = query {
        if walk.queries[i].locking {
            return true;
        }
        query = walk.queries[i].parent;
    }
    false
}

/// SET / RESET: harmless settings are control, search_path is tracked,
/// everything else (roles, decoding settings, resource limits) is dangerous.
fn set(s: &protobuf::VariableSetStmt) -> Part {
    let kind = VariableSetKind::try_from(s.kind).unwrap_or(VariableSetKind::Undefined);
    if kind == VariableSetKind::VarResetAll {
        return fixed(
            StatementClass::Control,
            Some(SessionEffect::SearchPath {
                schemas: None,
                local: false,
            }),
        );
    }
    if !functions::harmless_setting(&s.name) {
        return noted(
            StatementClass::Dangerous,
            format!(
                "SET {}: not a harmless session setting (roles, message decoding and resources are not)",
                s.name
            ),
        );
    }
    if !s.name.eq_ignore_ascii_case("search_path") {
        return fixed(StatementClass::Control, None);
    }
    let schemas = match kind {
        VariableSetKind::VarSetValue => {
            let mut list = Vec::with_capacity(s.args.len());
            for a in &s.args {
                match &a.node {
                    Some(NodeEnum::AConst(c)) => match &c.val {
                        Some(protobuf::a_const::Val::Sval(v)) => list.push(v.sval.clone()),
                        _ => return fixed(StatementClass::Dangerous, None),
                    },
                    _ => return fixed(StatementClass::Dangerous, None),
                }
            }
            Some(Arc::from(list))
        }
        VariableSetKind::VarSetDefault | VariableSetKind::VarReset => None,
        // SET search_path FROM CURRENT keeps the value.
        VariableSetKind::VarSetCurrent => return fixed(StatementClass::Control, None),
        _ => return fixed(StatementClass::Dangerous, None),
    };
    fixed(
        StatementClass::Control,
        Some(SessionEffect::SearchPath {
            schemas,
            local: s.is_local,
        }),
    )
}

/// Transaction control is `control`; two-phase commit is `dangerous`: a
/// prepared transaction outlives the session and holds its locks, and
/// COMMIT/ROLLBACK PREPARED act on any session's transaction.
fn transaction(t: &protobuf::TransactionStmt) -> Part {
    use TransactionStmtKind::*;
    let kind = TransactionStmtKind::try_from(t.kind).unwrap_or(Undefined);
    let (class, effect) = match kind {
        TransStmtBegin | TransStmtStart => (StatementClass::Control, TransactionEffect::Begin),
        TransStmtCommit => (
            StatementClass::Control,
            TransactionEffect::Commit { chain: t.chain },
        ),
        TransStmtRollback => (
            StatementClass::Control,
            TransactionEffect::Rollback { chain: t.chain },
        ),
        TransStmtSavepoint => (
            StatementClass::Control,
            TransactionEffect::Savepoint(t.savepoint_name.clone()),
        ),
        TransStmtRelease => (
            StatementClass::Control,
            TransactionEffect::Release(t.savepoint_name.clone()),
        ),
        TransStmtRollbackTo => (
            StatementClass::Control,
            TransactionEffect::RollbackTo(t.savepoint_name.clone()),
        ),
        TransStmtPrepare => (
            StatementClass::Dangerous,
            TransactionEffect::Rollback { chain: false },
        ),
        TransStmtCommitPrepared | TransStmtRollbackPrepared | Undefined => {
            return fixed(StatementClass::Dangerous, None);
        }
    };
    fixed(class, Some(SessionEffect::Transaction(effect)))
}

/// DROP is `ddl`, except for objects that enforce security (policies,
/// triggers, rules, event triggers) or reach outside the data (extensions,
/// languages, servers, casts…): `dangerous`. Dropped relations are writes.
fn drop(d: &protobuf::DropStmt) -> Part {
    let kind = Obj::try_from(d.remove_type).unwrap_or(Obj::Undefined);
    let class = match kind {
        Obj::ObjectPolicy
        | Obj::ObjectTrigger
        | Obj::ObjectRule
        | Obj::ObjectEventTrigger
        | Obj::ObjectExtension
        | Obj::ObjectLanguage
        | Obj::ObjectForeignServer
        | Obj::ObjectFdw
        | Obj::ObjectPublication
        | Obj::ObjectCast
        | Obj::ObjectTransform
        | Obj::ObjectAccessMethod
        | Obj::ObjectUserMapping
        | Obj::ObjectSubscription
        | Obj::ObjectDatabase
        | Obj::ObjectTablespace
        | Obj::ObjectRole
        | Obj::Undefined => StatementClass::Dangerous,
        _ => StatementClass::Ddl,
    };
    let mut rels = Vec::new();
    if matches!(
        kind,
        Obj::ObjectTable
            | Obj::ObjectView
            | Obj::ObjectMatview
            | Obj::ObjectIndex
            | Obj::ObjectSequence
            | Obj::ObjectForeignTable
    ) {
        for o in &d.objects {
            let Some(NodeEnum::List(list)) = &o.node else {
                continue;
            };
            let parts: Vec<&str> = list
                .items
                .iter()
                .filter_map(|i| match &i.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.as_str()),
                    _ => None,
                })
                .collect();
            let (schema, name) = match parts.as_slice() {
                [name] => (None, *name),
                [.., schema, name] => (Some(*schema), *name),
                [] => continue,
            };
            rels.push(Rel {
                schema: schema.map(Into::into),
                name: name.into(),
                write: true,
            });
        }
    }
    Part {
        class,
        rels,
        effect: None,
        notes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digit_runs_are_hidden() {
        assert_eq!(
            hide_digit_runs("syntax error at or near \"4111111111111111\""),
            format!("syntax error at or near \"{}\"", "#".repeat(16))
        );
        assert_eq!(
            hide_digit_runs("near 4111 1111-1111 1111 x"),
            "near #### ####-#### #### x"
        );
        assert_eq!(
            hide_digit_runs("at position 42 of 2024-01-01"),
            "at position 42 of 2024-01-01"
        );
    }
}

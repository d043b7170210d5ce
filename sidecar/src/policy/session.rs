//! Per-session SQL state that changes what a later statement means.
//!
//! `EXECUTE name` runs whatever `PREPARE name` (or a protocol-level Parse)
//! stored, and an unqualified `cards` means a different table after
//! `SET search_path`. The session replays those effects in statement order,
//! with PostgreSQL's transaction rules for settings (ROLLBACK undoes SET,
//! SET LOCAL ends with the transaction), so the policy sees what PostgreSQL
//! will execute.

use std::collections::HashMap;
use std::sync::Arc;

use cardgate_crds::v1alpha1::StatementClass;

use super::classify::{Classification, Relations, SessionEffect, TransactionEffect, add_notes};
use super::names::{self, DEFAULT_SEARCH_PATH};

/// A search_path value; `None` is the server default.
type Path = Option<Arc<[String]>>;

/// Per-session SQL state: prepared statements and the search_path.
#[derive(Debug, Clone)]
pub struct SqlSession {
    state: State,
    default_path: Arc<[String]>,
    /// How to undo the last `effective()`, for `undo_last`.
    undo: Option<Box<State>>,
}

#[derive(Debug, Clone, Default)]
struct State {
    prepared: HashMap<String, Arc<Classification>>,
    /// What survives COMMIT.
    session_path: Path,
    /// What is in effect now (SET LOCAL may differ from `session_path`).
    current_path: Path,
    tx: Option<Tx>,
}

#[derive(Debug, Clone)]
struct Tx {
    begin_path: Path,
    savepoints: Vec<Savepoint>,
}

#[derive(Debug, Clone)]
struct Savepoint {
    name: String,
    session_path: Path,
    current_path: Path,
}

impl Default for SqlSession {
    fn default() -> Self {
        Self::new()
    }
}

impl SqlSession {
    /// A new session with the server's default search_path (`"$user",
    /// public`).
    pub fn new() -> SqlSession {
        Self::with_search_path(DEFAULT_SEARCH_PATH.iter().map(|s| s.to_string()).collect())
    }

    /// A new session whose default search_path is `path`, e.g. what
    /// `SHOW search_path` returned upstream when the role or database sets
    /// its own.
    pub fn with_search_path(path: Vec<String>) -> SqlSession {
        SqlSession {
            state: State::default(),
            default_path: path.into(),
            undo: None,
        }
    }

    /// The schema unqualified relation names are reported in right now.
    pub fn schema(&self) -> &str {
        names::effective_schema(self.path(&self.state.current_path))
    }

    fn path<'a>(&'a self, p: &'a Path) -> &'a [String] {
        p.as_deref().unwrap_or(&self.default_path)
    }

    /// The effective classification of a statement in this session (resolves
    /// EXECUTE, qualifies names), and records its effects (PREPARE,
    /// DEALLOCATE, SET search_path …). Call [`SqlSession::undo_last`] when the
    /// statement is then denied or fails, so the session keeps tracking what
    /// PostgreSQL actually did.
    pub fn effective(&mut self, c: Arc<Classification>) -> Arc<Classification> {
        self.undo = None;
        if !c.needs_session(self.schema()) {
            return c;
        }
        // Only statements with effects change the state worth undoing.
        if c.effects().next().is_some() {
            self.undo = Some(Box::new(self.state.clone()));
        }
        let mut state = std::mem::take(&mut self.state);
        let result = self.evaluate(&c, &mut state);
        self.state = state;
        Arc::new(result)
    }

    /// The effective classification without recording any effect: for a
    /// decision taken before the statement runs (an extended-protocol Parse).
    pub fn resolve(&self, c: &Arc<Classification>) -> Arc<Classification> {
        if !c.needs_session(self.schema()) {
            return c.clone();
        }
        let mut scratch = if c.effects().next().is_some() {
            self.state.clone()
        } else {
            // Only the path matters to a statement without effects.
            State {
                session_path: self.state.current_path.clone(),
                current_path: self.state.current_path.clone(),
                ..State::default()
            }
        };
        Arc::new(self.evaluate(c, &mut scratch))
    }

    /// Forgets the effects recorded by the last [`SqlSession::effective`]:
    /// the statement was denied, held, or failed upstream (PostgreSQL rolls
    /// back a failed string's implicit transaction).
    pub fn undo_last(&mut self) {
        if let Some(before) = self.undo.take() {
            self.state = *before;
        }
    }

    /// A protocol-level Parse created the named statement `name`; SQL
    /// `EXECUTE name` can run it too.
    pub fn protocol_prepared(&mut self, name: &str, c: Arc<Classification>) {
        if !name.is_empty() {
            self.state.prepared.entry(name.to_owned()).or_insert(c);
        }
    }

    /// A protocol-level Close removed the named statement `name`.
    pub fn protocol_closed(&mut self, name: &str) {
        self.state.prepared.remove(name);
    }

    /// Replays `c`'s statements in order against `state`.
    fn evaluate(&self, c: &Classification, state: &mut State) -> Classification {
        let mut rels = Relations::default();
        let mut class = StatementClass::Control;
        let mut error = None;
        let mut notes = Vec::new();
        for part in &c.parts {
            add_notes(&mut notes, &part.notes);
            let schema = names::effective_schema(self.path(&state.current_path));
            rels.add_all(&part.rels, schema);
            let mut part_class = part.class;
            match &part.effect {
                Some(SessionEffect::Execute { name, plan_only }) => {
                    match state.prepared.get(name) {
                        Some(body) => {
                            let mut body_class = body.class;
                            if body.effects().next().is_some() {
                                // A protocol-level statement with session effects
                                // of its own: not replayed, so not trusted.
                                body_class = StatementClass::Dangerous;
                            }
                            if *plan_only && body_class < StatementClass::Dangerous {
                                body_class = body_class.min(StatementClass::Read);
                            }
                            part_class = part_class.max(body_class);
                            for p in &body.parts {
                                if *plan_only {
                                    rels.add_reads(&p.rels, schema);
                                } else {
                                    rels.add_all(&p.rels, schema);
                                }
                                add_notes(&mut notes, &p.notes);
                            }
                        }
                        None => {
                            part_class = StatementClass::Unparseable;
                            error =
                                Some(format!("EXECUTE names unknown prepared statement {name:?}"));
                        }
                    }
                }
                Some(effect) => apply(state, effect),
                None => {}
            }
            class = class.max(part_class);
        }
        if state.tx.is_none() {
            // SET LOCAL outside a transaction block lasts only as long as the
            // string's implicit transaction.
            state.current_path = state.session_path.clone();
        }
        let (reads, writes) = rels.finish();
        Classification {
            class,
            reads,
            writes,
            statements: c.statements,
            error,
            notes,
            parts: Vec::new(),
        }
    }
}

fn apply(state: &mut State, effect: &SessionEffect) {
    match effect {
        SessionEffect::Prepare { name, body } => {
            // PostgreSQL refuses a second PREPARE of the same name.
            state
                .prepared
                .entry(name.clone())
                .or_insert_with(|| body.clone());
        }
        SessionEffect::Deallocate { name: Some(name) } => {
            state.prepared.remove(name);
        }
        SessionEffect::Deallocate { name: None } => state.prepared.clear(),
        SessionEffect::DiscardAll => {
            state.prepared.clear();
            state.session_path = None;
            state.current_path = None;
        }
        SessionEffect::SearchPath { schemas, local } => {
            state.current_path = schemas.clone();
            if !local {
                state.session_path = schemas.clone();
            }
        }
        SessionEffect::Execute { .. } => {}
        SessionEffect::Transaction(t) => transaction(state, t),
    }
}

fn transaction(state: &mut State, t: &TransactionEffect) {
    match t {
        TransactionEffect::Begin => {
            if state.tx.is_none() {
                state.tx = Some(Tx {
                    begin_path: state.session_path.clone(),
                    savepoints: Vec::new(),
                });
            }
        }
        TransactionEffect::Commit { chain } | TransactionEffect::Rollback { chain } => {
            if let Some(tx) = state.tx.take() {
                if matches!(t, TransactionEffect::Rollback { .. }) {
                    state.session_path = tx.begin_path;
                }
                state.current_path = state.session_path.clone();
                if *chain {
                    transaction(state, &TransactionEffect::Begin);
                }
            }
        }
        TransactionEffect::Savepoint(name) => {
            if let Some(tx) = &mut state.tx {
                tx.savepoints.push(Savepoint {
                    name: name.clone(),
                    session_path: state.session_path.clone(),
                    current_path: state.current_path.clone(),
                });
            }
        }
        TransactionEffect::Release(name) => {
            if let Some(tx) = &mut state.tx
                && let Some(i) = tx.savepoints.iter().rposition(|s| s.name == *name)
            {
                tx.savepoints.truncate(i);
            }
        }
        TransactionEffect::RollbackTo(name) => {
            if let Some(tx) = &mut state.tx
                && let Some(i) = tx.savepoints.iter().rposition(|s| s.name == *name)
            {
                tx.savepoints.truncate(i + 1);
                let sp = &tx.savepoints[i];
                state.session_path = sp.session_path.clone();
                state.current_path = sp.current_path.clone();
            }
        }
    }
}

//! Statement policy: what a SQL string does, and whether the policy lets it
//! run.
//!
//! - [`Classifier`] parses with PostgreSQL's own grammar (libpg_query) and
//!   classifies every statement as control, read, write, ddl, dangerous or
//!   unparseable, with the relations it reads and writes; results are cached
//!   by exact text and shared by all sessions.
//! - [`SqlSession`] applies what only a session knows: prepared statements
//!   run by EXECUTE, and the search_path that qualifies unqualified names.
//! - [`Policy`] decides: ordered rules, first match wins, then
//!   `defaultAction`; what does not parse is never allowed.
//!
//! Everything here is pure (no IO) except the `check` command's edge.
//! `docs/statements.md` describes the classes and rules for policy authors.

mod cache;
pub mod check;
mod classify;
mod functions;
mod literals;
mod names;
mod rules;
mod session;
mod statements;
mod walk;

pub use cache::{Classifier, MAX_CACHED_BYTES, MAX_CACHED_TEXT};
pub use classify::{Classification, SessionEffect, TransactionEffect, classify};
pub use rules::{Policy, RuleDecision};
pub use session::SqlSession;

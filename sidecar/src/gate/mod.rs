//! The protocol-neutral core of the sidecar: who the agent is, whether an
//! access may happen (now, after approval, or never), how text is masked,
//! and what the audit trail and metrics record.
//!
//! Layout: [`seam`] is what a protocol's data path asks of the core — the
//! [`Guard`] trait, whose decisions take an [`Access`]; [`engine`]
//! implements it for one target ([`Gate`]) with the identity, policy,
//! approval, masking and audit modules ([`Engine`]). Each protocol adds its
//! own adapter on top: PostgreSQL's column rules and recordings are in
//! `crate::postgres::guard`.

mod engine;
mod seam;

pub use engine::{Approvals, Engine, Gate};
pub use seam::{
    Access, ClientInfo, Completion, Guard, Held, Protocol, Resolved, RowLimits, SessionSummary,
    Verdict,
};

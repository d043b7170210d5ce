//! The one error type of the approval store. Its text goes to the agent and
//! to audit, so it names what failed precisely and never carries raw card
//! data: text that came from files or the API server is masked first.

use crate::masking::Masker;

/// What kind of failure; every kind means "do not run the statement".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The store cannot be reached, read or written (API down, 403,
    /// directory missing or unwritable, a damaged file).
    Unavailable,
    /// No request by that name.
    NotFound,
    /// The approval exists but no longer covers a run (used up, grant
    /// expired, not approved).
    GrantUnusable,
    /// The request handed to the store is malformed (caller bug or bad
    /// configuration).
    Invalid,
}

/// Why the approval store could not do what was asked. `Display` is the
/// reason sent to the agent; the caller fails closed on any of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}", .kind.prefix(), .message)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// The store cannot be reached, read or written.
    pub fn unavailable(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Unavailable, message)
    }

    /// No request by that name.
    pub fn not_found(name: &str) -> StoreError {
        StoreError::new(
            StoreErrorKind::NotFound,
            format!("approval request {name} not found"),
        )
    }

    /// The approval no longer covers a run.
    pub fn grant_unusable(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::GrantUnusable, message)
    }

    /// A malformed request or store configuration.
    pub fn invalid(message: impl Into<String>) -> StoreError {
        StoreError::new(StoreErrorKind::Invalid, message)
    }

    fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: mask(&message.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }
}

impl StoreErrorKind {
    /// Unavailability is announced as such; the other kinds speak for
    /// themselves.
    fn prefix(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "approval store unavailable: ",
            _ => "",
        }
    }
}

/// Masks card data in text the store did not write itself (file contents
/// quoted by a parser, API server messages, reviewers' reasons).
pub(crate) fn mask(text: &str) -> String {
    Masker::builtin().mask_str(text).into_owned()
}

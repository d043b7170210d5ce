//! What the relay keeps about each request in flight: the items of its
//! [`Pairing`](crate::postgres::pairing::Pairing) queue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gate::Completion;
use crate::postgres::pairing::{Kind, Request};

/// A request sent upstream whose response has not ended yet.
pub(super) enum Pending<S> {
    /// Simple query; its response ends at ReadyForQuery.
    Query(Box<Running<S>>),
    /// Parse; `denied` holds the denial if it was replaced.
    Parse { denied: Option<Denial> },
    /// A Describe the sidecar added after Parse, to learn the result columns;
    /// its response is not forwarded.
    InternalDescribe { name: Vec<u8> },
    /// Bind of `portal` from `statement` with result formats.
    Bind {
        portal: Vec<u8>,
        statement: Vec<u8>,
        formats: Vec<i16>,
    },
    /// Describe of a statement (`S`) or portal (`P`).
    Describe { kind: u8, name: Vec<u8> },
    /// Execute of a portal.
    Execute {
        portal: Vec<u8>,
        run: Box<Running<S>>,
    },
    /// Close.
    Close,
    /// Sync; its ReadyForQuery ends the batch.
    Sync,
    /// The sidecar's own `SELECT 1` after a cancel; nothing of its response
    /// reaches the client.
    Probe,
}

impl<S> Request for Pending<S> {
    fn kind(&self) -> Kind {
        match self {
            Self::Query(_) | Self::Probe => Kind::Query,
            Self::Parse { .. } => Kind::Parse,
            Self::InternalDescribe { .. } | Self::Describe { kind: b'S', .. } => {
                Kind::DescribeStatement
            }
            Self::Describe { .. } => Kind::DescribePortal,
            Self::Bind { .. } => Kind::Bind,
            Self::Execute { .. } => Kind::Execute,
            Self::Close => Kind::Close,
            Self::Sync => Kind::Sync,
        }
    }
}

impl<S> Pending<S> {
    /// The statement bookkeeping of a Query or Execute.
    pub(super) fn running(&mut self) -> Option<&mut Running<S>> {
        match self {
            Self::Query(run) | Self::Execute { run, .. } => Some(&mut **run),
            _ => None,
        }
    }

    /// Same as [`Pending::running`], by value.
    pub(super) fn into_running(self) -> Option<Box<Running<S>>> {
        match self {
            Self::Query(run) | Self::Execute { run, .. } => Some(run),
            _ => None,
        }
    }
}

/// Why a statement was not forwarded, as the client is told.
#[derive(Clone)]
pub(super) struct Denial {
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl Denial {
    /// Refused by policy (SQLSTATE 42501).
    pub(super) fn denied(message: String) -> Self {
        Self {
            code: "42501",
            message,
        }
    }
}

/// Bookkeeping of one statement whose rows are flowing.
pub(super) struct Running<S> {
    pub(super) statement: Option<Arc<S>>,
    pub(super) denied: Option<Denial>,
    started: Instant,
    overhead: Duration,
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) masked: u64,
    pub(super) sqlstate: Option<String>,
    pub(super) error: Option<String>,
}

impl<S> Running<S> {
    /// A statement received at `started` whose decision took `overhead`.
    pub(super) fn new(
        statement: Option<Arc<S>>,
        denied: Option<Denial>,
        started: Instant,
        overhead: Duration,
    ) -> Box<Self> {
        Box::new(Self {
            statement,
            denied,
            started,
            overhead,
            rows: 0,
            bytes: 0,
            masked: 0,
            sqlstate: None,
            error: None,
        })
    }

    /// Counts one forwarded row (or copy message) of `bytes` bytes.
    pub(super) fn count(&mut self, bytes: u64, masked: u64, overhead: Duration) {
        self.rows += 1;
        self.bytes += bytes;
        self.masked += masked;
        self.overhead += overhead;
    }

    /// Takes the row count from a command tag, unless rows were counted.
    pub(super) fn tagged_rows(&mut self, rows: Option<u64>) {
        if let Some(r) = rows
            && self.rows == 0
        {
            self.rows = r;
        }
    }

    /// Records an error the statement ended with.
    pub(super) fn failed(&mut self, sqlstate: Option<String>, error: String) {
        self.sqlstate = sqlstate;
        self.error = Some(error);
    }

    /// The outcome so far, with `extra` time spent in the sidecar.
    pub(super) fn outcome(&self, extra: Duration) -> Completion {
        Completion {
            rows: self.rows,
            bytes: self.bytes,
            masked: self.masked,
            duration: self.started.elapsed(),
            overhead: self.overhead + extra,
            sqlstate: self.sqlstate.clone(),
            error: self.error.clone(),
            skipped: false,
        }
    }
}

//! The seam between a protocol's data path and the decisions.
//!
//! A data path knows its wire protocol and nothing about policies;
//! everything it must ask — who is this token, may this access happen, how
//! is this text shown, what goes into the audit trail — goes through
//! [`Guard`], and every decision takes an [`Access`] in the protocol's own
//! terms. The sidecar implements it with its identity, policy, approval,
//! masking and audit modules ([`super::Gate`]); tests implement it with
//! fixed answers to exercise a protocol alone. What only one protocol needs
//! (PostgreSQL's column rules and recordings) is that adapter's own trait,
//! on top of this one (`crate::postgres::guard::PgGuard`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// What an agent asks to do: the input of every decision. One variant per
/// protocol; an HTTP request (method, path, body digest) is the next.
#[derive(Debug, Clone, Copy)]
pub enum Access<'a> {
    /// A SQL statement string.
    Sql {
        /// The statement text (empty for a FunctionCall).
        text: &'a str,
        /// How it reached the sidecar.
        protocol: Protocol,
        /// The name a Parse gives it: SQL `EXECUTE name` runs it later,
        /// and is decided by this text.
        prepare_as: Option<&'a str>,
    },
}

/// How a SQL statement reached the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Simple query ('Q').
    Simple,
    /// Extended query (Parse).
    Extended,
    /// FunctionCall ('F'), which calls a function by OID around SQL.
    FunctionCall,
}

impl Protocol {
    /// Name used in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Simple => "simple",
            Self::Extended => "extended",
            Self::FunctionCall => "functionCall",
        }
    }
}

/// The client connection, as known before authentication.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client address.
    pub addr: SocketAddr,
    /// Target name.
    pub target: String,
    /// User name the client gave (not trusted: the token decides).
    pub user: String,
    /// Database the client asked for.
    pub database: String,
    /// application_name, if given.
    pub application_name: Option<String>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// Session identifier shared by all records of this connection.
    pub session_id: String,
}

/// The guard's answer for one statement.
pub enum Verdict<S, H> {
    /// Forward it; `S` comes back with the outcome.
    Allow(S),
    /// Refuse it with this message (SQLSTATE 42501); already audited.
    Deny(String),
    /// It needs a human decision first: see [`Guard::hold`].
    Hold(H),
}

/// The final answer for a held statement.
pub enum Resolved<S> {
    /// Approved: forward it.
    Allow(S),
    /// Refused (SQLSTATE 42501), with the reason.
    Deny(String),
    /// The client cancelled while waiting (SQLSTATE 57014).
    Cancelled(String),
}

/// What happens right after a statement is held.
pub enum Held<S, W> {
    /// Decided at once (a deferred-mode grant, or a refusal).
    Now(Resolved<S>),
    /// Approvers must decide; tell the client `notice` and wait.
    Waiting {
        /// Sent to the client as a NoticeResponse right away.
        notice: String,
        /// Handle for [`Guard::await_decision`] and [`Guard::withdraw`].
        waiting: W,
    },
}

/// What happened to an allowed statement, reported when its response ends.
#[derive(Debug, Clone, Default)]
pub struct Completion {
    /// Rows returned or affected.
    pub rows: u64,
    /// Bytes of row data returned (after masking).
    pub bytes: u64,
    /// Values masked in the response.
    pub masked: u64,
    /// Wall time from receipt to completion.
    pub duration: Duration,
    /// Time spent in the sidecar itself (decision, masking).
    pub overhead: Duration,
    /// SQLSTATE of an error, if the statement failed.
    pub sqlstate: Option<String>,
    /// Error message (masked), if the statement failed.
    pub error: Option<String>,
    /// Whether the statement was never run because an earlier message of the
    /// same batch failed.
    pub skipped: bool,
}

/// Totals for a session, reported when it ends.
#[derive(Debug, Clone, Default)]
pub struct SessionSummary {
    /// Statements decided.
    pub statements: u64,
    /// Statements denied.
    pub denied: u64,
    /// Why the session ended, if not by the client's Terminate.
    pub error: Option<String>,
    /// Session length.
    pub duration: Duration,
}

/// Row and byte limits per statement.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowLimits {
    /// Most rows one statement may return.
    pub max_rows: Option<u64>,
    /// Most bytes of row data one statement may return.
    pub max_bytes: Option<u64>,
}

/// Everything a data path asks of the rest of the sidecar.
pub trait Guard: Send + Sync + 'static {
    /// Per-connection state (identity, prepared statements); owned by the
    /// task reading the client.
    type Session: Send + 'static;
    /// A decided statement, handed back with its outcome.
    type Statement: Send + Sync + 'static;
    /// A statement that needs approval.
    type Hold: Send;
    /// A statement waiting for approvers.
    type Waiting: Send + Sync;

    /// Validates the token the client sent as its password. `Err` holds the
    /// reason shown to the client (never the token); the attempt is audited.
    fn authenticate(
        &self,
        token: &str,
        client: &ClientInfo,
    ) -> impl Future<Output = Result<Self::Session, String>> + Send;

    /// Records a connection refused before authentication finished
    /// (malformed startup, refused parameters, upstream unavailable…).
    fn refused(&self, client: &ClientInfo, reason: &str);

    /// Records that the session is established upstream.
    fn session_started(&self, session: &Self::Session);

    /// A notice for the client once it is connected (who it is, which
    /// policy applies), so agents and people see their identity.
    fn greeting(&self, session: &Self::Session) -> Option<String>;

    /// Decides one access.
    fn decide(
        &self,
        session: &mut Self::Session,
        access: Access<'_>,
    ) -> Verdict<Self::Statement, Self::Hold>;

    /// A named prepared statement was closed: `EXECUTE name` no longer
    /// runs what a Parse named (`prepare_as` of [`Access::Sql`]).
    fn statement_closed(&self, session: &mut Self::Session, name: &str);

    /// Asks for approval of a held statement (creates the request, or finds
    /// a live grant in deferred mode).
    fn hold(
        &self,
        hold: Self::Hold,
    ) -> impl Future<Output = Held<Self::Statement, Self::Waiting>> + Send;

    /// Waits for the approvers' decision (or expiry).
    fn await_decision(
        &self,
        waiting: &Self::Waiting,
    ) -> impl Future<Output = Resolved<Self::Statement>> + Send;

    /// Withdraws a request whose agent cancelled or went away.
    fn withdraw(&self, waiting: Self::Waiting, reason: &str) -> impl Future<Output = ()> + Send;

    /// Records the outcome of an allowed statement.
    fn completed(&self, statement: &Self::Statement, outcome: &Completion);

    /// Records the end of the session.
    fn session_ended(&self, session: Self::Session, summary: &SessionSummary);

    /// Masks free text (result values, error fields, notifications). `None`
    /// means nothing was found and nothing was written.
    fn mask_text(&self, input: &[u8], out: &mut Vec<u8>) -> Option<usize>;

    /// Row and byte limits per statement.
    fn limits(&self) -> RowLimits;

    /// Name of the policy for messages (`payments/support-agent`).
    fn policy_name(&self) -> &str;
}

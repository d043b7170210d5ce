//! The recording file format: one JSON object per line, each with `t_us`
//! (microseconds since the session started) and `kind`.
//!
//! ```text
//! {"t_us":0,"kind":"session","version":1,"session":"…","started":"2026-…Z","subject":"…","target":"…"}
//! {"t_us":812,"kind":"query","text":"SELECT id, pan FROM cards"}
//! {"t_us":1490,"kind":"columns","columns":[{"name":"id","type":23},{"name":"pan","type":25}]}
//! {"t_us":1502,"kind":"row","values":["1","411111******1111"]}
//! {"t_us":1530,"kind":"complete","tag":"SELECT 1"}
//! {"t_us":2101,"kind":"error","severity":"ERROR","code":"42501","message":"…"}
//! {"t_us":9001,"kind":"end"}
//! ```
//!
//! Everything in a recording was masked by the proxy before it was
//! recorded. [`crate::recording::Recorder`] writes these lines by hand (no
//! per-row allocation); the types here read them back, and a test keeps the
//! two in step.

use serde::{Deserialize, Serialize};

/// Version written in the `session` line.
pub const FORMAT_VERSION: u32 = 1;

/// One line of a recording.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Line {
    /// Microseconds since the session started.
    pub t_us: u64,
    /// What happened.
    #[serde(flatten)]
    pub event: Event,
}

/// A result column: name and PostgreSQL type OID (which decides alignment
/// when replayed, as in psql).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Type OID; 0 when unknown.
    #[serde(rename = "type", default)]
    pub type_oid: u32,
}

/// What a recording line records.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// First line: who, where, when.
    Session {
        /// Format version.
        version: u32,
        /// Session id (as in audit records' `origin.session`).
        session: String,
        /// UTC start time, RFC 3339.
        started: String,
        /// Authenticated subject.
        subject: String,
        /// Target name.
        target: String,
        /// Database, for postgres targets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        database: Option<String>,
        /// Client address.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// A statement as the client sent it (masked).
    Query {
        /// Statement text.
        text: String,
    },
    /// A result's columns.
    Columns {
        /// The columns, in order.
        columns: Vec<Column>,
    },
    /// A result row; `null` for SQL NULL.
    Row {
        /// Values in text form.
        values: Vec<Option<String>>,
    },
    /// A statement completed.
    Complete {
        /// Command tag (`SELECT 3`, `INSERT 0 1`).
        tag: String,
        /// Rows returned but not recorded (past the per-statement limit).
        #[serde(default, skip_serializing_if = "is_zero")]
        omitted: u64,
    },
    /// An error sent to the client.
    Error(Diagnostic),
    /// A notice sent to the client.
    Notice(Diagnostic),
    /// Recording stopped early (size limit); the session went on.
    Stopped {
        /// Why.
        reason: String,
    },
    /// The session ended.
    End,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Fields of an ErrorResponse or NoticeResponse worth showing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Diagnostic {
    /// `ERROR`, `FATAL`, `NOTICE`, `WARNING`, …
    pub severity: String,
    /// SQLSTATE.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Hint line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

//! What the PostgreSQL data path asks of the gate beyond the
//! protocol-neutral [`Guard`]: column masking rules named by schema, table
//! and column, and recordings of the session as the client saw it.

use std::sync::Arc;

use crate::gate::{Gate, Guard};
use crate::masking::ColumnMask;
use crate::postgres::recorder::MaskedRecorder;

/// Result of masking one column value (the masking engine's own type: the
/// data path only forwards what it says).
pub use crate::masking::ColumnOutput;

/// Receives the session's exchange as the client sees it (already masked),
/// for a replayable recording. Called from the relay's hot path: cheap, and
/// never failing the session.
pub trait SessionRecorder: Send + 'static {
    /// A statement string from the client (raw; the recorder masks it).
    fn query(&mut self, sql: &str);
    /// Result columns (name, type OID) of a result about to stream.
    fn columns(&mut self, columns: &[(&[u8], u32)]);
    /// One DataRow body as forwarded (masked).
    fn row(&mut self, body: &[u8]);
    /// A command tag (`SELECT 5`).
    fn complete(&mut self, tag: &[u8]);
    /// An ErrorResponse (`error`) or NoticeResponse body as forwarded.
    fn report(&mut self, error: bool, body: &[u8]);
    /// The session went idle (ReadyForQuery): a good moment to flush.
    fn idle(&mut self);
}

/// The gate of a PostgreSQL target.
pub trait PgGuard: Guard {
    /// A resolved column masking rule.
    type ColumnRule: Copy + Send + Sync + 'static;
    /// Records a session for replay.
    type Recorder: SessionRecorder;

    /// The session's recorder, when recordings are on.
    fn recorder(&self, session: &Self::Session) -> Option<Self::Recorder>;

    /// Whether any column rule exists (skips catalog lookups otherwise).
    fn has_column_rules(&self) -> bool;

    /// The column rule for `schema.table.column`, if any.
    fn column_rule(&self, schema: &str, table: &str, column: &str) -> Option<Self::ColumnRule>;

    /// Applies a column rule to one value.
    fn mask_column(
        &self,
        rule: Self::ColumnRule,
        value: &[u8],
        text_like: bool,
        out: &mut Vec<u8>,
    ) -> ColumnOutput;
}

impl PgGuard for Gate {
    type ColumnRule = ColumnMask;
    type Recorder = MaskedRecorder;

    fn recorder(&self, session: &Self::Session) -> Option<MaskedRecorder> {
        let recording = self.start_recording(session)?;
        Some(MaskedRecorder::new(recording, Arc::clone(self.masker())))
    }

    fn has_column_rules(&self) -> bool {
        self.masker().has_column_rules()
    }

    fn column_rule(&self, schema: &str, table: &str, column: &str) -> Option<ColumnMask> {
        self.masker().column_rule(schema, table, column)
    }

    fn mask_column(
        &self,
        rule: ColumnMask,
        value: &[u8],
        text_like: bool,
        out: &mut Vec<u8>,
    ) -> ColumnOutput {
        self.masker().mask_column_to(rule, value, text_like, out)
    }
}

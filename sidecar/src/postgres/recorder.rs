//! The recorder the relay feeds: masks statement text (the only raw input it
//! gets; rows and reports arrive masked) and unpacks protocol bodies for
//! the recording writer.

use std::sync::Arc;

use super::guard::SessionRecorder;
use super::messages;
use crate::masking::Masker;
use crate::recording::{DiagnosticRef, Recorder};

/// A session's recording.
pub struct MaskedRecorder {
    inner: Recorder,
    masker: Arc<Masker>,
}

impl MaskedRecorder {
    /// Wraps a recording writer.
    pub fn new(inner: Recorder, masker: Arc<Masker>) -> Self {
        Self { inner, masker }
    }
}

impl SessionRecorder for MaskedRecorder {
    fn query(&mut self, sql: &str) {
        self.inner.query(&self.masker.mask_str(sql));
    }

    fn columns(&mut self, columns: &[(&[u8], u32)]) {
        self.inner.columns(
            columns
                .iter()
                .map(|(name, oid)| (std::str::from_utf8(name).unwrap_or("?column?"), *oid)),
        );
    }

    fn row(&mut self, body: &[u8]) {
        let Ok(mut row) = messages::data_row(body) else {
            return;
        };
        let mut values = Vec::with_capacity(row.len());
        while let Ok(Some(v)) = row.next_value() {
            values.push(v);
        }
        self.inner.row(values);
    }

    fn complete(&mut self, tag: &[u8]) {
        self.inner.complete(&String::from_utf8_lossy(tag));
    }

    fn report(&mut self, error: bool, body: &[u8]) {
        let fields = messages::report_fields(body).unwrap_or_default();
        let text = |code: u8| {
            fields
                .iter()
                .find(|(k, _)| *k == code)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let (severity, code, message) = (
            text(b'V').or_else(|| text(b'S')).unwrap_or_default(),
            text(b'C').unwrap_or_default(),
            text(b'M').unwrap_or_default(),
        );
        let (detail, hint) = (text(b'D'), text(b'H'));
        let d = DiagnosticRef {
            severity: &severity,
            code: &code,
            message: &message,
            detail: detail.as_deref(),
            hint: hint.as_deref(),
        };
        if error {
            self.inner.error(&d);
        } else {
            self.inner.notice(&d);
        }
    }

    fn idle(&mut self) {
        self.inner.flush();
    }
}

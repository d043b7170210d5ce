//! Writing recordings on the data path.
//!
//! A [`Recorder`] belongs to one session task: no locks, one buffered file,
//! one reused line buffer. Rows are written straight from the slices the
//! proxy hands over, so recording a row allocates nothing. Recordings are
//! bounded: rows past `max_rows_per_statement` are counted, not written,
//! and a session stops recording at `max_bytes_per_session`. A recording
//! that cannot be written (disk full) stops with a warning and a metric; it
//! never fails the session, because the audit trail, not the recording, is
//! the record that must not be lost.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardgate_crds::config::AuditConfig;
use prometheus_client::metrics::counter::Counter;

use super::format::FORMAT_VERSION;

const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
const BUFFER: usize = 64 << 10;

/// Bounds on what one session's recording holds.
#[derive(Debug, Clone, Copy)]
pub struct RecordingLimits {
    /// Rows recorded per statement; the rest are counted in `omitted`.
    pub max_rows_per_statement: u64,
    /// Bytes per recording file; past it, recording stops (noted in the file).
    pub max_bytes_per_session: u64,
}

impl Default for RecordingLimits {
    fn default() -> Self {
        Self {
            max_rows_per_statement: 1000,
            max_bytes_per_session: 64 << 20,
        }
    }
}

/// Why recordings cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    /// The recordings directory cannot be created or used.
    #[error("recordings directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A session's recording file cannot be created.
    #[error("cannot create recording {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Who and where a recording is about.
#[derive(Debug, Clone, Copy)]
pub struct SessionInfo<'a> {
    /// Session id (as in audit records).
    pub session: &'a str,
    /// Authenticated subject.
    pub subject: &'a str,
    /// Target name.
    pub target: &'a str,
    /// Database.
    pub database: Option<&'a str>,
    /// Client address.
    pub client: Option<&'a str>,
}

/// Fields of an error or notice to record (already masked).
#[derive(Debug, Clone, Copy, Default)]
pub struct DiagnosticRef<'a> {
    /// `ERROR`, `NOTICE`, …
    pub severity: &'a str,
    /// SQLSTATE.
    pub code: &'a str,
    /// Primary message.
    pub message: &'a str,
    /// Detail.
    pub detail: Option<&'a str>,
    /// Hint.
    pub hint: Option<&'a str>,
}

/// The recordings directory; cheap to clone, one per process.
#[derive(Debug, Clone)]
pub struct Recordings {
    dir: Arc<PathBuf>,
    limits: RecordingLimits,
    failures: Counter,
}

impl Recordings {
    /// Uses (creating if needed, mode 0700) `dir` for recordings.
    pub fn open(dir: impl Into<PathBuf>, limits: RecordingLimits) -> Result<Self, RecordingError> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| RecordingError::Dir {
                path: dir.clone(),
                source,
            })?;
        Ok(Self {
            dir: Arc::new(dir),
            limits,
            failures: Counter::default(),
        })
    }

    /// Recordings as configured by `audit.recordingsDir` (`None` when unset).
    pub fn from_config(
        cfg: &AuditConfig,
        limits: RecordingLimits,
    ) -> Result<Option<Self>, RecordingError> {
        cfg.recordings_dir
            .as_deref()
            .map(|d| Self::open(d, limits))
            .transpose()
    }

    /// Counts failed recordings in `counter` (e.g.
    /// `Metrics::recording_failures`).
    pub fn with_failure_counter(mut self, counter: Counter) -> Self {
        self.failures = counter;
        self
    }

    /// Starts a session's recording in `<start time>-<session>.jsonl`.
    pub fn start(&self, info: &SessionInfo<'_>) -> Result<Recorder, RecordingError> {
        let now = jiff::Timestamp::now();
        let name = format!(
            "{}-{}.jsonl",
            now.strftime("%Y%m%dT%H%M%S%.6fZ"),
            file_safe(info.session)
        );
        let path = self.dir.join(name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| RecordingError::Create {
                path: path.clone(),
                source,
            })?;
        let mut r = Recorder {
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            path,
            session: info.session.to_string(),
            start: Instant::now(),
            last_flush: Instant::now(),
            line: Vec::with_capacity(1024),
            limits: self.limits,
            rows: 0,
            omitted: 0,
            bytes: 0,
            failures: self.failures.clone(),
        };
        r.begin_at(0, "session");
        r.line
            .extend_from_slice(format!(",\"version\":{FORMAT_VERSION}").as_bytes());
        r.field("session", info.session);
        r.field(
            "started",
            &now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        );
        r.field("subject", info.subject);
        r.field("target", info.target);
        if let Some(db) = info.database {
            r.field("database", db);
        }
        if let Some(c) = info.client {
            r.field("client", c);
        }
        r.end();
        Ok(r)
    }
}

/// Keeps a session id usable in a file name.
fn file_safe(session: &str) -> String {
    session
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One session's recording. Methods never fail: a recording that cannot be
/// written stops itself (logged and counted).
#[derive(Debug)]
pub struct Recorder {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    session: String,
    start: Instant,
    last_flush: Instant,
    line: Vec<u8>,
    limits: RecordingLimits,
    rows: u64,
    omitted: u64,
    bytes: u64,
    failures: Counter,
}

impl Recorder {
    /// The recording file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the recording still takes events.
    pub fn active(&self) -> bool {
        self.out.is_some()
    }

    /// A statement as sent by the client (masked).
    pub fn query(&mut self, text: &str) {
        if self.begin("query") {
            self.field("text", text);
            self.end();
        }
    }

    /// A result's columns: name and type OID.
    pub fn columns<'a>(&mut self, columns: impl IntoIterator<Item = (&'a str, u32)>) {
        self.rows = 0;
        self.omitted = 0;
        if !self.begin("columns") {
            return;
        }
        self.line.extend_from_slice(b",\"columns\":[");
        for (i, (name, oid)) in columns.into_iter().enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            self.line.extend_from_slice(b"{\"name\":");
            json_str(&mut self.line, name);
            self.line.extend_from_slice(b",\"type\":");
            push_u64(&mut self.line, u64::from(oid));
            self.line.push(b'}');
        }
        self.line.push(b']');
        self.end();
    }

    /// A result row in text form (masked); `None` is SQL NULL. Values that
    /// are not UTF-8 are recorded as `\x` and hex, as psql shows bytea.
    pub fn row<'a>(&mut self, values: impl IntoIterator<Item = Option<&'a [u8]>>) {
        if self.out.is_none() {
            return;
        }
        if self.rows >= self.limits.max_rows_per_statement {
            self.omitted += 1;
            return;
        }
        self.rows += 1;
        self.begin("row");
        self.line.extend_from_slice(b",\"values\":[");
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                self.line.push(b',');
            }
            match v {
                None => self.line.extend_from_slice(b"null"),
                Some(bytes) => match std::str::from_utf8(bytes) {
                    Ok(s) => json_str(&mut self.line, s),
                    Err(_) => {
                        self.line.extend_from_slice(b"\"\\\\x");
                        for b in bytes {
                            self.line.push(HEX_DIGITS[usize::from(b >> 4)]);
                            self.line.push(HEX_DIGITS[usize::from(b & 15)]);
                        }
                        self.line.push(b'"');
                    }
                },
            }
        }
        self.line.push(b']');
        self.end();
    }

    /// A statement completed with `tag`.
    pub fn complete(&mut self, tag: &str) {
        let omitted = std::mem::take(&mut self.omitted);
        self.rows = 0;
        if !self.begin("complete") {
            return;
        }
        self.field("tag", tag);
        if omitted > 0 {
            self.line.extend_from_slice(b",\"omitted\":");
            push_u64(&mut self.line, omitted);
        }
        self.end();
        self.flush_if_due();
    }

    /// An error sent to the client (masked).
    pub fn error(&mut self, d: &DiagnosticRef<'_>) {
        self.rows = 0;
        self.omitted = 0;
        self.diagnostic("error", d);
        self.flush_if_due();
    }

    /// A notice sent to the client (masked).
    pub fn notice(&mut self, d: &DiagnosticRef<'_>) {
        self.diagnostic("notice", d);
    }

    /// Writes buffered lines to the file (call when the session goes idle).
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out
            && let Err(e) = out.flush()
        {
            self.fail(&e);
        }
        self.last_flush = Instant::now();
    }

    /// Ends the recording with an `end` line and flushes it.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if self.begin("end") {
            self.end();
        }
        self.flush();
        self.out = None;
    }

    fn diagnostic(&mut self, kind: &str, d: &DiagnosticRef<'_>) {
        if !self.begin(kind) {
            return;
        }
        self.field("severity", d.severity);
        if !d.code.is_empty() {
            self.field("code", d.code);
        }
        self.field("message", d.message);
        if let Some(x) = d.detail {
            self.field("detail", x);
        }
        if let Some(x) = d.hint {
            self.field("hint", x);
        }
        self.end();
    }

    fn flush_if_due(&mut self) {
        if self.last_flush.elapsed() >= FLUSH_INTERVAL {
            self.flush();
        }
    }

    /// Starts a line; false when the recording has stopped.
    fn begin(&mut self, kind: &str) -> bool {
        if self.out.is_none() {
            return false;
        }
        let t = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.begin_at(t, kind);
        true
    }

    fn begin_at(&mut self, t_us: u64, kind: &str) {
        self.line.clear();
        self.line.extend_from_slice(b"{\"t_us\":");
        push_u64(&mut self.line, t_us);
        self.line.extend_from_slice(b",\"kind\":\"");
        self.line.extend_from_slice(kind.as_bytes());
        self.line.push(b'"');
    }

    fn field(&mut self, name: &str, value: &str) {
        self.line.push(b',');
        self.line.push(b'"');
        self.line.extend_from_slice(name.as_bytes());
        self.line.extend_from_slice(b"\":");
        json_str(&mut self.line, value);
    }

    fn end(&mut self) {
        self.line.extend_from_slice(b"}\n");
        let len = self.line.len() as u64;
        if self.bytes + len > self.limits.max_bytes_per_session {
            let limit = self.limits.max_bytes_per_session;
            let t = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.begin_at(t, "stopped");
            let reason = format!(
                "the recording reached its limit of {limit} bytes; the session continued unrecorded"
            );
            self.field("reason", &reason);
            self.line.extend_from_slice(b"}\n");
            self.write_line();
            self.flush();
            self.out = None;
            return;
        }
        self.bytes += len;
        self.write_line();
    }

    fn write_line(&mut self) {
        if let Some(out) = &mut self.out
            && let Err(e) = out.write_all(&self.line)
        {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &io::Error) {
        tracing::warn!(
            session = %self.session,
            path = %self.path.display(),
            error = %e,
            "session recording failed and stops; the session and its audit records continue"
        );
        self.failures.inc();
        self.out = None;
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if self.out.is_some() {
            self.close();
        }
    }
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing JSON to a Vec cannot fail");
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

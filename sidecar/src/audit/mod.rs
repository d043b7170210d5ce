//! The audit trail: every record goes to every sink, sealed into one hash
//! chain (`cardgate_crds::audit`).
//!
//! [`AuditLog::record`] is what the data path calls: it checks the trail's
//! health and queues the record, nothing more. A dedicated writer thread
//! seals records (seq, prevHash, hash), batches them and writes each batch to
//! every sink: `stdout` (JSON lines for the cluster's log pipeline), `file`
//! (append-only, with an fsync policy) and `collector` (HTTPS to the
//! operator). When a sink cannot be written, [`AuditLog::healthy`] turns
//! false and `record` refuses further records, so the proxy denies new
//! statements (fail closed, PCI DSS 10.7.2); the failure goes to stderr and
//! to metrics, and the outage (start, end, events refused) is written into
//! the trail itself once the sink recovers.

mod collector;
mod file;
mod writer;

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use cardgate_crds::audit::{AuditRecord, Chain, EventKind, Origin, Outcome};
use cardgate_crds::config::{AuditConfig, AuditSinkType, FsyncPolicy};

use crate::admin::AuditMetrics;
use collector::Endpoint;
use file::FileSink;
use writer::{Msg, Sink, SinkKind, Waiter, Writer};

pub use collector::{DEFAULT_PATH as COLLECTOR_PATH, NDJSON as COLLECTOR_CONTENT_TYPE};
pub use file::BATCH_SYNC_INTERVAL;

/// Why the trail cannot take a record, or could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A sink could not be opened or configured.
    #[error("audit sink {sink}: {reason}")]
    Open {
        /// The sink (`file PATH`, `stdout`, `collector URL`).
        sink: String,
        /// What went wrong.
        reason: String,
    },
    /// An existing log's tail does not verify; appending would bury the
    /// damage under new records.
    #[error(
        "audit log {path} is damaged, so cardgate will not append to it: {problem}. Keep it as evidence, move it aside (`cardgate-sidecar audit verify` shows how much of it is intact) and restart to begin a new log"
    )]
    Corrupt {
        /// The log file.
        path: String,
        /// The first problem found.
        problem: String,
    },
    /// Two file sinks hold different chains.
    #[error("audit logs disagree: {0}")]
    Diverged(String),
    /// A sink is failing; the event must be refused.
    #[error("the audit trail is failing, so the event cannot be recorded: {0}")]
    Unhealthy(String),
    /// The sinks cannot keep up; the event must be refused.
    #[error("the audit trail is {0} records behind; events are refused until the sinks catch up")]
    Backlog(usize),
    /// The trail was closed.
    #[error("the audit trail is closed")]
    Closed,
    /// The writer thread is gone.
    #[error("the audit writer stopped; no event can be recorded")]
    Stopped,
}

pub(crate) const SINK_FAILED: u8 = 1;
pub(crate) const BACKLOG: u8 = 2;
const CLOSED: u8 = 4;
const STOPPED: u8 = 8;

/// The trail's health, shared by the callers and the writer thread.
pub(crate) struct TrailHealth {
    state: AtomicU8,
    pub(crate) queued: AtomicUsize,
    pub(crate) refused: AtomicU64,
    reason: Mutex<String>,
    pub(crate) metrics: AuditMetrics,
}

impl TrailHealth {
    pub(crate) fn has(&self, bit: u8) -> bool {
        self.state.load(Ordering::Acquire) & bit != 0
    }

    pub(crate) fn set(&self, bit: u8, reason: Option<String>) {
        if let Some(r) = reason {
            *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = r;
        }
        self.state.fetch_or(bit, Ordering::AcqRel);
        self.metrics.set_healthy(false);
    }

    pub(crate) fn clear(&self, bit: u8) {
        let before = self.state.fetch_and(!bit, Ordering::AcqRel);
        self.metrics.set_healthy(before & !bit == 0);
    }

    fn stop(&self) {
        self.set(STOPPED, None);
    }

    /// Counts a refused record and says why it was refused.
    fn refuse(&self, state: u8, queued: usize) -> AuditError {
        self.refused.fetch_add(1, Ordering::AcqRel);
        self.metrics.refused();
        if state & STOPPED != 0 {
            AuditError::Stopped
        } else if state & CLOSED != 0 {
            AuditError::Closed
        } else if state & SINK_FAILED != 0 {
            AuditError::Unhealthy(
                self.reason
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            )
        } else {
            AuditError::Backlog(queued)
        }
    }
}

/// Tuning of an [`AuditLog`]; the defaults suit production.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Where failures and throughput are counted.
    pub metrics: AuditMetrics,
    /// Records queued for the writer before `record` refuses more.
    pub queue_capacity: usize,
    /// Bytes a collector sink may hold unaccepted before the trail turns
    /// unhealthy (nothing is dropped).
    pub collector_buffer_bytes: usize,
    /// How long a collector may accept nothing before the trail turns
    /// unhealthy.
    pub collector_max_delay: Duration,
    /// How long `close` waits for sinks to confirm the last record.
    pub close_timeout: Duration,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            metrics: AuditMetrics::default(),
            queue_capacity: 65_536,
            collector_buffer_bytes: 64 << 20,
            collector_max_delay: Duration::from_secs(30),
            close_timeout: Duration::from_secs(10),
        }
    }
}

/// One audit trail for the process: every record goes to every sink, sealed
/// into one hash chain. Send + Sync, shared via `Arc`.
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<TrailHealth>,
    origin: Origin,
    capacity: usize,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

enum Prepared {
    File(FileSink),
    Stdout,
    Collector(Endpoint),
}

impl AuditLog {
    /// Opens the sinks with default options and writes `audit.start`. A file
    /// sink whose file already holds a chain continues it after verifying
    /// its tail; a damaged file is refused.
    pub async fn open(cfg: &AuditConfig, origin: Origin) -> Result<AuditLog, AuditError> {
        Self::open_with(cfg, origin, AuditOptions::default()).await
    }

    /// [`AuditLog::open`] with explicit options (metrics, limits).
    pub async fn open_with(
        cfg: &AuditConfig,
        origin: Origin,
        options: AuditOptions,
    ) -> Result<AuditLog, AuditError> {
        if cfg.sinks.is_empty() {
            return Err(AuditError::Open {
                sink: "audit.sinks".into(),
                reason: "no sink is configured: cardgate never runs without an audit trail".into(),
            });
        }
        let sinks = cfg.sinks.clone();
        let prepared = tokio::task::spawn_blocking(move || prepare(&sinks))
            .await
            .map_err(|_| AuditError::Stopped)??;

        let mut tail: Option<(String, u64, String, Option<String>)> = None;
        for (p, t) in &prepared {
            let (Prepared::File(f), Some((seq, hash, id))) = (p, t) else {
                continue;
            };
            let path = f.path().display().to_string();
            match &tail {
                None => tail = Some((path, *seq, hash.clone(), id.clone())),
                Some((other, s, h, _)) if (s, h) != (seq, hash) => {
                    return Err(AuditError::Diverged(format!(
                        "{other} ends at seq {s} (hash {h}), {path} at seq {seq} (hash {hash}): they hold different chains; point the sidecar at one of them"
                    )));
                }
                Some(_) => {}
            }
        }
        let chain = tail.as_ref().map_or_else(Chain::default, |(_, s, h, id)| {
            Chain::resume(*s, h.clone(), id.clone())
        });
        let resumed = chain.next_seq() - 1;

        let (tx, rx) = mpsc::channel();
        let limits = collector::Limits {
            buffer_bytes: options.collector_buffer_bytes,
            max_delay: options.collector_max_delay,
        };
        let mut described = Vec::new();
        let sinks: Vec<Sink> = prepared
            .into_iter()
            .enumerate()
            .map(|(i, (p, _))| {
                let (name, kind) = match p {
                    Prepared::File(f) => {
                        let policy = match f.policy() {
                            FsyncPolicy::Always => "always",
                            FsyncPolicy::Batch => "batch",
                            FsyncPolicy::Never => "never",
                        };
                        described.push(format!("file {} (fsync {policy})", f.path().display()));
                        (format!("file {}", f.path().display()), SinkKind::File(f))
                    }
                    Prepared::Stdout => {
                        described.push("stdout".into());
                        ("stdout".into(), SinkKind::Stdout)
                    }
                    Prepared::Collector(ep) => {
                        let name = format!("collector {}", ep.url());
                        described.push(name.clone());
                        let events = tx.clone();
                        let report = move |ev| {
                            let _ = events.send(Msg::Collector(i, ev));
                        };
                        let tx = collector::spawn(ep, limits, report);
                        (name, SinkKind::Collector(tx))
                    }
                };
                Sink::new(name, kind, resumed)
            })
            .collect();

        let shared = Arc::new(TrailHealth {
            state: AtomicU8::new(0),
            queued: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            reason: Mutex::new(String::new()),
            metrics: options.metrics.clone(),
        });
        shared.metrics.set_healthy(true);
        let writer = Writer::new(
            rx,
            shared.clone(),
            chain,
            origin.clone(),
            sinks,
            options.queue_capacity,
            options.close_timeout,
        );
        std::thread::Builder::new()
            .name("cardgate-audit".into())
            .spawn(move || writer.run())
            .map_err(|e| AuditError::Open {
                sink: "writer".into(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        let log = AuditLog {
            tx,
            shared,
            origin,
            capacity: options.queue_capacity,
        };

        let mut start =
            AuditRecord::new(EventKind::AuditStart, Outcome::Success, log.origin.clone());
        start.message = Some(match tail {
            Some((path, seq, _, _)) => format!(
                "audit trail started; sinks: {}; continuing the chain of {path} after seq {seq}",
                described.join(", ")
            ),
            None => format!(
                "audit trail started; sinks: {}; new chain",
                described.join(", ")
            ),
        });
        log.record_durable(start).await?;
        Ok(log)
    }

    /// Seals and queues a record (seq, prevHash and hash are filled in by
    /// the writer). Errs, counting the refusal, when the trail is unhealthy:
    /// the caller must then deny what the record describes.
    pub fn record(&self, rec: AuditRecord) -> Result<(), AuditError> {
        self.submit(rec, None)
    }

    /// Like [`AuditLog::record`], but returns once the record is durable on
    /// every sink: fsynced for `fsync: always`, covered by the next periodic
    /// fsync (at most 100 ms later) for `batch`, written to the OS for
    /// `never` and for stdout; handed to the delivery buffer for a collector.
    pub async fn record_durable(&self, rec: AuditRecord) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(rec, Some(tx))?;
        rx.await.unwrap_or(Err(AuditError::Stopped))
    }

    fn submit(&self, rec: AuditRecord, waiter: Option<Waiter>) -> Result<(), AuditError> {
        let state = self.shared.state.load(Ordering::Acquire);
        if state != 0 {
            return Err(self.shared.refuse(state, 0));
        }
        let queued = self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if queued >= self.capacity {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            if !self.shared.has(BACKLOG) {
                tracing::error!(
                    queued,
                    "audit queue full: the sinks cannot keep up; events are refused until it drains"
                );
                self.shared.metrics.failure("queue");
                self.shared.set(BACKLOG, None);
            }
            return Err(self.shared.refuse(BACKLOG, queued));
        }
        self.tx
            .send(Msg::Record(Box::new(rec), waiter))
            .map_err(|_| {
                self.shared.queued.fetch_sub(1, Ordering::AcqRel);
                self.shared.refuse(STOPPED, 0)
            })
    }

    /// False while a sink is failing or the queue is full: the proxy then
    /// denies new statements (fail closed).
    pub fn healthy(&self) -> bool {
        self.shared.state.load(Ordering::Acquire) == 0
    }

    /// The base origin (component, pod identity) given at open.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The base origin with a session id and client address filled in.
    pub fn session_origin(&self, session: &str, client: Option<String>) -> Origin {
        Origin {
            session: Some(session.to_string()),
            client,
            ..self.origin.clone()
        }
    }

    /// Writes `audit.stop`, flushes and fsyncs every sink, and waits (up to
    /// the close timeout) for collectors to accept everything.
    pub async fn close(self) -> Result<(), AuditError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.shared.set(CLOSED, None);
        self.tx
            .send(Msg::Close(tx))
            .map_err(|_| AuditError::Stopped)?;
        rx.await.unwrap_or(Err(AuditError::Stopped))
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        // Without close: the writer writes what is queued, syncs and exits.
        let _ = self.tx.send(Msg::Shutdown);
    }
}

fn prepare(
    sinks: &[cardgate_crds::config::AuditSink],
) -> Result<Vec<(Prepared, file::Tail)>, AuditError> {
    let mut out: Vec<(Prepared, file::Tail)> = Vec::with_capacity(sinks.len());
    let mut files = Vec::new();
    for s in sinks {
        match s.kind {
            AuditSinkType::Stdout => out.push((Prepared::Stdout, None)),
            AuditSinkType::Collector => out.push((Prepared::Collector(Endpoint::new(s)?), None)),
            AuditSinkType::File => {
                let path = s.path.as_deref().ok_or_else(|| AuditError::Open {
                    sink: "file".into(),
                    reason: "a file sink needs path".into(),
                })?;
                let (f, tail) = FileSink::open(std::path::Path::new(path), s.fsync)?;
                if files.contains(&f.identity()) {
                    return Err(AuditError::Open {
                        sink: format!("file {path}"),
                        reason: "the same file is configured twice".into(),
                    });
                }
                files.push(f.identity());
                out.push((Prepared::File(f), tail));
            }
        }
    }
    Ok(out)
}

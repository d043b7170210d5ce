//! The writer thread: seals records into the one chain, writes each batch to
//! every sink, decides when a record is durable, and keeps the trail's
//! health.
//!
//! One thread owns the chain and the sinks, so sealing needs no lock and
//! records reach every sink in the same order. Everything that arrived while
//! the previous batch was being written forms the next batch: under
//! `fsync: always` many sessions' records share one fsync (group commit).
//! A failing sink keeps the records it could not take and is retried with
//! backoff; the trail stays unhealthy (statements refused) until every sink
//! has caught up, and the outage is written into the trail itself.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cardgate_crds::audit::{AuditRecord, Chain, EventKind, Origin, Outcome, now_rfc3339};
use cardgate_crds::config::FsyncPolicy;
use tokio::sync::mpsc::UnboundedSender;

use super::collector::{Batch, CollectorEvent};
use super::file::{FileFailure, FileSink};
use super::{AuditError, BACKLOG, SINK_FAILED, TrailHealth};

/// Most messages taken into one batch.
const MAX_BATCH: usize = 4096;
/// How long the writer waits for more records after the first of a batch
/// (not when someone waits for durability).
const LINGER: Duration = Duration::from_millis(2);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Resolved once a record is durable (or cannot become so).
pub(crate) type Waiter = tokio::sync::oneshot::Sender<Result<(), AuditError>>;

/// What the writer thread receives.
pub(crate) enum Msg {
    /// A record to seal; the waiter wants to know when it is durable.
    Record(Box<AuditRecord>, Option<Waiter>),
    /// News from a collector sink's delivery task.
    Collector(usize, CollectorEvent),
    /// Write `audit.stop`, flush everything, answer, exit.
    Close(Waiter),
    /// The log was dropped without close: write what is queued and exit.
    Shutdown,
}

/// Where a sink writes.
pub(crate) enum SinkKind {
    File(FileSink),
    Stdout,
    Collector(UnboundedSender<Batch>),
}

struct Failure {
    error: String,
    since: Instant,
    retry_at: Instant,
    backoff: Duration,
    permanent: bool,
}

/// One sink with its progress through the chain.
pub(crate) struct Sink {
    name: String,
    kind: SinkKind,
    /// Last seq handed to the sink.
    written: u64,
    /// Last seq durable per the sink's policy.
    durable: u64,
    /// Collector: last seq it accepted.
    acked: u64,
    /// File and stdout: lines not written yet because the sink is failing.
    pending: Vec<u8>,
    pending_last: u64,
    failure: Option<Failure>,
}

impl Sink {
    /// A sink that has everything up to `seq` (where the chain resumes).
    pub(crate) fn new(name: String, kind: SinkKind, seq: u64) -> Self {
        Self {
            name,
            kind,
            written: seq,
            durable: seq,
            acked: seq,
            pending: Vec::new(),
            pending_last: seq,
            failure: None,
        }
    }

    fn label(&self) -> &'static str {
        match self.kind {
            SinkKind::File(_) => "file",
            SinkKind::Stdout => "stdout",
            SinkKind::Collector(_) => "collector",
        }
    }

    fn write(&mut self, bytes: &[u8], last: u64, now: Instant) -> Result<(), FileFailure> {
        if let SinkKind::Collector(tx) = &self.kind {
            // Delivery is asynchronous; the task buffers and retries.
            self.written = last;
            self.durable = last;
            return tx
                .send(Batch {
                    bytes: Bytes::copy_from_slice(bytes),
                    last,
                })
                .map_err(|_| FileFailure {
                    message: "its delivery task stopped".into(),
                    permanent: true,
                });
        }
        if self.failure.is_some() {
            self.pending.extend_from_slice(bytes);
            self.pending_last = last;
            return Ok(());
        }
        let result = match &mut self.kind {
            SinkKind::File(f) => f.append(bytes),
            _ => write_stdout(bytes),
        };
        if let Err(e) = result {
            self.pending.extend_from_slice(bytes);
            self.pending_last = last;
            return Err(e);
        }
        self.written = last;
        self.after_write(now)
    }

    /// Applies the fsync policy to what was just written.
    fn after_write(&mut self, now: Instant) -> Result<(), FileFailure> {
        match &mut self.kind {
            SinkKind::File(f) => match f.policy() {
                FsyncPolicy::Always => {
                    f.sync()?;
                    self.durable = self.written;
                }
                FsyncPolicy::Batch => {
                    if f.batch_sync_due(now) {
                        f.sync()?;
                        self.durable = self.written;
                    }
                }
                FsyncPolicy::Never => self.durable = self.written,
            },
            _ => self.durable = self.written,
        }
        Ok(())
    }

    /// When this sink next needs the writer: a retry, or a batch fsync.
    fn due(&self) -> Option<Instant> {
        match (&self.kind, &self.failure) {
            (SinkKind::Collector(_), _) => None,
            (_, Some(f)) if f.permanent => None,
            (_, Some(f)) => Some(f.retry_at),
            (SinkKind::File(f), None) if self.durable < self.written => Some(f.next_batch_sync()),
            _ => None,
        }
    }

    /// Runs what is due: a retry of a failed sink, or a batch fsync.
    /// Returns true when a failed sink has caught up.
    fn tick(&mut self, now: Instant) -> Result<bool, FileFailure> {
        if self.due().is_none_or(|t| t > now) {
            return Ok(false);
        }
        if self.failure.is_none() {
            if let SinkKind::File(f) = &mut self.kind {
                f.sync()?;
                self.durable = self.written;
            }
            return Ok(false);
        }
        let result = match &mut self.kind {
            SinkKind::File(f) => f.append(&self.pending),
            _ => write_stdout(&self.pending),
        };
        if let Err(e) = result {
            let f = self.failure.as_mut().expect("checked above");
            f.backoff = (f.backoff * 2).min(MAX_RETRY);
            f.retry_at = now + f.backoff;
            f.permanent |= e.permanent;
            return Ok(false);
        }
        self.pending.clear();
        self.written = self.pending_last;
        let f = self.failure.take().expect("checked above");
        tracing::warn!(
            sink = %self.name,
            outage_seconds = f.since.elapsed().as_secs_f64(),
            "audit sink accepts records again"
        );
        self.after_write(now)?;
        Ok(true)
    }

    /// Forces written records to disk (on close).
    fn sync_now(&mut self) -> Result<(), FileFailure> {
        if let SinkKind::File(f) = &mut self.kind
            && self.failure.is_none()
            && self.durable < self.written
        {
            f.sync()?;
            self.durable = self.written;
        }
        Ok(())
    }

    /// Whether everything up to `seq` is safe here (collectors: accepted).
    fn holds(&self, seq: u64) -> bool {
        match self.kind {
            SinkKind::Collector(_) => self.acked >= seq,
            _ => self.failure.is_none() && self.durable >= seq,
        }
    }
}

fn write_stdout(bytes: &[u8]) -> Result<(), FileFailure> {
    // One lock for the whole batch: no other output can land inside a record.
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|e| FileFailure {
            message: format!("write failed: {e}"),
            permanent: false,
        })
}

struct Outage {
    since: String,
    first_error: String,
    refused_at_start: u64,
    paused: bool,
}

struct Closing {
    waiter: Waiter,
    stop_seq: u64,
    deadline: Instant,
}

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) rx: Receiver<Msg>,
    pub(crate) shared: Arc<TrailHealth>,
    pub(crate) chain: Chain,
    pub(crate) origin: Origin,
    pub(crate) sinks: Vec<Sink>,
    pub(crate) capacity: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) batch: Vec<u8>,
    pub(crate) batch_last: u64,
    pub(crate) batch_records: u64,
    pub(crate) waiters: VecDeque<(u64, Waiter)>,
    outage: Option<Outage>,
    closing: Option<Closing>,
}

/// Marks the trail stopped when the writer thread ends, however it ends.
struct Stopped(Arc<TrailHealth>);

impl Drop for Stopped {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("the audit writer panicked; every new statement is refused");
        }
        self.0.stop();
    }
}

impl Writer {
    /// A writer over `sinks`, continuing `chain`.
    pub(crate) fn new(
        rx: Receiver<Msg>,
        shared: Arc<TrailHealth>,
        chain: Chain,
        origin: Origin,
        sinks: Vec<Sink>,
        capacity: usize,
        close_timeout: Duration,
    ) -> Self {
        Self {
            rx,
            shared,
            chain,
            origin,
            sinks,
            capacity,
            close_timeout,
            batch: Vec::with_capacity(64 << 10),
            batch_last: 0,
            batch_records: 0,
            waiters: VecDeque::new(),
            outage: None,
            closing: None,
        }
    }

    /// The thread's body.
    pub(crate) fn run(mut self) {
        let _stopped = Stopped(self.shared.clone());
        loop {
            let first = match self.next_deadline() {
                Some(d) => match self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(m) => Some(m),
                    Err(_) => break,
                },
            };
            let mut shutdown = false;
            if let Some(m) = first {
                let urgent = matches!(m, Msg::Record(_, Some(_)) | Msg::Close(_) | Msg::Shutdown);
                shutdown |= self.handle(m);
                if !urgent && !shutdown {
                    // Let a batch gather: while this thread sleeps, senders
                    // queue without waking it, so a busy sidecar pays one
                    // wake-up per batch instead of one per record.
                    std::thread::sleep(LINGER);
                }
                for _ in 0..MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(m) => shutdown |= self.handle(m),
                        Err(_) => break,
                    }
                }
            }
            self.flush();
            self.tick();
            if self.resolve_waiters() || shutdown {
                break;
            }
        }
        // Dropped without close: keep what was queued, make it durable.
        while let Ok(m) = self.rx.try_recv() {
            self.handle(m);
        }
        self.flush();
        for i in 0..self.sinks.len() {
            if let Err(e) = self.sinks[i].sync_now() {
                self.fail(i, e);
            }
        }
        self.resolve_waiters();
    }

    /// Handles one message; true for a shutdown.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Record(rec, waiter) => {
                self.shared
                    .queued
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                self.seal(*rec, waiter);
            }
            Msg::Collector(i, CollectorEvent::Acked(seq)) => {
                self.sinks[i].acked = self.sinks[i].acked.max(seq);
            }
            Msg::Collector(i, CollectorEvent::Failed(error)) => self.fail(
                i,
                FileFailure {
                    message: error,
                    permanent: false,
                },
            ),
            Msg::Collector(i, CollectorEvent::Recovered) => {
                if let Some(f) = self.sinks[i].failure.take() {
                    tracing::warn!(
                        sink = %self.sinks[i].name,
                        outage_seconds = f.since.elapsed().as_secs_f64(),
                        "audit sink accepts records again"
                    );
                }
            }
            Msg::Close(waiter) => {
                let stop = self.internal(
                    EventKind::AuditStop,
                    Outcome::Success,
                    "audit trail stopped".into(),
                );
                self.flush();
                for i in 0..self.sinks.len() {
                    if let Err(e) = self.sinks[i].sync_now() {
                        self.fail(i, e);
                    }
                }
                self.closing = Some(Closing {
                    waiter,
                    stop_seq: stop,
                    deadline: Instant::now() + self.close_timeout,
                });
            }
            Msg::Shutdown => return true,
        }
        false
    }

    fn seal(&mut self, mut rec: AuditRecord, waiter: Option<Waiter>) -> u64 {
        let line = self.chain.seal(&mut rec);
        self.batch.extend_from_slice(&line);
        self.batch_last = rec.seq;
        self.batch_records += 1;
        if let Some(w) = waiter {
            self.waiters.push_back((rec.seq, w));
        }
        rec.seq
    }

    /// Seals a record the trail writes about itself; returns its seq.
    fn internal(&mut self, event: EventKind, outcome: Outcome, message: String) -> u64 {
        let mut rec = AuditRecord::new(event, outcome, self.origin.clone());
        rec.message = Some(message);
        self.seal(rec, None)
    }

    /// Writes the current batch to every sink.
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut failures = Vec::new();
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if let Err(e) = sink.write(&self.batch, self.batch_last, now) {
                failures.push((i, e));
            }
        }
        self.shared.metrics.written(self.batch_records);
        self.batch.clear();
        self.batch_records = 0;
        for (i, e) in failures {
            self.fail(i, e);
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.sinks.len() {
            if let Err(e) = self.sinks[i].tick(now) {
                self.fail(i, e);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.sinks
            .iter()
            .filter_map(Sink::due)
            .chain(self.closing.as_ref().map(|c| c.deadline))
            .min()
    }

    /// Marks sink `i` failed (once per outage of that sink).
    fn fail(&mut self, i: usize, e: FileFailure) {
        let sink = &mut self.sinks[i];
        if let Some(f) = &mut sink.failure {
            f.permanent |= e.permanent;
            return;
        }
        let since = now_rfc3339();
        tracing::error!(
            sink = %sink.name,
            error = %e.message,
            since = %since,
            "audit sink failed: new statements are refused until it accepts records again"
        );
        self.shared.metrics.failure(sink.label());
        let now = Instant::now();
        sink.failure = Some(Failure {
            error: e.message.clone(),
            since: now,
            retry_at: now + FIRST_RETRY,
            backoff: FIRST_RETRY,
            permanent: e.permanent,
        });
        let reason = format!("audit sink {} failed: {}", sink.name, e.message);
        self.shared.set(SINK_FAILED, Some(reason.clone()));
        if self.outage.is_none() {
            self.outage = Some(Outage {
                since,
                first_error: reason,
                refused_at_start: self
                    .shared
                    .refused
                    .load(std::sync::atomic::Ordering::Acquire),
                paused: false,
            });
        }
    }

    /// Resolves waiters, records outages and recoveries, finishes a close.
    /// Returns true when the writer is done.
    fn resolve_waiters(&mut self) -> bool {
        if let Some(o) = &mut self.outage
            && !o.paused
        {
            o.paused = true;
            let msg = format!(
                "audit trail paused at {}: {}; statements are refused until every sink accepts records again",
                o.since, o.first_error
            );
            self.internal(EventKind::AuditStop, Outcome::Failure, msg);
            self.flush();
        }
        let failing = self.sinks.iter().find(|s| s.failure.is_some());
        if let Some(s) = failing {
            let f = s.failure.as_ref().expect("found failing");
            let reason = format!("audit sink {} failed: {}", s.name, f.error);
            for (_, w) in self.waiters.drain(..) {
                let _ = w.send(Err(AuditError::Unhealthy(reason.clone())));
            }
        } else {
            if let Some(o) = self.outage.take() {
                let refused = self
                    .shared
                    .refused
                    .load(std::sync::atomic::Ordering::Acquire)
                    - o.refused_at_start;
                let until = now_rfc3339();
                tracing::warn!(since = %o.since, until = %until, refused, "audit trail recovered from an outage");
                let msg = format!(
                    "audit trail resumed: outage from {} to {until} ({}); {refused} events were refused meanwhile",
                    o.since, o.first_error
                );
                self.internal(EventKind::AuditStart, Outcome::Success, msg);
                self.flush();
                if self.outage.is_none() {
                    self.shared.clear(SINK_FAILED);
                }
            }
            let durable = self.sinks.iter().map(|s| s.durable).min().unwrap_or(0);
            while self.waiters.front().is_some_and(|(seq, _)| *seq <= durable) {
                let (_, w) = self.waiters.pop_front().expect("checked");
                let _ = w.send(Ok(()));
            }
        }
        if self.shared.has(BACKLOG)
            && self
                .shared
                .queued
                .load(std::sync::atomic::Ordering::Acquire)
                <= self.capacity / 2
        {
            tracing::warn!("audit queue drained; records are accepted again");
            self.shared.clear(BACKLOG);
        }
        if let Some(c) = &self.closing {
            let behind: Vec<&str> = self
                .sinks
                .iter()
                .filter(|s| !s.holds(c.stop_seq))
                .map(|s| s.name.as_str())
                .collect();
            let stuck = self
                .sinks
                .iter()
                .any(|s| s.failure.as_ref().is_some_and(|f| f.permanent));
            if behind.is_empty() || stuck || Instant::now() >= c.deadline {
                let c = self.closing.take().expect("checked");
                let result = if behind.is_empty() {
                    Ok(())
                } else {
                    Err(AuditError::Unhealthy(format!(
                        "closing: not every record reached {}",
                        behind.join(", ")
                    )))
                };
                let _ = c.waiter.send(result);
                return true;
            }
        }
        false
    }
}

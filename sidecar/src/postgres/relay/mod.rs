//! The relay between an authenticated client and its upstream session.
//!
//! Two directions run concurrently in one task, so a slow reader on one side
//! never blocks the other (clients may pipeline while the server streams).
//!
//! Client → server ([`frontend`]): every statement (simple Query, extended
//! Parse, FunctionCall) is decided by the [`Guard`] before it is forwarded.
//! A denied statement is replaced by a statement that fails on the server
//! with a per-session marker, and the server's error is swapped for the
//! denial on its way back. The server itself thus sees an error at exactly
//! the right place: an open transaction aborts, an extended-protocol batch
//! is skipped to its Sync, a denied prepared statement is never created —
//! PostgreSQL's own semantics, with nothing to emulate.
//!
//! Server → client ([`backend`]): the [`Pairing`] of requests in flight
//! tells which request each message answers, so result rows are masked with
//! the right column plan, rows and bytes are counted against the limits, and
//! each statement's outcome reaches the audit trail when its response ends.
//!
//! Both directions share one [`Exchange`] behind one lock, taken once per
//! message and never across an await, and the two socket writers.

mod backend;
mod frontend;
mod pending;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::sync::{Mutex as AsyncMutex, Notify};

use super::cancel::CancelTarget;
use super::catalog::Catalog;
use super::codec::Report;
use super::messages;
use super::pairing::{Mismatch, Pairing};
use super::stream::{MessageReader, ReadError, Stream};
use crate::gate::{Completion, Guard, SessionSummary};
use crate::postgres::guard::{PgGuard, SessionRecorder};
use pending::Pending;

/// What the relay needs besides the two connections.
pub struct RelayContext<'a, G: PgGuard> {
    /// Decisions, masking and audit.
    pub guard: &'a G,
    /// Column-name resolution for column masking rules.
    pub catalog: &'a Catalog,
    /// The session's database (for catalog lookups).
    pub database: &'a str,
    /// How to cancel the upstream statement (limits).
    pub cancel: CancelTarget,
    /// Largest message accepted from either side.
    pub max_message: usize,
}

/// The state both directions share.
struct Exchange<S, R> {
    /// The requests in flight.
    pairing: Pairing<Pending<S>>,
    recorder: Option<R>,
    /// The frontend must not forward anything (a statement over its limits
    /// is being cancelled; see the backend's probe).
    hold: bool,
}

impl<S, R: SessionRecorder> Exchange<S, R> {
    fn record(&mut self, f: impl FnOnce(&mut R)) {
        if let Some(r) = self.recorder.as_mut() {
            f(r);
        }
    }
}

type ExchangeOf<G> = Exchange<<G as Guard>::Statement, <G as PgGuard>::Recorder>;

/// What the two directions share: the exchange and the two writers.
struct Io<G: PgGuard> {
    exchange: Mutex<ExchangeOf<G>>,
    /// Signalled when the backend lifts `hold`.
    released: Notify,
    client: AsyncMutex<WriteHalf<Stream>>,
    server: AsyncMutex<WriteHalf<Stream>>,
}

impl<G: PgGuard> Io<G> {
    /// The shared state. Both directions run in one task, so the lock is
    /// never contended; it must not be held across an await.
    fn exchange(&self) -> MutexGuard<'_, ExchangeOf<G>> {
        self.exchange.lock().expect("relay state")
    }

    async fn to_server(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.server.lock().await.write_all(bytes).await
    }

    /// Writes the last bytes upstream (the client's Terminate).
    async fn last_to_server(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.server.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    }

    async fn to_client(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.client.lock().await.write_all(bytes).await
    }

    /// Writes to the client at once (a notice while a statement waits).
    async fn to_client_now(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.client.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Waits while the backend holds the client's requests back, then
    /// marks the requests queued so far as sent (before any probe the
    /// backend adds).
    async fn wait_until_released(&self) {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut x = self.exchange();
                if !x.hold {
                    x.pairing.sent();
                    return;
                }
            }
            notified.await;
        }
    }
}

const MARKER_PREFIX: &str = "cardgate_denied_";

/// How long responses still flow to a client after its Terminate.
const DRAIN_AFTER_TERMINATE: Duration = Duration::from_secs(5);

/// Runs the session until either side ends; returns the session summary.
pub async fn run<G: PgGuard>(
    ctx: RelayContext<'_, G>,
    client: MessageReader<Stream>,
    server: MessageReader<Stream>,
    mut session: G::Session,
    recorder: Option<G::Recorder>,
) -> SessionSummary {
    let started = Instant::now();
    let marker = format!("{MARKER_PREFIX}{}", random_letters(16));
    let (client_stream, client_buf) = client.into_parts();
    let (server_stream, server_buf) = server.into_parts();
    let (cr, cw) = tokio::io::split(client_stream);
    let (sr, sw) = tokio::io::split(server_stream);
    let client_reader = MessageReader::from_parts(cr, client_buf, ctx.max_message);
    let server_reader = MessageReader::from_parts(sr, server_buf, ctx.max_message);
    let io: Io<G> = Io {
        exchange: Mutex::new(Exchange {
            pairing: Pairing::default(),
            recorder,
            hold: false,
        }),
        released: Notify::new(),
        client: AsyncMutex::new(cw),
        server: AsyncMutex::new(sw),
    };
    let mut summary = SessionSummary::default();
    let end = {
        let front = frontend::Frontend::new(&ctx, &io, client_reader, &mut session, &marker)
            .run(&mut summary);
        let back = backend::Backend::new(&ctx, &io, &marker).run(server_reader);
        tokio::pin!(front, back);
        let end = tokio::select! {
            r = &mut front => End::Client(r),
            r = &mut back => End::Server(r),
        };
        if let End::Client(Ok(())) = end {
            // The client sent Terminate (or went away): deliver what the
            // server still answers to requests sent before, until it closes.
            let _ = tokio::time::timeout(DRAIN_AFTER_TERMINATE, &mut back).await;
        }
        end
    };
    if let Some(error) = end.report(&io).await {
        summary.error = Some(error);
    }
    incomplete(&ctx, &io);
    summary.duration = started.elapsed();
    ctx.guard.session_ended(session, &summary);
    summary
}

/// Reports the statements still in flight, which never completed, and ends
/// the recording with the session.
fn incomplete<G: PgGuard>(ctx: &RelayContext<'_, G>, io: &Io<G>) {
    let (leftover, recorder): (Vec<Pending<G::Statement>>, _) = {
        let mut x = io.exchange();
        (x.pairing.drain().collect(), x.recorder.take())
    };
    drop(recorder);
    for p in leftover {
        if let Some(run) = p.into_running()
            && let Some(s) = &run.statement
        {
            let outcome = Completion {
                error: Some("connection ended before the statement completed".into()),
                ..run.outcome(Duration::ZERO)
            };
            ctx.guard.completed(s, &outcome);
        }
    }
}

enum End {
    Client(Result<(), RelayError>),
    Server(Result<(), RelayError>),
}

impl End {
    /// Tells the client why the session ended, when it was not by its own
    /// Terminate; returns that reason.
    async fn report<G: PgGuard>(self, io: &Io<G>) -> Option<String> {
        match self {
            End::Client(Ok(())) => None,
            End::Client(Err(e)) => {
                if let Some((code, message)) = e.report() {
                    write_fatal(&mut *io.client.lock().await, code, &message).await;
                }
                Some(e.to_string())
            }
            End::Server(r) => {
                let message = match r {
                    Ok(()) => "the database closed the connection".to_string(),
                    Err(e) => format!("the database connection failed: {e}"),
                };
                let fatal = format!("cardgate: {message}");
                write_fatal(&mut *io.client.lock().await, "08006", &fatal).await;
                Some(message)
            }
        }
    }
}

/// Why a direction stopped.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error("{0}")]
    Write(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

impl RelayError {
    /// The FATAL error to send the client, if it can still receive one.
    fn report(&self) -> Option<(&'static str, String)> {
        match self {
            Self::Read(ReadError::Frame(f)) => Some(("08P01", format!("cardgate: {f}"))),
            Self::Protocol(m) => Some(("08P01", format!("cardgate: {m}"))),
            Self::Read(_) | Self::Write(_) => None,
        }
    }
}

impl From<messages::Malformed> for RelayError {
    fn from(e: messages::Malformed) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl From<Mismatch> for RelayError {
    fn from(e: Mismatch) -> Self {
        Self::Protocol(e.to_string())
    }
}

async fn write_fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let mut out = BytesMut::with_capacity(64 + message.len());
    Report::fatal(code, message).write(&mut out);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

fn random_letters(n: usize) -> String {
    (0..n)
        .map(|_| (b'a' + rand::random::<u8>() % 26) as char)
        .collect()
}

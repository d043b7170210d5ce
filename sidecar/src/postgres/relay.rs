//! The relay between an authenticated client and its upstream session.
//!
//! Two directions run concurrently in one task, so a slow reader on one side
//! never blocks the other (clients may pipeline while the server streams).
//!
//! Client → server: every statement (simple Query, extended Parse,
//! FunctionCall) is decided by the [`Guard`] before it is forwarded. A
//! denied statement is replaced by a statement that fails on the server with
//! a per-session marker, and the server's error is swapped for the denial on
//! its way back. The server itself thus sees an error at exactly the right
//! place: an open transaction aborts, an extended-protocol batch is skipped
//! to its Sync, a denied prepared statement is never created — PostgreSQL's
//! own semantics, with nothing to emulate.
//!
//! Server → client: a queue of the requests in flight pairs each response
//! with its request, so result rows are masked with the right column plan,
//! rows and bytes are counted against the limits, and each statement's
//! outcome reaches the audit trail when its response ends.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::cancel::{self, CancelTarget};
use super::catalog::{Catalog, CatalogError};
use super::codec::{self, Report};
use super::guard::{
    ColumnOutput, Guard, Held, Outcome, Protocol, Resolved, RowLimits, SessionRecorder,
    SessionSummary, Verdict,
};
use super::messages;
use super::stream::{MessageReader, ReadError, Stream};

/// What the relay needs besides the two connections.
pub struct RelayContext<'a, G: Guard> {
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

/// A request sent upstream whose response has not ended yet.
enum Pending<S> {
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

/// Why a statement was not forwarded, as the client is told.
#[derive(Clone)]
struct Denial {
    code: &'static str,
    message: String,
}

impl Denial {
    fn denied(message: String) -> Self {
        Self {
            code: "42501",
            message,
        }
    }
}

/// A statement after its decision (and approval, if it needed one).
enum Settled<S> {
    Forward(S),
    Refuse(Denial),
    /// The client went away while its statement waited for approvers.
    ClientGone,
}

/// Bookkeeping of one statement whose rows are flowing.
struct Running<S> {
    statement: Option<Arc<S>>,
    denied: Option<Denial>,
    started: Instant,
    overhead: Duration,
    rows: u64,
    bytes: u64,
    masked: u64,
    sqlstate: Option<String>,
    error: Option<String>,
}

impl<S> Running<S> {
    fn new(
        statement: Option<Arc<S>>,
        denied: Option<Denial>,
        started: Instant,
        overhead: Duration,
    ) -> Self {
        Self {
            statement,
            denied,
            started,
            overhead,
            rows: 0,
            bytes: 0,
            masked: 0,
            sqlstate: None,
            error: None,
        }
    }
}

/// How one result column is treated.
#[derive(Clone, Copy)]
struct ColumnPlan<R> {
    rule: Option<R>,
    binary: bool,
    type_oid: u32,
}

type Plan<R> = Arc<[ColumnPlan<R>]>;

/// State shared by the two directions (same task; never held across await).
struct Shared<S, R> {
    pending: VecDeque<Pending<S>>,
    recorder: Option<R>,
    /// The frontend must not forward anything (see `Backend::cancel_requested`).
    hold: bool,
    /// Requests at the end of `pending` the frontend queued but has not
    /// sent yet; a probe goes before them.
    unsent: usize,
}

impl<S, R: SessionRecorder> Shared<S, R> {
    fn record(&mut self, f: impl FnOnce(&mut R)) {
        if let Some(r) = self.recorder.as_mut() {
            f(r);
        }
    }
}

/// The shared state of a session of guard `G`.
type SharedOf<G> = Mutex<Shared<<G as Guard>::Statement, <G as Guard>::Recorder>>;

const MARKER_PREFIX: &str = "cardgate_denied_";

/// How long responses still flow to a client after its Terminate.
const DRAIN_AFTER_TERMINATE: Duration = Duration::from_secs(5);

/// Runs the session until either side ends; returns the session summary.
pub async fn run<G: Guard>(
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
    let shared: SharedOf<G> = Mutex::new(Shared {
        pending: VecDeque::new(),
        recorder,
        hold: false,
        unsent: 0,
    });
    let released = Notify::new();
    let client_writer = tokio::sync::Mutex::new(cw);
    let server_writer = tokio::sync::Mutex::new(sw);
    let mut summary = SessionSummary::default();

    let end = {
        let front = frontend(
            &ctx,
            &shared,
            &released,
            &client_writer,
            client_reader,
            &server_writer,
            &mut session,
            &marker,
            &mut summary,
        );
        let back = backend(
            &ctx,
            &shared,
            &released,
            &client_writer,
            &server_writer,
            server_reader,
            &marker,
        );
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
    match end {
        End::Client(Ok(())) => {}
        End::Client(Err(e)) => {
            if let Some((code, message)) = e.report() {
                let mut w = client_writer.lock().await;
                write_fatal(&mut *w, code, &message).await;
            }
            summary.error = Some(e.to_string());
        }
        End::Server(r) => {
            let message = match r {
                Ok(()) => "the database closed the connection".to_string(),
                Err(e) => format!("the database connection failed: {e}"),
            };
            let mut w = client_writer.lock().await;
            write_fatal(&mut *w, "08006", &format!("cardgate: {message}")).await;
            summary.error = Some(message);
        }
    }
    // Statements still in flight never completed.
    let (leftover, recorder): (Vec<Pending<G::Statement>>, _) = {
        let mut s = shared.lock().expect("relay state");
        (s.pending.drain(..).collect(), s.recorder.take())
    };
    // The recording ends with the session.
    drop(recorder);
    for p in leftover {
        if let Pending::Query(run) | Pending::Execute { run, .. } = p
            && let Some(s) = &run.statement
        {
            let outcome = finish(&run, None);
            ctx.guard.completed(
                s,
                &Outcome {
                    error: Some("connection ended before the statement completed".into()),
                    ..outcome
                },
            );
        }
    }
    summary.duration = started.elapsed();
    let guard = ctx.guard;
    guard.session_ended(session, &summary);
    summary
}

enum End {
    Client(Result<(), RelayError>),
    Server(Result<(), RelayError>),
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

async fn write_fatal<W: AsyncWrite + Unpin>(w: &mut W, code: &str, message: &str) {
    let mut out = BytesMut::with_capacity(64 + message.len());
    Report::fatal(code, message).write(&mut out);
    let _ = w.write_all(&out).await;
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

#[allow(clippy::too_many_arguments)]
async fn frontend<G: Guard>(
    ctx: &RelayContext<'_, G>,
    shared: &SharedOf<G>,
    released: &Notify,
    client_writer: &tokio::sync::Mutex<WriteHalf<Stream>>,
    mut client: MessageReader<ReadHalf<Stream>>,
    server: &tokio::sync::Mutex<WriteHalf<Stream>>,
    session: &mut G::Session,
    marker: &str,
    summary: &mut SessionSummary,
) -> Result<(), RelayError> {
    let guard = ctx.guard;
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut statements: HashMap<Vec<u8>, Arc<G::Statement>> = HashMap::new();
    let mut portals: HashMap<Vec<u8>, Arc<G::Statement>> = HashMap::new();
    let push = |p: Pending<G::Statement>| {
        let mut s = shared.lock().expect("relay state");
        s.pending.push_back(p);
        s.unsent += 1;
    };
    loop {
        let msg = match client.next().await {
            Ok(m) => m,
            // The client went away without Terminate: end the server
            // session too.
            Err(ReadError::Closed | ReadError::Truncated) => {
                return terminate(server, &mut out).await;
            }
            Err(e) => return Err(e.into()),
        };
        let body = &msg[codec::HEADER..];
        match msg[0] {
            b'Q' => {
                let t0 = Instant::now();
                let sql = messages::query_text(body)?;
                let sql = std::str::from_utf8(sql)
                    .map_err(|_| RelayError::Protocol("query text is not valid UTF-8".into()))?;
                let io = Io {
                    shared,
                    released,
                    client_writer,
                    server,
                };
                let settled = judge(
                    ctx,
                    &io,
                    &mut client,
                    &mut out,
                    session,
                    summary,
                    sql,
                    Protocol::Simple,
                )
                .await?;
                match settled {
                    Settled::Forward(s) => {
                        push(Pending::Query(Box::new(Running::new(
                            Some(Arc::new(s)),
                            None,
                            t0,
                            t0.elapsed(),
                        ))));
                        out.extend_from_slice(&msg);
                    }
                    Settled::Refuse(denial) => {
                        push(Pending::Query(Box::new(Running::new(
                            None,
                            Some(denial),
                            t0,
                            t0.elapsed(),
                        ))));
                        codec::query(&mut out, &format!("SELECT {marker}"));
                    }
                    Settled::ClientGone => return terminate(server, &mut out).await,
                }
            }
            b'P' => {
                let parse = messages::parse(body)?;
                let sql = std::str::from_utf8(parse.sql).map_err(|_| {
                    RelayError::Protocol("statement text is not valid UTF-8".into())
                })?;
                let name = parse.name.to_vec();
                let io = Io {
                    shared,
                    released,
                    client_writer,
                    server,
                };
                let settled = judge(
                    ctx,
                    &io,
                    &mut client,
                    &mut out,
                    session,
                    summary,
                    sql,
                    Protocol::Extended,
                )
                .await?;
                match settled {
                    Settled::Forward(s) => {
                        statements.insert(name.clone(), Arc::new(s));
                        push(Pending::Parse { denied: None });
                        out.extend_from_slice(&msg);
                        push(Pending::InternalDescribe { name: name.clone() });
                        codec::describe(&mut out, b'S', &name);
                    }
                    Settled::Refuse(denial) => {
                        statements.remove(&name);
                        push(Pending::Parse {
                            denied: Some(denial),
                        });
                        codec::parse(&mut out, &name, &format!("SELECT {marker}"));
                    }
                    Settled::ClientGone => return terminate(server, &mut out).await,
                }
            }
            b'B' => {
                let bind = messages::bind(body)?;
                match statements.get(bind.statement) {
                    Some(s) => {
                        portals.insert(bind.portal.to_vec(), Arc::clone(s));
                    }
                    None => {
                        portals.remove(bind.portal);
                    }
                }
                push(Pending::Bind {
                    portal: bind.portal.to_vec(),
                    statement: bind.statement.to_vec(),
                    formats: bind.result_formats,
                });
                out.extend_from_slice(&msg);
            }
            b'D' => {
                let (kind, name) = messages::target("Describe", body)?;
                push(Pending::Describe {
                    kind,
                    name: name.to_vec(),
                });
                out.extend_from_slice(&msg);
            }
            b'E' => {
                let (portal, _) = messages::execute(body)?;
                let statement = portals.get(portal).cloned();
                push(Pending::Execute {
                    portal: portal.to_vec(),
                    run: Box::new(Running::new(
                        statement,
                        None,
                        Instant::now(),
                        Duration::ZERO,
                    )),
                });
                out.extend_from_slice(&msg);
            }
            b'C' => {
                let (kind, name) = messages::target("Close", body)?;
                if kind == b'S' {
                    statements.remove(name);
                } else {
                    portals.remove(name);
                }
                push(Pending::Close);
                out.extend_from_slice(&msg);
            }
            b'S' => {
                push(Pending::Sync);
                out.extend_from_slice(&msg);
            }
            b'H' | b'd' | b'c' | b'f' => out.extend_from_slice(&msg),
            b'F' => {
                let t0 = Instant::now();
                summary.statements += 1;
                summary.denied += 1;
                let message = match guard.decide(session, "", Protocol::FunctionCall) {
                    Verdict::Deny(m) => m,
                    Verdict::Allow(_) | Verdict::Hold(_) => {
                        "cardgate: FunctionCall messages are not allowed".to_string()
                    }
                };
                push(Pending::Query(Box::new(Running::new(
                    None,
                    Some(Denial::denied(message)),
                    t0,
                    t0.elapsed(),
                ))));
                codec::query(&mut out, &format!("SELECT {marker}"));
            }
            b'X' => {
                out.extend_from_slice(&msg);
                let mut w = server.lock().await;
                w.write_all(&out).await?;
                w.flush().await?;
                return Ok(());
            }
            other => {
                return Err(RelayError::Protocol(format!(
                    "unexpected message type {} from the client",
                    codec::tag_name(other)
                )));
            }
        }
        if !client.has_message() {
            wait_until_released(shared, released).await;
            server.lock().await.write_all(&out).await?;
            out.clear();
        }
    }
}

/// Ends the upstream session after the client left.
async fn terminate(
    server: &tokio::sync::Mutex<WriteHalf<Stream>>,
    out: &mut BytesMut,
) -> Result<(), RelayError> {
    out.clear();
    codec::write_message(out, b'X', |_| {});
    let _ = server.lock().await.write_all(out).await;
    Ok(())
}

/// The connections and shared state the frontend works with.
struct Io<'a, G: Guard> {
    shared: &'a SharedOf<G>,
    released: &'a Notify,
    client_writer: &'a tokio::sync::Mutex<WriteHalf<Stream>>,
    server: &'a tokio::sync::Mutex<WriteHalf<Stream>>,
}

/// Decides a statement string and turns the verdict into what to do with
/// it, waiting for approvers when it is held. Requests queued before a held
/// statement are sent first, so the server answers them while the
/// statement waits; the client is told at once which request to approve. A
/// client that cancels or disconnects meanwhile withdraws the request.
#[allow(clippy::too_many_arguments)]
async fn judge<G: Guard>(
    ctx: &RelayContext<'_, G>,
    io: &Io<'_, G>,
    client: &mut MessageReader<ReadHalf<Stream>>,
    out: &mut BytesMut,
    session: &mut G::Session,
    summary: &mut SessionSummary,
    sql: &str,
    protocol: Protocol,
) -> Result<Settled<G::Statement>, RelayError> {
    summary.statements += 1;
    io.shared
        .lock()
        .expect("relay state")
        .record(|r| r.query(sql));
    let verdict = ctx.guard.decide(session, sql, protocol);
    let settled = settle(ctx, io, client, out, verdict).await?;
    if matches!(settled, Settled::Refuse(_)) {
        summary.denied += 1;
    }
    Ok(settled)
}

/// Turns a verdict into what to do with the statement (see [`judge`]).
async fn settle<G: Guard>(
    ctx: &RelayContext<'_, G>,
    io: &Io<'_, G>,
    client: &mut MessageReader<ReadHalf<Stream>>,
    out: &mut BytesMut,
    verdict: Verdict<G::Statement, G::Hold>,
) -> Result<Settled<G::Statement>, RelayError> {
    let guard = ctx.guard;
    let hold = match verdict {
        Verdict::Allow(s) => return Ok(Settled::Forward(s)),
        Verdict::Deny(m) => return Ok(Settled::Refuse(Denial::denied(m))),
        Verdict::Hold(h) => h,
    };
    if !out.is_empty() {
        wait_until_released(io.shared, io.released).await;
        io.server.lock().await.write_all(out).await?;
        out.clear();
    }
    let resolved = match guard.hold(hold).await {
        Held::Now(r) => r,
        Held::Waiting { notice, waiting } => {
            let mut note = BytesMut::with_capacity(64 + notice.len());
            Report::notice(&notice).write(&mut note);
            {
                let mut w = io.client_writer.lock().await;
                w.write_all(&note).await?;
                w.flush().await?;
            }
            tokio::select! {
                r = guard.await_decision(&waiting) => r,
                () = ctx.cancel.interrupt.notified() => {
                    guard.withdraw(waiting, "the client cancelled the statement").await;
                    Resolved::Cancelled("canceling statement due to user request; the approval request was withdrawn".into())
                }
                _ = client.closed() => {
                    guard.withdraw(waiting, "the client disconnected").await;
                    return Ok(Settled::ClientGone);
                }
            }
        }
    };
    Ok(match resolved {
        Resolved::Allow(s) => Settled::Forward(s),
        Resolved::Deny(m) => Settled::Refuse(Denial::denied(m)),
        Resolved::Cancelled(m) => Settled::Refuse(Denial {
            code: "57014",
            message: m,
        }),
    })
}

/// Server → client state.
struct Backend<'a, G: Guard> {
    ctx: &'a RelayContext<'a, G>,
    /// A statement exceeded its limits: cancel it before reading on.
    cancel_requested: bool,
    /// The held response ended: send the probe that absorbs a late cancel.
    probe_needed: bool,
    limits: RowLimits,
    marker: &'a str,
    statement_plans: HashMap<Vec<u8>, Vec<OwnedColumn>>,
    portals: HashMap<Vec<u8>, Plan<G::ColumnRule>>,
    current: Option<Plan<G::ColumnRule>>,
    /// An error was injected: drop server messages until ReadyForQuery.
    suppress: bool,
    /// The server reported an error in an extended batch: requests until
    /// Sync got no response.
    batch_failed: bool,
    scratch: Vec<u8>,
    row: Vec<u8>,
}

/// A RowDescription column kept beyond its message.
#[derive(Clone)]
struct OwnedColumn {
    table_oid: u32,
    attnum: i16,
    type_oid: u32,
}

async fn backend<G: Guard>(
    ctx: &RelayContext<'_, G>,
    shared: &SharedOf<G>,
    released: &Notify,
    client_writer: &tokio::sync::Mutex<WriteHalf<Stream>>,
    server_writer: &tokio::sync::Mutex<WriteHalf<Stream>>,
    mut server: MessageReader<ReadHalf<Stream>>,
    marker: &str,
) -> Result<(), RelayError> {
    let mut b = Backend {
        ctx,
        limits: ctx.guard.limits(),
        marker,
        statement_plans: HashMap::new(),
        portals: HashMap::new(),
        current: None,
        suppress: false,
        batch_failed: false,
        cancel_requested: false,
        probe_needed: false,
        scratch: Vec::with_capacity(1024),
        row: Vec::with_capacity(4096),
    };
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        let msg = match server.next().await {
            Ok(m) => m,
            Err(ReadError::Closed) => {
                flush(client_writer, &mut out).await?;
                return Ok(());
            }
            Err(e) => {
                flush(client_writer, &mut out).await?;
                return Err(e.into());
            }
        };
        b.handle(shared, released, msg, &mut out).await?;
        if std::mem::take(&mut b.cancel_requested) {
            // Waits until the server has taken the request (it closes the
            // cancel connection), while the client's next requests are held.
            if let Err(e) = cancel::send_cancel(&ctx.cancel).await {
                tracing::warn!(error = %e, "could not cancel a statement that exceeded its limits");
            }
        }
        if std::mem::take(&mut b.probe_needed) {
            // The cancel may still be pending in the server if the statement
            // finished first; a probe of our own absorbs it before the
            // client's next statement is released.
            {
                let mut s = shared.lock().expect("relay state");
                let at = s.pending.len() - s.unsent;
                s.pending.insert(at, Pending::Probe);
            }
            let mut probe = BytesMut::with_capacity(32);
            codec::query(&mut probe, "SELECT 1");
            server_writer.lock().await.write_all(&probe).await?;
        }
        if !server.has_message() || out.len() > 256 * 1024 {
            flush(client_writer, &mut out).await?;
        }
    }
}

/// Waits while the backend holds the client's requests back, then commits
/// the requests queued so far as sent (before any probe the backend adds).
async fn wait_until_released<S, R>(shared: &Mutex<Shared<S, R>>, released: &Notify) {
    loop {
        let notified = released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut s = shared.lock().expect("relay state");
            if !s.hold {
                s.unsent = 0;
                return;
            }
        }
        notified.await;
    }
}

async fn flush(
    w: &tokio::sync::Mutex<WriteHalf<Stream>>,
    out: &mut BytesMut,
) -> Result<(), RelayError> {
    if out.is_empty() {
        return Ok(());
    }
    let mut w = w.lock().await;
    w.write_all(out).await?;
    out.clear();
    Ok(())
}

fn finish<S>(run: &Running<S>, extra: Option<Duration>) -> Outcome {
    Outcome {
        rows: run.rows,
        bytes: run.bytes,
        masked: run.masked,
        duration: run.started.elapsed(),
        overhead: run.overhead + extra.unwrap_or_default(),
        sqlstate: run.sqlstate.clone(),
        error: run.error.clone(),
        skipped: false,
    }
}

impl<G: Guard> Backend<'_, G> {
    async fn handle(
        &mut self,
        shared: &SharedOf<G>,
        released: &Notify,
        msg: BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let tag = msg[0];
        let body = &msg[codec::HEADER..];
        let guard = self.ctx.guard;
        {
            let mut s = shared.lock().expect("relay state");
            if matches!(s.pending.front(), Some(Pending::Probe)) {
                if tag == b'Z' {
                    s.pending.pop_front();
                    s.hold = false;
                    released.notify_waiters();
                }
                return Ok(());
            }
        }
        if self.suppress && tag != b'Z' {
            self.account_suppressed(shared, tag, body);
            return Ok(());
        }
        match tag {
            b'T' => {
                let cols = messages::row_description(body)?;
                let owned: Vec<OwnedColumn> = cols
                    .iter()
                    .map(|c| OwnedColumn {
                        table_oid: c.table_oid,
                        attnum: c.attnum,
                        type_oid: c.type_oid,
                    })
                    .collect();
                let formats: Vec<i16> = cols.iter().map(|c| c.format).collect();
                let names: Vec<(&[u8], u32)> = cols.iter().map(|c| (c.name, c.type_oid)).collect();
                let head = {
                    let s = shared.lock().expect("relay state");
                    match s.pending.front() {
                        Some(Pending::InternalDescribe { name }) => {
                            Head::StatementDescribe(name.clone(), true)
                        }
                        Some(Pending::Describe { kind: b'S', name }) => {
                            Head::StatementDescribe(name.clone(), false)
                        }
                        Some(Pending::Describe { name, .. }) => Head::PortalDescribe(name.clone()),
                        _ => Head::Result,
                    }
                };
                match head {
                    Head::StatementDescribe(name, internal) => {
                        self.statement_plans.insert(name, owned);
                        self.pop(shared);
                        if !internal {
                            out.extend_from_slice(&msg);
                        }
                    }
                    Head::PortalDescribe(name) => {
                        let plan = self.plan(&owned, &formats).await;
                        self.pop(shared);
                        match plan {
                            Ok(p) => {
                                self.portals.insert(name, p);
                                shared
                                    .lock()
                                    .expect("relay state")
                                    .record(|r| r.columns(&names));
                                out.extend_from_slice(&msg);
                            }
                            Err(e) => self.inject_error(shared, out, "58000", &e.to_string()),
                        }
                    }
                    Head::Result => match self.plan(&owned, &formats).await {
                        Ok(p) => {
                            self.current = Some(p);
                            shared
                                .lock()
                                .expect("relay state")
                                .record(|r| r.columns(&names));
                            out.extend_from_slice(&msg);
                        }
                        Err(e) => self.inject_error(shared, out, "58000", &e.to_string()),
                    },
                }
            }
            b't' => {
                let internal = matches!(
                    shared.lock().expect("relay state").pending.front(),
                    Some(Pending::InternalDescribe { .. })
                );
                if !internal {
                    out.extend_from_slice(&msg);
                }
            }
            b'n' => {
                let popped = self.pop(shared);
                match popped {
                    Some(Pending::InternalDescribe { name }) => {
                        self.statement_plans.insert(name, Vec::new());
                    }
                    Some(Pending::Describe { kind, name }) => {
                        if kind == b'S' {
                            self.statement_plans.insert(name, Vec::new());
                        } else {
                            self.portals.insert(name, Arc::from(Vec::new()));
                        }
                        out.extend_from_slice(&msg);
                    }
                    _ => out.extend_from_slice(&msg),
                }
            }
            b'1' | b'3' => {
                self.pop(shared);
                out.extend_from_slice(&msg);
            }
            b'2' => {
                if let Some(Pending::Bind {
                    portal,
                    statement,
                    formats,
                }) = self.pop(shared)
                {
                    let cols = self.statement_plans.get(&statement).cloned();
                    match cols {
                        Some(cols) => {
                            let fmts: Vec<i16> = (0..cols.len())
                                .map(|i| match formats.len() {
                                    0 => 0,
                                    1 => formats[0],
                                    _ => formats.get(i).copied().unwrap_or(0),
                                })
                                .collect();
                            match self.plan(&cols, &fmts).await {
                                Ok(p) => {
                                    self.portals.insert(portal, p);
                                }
                                Err(e) => {
                                    self.inject_error(shared, out, "58000", &e.to_string());
                                    return Ok(());
                                }
                            }
                        }
                        None => {
                            self.portals.remove(&portal);
                        }
                    }
                }
                out.extend_from_slice(&msg);
            }
            b'D' => self.data_row(shared, &msg, out)?,
            b'd' => self.copy_data(shared, &msg, out),
            b'C' | b'I' | b's' => {
                let rows = if tag == b'C' {
                    messages::command_rows(body)
                } else {
                    None
                };
                let t0 = Instant::now();
                let done = {
                    let mut s = shared.lock().expect("relay state");
                    if tag == b'C' {
                        s.record(|r| r.complete(body.strip_suffix(&[0]).unwrap_or(body)));
                    }
                    match s.pending.front_mut() {
                        Some(Pending::Query(run)) => {
                            if let Some(r) = rows
                                && run.rows == 0
                            {
                                run.rows = r;
                            }
                            self.current = None;
                            None
                        }
                        Some(Pending::Execute { .. }) => {
                            let Some(Pending::Execute { run, .. }) = s.pending.pop_front() else {
                                unreachable!("front was an Execute")
                            };
                            Some(run)
                        }
                        _ => None,
                    }
                };
                if let Some(mut run) = done {
                    if let Some(r) = rows
                        && run.rows == 0
                    {
                        run.rows = r;
                    }
                    if let Some(st) = &run.statement {
                        guard.completed(st, &finish(&run, Some(t0.elapsed())));
                    }
                }
                out.extend_from_slice(&msg);
            }
            b'E' | b'N' => {
                let start = out.len();
                if tag == b'E' {
                    self.error_response(shared, &msg, out);
                } else {
                    self.forward_report(&msg, out);
                }
                if out.len() > start + codec::HEADER {
                    let written = &out[start + codec::HEADER..];
                    shared
                        .lock()
                        .expect("relay state")
                        .record(|r| r.report(tag == b'E', written));
                }
            }
            b'A' => {
                let (pid, channel, payload) = messages::notification(body)?;
                self.scratch.clear();
                match guard.mask_text(payload, &mut self.scratch) {
                    None => out.extend_from_slice(&msg),
                    Some(_) => {
                        let masked = std::mem::take(&mut self.scratch);
                        codec::write_message(out, b'A', |b| {
                            b.put_i32(pid);
                            codec::put_cstr(b, channel);
                            codec::put_cstr(b, &masked);
                        });
                        self.scratch = masked;
                    }
                }
            }
            b'Z' => {
                self.ready_for_query(shared);
                shared.lock().expect("relay state").record(|r| r.idle());
                out.extend_from_slice(&msg);
            }
            b'S' | b'G' | b'H' | b'c' | b'W' | b'V' => out.extend_from_slice(&msg),
            other => {
                return Err(RelayError::Protocol(format!(
                    "unexpected message type {} from the database",
                    codec::tag_name(other)
                )));
            }
        }
        Ok(())
    }

    fn pop(&mut self, shared: &SharedOf<G>) -> Option<Pending<G::Statement>> {
        shared.lock().expect("relay state").pending.pop_front()
    }

    /// Builds the masking plan of a result: column rules (names resolved
    /// through the catalog) and formats.
    async fn plan(
        &mut self,
        cols: &[OwnedColumn],
        formats: &[i16],
    ) -> Result<Plan<G::ColumnRule>, CatalogError> {
        let guard = self.ctx.guard;
        let names = if guard.has_column_rules() && cols.iter().any(|c| c.table_oid != 0) {
            let keys: Vec<(u32, i16)> = cols.iter().map(|c| (c.table_oid, c.attnum)).collect();
            Some(self.ctx.catalog.resolve(self.ctx.database, &keys).await?)
        } else {
            None
        };
        Ok(cols
            .iter()
            .enumerate()
            .map(|(i, c)| ColumnPlan {
                rule: names
                    .as_ref()
                    .and_then(|n| n[i].as_ref())
                    .and_then(|n| guard.column_rule(&n.schema, &n.table, &n.column)),
                binary: formats.get(i).copied().unwrap_or(0) == 1,
                type_oid: c.type_oid,
            })
            .collect())
    }

    fn running<'s>(
        &self,
        s: &'s mut Shared<G::Statement, G::Recorder>,
    ) -> Option<&'s mut Running<G::Statement>> {
        match s.pending.front_mut() {
            Some(Pending::Query(run)) | Some(Pending::Execute { run, .. }) => Some(run),
            _ => None,
        }
    }

    fn data_row(
        &mut self,
        shared: &SharedOf<G>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let t0 = Instant::now();
        let plan = {
            let s = shared.lock().expect("relay state");
            match s.pending.front() {
                Some(Pending::Execute { portal, .. }) => self.portals.get(portal).cloned(),
                _ => self.current.clone(),
            }
        };
        let masked_row = self.mask_row(&msg[codec::HEADER..], plan.as_deref())?;
        let (len, masked) = match masked_row {
            Some(n) => (self.row.len() as u64, n),
            None => (msg.len() as u64, 0),
        };
        let exceeded = {
            let mut s = shared.lock().expect("relay state");
            match self.running(&mut s) {
                Some(run) => {
                    run.rows += 1;
                    run.bytes += len;
                    run.masked += masked;
                    run.overhead += t0.elapsed();
                    let rows = run.rows;
                    let bytes = run.bytes;
                    self.limits.max_rows.is_some_and(|m| rows > m)
                        || self.limits.max_bytes.is_some_and(|m| bytes > m)
                }
                None => false,
            }
        };
        if exceeded {
            let message = format!(
                "cardgate: statement stopped: it returned more than {} (limits of AccessPolicy {})",
                match (self.limits.max_rows, self.limits.max_bytes) {
                    (Some(r), Some(b)) => format!("{r} rows or {b} bytes"),
                    (Some(r), None) => format!("{r} rows"),
                    (None, Some(b)) => format!("{b} bytes"),
                    (None, None) => String::new(),
                },
                self.ctx.guard.policy_name()
            );
            self.inject_error(shared, out, "54000", &message);
            // Hold the client's next requests until this response has ended:
            // a cancel that arrives late must find the server idle (where it
            // is ignored), never running the next statement.
            shared.lock().expect("relay state").hold = true;
            self.cancel_requested = true;
            return Ok(());
        }
        let forwarded: &[u8] = if masked_row.is_some() { &self.row } else { msg };
        shared
            .lock()
            .expect("relay state")
            .record(|r| r.row(&forwarded[codec::HEADER..]));
        out.extend_from_slice(forwarded);
        Ok(())
    }

    /// Masks one DataRow body into `self.row` (a whole message) and returns
    /// the number of masked values, or `None` when nothing changed (the
    /// original message is forwarded as is).
    fn mask_row(
        &mut self,
        body: &[u8],
        plan: Option<&[ColumnPlan<G::ColumnRule>]>,
    ) -> Result<Option<u64>, RelayError> {
        let guard = self.ctx.guard;
        let mut values = messages::data_row(body)?;
        let mut changed = false;
        let mut masked = 0u64;
        let mut i = 0usize;
        let mut value_start = 2usize;
        while let Some(value) = values.next_value()? {
            let col = plan.and_then(|p| p.get(i)).copied();
            let value_len = 4 + value.map_or(0, <[u8]>::len);
            let action = match value {
                None => Action::Keep,
                Some(v) => self.mask_value(guard, v, col),
            };
            match action {
                Action::Keep => {
                    if changed {
                        self.row
                            .extend_from_slice(&body[value_start..value_start + value_len]);
                    }
                }
                Action::Null | Action::Replaced => {
                    if !changed {
                        changed = true;
                        self.row.clear();
                        self.row.extend_from_slice(&[b'D', 0, 0, 0, 0]);
                        self.row.extend_from_slice(&body[..value_start]);
                    }
                    masked += 1;
                    if matches!(action, Action::Null) {
                        self.row.extend_from_slice(&(-1i32).to_be_bytes());
                    } else {
                        self.row
                            .extend_from_slice(&(self.scratch.len() as i32).to_be_bytes());
                        self.row.extend_from_slice(&self.scratch);
                    }
                }
            }
            value_start += value_len;
            i += 1;
        }
        if !changed {
            return Ok(None);
        }
        let len = (self.row.len() - 1) as u32;
        self.row[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(Some(masked))
    }

    fn mask_value(
        &mut self,
        guard: &G,
        v: &[u8],
        col: Option<ColumnPlan<G::ColumnRule>>,
    ) -> Action {
        self.scratch.clear();
        let (binary, type_oid, rule) = match col {
            Some(c) => (c.binary, c.type_oid, c.rule),
            // Without a plan the format is unknown: scan as text, which is
            // what every client gets unless it asked for binary.
            None => (false, 0, None),
        };
        let text_like = !binary || is_text_like(type_oid);
        if let Some(rule) = rule {
            let payload = if binary && type_oid == JSONB {
                v.get(1..).unwrap_or_default()
            } else {
                v
            };
            return match guard.mask_column(rule, payload, text_like, &mut self.scratch) {
                ColumnOutput::Null => Action::Null,
                ColumnOutput::Masked => {
                    if binary && type_oid == JSONB {
                        self.scratch.insert(0, 1);
                    }
                    Action::Replaced
                }
            };
        }
        if text_like || type_oid == BYTEA {
            let payload = if binary && type_oid == JSONB {
                v.get(1..).unwrap_or_default()
            } else {
                v
            };
            return match guard.mask_text(payload, &mut self.scratch) {
                None => Action::Keep,
                Some(_) => {
                    if binary && type_oid == JSONB {
                        self.scratch.insert(0, 1);
                    }
                    Action::Replaced
                }
            };
        }
        // Binary numbers can hold a card number too (a bigint column of
        // PANs): decode, scan, and withhold the value if it is one.
        if let Some(text) = binary_number_text(type_oid, v) {
            let mut tmp = Vec::new();
            if guard.mask_text(text.as_bytes(), &mut tmp).is_some() {
                return Action::Null;
            }
        }
        Action::Keep
    }

    fn copy_data(&mut self, shared: &SharedOf<G>, msg: &BytesMut, out: &mut BytesMut) {
        let t0 = Instant::now();
        self.scratch.clear();
        let masked = self
            .ctx
            .guard
            .mask_text(&msg[codec::HEADER..], &mut self.scratch);
        let len = match masked {
            None => {
                out.extend_from_slice(msg);
                msg.len()
            }
            Some(_) => {
                let data = std::mem::take(&mut self.scratch);
                codec::write_message(out, b'd', |b| b.extend_from_slice(&data));
                let n = data.len() + codec::HEADER;
                self.scratch = data;
                n
            }
        };
        let mut s = shared.lock().expect("relay state");
        if let Some(run) = self.running(&mut s) {
            run.rows += 1;
            run.bytes += len as u64;
            run.masked += masked.unwrap_or(0) as u64;
            run.overhead += t0.elapsed();
        }
    }

    fn error_response(&mut self, shared: &SharedOf<G>, msg: &BytesMut, out: &mut BytesMut) {
        let guard = self.ctx.guard;
        let fields = messages::report_fields(&msg[codec::HEADER..]).unwrap_or_default();
        let field = |code: u8| fields.iter().find(|(k, _)| *k == code).map(|(_, v)| *v);
        let primary = field(b'M').unwrap_or_default();
        let is_marker = memchr::memmem::find(primary, self.marker.as_bytes()).is_some();
        let sqlstate = field(b'C').map(|v| String::from_utf8_lossy(v).into_owned());
        let mut text = Vec::new();
        let error = match guard.mask_text(primary, &mut text) {
            Some(_) => String::from_utf8_lossy(&text).into_owned(),
            None => String::from_utf8_lossy(primary).into_owned(),
        };
        let mut s = shared.lock().expect("relay state");
        let (denial, failed_execute) = match s.pending.front_mut() {
            // A simple query ends at ReadyForQuery, error or not.
            Some(Pending::Query(run)) => {
                run.sqlstate = sqlstate;
                run.error = Some(error);
                (run.denied.clone(), None)
            }
            // An error at Sync (e.g. a deferred constraint at commit).
            Some(Pending::Sync) | None => (None, None),
            // An extended request failed: the server skips to Sync.
            Some(_) => {
                self.batch_failed = true;
                match s.pending.pop_front() {
                    Some(Pending::Parse { denied }) => (denied, None),
                    Some(Pending::Execute { mut run, .. }) => {
                        run.sqlstate = sqlstate;
                        run.error = Some(error);
                        (None, Some(run))
                    }
                    _ => (None, None),
                }
            }
        };
        drop(s);
        if let Some(run) = failed_execute
            && let Some(st) = &run.statement
        {
            guard.completed(st, &finish(&run, None));
        }
        match denial {
            Some(denial) if is_marker => Report::error(denial.code, &denial.message).write(out),
            _ => self.forward_report(msg, out),
        }
    }

    /// Forwards an ErrorResponse or NoticeResponse with every text field
    /// masked.
    fn forward_report(&mut self, msg: &BytesMut, out: &mut BytesMut) {
        let guard = self.ctx.guard;
        let Ok(fields) = messages::report_fields(&msg[codec::HEADER..]) else {
            // Unreadable: do not pass bytes we cannot mask.
            Report::error(
                "08P01",
                "cardgate: the database sent a malformed error report",
            )
            .write(out);
            return;
        };
        let mut masked_fields: Vec<(u8, Option<Vec<u8>>)> = Vec::with_capacity(fields.len());
        let mut changed = false;
        for (k, v) in &fields {
            let mut buf = Vec::new();
            let m = match k {
                b'S' | b'V' | b'C' => None,
                _ => guard.mask_text(v, &mut buf).map(|_| buf),
            };
            changed |= m.is_some();
            masked_fields.push((*k, m));
        }
        if !changed {
            out.extend_from_slice(msg);
            return;
        }
        codec::write_message(out, msg[0], |b| {
            for ((k, original), (_, m)) in fields.iter().zip(&masked_fields) {
                b.put_u8(*k);
                codec::put_cstr(b, m.as_deref().unwrap_or(original));
            }
            b.put_u8(0);
        });
    }

    /// Sends an error the sidecar decided on and drops the rest of the
    /// response up to ReadyForQuery.
    fn inject_error(
        &mut self,
        shared: &SharedOf<G>,
        out: &mut BytesMut,
        code: &str,
        message: &str,
    ) {
        Report::error(code, message).write(out);
        self.suppress = true;
        let mut s = shared.lock().expect("relay state");
        if let Some(run) = self.running(&mut s) {
            run.sqlstate = Some(code.to_string());
            run.error = Some(message.to_string());
        }
    }

    /// While suppressing, still pop the requests whose responses end.
    fn account_suppressed(&mut self, shared: &SharedOf<G>, tag: u8, body: &[u8]) {
        let mut s = shared.lock().expect("relay state");
        match tag {
            b'D' | b'd' => {
                if let Some(run) = self.running(&mut s) {
                    run.rows += 1;
                    run.bytes += body.len() as u64;
                }
            }
            b'C' | b'I' | b's' | b'E' => {
                if let Some(Pending::Execute { .. }) = s.pending.front() {
                    let Some(Pending::Execute { run, .. }) = s.pending.pop_front() else {
                        unreachable!("front was an Execute")
                    };
                    drop(s);
                    if let Some(st) = &run.statement {
                        self.ctx.guard.completed(st, &finish(&run, None));
                    }
                }
            }
            b'1' | b'2' | b'3' | b'n' => {
                s.pending.pop_front();
            }
            b'T' => {
                if matches!(
                    s.pending.front(),
                    Some(Pending::Describe { .. } | Pending::InternalDescribe { .. })
                ) {
                    s.pending.pop_front();
                }
            }
            _ => {}
        }
    }

    fn ready_for_query(&mut self, shared: &SharedOf<G>) {
        self.suppress = false;
        if shared.lock().expect("relay state").hold {
            self.probe_needed = true;
        }
        self.current = None;
        let failed = std::mem::take(&mut self.batch_failed);
        let mut done = Vec::new();
        {
            let mut s = shared.lock().expect("relay state");
            while let Some(p) = s.pending.pop_front() {
                match p {
                    Pending::Sync => break,
                    Pending::Query(run) => {
                        done.push((run, false));
                        break;
                    }
                    Pending::Execute { run, .. } => done.push((run, failed)),
                    _ => {}
                }
            }
        }
        for (run, skipped) in done {
            if let Some(st) = &run.statement {
                let mut o = finish(&run, None);
                o.skipped = skipped && run.sqlstate.is_none();
                self.ctx.guard.completed(st, &o);
            }
        }
    }
}

enum Head {
    StatementDescribe(Vec<u8>, bool),
    PortalDescribe(Vec<u8>),
    Result,
}

enum Action {
    Keep,
    Null,
    Replaced,
}

const BYTEA: u32 = 17;
const JSONB: u32 = 3802;

/// Types whose binary format is their text (plus jsonb's version byte).
fn is_text_like(oid: u32) -> bool {
    matches!(
        oid,
        25 | 1043 | 1042 | 19 | 705 | 114 | 142 | 18 | JSONB | 0
    )
}

/// Decimal text of a binary int8, int4 or integral numeric value.
fn binary_number_text(oid: u32, v: &[u8]) -> Option<String> {
    match (oid, v.len()) {
        (20, 8) => Some(
            i64::from_be_bytes(v.try_into().ok()?)
                .unsigned_abs()
                .to_string(),
        ),
        (1700, n) if n >= 8 => {
            let ndigits = u16::from_be_bytes([v[0], v[1]]) as usize;
            let weight = i16::from_be_bytes([v[2], v[3]]);
            if ndigits == 0 || weight < 0 || v.len() < 8 + ndigits * 2 {
                return None;
            }
            let mut s = String::new();
            for d in 0..=(weight as usize) {
                let digit = if d < ndigits {
                    u16::from_be_bytes([v[8 + d * 2], v[9 + d * 2]])
                } else {
                    0
                };
                if s.is_empty() {
                    s.push_str(&digit.to_string());
                } else {
                    s.push_str(&format!("{digit:04}"));
                }
            }
            Some(s)
        }
        _ => None,
    }
}

fn random_letters(n: usize) -> String {
    (0..n)
        .map(|_| (b'a' + rand::random::<u8>() % 26) as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_numbers_decode() {
        assert_eq!(
            binary_number_text(20, &4111111111111111i64.to_be_bytes()).as_deref(),
            Some("4111111111111111")
        );
        // numeric 4111111111111111 = digits [4111, 1111, 1111, 1111], weight 3
        let mut v = Vec::new();
        v.extend_from_slice(&4u16.to_be_bytes());
        v.extend_from_slice(&3i16.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        for d in [4111u16, 1111, 1111, 1111] {
            v.extend_from_slice(&d.to_be_bytes());
        }
        assert_eq!(
            binary_number_text(1700, &v).as_deref(),
            Some("4111111111111111")
        );
        assert_eq!(binary_number_text(23, &[0, 0, 0, 1]), None);
    }
}

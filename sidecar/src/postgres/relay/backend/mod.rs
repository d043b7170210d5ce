//! Server → client: reads the server's messages, pairs each with the
//! request it answers, and hands it to its handler: [`describe`]
//! (RowDescription, ParameterDescription, NoData, BindComplete),
//! [`rows`] (DataRow, CopyData, limits), [`reports`] (ErrorResponse,
//! NoticeResponse, NotificationResponse) and [`complete`]
//! (CommandComplete, ReadyForQuery).
//!
//! Each message takes the exchange lock once; only a result whose column
//! names must be looked up in the catalog takes it a second time.

mod complete;
mod describe;
mod reports;
mod rows;

use std::collections::HashMap;

use bytes::BytesMut;
use tokio::io::ReadHalf;

use super::pending::Pending;
use super::{ExchangeOf, Io, RelayContext, RelayError};
use crate::gate::RowLimits;
use crate::postgres::cancel;
use crate::postgres::codec;
use crate::postgres::datarow::{Plan, RowMasker};
use crate::postgres::guard::PgGuard;
use crate::postgres::pairing::Step;
use crate::postgres::stream::{MessageReader, ReadError, Stream};
use describe::{OwnedColumn, Planning};

/// Responses buffered for the client before they are written.
const FLUSH_AT: usize = 256 * 1024;

/// The server side of a session.
pub(super) struct Backend<'r, 'c, G: PgGuard> {
    ctx: &'r RelayContext<'c, G>,
    io: &'r Io<G>,
    marker: &'r str,
    limits: RowLimits,
    /// Result columns of prepared statements, by name.
    statement_plans: HashMap<Vec<u8>, Vec<OwnedColumn>>,
    /// Masking plans of bound portals, by name.
    portals: HashMap<Vec<u8>, Plan<G::ColumnRule>>,
    /// Masking plan of the simple query's current result.
    current: Option<Plan<G::ColumnRule>>,
    /// An error was injected: drop server messages until ReadyForQuery.
    suppress: bool,
    /// A statement exceeded its limits: cancel it before reading on.
    cancel_requested: bool,
    /// The held response ended: send the probe that absorbs a late cancel.
    probe_needed: bool,
    masker: RowMasker,
    scratch: Vec<u8>,
}

impl<'r, 'c, G: PgGuard> Backend<'r, 'c, G> {
    pub(super) fn new(ctx: &'r RelayContext<'c, G>, io: &'r Io<G>, marker: &'r str) -> Self {
        Self {
            ctx,
            io,
            marker,
            limits: ctx.guard.limits(),
            statement_plans: HashMap::new(),
            portals: HashMap::new(),
            current: None,
            suppress: false,
            cancel_requested: false,
            probe_needed: false,
            masker: RowMasker::default(),
            scratch: Vec::with_capacity(1024),
        }
    }

    /// Relays the server's messages until it closes the connection.
    pub(super) async fn run(
        mut self,
        mut server: MessageReader<ReadHalf<Stream>>,
    ) -> Result<(), RelayError> {
        let mut out = BytesMut::with_capacity(64 * 1024);
        loop {
            let msg = match server.next().await {
                Ok(m) => m,
                Err(e) => {
                    self.flush(&mut out).await?;
                    return match e {
                        ReadError::Closed => Ok(()),
                        e => Err(e.into()),
                    };
                }
            };
            self.handle(msg, &mut out).await?;
            self.stop_over_limits().await?;
            if !server.has_message() || out.len() > FLUSH_AT {
                self.flush(&mut out).await?;
            }
        }
    }

    async fn flush(&self, out: &mut BytesMut) -> Result<(), RelayError> {
        if !out.is_empty() {
            self.io.to_client(out).await?;
            out.clear();
        }
        Ok(())
    }

    async fn handle(&mut self, msg: BytesMut, out: &mut BytesMut) -> Result<(), RelayError> {
        let planning = {
            let mut x = self.io.exchange();
            let step = x.pairing.on_response(msg[0])?;
            self.dispatch(&mut x, step, &msg, out)?
        };
        match planning {
            Some(job) => self.plan_columns(job, &msg, out).await,
            None => Ok(()),
        }
    }

    /// Handles one paired message; returns the column plan still to build
    /// (it may need the catalog, so outside the lock).
    fn dispatch(
        &mut self,
        x: &mut ExchangeOf<G>,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Planning>, RelayError> {
        if self.probe(x, &step) {
            return Ok(None);
        }
        if self.suppress && msg[0] != b'Z' {
            self.suppressed(x, step, msg);
            return Ok(None);
        }
        match msg[0] {
            b'T' => return self.row_description(step, msg, out),
            b'2' => return Ok(self.bind_complete(step, msg, out)),
            b't' => self.parameter_description(x, msg, out),
            b'n' => self.no_data(step, msg, out),
            b'D' => self.data_row(x, msg, out)?,
            b'd' => self.copy_data(x, msg, out),
            b'C' | b'I' | b's' => self.command_complete(x, step, msg, out),
            b'E' => self.error_response(x, step, msg, out),
            b'N' => self.notice(x, msg, out),
            b'A' => self.notification(msg, out)?,
            b'Z' => self.ready_for_query(x, step, msg, out),
            // ParseComplete, CloseComplete, ParameterStatus, the copy
            // headers and CopyDone carry no data to mask.
            _ => out.extend_from_slice(msg),
        }
        Ok(None)
    }

    /// Swallows the response to the relay's own probe; its end releases
    /// the client's requests.
    fn probe(&mut self, x: &mut ExchangeOf<G>, step: &Step<Pending<G::Statement>>) -> bool {
        match step {
            Step::Continues => matches!(x.pairing.front_mut(), Some(Pending::Probe)),
            Step::Ready {
                ended: Pending::Probe,
                ..
            } => {
                x.hold = false;
                self.io.released.notify_waiters();
                true
            }
            _ => false,
        }
    }

    /// After an injected error, the rest of the response is dropped; the
    /// statements it ends are still reported.
    fn suppressed(&mut self, x: &mut ExchangeOf<G>, step: Step<Pending<G::Statement>>, msg: &[u8]) {
        match step {
            Step::Continues if matches!(msg[0], b'D' | b'd') => {
                let bytes = (msg.len() - codec::HEADER) as u64;
                if let Some(run) = x.pairing.front_mut().and_then(Pending::running) {
                    run.rows += 1;
                    run.bytes += bytes;
                }
            }
            Step::Ends(p) | Step::Fails(p) => {
                if let Some(run) = p.into_running()
                    && let Some(st) = &run.statement
                {
                    self.ctx
                        .guard
                        .completed(st, &run.outcome(Default::default()));
                }
            }
            _ => {}
        }
    }

    /// Sends an error the sidecar decided on and drops the rest of the
    /// response up to ReadyForQuery.
    fn inject_error(
        &mut self,
        x: &mut ExchangeOf<G>,
        out: &mut BytesMut,
        code: &str,
        message: &str,
    ) {
        codec::Report::error(code, message).write(out);
        self.suppress = true;
        if let Some(run) = x.pairing.front_mut().and_then(Pending::running) {
            run.failed(Some(code.to_string()), message.to_string());
        }
    }

    /// Cancels a statement that exceeded its limits, then probes the server
    /// once its response has ended (see [`complete`]).
    async fn stop_over_limits(&mut self) -> Result<(), RelayError> {
        if std::mem::take(&mut self.cancel_requested) {
            // Waits until the server has taken the request (it closes the
            // cancel connection), while the client's next requests are held.
            if let Err(e) = cancel::send_cancel(&self.ctx.cancel).await {
                tracing::warn!(error = %e, "could not cancel a statement that exceeded its limits");
            }
        }
        if std::mem::take(&mut self.probe_needed) {
            // The cancel may still be pending in the server if the statement
            // finished first; a probe of our own absorbs it before the
            // client's next statement is released.
            self.io.exchange().pairing.push_sent(Pending::Probe);
            let mut probe = BytesMut::with_capacity(32);
            codec::query(&mut probe, "SELECT 1");
            self.io.to_server(&probe).await?;
        }
        Ok(())
    }
}

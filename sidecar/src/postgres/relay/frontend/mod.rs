//! Client → server: reads the client's messages, hands each to its
//! handler, and writes what they queued upstream once the client has no
//! more buffered (pipelined requests go out together).
//!
//! Handlers: [`query`] (Query, FunctionCall), [`extended`] (Parse, Bind,
//! Describe, Execute, Close, Sync), [`judge`] (decisions and approvals).

mod extended;
mod judge;
mod query;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::ReadHalf;

use super::pending::Pending;
use super::{Io, RelayContext, RelayError};
use crate::gate::SessionSummary;
use crate::postgres::codec;
use crate::postgres::guard::PgGuard;
use crate::postgres::stream::{MessageReader, ReadError, Stream};

/// What the loop does after a message.
enum Flow {
    /// Read on.
    Next,
    /// The client sent Terminate; it is queued for the server.
    Terminated,
    /// The client went away: end the server session too.
    Gone,
}

/// The client side of a session.
pub(super) struct Frontend<'r, 'c, G: PgGuard> {
    ctx: &'r RelayContext<'c, G>,
    io: &'r Io<G>,
    client: MessageReader<ReadHalf<Stream>>,
    session: &'r mut G::Session,
    marker: &'r str,
    /// Requests to write upstream.
    out: BytesMut,
    /// Allowed statements by prepared-statement name, and by portal.
    statements: HashMap<Vec<u8>, Arc<G::Statement>>,
    portals: HashMap<Vec<u8>, Arc<G::Statement>>,
}

impl<'r, 'c, G: PgGuard> Frontend<'r, 'c, G> {
    pub(super) fn new(
        ctx: &'r RelayContext<'c, G>,
        io: &'r Io<G>,
        client: MessageReader<ReadHalf<Stream>>,
        session: &'r mut G::Session,
        marker: &'r str,
    ) -> Self {
        Self {
            ctx,
            io,
            client,
            session,
            marker,
            out: BytesMut::with_capacity(16 * 1024),
            statements: HashMap::new(),
            portals: HashMap::new(),
        }
    }

    /// Relays the client's requests until it terminates or goes away.
    pub(super) async fn run(mut self, summary: &mut SessionSummary) -> Result<(), RelayError> {
        loop {
            let msg = match self.client.next().await {
                Ok(m) => m,
                Err(ReadError::Closed | ReadError::Truncated) => return self.terminate().await,
                Err(e) => return Err(e.into()),
            };
            match self.handle(&msg, summary).await? {
                Flow::Next => {}
                Flow::Terminated => {
                    self.io.exchange().pairing.sent();
                    self.io.last_to_server(&self.out).await?;
                    return Ok(());
                }
                Flow::Gone => return self.terminate().await,
            }
            if !self.client.has_message() {
                self.send().await?;
            }
        }
    }

    async fn handle(
        &mut self,
        msg: &BytesMut,
        summary: &mut SessionSummary,
    ) -> Result<Flow, RelayError> {
        let body = &msg[codec::HEADER..];
        match msg[0] {
            b'Q' => return self.query(msg, body, summary).await,
            b'P' => return self.parse(msg, body, summary).await,
            b'F' => self.function_call(summary),
            b'B' => self.bind(msg, body)?,
            b'D' => self.describe(msg, body)?,
            b'E' => self.execute(msg, body)?,
            b'C' => self.close(msg, body)?,
            b'S' => self.forward(Pending::Sync, msg),
            // Flush and the copy-in stream get no response of their own.
            b'H' | b'd' | b'c' | b'f' => self.out.extend_from_slice(msg),
            b'X' => {
                self.out.extend_from_slice(msg);
                return Ok(Flow::Terminated);
            }
            other => {
                return Err(RelayError::Protocol(format!(
                    "unexpected message type {} from the client",
                    codec::tag_name(other)
                )));
            }
        }
        Ok(Flow::Next)
    }

    /// Queues `pending` and the client's message as it is.
    fn forward(&mut self, pending: Pending<G::Statement>, msg: &[u8]) {
        self.queue(pending);
        self.out.extend_from_slice(msg);
    }

    fn queue(&mut self, pending: Pending<G::Statement>) {
        self.io.exchange().pairing.push(pending);
    }

    /// Writes the queued requests upstream, once the backend lets them go.
    async fn send(&mut self) -> Result<(), RelayError> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.io.wait_until_released().await;
        self.io.to_server(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Ends the upstream session after the client left.
    async fn terminate(&mut self) -> Result<(), RelayError> {
        self.out.clear();
        codec::write_message(&mut self.out, b'X', |_| {});
        let _ = self.io.to_server(&self.out).await;
        Ok(())
    }
}

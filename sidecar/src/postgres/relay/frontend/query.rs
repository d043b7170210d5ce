//! Simple Query and FunctionCall.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::judge::Disposition;
use super::{Flow, Frontend};
use crate::gate::{Access, Protocol, SessionSummary, Verdict};
use crate::postgres::codec;
use crate::postgres::guard::PgGuard;
use crate::postgres::messages;
use crate::postgres::relay::RelayError;
use crate::postgres::relay::pending::{Denial, Pending, Running};

impl<G: PgGuard> Frontend<'_, '_, G> {
    /// Query: decided, then forwarded or replaced by the denial marker.
    pub(super) async fn query(
        &mut self,
        msg: &BytesMut,
        body: &[u8],
        summary: &mut SessionSummary,
    ) -> Result<Flow, RelayError> {
        let t0 = Instant::now();
        let sql = std::str::from_utf8(messages::query_text(body)?)
            .map_err(|_| RelayError::Protocol("query text is not valid UTF-8".into()))?;
        let access = Access::Sql {
            text: sql,
            protocol: Protocol::Simple,
            prepare_as: None,
        };
        match self.judge(summary, access).await? {
            Disposition::Forward(s) => {
                let run = Running::new(Some(Arc::new(s)), None, t0, t0.elapsed());
                self.forward(Pending::Query(run), msg);
            }
            Disposition::Refuse(denial) => self.refuse_query(denial, t0),
            Disposition::ClientGone => return Ok(Flow::Gone),
        }
        Ok(Flow::Next)
    }

    /// FunctionCall calls a function by OID around SQL: always denied (the
    /// guard says why, and audits it).
    pub(super) fn function_call(&mut self, summary: &mut SessionSummary) {
        let t0 = Instant::now();
        summary.statements += 1;
        summary.denied += 1;
        let access = Access::Sql {
            text: "",
            protocol: Protocol::FunctionCall,
            prepare_as: None,
        };
        let message = match self.ctx.guard.decide(self.session, access) {
            Verdict::Deny(m) => m,
            Verdict::Allow(_) | Verdict::Hold(_) => {
                "cardgate: FunctionCall messages are not allowed".to_string()
            }
        };
        self.refuse_query(Denial::denied(message), t0);
    }

    /// Sends a query that fails on the server with the session's marker;
    /// the backend swaps its error for `denial`.
    fn refuse_query(&mut self, denial: Denial, t0: Instant) {
        self.queue(Pending::Query(Running::new(
            None,
            Some(denial),
            t0,
            t0.elapsed(),
        )));
        codec::query(&mut self.out, &format!("SELECT {}", self.marker));
    }
}

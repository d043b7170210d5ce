//! Decisions: a statement string goes to the guard, and a held statement
//! waits for approvers while the rest of the session's traffic flows.

use bytes::BytesMut;

use super::Frontend;
use crate::gate::{Access, Held, Resolved, SessionSummary, Verdict};
use crate::postgres::codec::Report;
use crate::postgres::guard::{PgGuard, SessionRecorder};
use crate::postgres::relay::RelayError;
use crate::postgres::relay::pending::Denial;

/// What to do with a statement after its decision (and approval, if it
/// needed one).
pub(super) enum Disposition<S> {
    Forward(S),
    Refuse(Denial),
    /// The client went away while its statement waited for approvers.
    ClientGone,
}

impl<G: PgGuard> Frontend<'_, '_, G> {
    /// Decides a statement and turns the verdict into what to do with it,
    /// waiting for approvers when it is held.
    pub(super) async fn judge(
        &mut self,
        summary: &mut SessionSummary,
        access: Access<'_>,
    ) -> Result<Disposition<G::Statement>, RelayError> {
        summary.statements += 1;
        let Access::Sql { text, .. } = access;
        self.io.exchange().record(|r| r.query(text));
        let disposition = match self.ctx.guard.decide(self.session, access) {
            Verdict::Allow(s) => Disposition::Forward(s),
            Verdict::Deny(m) => Disposition::Refuse(Denial::denied(m)),
            Verdict::Hold(h) => self.await_approval(h).await?,
        };
        if matches!(disposition, Disposition::Refuse(_)) {
            summary.denied += 1;
        }
        Ok(disposition)
    }

    /// Asks for approval of a held statement. Requests queued before it are
    /// sent first, so the server answers them while the statement waits;
    /// the client is told at once which request to approve. A client that
    /// cancels or disconnects meanwhile withdraws the request.
    async fn await_approval(
        &mut self,
        hold: G::Hold,
    ) -> Result<Disposition<G::Statement>, RelayError> {
        let guard = self.ctx.guard;
        self.send().await?;
        let resolved = match guard.hold(hold).await {
            Held::Now(r) => r,
            Held::Waiting { notice, waiting } => {
                let mut note = BytesMut::with_capacity(64 + notice.len());
                Report::notice(&notice).write(&mut note);
                self.io.to_client_now(&note).await?;
                tokio::select! {
                    r = guard.await_decision(&waiting) => r,
                    () = self.ctx.cancel.interrupt.notified() => {
                        guard.withdraw(waiting, "the client cancelled the statement").await;
                        Resolved::Cancelled("canceling statement due to user request; the approval request was withdrawn".into())
                    }
                    _ = self.client.closed() => {
                        guard.withdraw(waiting, "the client disconnected").await;
                        return Ok(Disposition::ClientGone);
                    }
                }
            }
        };
        Ok(match resolved {
            Resolved::Allow(s) => Disposition::Forward(s),
            Resolved::Deny(m) => Disposition::Refuse(Denial::denied(m)),
            Resolved::Cancelled(m) => Disposition::Refuse(Denial {
                code: "57014",
                message: m,
            }),
        })
    }
}

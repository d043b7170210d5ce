//! CommandComplete, EmptyQueryResponse, PortalSuspended and ReadyForQuery:
//! where statements end and their outcomes are reported.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::Backend;
use crate::postgres::codec;
use crate::postgres::guard::{PgGuard, SessionRecorder};
use crate::postgres::messages;
use crate::postgres::pairing::Step;
use crate::postgres::relay::ExchangeOf;
use crate::postgres::relay::pending::Pending;

impl<G: PgGuard> Backend<'_, '_, G> {
    /// Ends an Execute; within a simple query, ends one of its results.
    pub(super) fn command_complete(
        &mut self,
        x: &mut ExchangeOf<G>,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) {
        let t0 = Instant::now();
        let body = &msg[codec::HEADER..];
        let rows = if msg[0] == b'C' {
            x.record(|r| r.complete(body.strip_suffix(&[0]).unwrap_or(body)));
            messages::command_rows(body)
        } else {
            None
        };
        match step {
            Step::Continues => {
                if let Some(Pending::Query(run)) = x.pairing.front_mut() {
                    run.tagged_rows(rows);
                    self.current = None;
                }
            }
            Step::Ends(Pending::Execute { mut run, .. }) => {
                run.tagged_rows(rows);
                if let Some(st) = &run.statement {
                    self.ctx.guard.completed(st, &run.outcome(t0.elapsed()));
                }
            }
            _ => {}
        }
        out.extend_from_slice(msg);
    }

    /// Ends a simple query or an extended batch, reporting the statements
    /// the server skipped after an error; the end of a held response sends
    /// the probe.
    pub(super) fn ready_for_query(
        &mut self,
        x: &mut ExchangeOf<G>,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) {
        self.suppress = false;
        self.probe_needed = x.hold;
        self.current = None;
        if let Step::Ready { skipped, ended } = step {
            let guard = self.ctx.guard;
            for run in skipped.into_iter().filter_map(Pending::into_running) {
                if let Some(st) = &run.statement {
                    let mut o = run.outcome(Duration::ZERO);
                    o.skipped = run.sqlstate.is_none();
                    guard.completed(st, &o);
                }
            }
            if let Some(run) = ended.into_running()
                && let Some(st) = &run.statement
            {
                guard.completed(st, &run.outcome(Duration::ZERO));
            }
        }
        x.record(|r| r.idle());
        out.extend_from_slice(msg);
    }
}

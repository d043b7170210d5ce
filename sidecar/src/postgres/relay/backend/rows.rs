//! DataRow and CopyData: masked, counted, and stopped at the policy's
//! limits.

use std::time::Instant;

use bytes::BytesMut;

use super::Backend;
use crate::gate::RowLimits;
use crate::postgres::codec;
use crate::postgres::guard::{PgGuard, SessionRecorder};
use crate::postgres::relay::pending::Pending;
use crate::postgres::relay::{ExchangeOf, RelayError};

impl<G: PgGuard> Backend<'_, '_, G> {
    /// Masks a row with its result's plan (the portal's for an Execute, the
    /// query's own otherwise) and counts it against the limits.
    pub(super) fn data_row(
        &mut self,
        x: &mut ExchangeOf<G>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let t0 = Instant::now();
        let front = x.pairing.front_mut();
        let plan = match &front {
            Some(Pending::Execute { portal, .. }) => self.portals.get(portal),
            _ => self.current.as_ref(),
        };
        let masked =
            self.masker
                .mask(self.ctx.guard, &msg[codec::HEADER..], plan.map(|p| &p[..]))?;
        let (len, count) = match masked {
            Some(n) => (self.masker.row().len() as u64, n),
            None => (msg.len() as u64, 0),
        };
        let exceeded = match front.and_then(Pending::running) {
            Some(run) => {
                run.count(len, count, t0.elapsed());
                exceeds(&self.limits, run.rows, run.bytes)
            }
            None => false,
        };
        if exceeded {
            self.over_limits(x, out);
            return Ok(());
        }
        let forwarded: &[u8] = if masked.is_some() {
            self.masker.row()
        } else {
            msg
        };
        x.record(|r| r.row(&forwarded[codec::HEADER..]));
        out.extend_from_slice(forwarded);
        Ok(())
    }

    /// Fails the statement and holds the client's next requests until its
    /// response has ended: a cancel that arrives late must find the server
    /// idle (where it is ignored), never running the next statement.
    fn over_limits(&mut self, x: &mut ExchangeOf<G>, out: &mut BytesMut) {
        let limits = match (self.limits.max_rows, self.limits.max_bytes) {
            (Some(r), Some(b)) => format!("{r} rows or {b} bytes"),
            (Some(r), None) => format!("{r} rows"),
            (None, Some(b)) => format!("{b} bytes"),
            (None, None) => String::new(),
        };
        let message = format!(
            "cardgate: statement stopped: it returned more than {limits} (limits of AccessPolicy {})",
            self.ctx.guard.policy_name()
        );
        self.inject_error(x, out, "54000", &message);
        x.hold = true;
        self.cancel_requested = true;
    }

    /// COPY TO STDOUT data is masked as text.
    pub(super) fn copy_data(&mut self, x: &mut ExchangeOf<G>, msg: &BytesMut, out: &mut BytesMut) {
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
                let data = &self.scratch;
                codec::write_message(out, b'd', |b| b.extend_from_slice(data));
                data.len() + codec::HEADER
            }
        };
        if let Some(run) = x.pairing.front_mut().and_then(Pending::running) {
            run.count(len as u64, masked.unwrap_or(0) as u64, t0.elapsed());
        }
    }
}

fn exceeds(limits: &RowLimits, rows: u64, bytes: u64) -> bool {
    limits.max_rows.is_some_and(|m| rows > m) || limits.max_bytes.is_some_and(|m| bytes > m)
}

//! ErrorResponse, NoticeResponse and NotificationResponse: every text
//! field masked, and the server's failure of a denied statement replaced by
//! the denial.

use bytes::{BufMut, BytesMut};

use super::Backend;
use crate::postgres::codec::{self, Report};
use crate::postgres::guard::{PgGuard, SessionRecorder};
use crate::postgres::messages;
use crate::postgres::pairing::Step;
use crate::postgres::relay::pending::{Denial, Pending};
use crate::postgres::relay::{Exchange, ExchangeOf, RelayError};

impl<G: PgGuard> Backend<'_, '_, G> {
    /// Records the error on its statement; the marker error of a denied
    /// statement becomes the denial.
    pub(super) fn error_response(
        &mut self,
        x: &mut ExchangeOf<G>,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) {
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
        let denial: Option<Denial> = match step {
            Step::Continues => match x.pairing.front_mut() {
                // A simple query ends at ReadyForQuery, error or not.
                Some(Pending::Query(run)) => {
                    run.failed(sqlstate, error);
                    run.denied.clone()
                }
                // An error at Sync (e.g. a deferred constraint at commit).
                _ => None,
            },
            Step::Fails(Pending::Parse { denied }) => denied,
            Step::Fails(Pending::Execute { mut run, .. }) => {
                run.failed(sqlstate, error);
                if let Some(st) = &run.statement {
                    guard.completed(st, &run.outcome(Default::default()));
                }
                None
            }
            _ => None,
        };
        let start = out.len();
        match denial {
            Some(denial) if is_marker => Report::error(denial.code, &denial.message).write(out),
            _ => self.forward_report(msg, out),
        }
        record_report(x, out, start, true);
    }

    pub(super) fn notice(&mut self, x: &mut ExchangeOf<G>, msg: &BytesMut, out: &mut BytesMut) {
        let start = out.len();
        self.forward_report(msg, out);
        record_report(x, out, start, false);
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

    /// LISTEN/NOTIFY payloads are masked like any text.
    pub(super) fn notification(
        &mut self,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let (pid, channel, payload) = messages::notification(&msg[codec::HEADER..])?;
        self.scratch.clear();
        match self.ctx.guard.mask_text(payload, &mut self.scratch) {
            None => out.extend_from_slice(msg),
            Some(_) => {
                let masked = &self.scratch;
                codec::write_message(out, b'A', |b| {
                    b.put_i32(pid);
                    codec::put_cstr(b, channel);
                    codec::put_cstr(b, masked);
                });
            }
        }
        Ok(())
    }
}

/// Hands the report as the client got it to the recording.
fn record_report<S, R: SessionRecorder>(
    x: &mut Exchange<S, R>,
    out: &BytesMut,
    start: usize,
    error: bool,
) {
    if out.len() > start + codec::HEADER {
        let written = &out[start + codec::HEADER..];
        x.record(|r| r.report(error, written));
    }
}

//! The extended protocol: Parse, Bind, Describe, Execute and Close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::judge::Disposition;
use super::{Flow, Frontend};
use crate::gate::{Access, Protocol, SessionSummary};
use crate::postgres::codec;
use crate::postgres::guard::PgGuard;
use crate::postgres::messages;
use crate::postgres::relay::RelayError;
use crate::postgres::relay::pending::{Pending, Running};

impl<G: PgGuard> Frontend<'_, '_, G> {
    /// Parse: decided like a Query, with its name, so that SQL `EXECUTE`
    /// of it is decided by its text. An allowed statement is followed by a
    /// Describe of our own, so the backend learns its result columns; a
    /// denied one is replaced by a statement that fails.
    pub(super) async fn parse(
        &mut self,
        msg: &BytesMut,
        body: &[u8],
        summary: &mut SessionSummary,
    ) -> Result<Flow, RelayError> {
        let parse = messages::parse(body)?;
        let sql = std::str::from_utf8(parse.sql)
            .map_err(|_| RelayError::Protocol("statement text is not valid UTF-8".into()))?;
        let access = Access::Sql {
            text: sql,
            protocol: Protocol::Extended,
            // A name that is not UTF-8 cannot be named by SQL `EXECUTE`.
            prepare_as: std::str::from_utf8(parse.name).ok(),
        };
        let name = parse.name.to_vec();
        match self.judge(summary, access).await? {
            Disposition::Forward(s) => {
                self.statements.insert(name.clone(), Arc::new(s));
                self.forward(Pending::Parse { denied: None }, msg);
                codec::describe(&mut self.out, b'S', &name);
                self.queue(Pending::InternalDescribe { name });
            }
            Disposition::Refuse(denial) => {
                self.statements.remove(&name);
                self.queue(Pending::Parse {
                    denied: Some(denial),
                });
                codec::parse(&mut self.out, &name, &format!("SELECT {}", self.marker));
            }
            Disposition::ClientGone => return Ok(Flow::Gone),
        }
        Ok(Flow::Next)
    }

    /// Bind: the portal runs the statement it is bound from.
    pub(super) fn bind(&mut self, msg: &BytesMut, body: &[u8]) -> Result<(), RelayError> {
        let bind = messages::bind(body)?;
        match self.statements.get(bind.statement) {
            Some(s) => {
                self.portals.insert(bind.portal.to_vec(), Arc::clone(s));
            }
            None => {
                self.portals.remove(bind.portal);
            }
        }
        let pending = Pending::Bind {
            portal: bind.portal.to_vec(),
            statement: bind.statement.to_vec(),
            formats: bind.result_formats,
        };
        self.forward(pending, msg);
        Ok(())
    }

    pub(super) fn describe(&mut self, msg: &BytesMut, body: &[u8]) -> Result<(), RelayError> {
        let (kind, name) = messages::target("Describe", body)?;
        let name = name.to_vec();
        self.forward(Pending::Describe { kind, name }, msg);
        Ok(())
    }

    /// Execute: its outcome is reported for the statement of its portal.
    pub(super) fn execute(&mut self, msg: &BytesMut, body: &[u8]) -> Result<(), RelayError> {
        let (portal, _) = messages::execute(body)?;
        let statement = self.portals.get(portal).cloned();
        let run = Running::new(statement, None, Instant::now(), Duration::ZERO);
        let portal = portal.to_vec();
        self.forward(Pending::Execute { portal, run }, msg);
        Ok(())
    }

    pub(super) fn close(&mut self, msg: &BytesMut, body: &[u8]) -> Result<(), RelayError> {
        let (kind, name) = messages::target("Close", body)?;
        if kind == b'S' {
            self.statements.remove(name);
            if let Ok(name) = std::str::from_utf8(name) {
                self.ctx.guard.statement_closed(self.session, name);
            }
        } else {
            self.portals.remove(name);
        }
        self.forward(Pending::Close, msg);
        Ok(())
    }
}

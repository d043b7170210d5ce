//! RowDescription, ParameterDescription, NoData and BindComplete: the
//! masking plan of each result, from the server's own description of it.

use std::sync::Arc;

use bytes::BytesMut;

use super::Backend;
use crate::postgres::catalog::CatalogError;
use crate::postgres::datarow::{ColumnPlan, Plan};
use crate::postgres::guard::{PgGuard, SessionRecorder};
use crate::postgres::messages;
use crate::postgres::pairing::Step;
use crate::postgres::relay::pending::Pending;
use crate::postgres::relay::{ExchangeOf, RelayError};

/// A RowDescription column kept beyond its message.
#[derive(Clone)]
pub(super) struct OwnedColumn {
    table_oid: u32,
    attnum: i16,
    type_oid: u32,
}

/// A column plan to build once the lock is released.
pub(super) enum Planning {
    /// The rows that follow this RowDescription (simple query).
    Result,
    /// A described portal.
    Portal(Vec<u8>),
    /// A portal bound from a described statement.
    Bind {
        portal: Vec<u8>,
        columns: Vec<OwnedColumn>,
        formats: Vec<i16>,
    },
}

fn owned_columns(cols: &[messages::Column<'_>]) -> Vec<OwnedColumn> {
    cols.iter()
        .map(|c| OwnedColumn {
            table_oid: c.table_oid,
            attnum: c.attnum,
            type_oid: c.type_oid,
        })
        .collect()
}

/// Result formats per column, as Bind states them (none: all text; one:
/// all the same).
fn formats_per_column(formats: &[i16], columns: usize) -> Vec<i16> {
    (0..columns)
        .map(|i| match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => formats.get(i).copied().unwrap_or(0),
        })
        .collect()
}

impl<G: PgGuard> Backend<'_, '_, G> {
    /// A statement's columns are kept for its Binds; a portal's or a
    /// query's result gets its plan.
    pub(super) fn row_description(
        &mut self,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<Option<Planning>, RelayError> {
        let cols = messages::row_description(&msg[crate::postgres::codec::HEADER..])?;
        Ok(match step {
            Step::Ends(Pending::InternalDescribe { name }) => {
                self.statement_plans.insert(name, owned_columns(&cols));
                None
            }
            Step::Ends(Pending::Describe { kind: b'S', name }) => {
                self.statement_plans.insert(name, owned_columns(&cols));
                out.extend_from_slice(msg);
                None
            }
            Step::Ends(Pending::Describe { name, .. }) => Some(Planning::Portal(name)),
            _ => Some(Planning::Result),
        })
    }

    /// Forwarded unless it answers the relay's own Describe.
    pub(super) fn parameter_description(
        &mut self,
        x: &mut ExchangeOf<G>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) {
        if !matches!(
            x.pairing.front_mut(),
            Some(Pending::InternalDescribe { .. })
        ) {
            out.extend_from_slice(msg);
        }
    }

    /// A statement or portal that returns no rows.
    pub(super) fn no_data(
        &mut self,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) {
        match step {
            Step::Ends(Pending::InternalDescribe { name }) => {
                self.statement_plans.insert(name, Vec::new());
                return;
            }
            Step::Ends(Pending::Describe { kind: b'S', name }) => {
                self.statement_plans.insert(name, Vec::new());
            }
            Step::Ends(Pending::Describe { name, .. }) => {
                self.portals.insert(name, Arc::from(Vec::new()));
            }
            _ => {}
        }
        out.extend_from_slice(msg);
    }

    /// A bound portal gets the plan of its statement's columns in the
    /// formats the Bind asked for.
    pub(super) fn bind_complete(
        &mut self,
        step: Step<Pending<G::Statement>>,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Option<Planning> {
        if let Step::Ends(Pending::Bind {
            portal,
            statement,
            formats,
        }) = step
        {
            match self.statement_plans.get(&statement) {
                Some(columns) => {
                    let columns = columns.clone();
                    return Some(Planning::Bind {
                        portal,
                        columns,
                        formats,
                    });
                }
                None => {
                    self.portals.remove(&portal);
                }
            }
        }
        out.extend_from_slice(msg);
        None
    }

    /// Builds a plan outside the lock, then stores it and forwards the
    /// message, or fails the statement if the catalog cannot answer.
    pub(super) async fn plan_columns(
        &mut self,
        job: Planning,
        msg: &BytesMut,
        out: &mut BytesMut,
    ) -> Result<(), RelayError> {
        let body = &msg[crate::postgres::codec::HEADER..];
        let planned = match job {
            Planning::Bind {
                portal,
                columns,
                formats,
            } => {
                let formats = formats_per_column(&formats, columns.len());
                let plan = self.plan(&columns, &formats).await;
                plan.map(|p| {
                    self.portals.insert(portal, p);
                })
            }
            Planning::Result | Planning::Portal(_) => {
                let cols = messages::row_description(body)?;
                let formats: Vec<i16> = cols.iter().map(|c| c.format).collect();
                let plan = self.plan(&owned_columns(&cols), &formats).await;
                plan.map(|p| {
                    match job {
                        Planning::Portal(name) => self.portals.insert(name, p),
                        _ => self.current.replace(p),
                    };
                    let names: Vec<(&[u8], u32)> =
                        cols.iter().map(|c| (c.name, c.type_oid)).collect();
                    self.io.exchange().record(|r| r.columns(&names));
                })
            }
        };
        match planned {
            Ok(()) => out.extend_from_slice(msg),
            Err(e) => {
                let mut x = self.io.exchange();
                self.inject_error(&mut x, out, "58000", &e.to_string());
            }
        }
        Ok(())
    }

    /// Builds the masking plan of a result: column rules (names resolved
    /// through the catalog) and formats.
    async fn plan(
        &self,
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
}

//! Names of result columns, for column masking rules.
//!
//! A RowDescription names each column's source by table OID and attribute
//! number only. The sidecar resolves those to `schema.table.column` with a
//! catalog query on a connection of its own (the agent's session is never
//! used, so the agent cannot influence the answer), caches the answers for a
//! minute, and reconnects when the connection drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::codec;
use super::messages::{data_row, report_fields};
use super::stream::{MessageReader, Stream};
use super::upstream::UpstreamSettings;

/// A resolved column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnName {
    /// Schema.
    pub schema: String,
    /// Table (or view, materialized view).
    pub table: String,
    /// Column.
    pub column: String,
}

/// How long a resolved name is trusted (a table may be dropped and its OID
/// reused).
const TTL: Duration = Duration::from_secs(60);

/// Why names could not be resolved; the statement's result is then withheld.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve result column names for masking: {0}")]
pub struct CatalogError(String);

type Key = (u32, i16);
/// A cached answer (None: not a table column) and when it was fetched.
type Cached = (Option<Arc<ColumnName>>, Instant);

/// Resolves column names for one target, per database.
pub struct Catalog {
    upstream: Arc<UpstreamSettings>,
    databases: Mutex<HashMap<String, Arc<DatabaseCatalog>>>,
}

struct DatabaseCatalog {
    conn: tokio::sync::Mutex<Option<MessageReader<Stream>>>,
    cache: Mutex<HashMap<Key, Cached>>,
}

impl Catalog {
    /// A catalog reaching the target with the sidecar's own credential.
    pub fn new(upstream: Arc<UpstreamSettings>) -> Self {
        Self {
            upstream,
            databases: Mutex::new(HashMap::new()),
        }
    }

    /// Names for `keys` (table OID, attribute number) in `database`; `None`
    /// for columns that do not come from a table.
    pub async fn resolve(
        &self,
        database: &str,
        keys: &[Key],
    ) -> Result<Vec<Option<Arc<ColumnName>>>, CatalogError> {
        let db = {
            let mut map = self.databases.lock().expect("catalog poisoned");
            Arc::clone(map.entry(database.to_string()).or_insert_with(|| {
                Arc::new(DatabaseCatalog {
                    conn: tokio::sync::Mutex::new(None),
                    cache: Mutex::new(HashMap::new()),
                })
            }))
        };
        let now = Instant::now();
        let missing: Vec<u32> = {
            let cache = db.cache.lock().expect("catalog poisoned");
            let mut oids: Vec<u32> = keys
                .iter()
                .filter(|k| k.0 != 0 && k.1 > 0)
                .filter(|k| {
                    cache
                        .get(k)
                        .is_none_or(|(_, at)| now.duration_since(*at) > TTL)
                })
                .map(|k| k.0)
                .collect();
            oids.sort_unstable();
            oids.dedup();
            oids
        };
        if !missing.is_empty() {
            let rows = self.query(&db, database, &missing).await?;
            let mut cache = db.cache.lock().expect("catalog poisoned");
            for &(oid, attnum) in keys {
                if missing.binary_search(&oid).is_ok() {
                    cache.insert((oid, attnum), (None, now));
                }
            }
            for (key, name) in rows {
                cache.insert(key, (Some(Arc::new(name)), now));
            }
        }
        let cache = db.cache.lock().expect("catalog poisoned");
        Ok(keys
            .iter()
            .map(|k| cache.get(k).and_then(|(n, _)| n.clone()))
            .collect())
    }

    async fn query(
        &self,
        db: &DatabaseCatalog,
        database: &str,
        oids: &[u32],
    ) -> Result<Vec<(Key, ColumnName)>, CatalogError> {
        let mut conn = db.conn.lock().await;
        // One retry: a cached connection may have been closed by the server.
        for attempt in 0..2 {
            if conn.is_none() {
                let c = self
                    .upstream
                    .connect(database, &[])
                    .await
                    .map_err(|e| CatalogError(e.to_string()))?;
                *conn = Some(c.reader);
            }
            let reader = conn.as_mut().expect("connected above");
            match run_query(reader, oids).await {
                Ok(rows) => return Ok(rows),
                Err(e) if attempt == 0 => {
                    tracing::debug!(error = %e, "catalog connection failed; reconnecting");
                    *conn = None;
                }
                Err(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

async fn run_query(
    reader: &mut MessageReader<Stream>,
    oids: &[u32],
) -> Result<Vec<(Key, ColumnName)>, CatalogError> {
    let list: Vec<String> = oids.iter().map(u32::to_string).collect();
    let sql = format!(
        "SELECT a.attrelid::int8, a.attnum, n.nspname, c.relname, a.attname \
         FROM pg_catalog.pg_attribute a \
         JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE a.attrelid IN ({}) AND a.attnum > 0",
        list.join(",")
    );
    let mut out = BytesMut::new();
    codec::query(&mut out, &sql);
    reader
        .get_mut()
        .write_all(&out)
        .await
        .map_err(|e| CatalogError(e.to_string()))?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let msg = reader
            .next()
            .await
            .map_err(|e| CatalogError(e.to_string()))?;
        match msg[0] {
            b'D' => {
                let mut row = data_row(&msg[5..]).map_err(|e| CatalogError(e.to_string()))?;
                let mut vals: Vec<String> = Vec::with_capacity(5);
                while let Some(v) = row.next_value().map_err(|e| CatalogError(e.to_string()))? {
                    vals.push(String::from_utf8_lossy(v.unwrap_or_default()).into_owned());
                }
                if let [oid, attnum, schema, table, column] = vals.as_slice() {
                    let key = (
                        oid.parse::<u32>()
                            .map_err(|_| CatalogError("bad oid".into()))?,
                        attnum
                            .parse::<i16>()
                            .map_err(|_| CatalogError("bad attnum".into()))?,
                    );
                    rows.push((
                        key,
                        ColumnName {
                            schema: schema.clone(),
                            table: table.clone(),
                            column: column.clone(),
                        },
                    ));
                }
            }
            b'E' => {
                let fields = report_fields(&msg[5..]).unwrap_or_default();
                let m = fields
                    .iter()
                    .find(|(k, _)| *k == b'M')
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default();
                error = Some(m);
            }
            b'Z' => break,
            _ => {}
        }
    }
    match error {
        Some(e) => Err(CatalogError(e)),
        None => Ok(rows),
    }
}

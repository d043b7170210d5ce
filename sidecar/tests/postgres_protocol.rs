//! The PostgreSQL relay against a real server, with real clients (psql,
//! tokio-postgres) and raw protocol bytes. Decisions come from a fixed
//! guard (see support/proxy.rs), so these tests cover the protocol alone.

mod support;

use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use cardgate_e2e::pg::{PANS, Postgres, bin_dir};
use cardgate_sidecar::gate::RowLimits;
use cardgate_sidecar::postgres::codec;
use support::proxy::{FixedGuard, Proxy, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs psql against the proxy (off the async runtime) and returns stdout,
/// stderr and success.
async fn psql(proxy: &Proxy, password: &str, sql: &str) -> (String, String, bool) {
    let (port, password, sql) = (proxy.addr.port(), password.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || psql_blocking(port, &password, &sql))
        .await
        .unwrap()
}

fn psql_blocking(port: u16, password: &str, sql: &str) -> (String, String, bool) {
    let out = Command::new(bin_dir().join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "agent",
            "-d",
            "payments",
        ])
        .args(["-v", "ON_ERROR_STOP=0", "-f", "-"])
        .env("PGPASSWORD", password)
        .env("PGSSLMODE", "prefer")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(sql.as_bytes())?;
            c.wait_with_output()
        })
        .expect("run psql");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

fn assert_no_pan(what: &str, bytes: &str) {
    for pan in PANS {
        assert!(
            !bytes.contains(pan),
            "{what} contains the PAN {pan}:\n{bytes}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_reads_masked_rows_and_a_denial_leaves_the_session_usable() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let (stdout, stderr, _) = psql(
        &proxy,
        TOKEN,
        "SELECT id, pan, cvv, note FROM cards ORDER BY id;\nDROP TABLE orders;\nSELECT count(*) AS n FROM orders;\n",
    )
    .await;
    assert!(stdout.contains("************1111"), "{stdout}");
    assert!(stdout.contains("(6 rows)"), "{stdout}");
    assert!(
        stderr.contains("cardgate: denied by AccessPolicy test/fixed rule 1 (simple)"),
        "{stderr}"
    );
    assert!(
        stdout.contains(" 50"),
        "the session stays usable after a denial: {stdout}"
    );
    assert_no_pan("psql output", &stdout);
    assert_no_pan("psql errors", &stderr);
    // The table is still there: the DROP never reached the server.
    assert_eq!(
        pg.psql("payments", "SELECT count(*) FROM orders").trim(),
        "50"
    );
    // cvv is a column rule: NULL (empty in psql's aligned output).
    let line = stdout
        .lines()
        .find(|l| l.contains("************1111") && l.trim_start().starts_with('1'))
        .unwrap();
    assert_eq!(line.split('|').nth(2).map(str::trim), Some(""), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_token_is_refused_with_the_reason() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let (_, stderr, ok) = psql(&proxy, "forged", "SELECT 1;").await;
    assert!(!ok);
    assert!(
        stderr.contains("cardgate: authentication failed: token expired"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("forged"),
        "the token must not be echoed: {stderr}"
    );
    assert!(proxy.guard.events().contains(&"auth failed".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denial_inside_a_transaction_aborts_it_like_postgres_would() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let client = proxy.connect().await;
    client.batch_execute("BEGIN").await.unwrap();
    client
        .execute("INSERT INTO customers VALUES (1000, 'Tx Test', NULL)", &[])
        .await
        .unwrap();
    let err = client
        .batch_execute("DROP TABLE customers")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let err = client.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("25P02"), "{err}");
    client.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        pg.psql("payments", "SELECT count(*) FROM customers WHERE id = 1000")
            .trim(),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn extended_protocol_prepared_binary_and_pipelined() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let client = proxy.connect().await;
    // Prepared with a parameter; tokio-postgres asks for binary results.
    let stmt = client
        .prepare("SELECT id, pan, cvv, pan_bigint FROM cards WHERE id <= $1 ORDER BY id")
        .await
        .unwrap();
    let rows = client.query(&stmt, &[&6i32]).await.unwrap();
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let pan: String = r.get(1);
        assert!(
            pan.starts_with('*') && !PANS.contains(&pan.as_str()),
            "{pan}"
        );
        let cvv: Option<String> = r.get(2);
        assert_eq!(cvv, None, "column rule nulls cvv");
        let big: Option<i64> = r.get(3);
        assert_eq!(big, None, "a PAN in a binary bigint is withheld");
    }
    // Pipelining: several queries in flight at once on one connection.
    let futures: Vec<_> = (1..=20)
        .map(|i| {
            let c = &client;
            async move {
                let row = c.query_one("SELECT $1::int4 + 1", &[&i]).await.unwrap();
                row.get::<_, i32>(0)
            }
        })
        .collect();
    let results = futures::future::join_all(futures).await;
    assert_eq!(results, (2..=21).collect::<Vec<i32>>());
    // A denied Parse: the statement name is unusable, the session is not.
    let err = client.prepare("DROP TABLE cards").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    assert!(db_message(&err).contains("cardgate: denied"), "{err:?}");
    let n: i64 = client
        .query_one("SELECT count(*) FROM cards", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_out_is_masked_and_errors_are_masked() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let client = proxy.connect().await;
    let stream = client
        .copy_out("COPY (SELECT pan FROM cards ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    use futures::StreamExt;
    let chunks: Vec<_> = stream.collect::<Vec<_>>().await;
    let text: String = chunks
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.unwrap()).into_owned())
        .collect();
    assert_eq!(text.lines().count(), 6);
    assert_no_pan("COPY output", &text);
    // PostgreSQL puts the offending value into DETAIL.
    let err = client
        .execute(
            "INSERT INTO cards (id, customer_id, pan) VALUES (99, 1, '4111111111111111')",
            &[],
        )
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "23505");
    let detail = db.detail().unwrap();
    assert!(detail.contains("************1111"), "{detail}");
    assert_no_pan("error detail", detail);
}

#[tokio::test(flavor = "multi_thread")]
async fn row_limit_stops_the_statement_and_keeps_the_session() {
    let pg = Postgres::shared();
    let guard = FixedGuard {
        limits: RowLimits {
            max_rows: Some(10),
            max_bytes: None,
        },
        ..Default::default()
    };
    let proxy = Proxy::start(pg, guard).await;
    let client = proxy.connect().await;
    let err = client.query("SELECT * FROM orders", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("54000"), "{err}");
    assert!(db_message(&err).contains("more than 10 rows"), "{err:?}");
    let rows = client
        .query("SELECT * FROM orders LIMIT 5", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 5);
    let err = client
        .simple_query("SELECT * FROM generate_series(1, 100000)")
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("54000"));
    let n: i32 = client.query_one("SELECT 7", &[]).await.unwrap().get(0);
    assert_eq!(n, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_requests_reach_the_upstream_statement() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let client = proxy.connect().await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancelled in time")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn function_call_messages_are_denied() {
    let pg = Postgres::shared();
    let proxy = Proxy::start(pg, FixedGuard::default()).await;
    let mut s = authenticated_raw(&proxy).await;
    // FunctionCall 'F' for pg_terminate_backend (oid 2096) with one argument.
    let mut out = BytesMut::new();
    codec::write_message(&mut out, b'F', |b| {
        b.extend_from_slice(&2096i32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&4i32.to_be_bytes());
        b.extend_from_slice(b"1234");
        b.extend_from_slice(&0i16.to_be_bytes());
    });
    s.write_all(&out).await.unwrap();
    let reply = read_until_ready(&mut s).await;
    assert!(
        contains(&reply, b"C42501"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(contains(&reply, b"functionCall"));
}

async fn authenticated_raw(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, [("user", "agent"), ("database", "payments")]);
    s.write_all(&out).await.unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(buf[0], b'R');
    out.clear();
    codec::write_message(&mut out, b'p', |b| codec::put_cstr(b, TOKEN.as_bytes()));
    s.write_all(&out).await.unwrap();
    read_until_ready(&mut s).await;
    s
}

async fn read_until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&buf[..n]);
        if ends_with_ready(&all) {
            return all;
        }
    }
}

fn ends_with_ready(b: &[u8]) -> bool {
    let mut i = 0;
    let mut last = 0u8;
    while i + 5 <= b.len() {
        let len = u32::from_be_bytes([b[i + 1], b[i + 2], b[i + 3], b[i + 4]]) as usize;
        if i + 1 + len > b.len() {
            return false;
        }
        last = b[i];
        i += 1 + len;
    }
    i == b.len() && last == b'Z'
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

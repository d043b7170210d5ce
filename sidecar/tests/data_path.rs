//! The sidecar as users run it (`runtime::start` with a configuration file)
//! in front of a real PostgreSQL: identity, statement policy, masking, audit
//! and recordings together, with psql, tokio-postgres and raw protocol bytes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use cardgate_crds::audit::{VerifyOptions, verify_file};
use cardgate_e2e::pg::{PANS, PROXY_PASSWORD, Postgres, bin_dir};
use cardgate_sidecar::postgres::codec;
use support::sidecar::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const RULES: &str = r#"
rules:
  - name: session-control
    action: allow
    match: {classes: [control]}
  - name: read-order-data
    action: allow
    match: {classes: [read], tables: [public.customers, public.orders, public.cards]}
  - name: writes-need-approval
    action: requireApproval
    match: {classes: [write]}
  - name: no-ddl-or-side-effects
    action: deny
    match: {classes: [ddl, dangerous, unparseable]}
limits: {maxRows: 1000}
approval:
  settings: {approvers: {users: [alice]}, timeout: 3s}
  store: {directory: approvals}
masking:
  rules:
    - name: card-numbers
      spec: {detectors: [{type: pan}, {type: column, columns: ["*.pan"]}], action: {type: truncate}}
    - name: card-verification-values
      spec: {detectors: [{type: column, columns: ["*.cvv"]}], action: {type: "null"}}
"#;

async fn psql(addr: std::net::SocketAddr, password: &str, sql: &str) -> (String, String, bool) {
    let (password, sql) = (password.to_string(), sql.to_string());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-U",
                "agent-7",
                "-d",
                "payments",
                "-f",
                "-",
            ])
            // psql quotes the failing line of its own input (the agent's own
            // text) unless terse; what the sidecar sends is what is checked.
            .args(["-v", "VERBOSITY=terse"])
            .env("PGPASSWORD", &password)
            .env("PGSSLMODE", "disable")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.success(),
        )
    })
    .await
    .unwrap()
}

fn assert_clean(what: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    for pan in PANS {
        assert!(!text.contains(pan), "{what} contains the PAN {pan}");
    }
    assert!(
        !text.contains(PROXY_PASSWORD),
        "{what} contains the upstream password"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_session_end_to_end() {
    let pg = Postgres::shared();
    let mut sc = Running::start(pg, RULES).await;
    let token = sc.agent_token();
    let (out, err, _) = psql(
        sc.addr,
        &token,
        "SELECT id, pan, cvv, note FROM cards ORDER BY id;\n\
         SELECT '4111111111111111'::int;\n\
         DROP TABLE orders;\n\
         UPDATE orders SET status = 'refunded' WHERE id = 1;\n\
         SELECT count(*) AS orders FROM orders;\n",
    )
    .await;
    // Identity: the greeting names the authenticated agent.
    assert!(
        err.contains("cardgate: authenticated as agent-7 (groups: payments-agents)"),
        "{err}"
    );
    // Masking: BIN + last four; cvv is a NULL column; notes masked too.
    assert!(out.contains("411111******1111"), "{out}");
    assert!(out.contains("4111 11** **** 1111"), "{out}");
    assert!(out.contains("(6 rows)"), "{out}");
    // The server's own error text, masked.
    assert!(
        err.contains("value \"411111******1111\" is out of range for type integer"),
        "{err}"
    );
    // Denied DDL, with policy, rule and class; the session goes on.
    assert!(
        err.contains("cardgate: denied by AccessPolicy payments/test-policy rule 4 no-ddl-or-side-effects (ddl)"),
        "{err}"
    );
    // The write waited for approvers, nobody decided, it expired.
    assert!(
        err.contains("statement held for approval by rule 3 (writes-need-approval)"),
        "{err}"
    );
    assert!(err.contains("expired without a decision"), "{err}");
    assert!(out.contains("     50"), "{out}");
    assert_eq!(
        pg.psql(
            "payments",
            "SELECT count(*) FROM orders WHERE status = 'refunded' AND id = 1"
        )
        .trim(),
        "0"
    );
    assert_clean("psql output", out.as_bytes());
    assert_clean("psql errors", err.as_bytes());

    sc.stop().await;
    // The audit trail verifies and holds what PCI DSS 10.2.2 asks for.
    let report = verify_file(&sc.audit_log(), &VerifyOptions::default()).unwrap();
    assert!(report.ok() && report.closed, "{report}");
    let records = sc.records();
    let statements: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "statement")
        .collect();
    assert_eq!(statements.len(), 5, "{statements:#?}");
    for r in &records {
        for field in [
            "seq", "time", "event", "outcome", "origin", "prevHash", "hash",
        ] {
            assert!(!r[field].is_null(), "{field} missing in {r}");
        }
    }
    for r in &statements {
        assert_eq!(r["actor"]["subject"], "agent-7");
        assert_eq!(r["resource"]["target"], "payments-db");
        assert!(r["origin"]["session"].is_string() && r["origin"]["client"].is_string());
    }
    let drop = statements
        .iter()
        .find(|r| r["statement"]["class"] == "ddl")
        .unwrap();
    assert_eq!(drop["outcome"], "failure");
    assert_eq!(drop["statement"]["decision"], "deny");
    assert_eq!(drop["statement"]["rule"], "rule 4 (no-ddl-or-side-effects)");
    let read = statements
        .iter()
        .find(|r| {
            r["statement"]["text"]
                .as_str()
                .unwrap()
                .contains("FROM cards")
        })
        .unwrap();
    assert_eq!(read["statement"]["rows"], 6);
    assert!(
        read["statement"]["maskedValues"].as_u64().unwrap() >= 12,
        "{read}"
    );
    assert_eq!(read["resource"]["reads"][0], "public.cards");
    for event in [
        "audit.start",
        "config.loaded",
        "auth.success",
        "session.start",
        "session.end",
        "audit.stop",
    ] {
        assert!(
            records.iter().any(|r| r["event"] == event),
            "no {event} record"
        );
    }
    // No raw PAN or password in any byte written: audit, recordings.
    let files = sc.written_files();
    assert!(
        files
            .iter()
            .any(|f| f.to_string_lossy().contains("recordings")),
        "{files:?}"
    );
    for f in files {
        assert_clean(&f.display().to_string(), &std::fs::read(&f).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_refused_with_their_reason_and_audited() {
    let pg = Postgres::shared();
    let mut sc = Running::start(pg, RULES).await;
    let cases = [
        (sc.token("agent-7", &["other-team"]), "subject not allowed"),
        ("not-a-token".to_string(), "malformed"),
        (
            String::from("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."),
            "algorithm",
        ),
    ];
    for (token, reason) in cases {
        let (_, err, ok) = psql(sc.addr, &token, "SELECT 1;").await;
        assert!(!ok);
        assert!(err.contains("cardgate: authentication failed"), "{err}");
        assert!(err.to_lowercase().contains(reason), "{reason}: {err}");
        assert!(!err.contains(&token), "the token is echoed: {err}");
    }
    sc.stop().await;
    let failures: Vec<_> = sc
        .records()
        .into_iter()
        .filter(|r| r["event"] == "auth.failure")
        .collect();
    assert_eq!(failures.len(), 3);
    assert!(
        failures
            .iter()
            .all(|r| r["outcome"] == "failure" && r["message"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_shows_the_session_as_psql_did() {
    let pg = Postgres::shared();
    let mut sc = Running::start(pg, RULES).await;
    let client = sc.connect().await;
    client
        .simple_query("SELECT id, pan FROM cards WHERE id <= 2 ORDER BY id")
        .await
        .unwrap();
    let _ = client.simple_query("DROP TABLE cards").await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(200)).await;
    sc.stop().await;
    let recording = std::fs::read_dir(sc.dir.join("recordings"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .args(["replay", "--instant"])
        .arg(&recording)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SELECT id, pan FROM cards"), "{text}");
    assert!(text.contains("411111******1111"), "{text}");
    assert!(text.contains("(2 rows)"), "{text}");
    assert!(text.contains("cardgate: denied"), "{text}");
    assert_clean("replay", text.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_sessions() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, RULES).await;
    let config = sc.config(&sc.agent_token());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            let row = client
                .query_one("SELECT count(*) FROM orders WHERE id > $1", &[&(i % 50)])
                .await
                .expect("query");
            row.get::<_, i64>(0)
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap(), 50 - (i as i64 % 50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_restart_ends_sessions_cleanly_and_new_ones_work() {
    let pg = Postgres::start();
    let sc = Running::start(&pg, RULES).await;
    let client = sc.connect().await;
    assert_eq!(
        client
            .query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    pg.restart();
    let err = client.query_one("SELECT 1::int4", &[]).await.unwrap_err();
    let text = format!("{err:?}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("closed") || text.contains("08006") || text.contains("57P01"),
        "{text}"
    );
    let client = sc.connect().await;
    assert_eq!(
        client
            .query_one("SELECT 2::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_upstream_is_a_clear_error() {
    let pg = Postgres::start();
    let sc = Running::start(&pg, RULES).await;
    pg.stop();
    let err = sc
        .config(&sc.agent_token())
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:?}");
    assert!(text.contains("cannot reach the database"), "{text}");
    assert!(!text.contains(PROXY_PASSWORD));
}

async fn read_reply(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("reply in time")
        {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_gets_an_error_never_a_crash() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, RULES).await;
    // A startup packet announcing 1 GiB.
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(&[0x40, 0, 0, 0, 0, 3, 0, 0]).await.unwrap();
    let reply = read_reply(&mut s).await;
    assert!(
        contains(&reply, b"C08P01"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    // A startup packet cut short, then the client goes away.
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 40, 0, 3]).await.unwrap();
    drop(s);
    // A garbage protocol version.
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0, 9, 9, 9]).await.unwrap();
    assert!(contains(&read_reply(&mut s).await, b"C0A000"));
    // After login: an unknown message type, then a huge message.
    for bad in [vec![b'!', 0, 0, 0, 4], vec![b'Q', 0x7f, 0xff, 0xff, 0xff]] {
        let mut s = login(&sc).await;
        s.write_all(&bad).await.unwrap();
        let reply = read_reply(&mut s).await;
        assert!(
            contains(&reply, b"C08P01"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
    }
    // The sidecar still serves.
    let client = sc.connect().await;
    assert_eq!(
        client
            .query_one("SELECT 3::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        3
    );
}

async fn login(sc: &Running) -> TcpStream {
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    let mut out = BytesMut::new();
    codec::startup_message(&mut out, [("user", "agent-7"), ("database", "payments")]);
    s.write_all(&out).await.unwrap();
    let mut buf = [0u8; 9];
    s.read_exact(&mut buf).await.unwrap();
    out.clear();
    codec::write_message(&mut out, b'p', |b| {
        codec::put_cstr(b, sc.agent_token().as_bytes())
    });
    s.write_all(&out).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
        let mut b = [0u8; 1024];
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_does_not_care_how_bytes_are_chunked() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, RULES).await;
    // A startup, password and pipelined extended query, sent one byte at a time.
    let mut bytes = BytesMut::new();
    codec::startup_message(&mut bytes, [("user", "agent-7"), ("database", "payments")]);
    let startup_len = bytes.len();
    codec::write_message(&mut bytes, b'p', |b| {
        codec::put_cstr(b, sc.agent_token().as_bytes())
    });
    let password_end = bytes.len();
    codec::parse(&mut bytes, b"", "SELECT pan FROM cards WHERE id = 1");
    codec::write_message(&mut bytes, b'B', |b| {
        b.extend_from_slice(b"\0\0");
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    });
    codec::describe(&mut bytes, b'P', b"");
    codec::write_message(&mut bytes, b'E', |b| {
        b.extend_from_slice(b"\0");
        b.extend_from_slice(&0i32.to_be_bytes());
    });
    codec::write_message(&mut bytes, b'S', |_| {});
    codec::query(&mut bytes, "SELECT 'done'");
    codec::write_message(&mut bytes, b'X', |_| {});
    let mut s = TcpStream::connect(sc.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    for (i, b) in bytes.iter().enumerate() {
        s.write_all(&[*b]).await.unwrap();
        s.flush().await.unwrap();
        if i + 1 == startup_len || i + 1 == password_end {
            // Let the sidecar answer the startup phase before going on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let reply = read_reply(&mut s).await;
    assert!(
        contains(&reply, b"411111******1111"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(contains(&reply, b"done"));
    assert_clean("reply", &reply);
}

/// Reads messages until ReadyForQuery.
async fn until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) && !got.ends_with(&[b'Z', 0, 0, 0, 5, b'E']) {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_execute_runs_a_statement_prepared_by_parse_and_decides_it_by_its_text() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, RULES).await;
    let mut s = login(&sc).await;
    let mut out = BytesMut::new();
    codec::parse(&mut out, b"s1", "SELECT id, pan FROM cards WHERE id = 1");
    codec::write_message(&mut out, b'S', |_| {});
    s.write_all(&out).await.unwrap();
    let parsed = until_ready(&mut s).await;
    assert!(
        !contains(&parsed, b"C42501"),
        "{}",
        String::from_utf8_lossy(&parsed)
    );
    // The read the policy allows runs, masked by its column rule.
    out.clear();
    codec::query(&mut out, "EXECUTE s1");
    s.write_all(&out).await.unwrap();
    let reply = until_ready(&mut s).await;
    let text = String::from_utf8_lossy(&reply);
    assert!(!contains(&reply, b"C42501"), "{text}");
    assert!(contains(&reply, b"411111******1111"), "{text}");
    assert_clean("reply", &reply);
    // After Close, the name no longer refers to an allowed statement.
    out.clear();
    codec::write_message(&mut out, b'C', |b| {
        b.extend_from_slice(b"Ss1\0");
    });
    codec::write_message(&mut out, b'S', |_| {});
    s.write_all(&out).await.unwrap();
    until_ready(&mut s).await;
    out.clear();
    codec::query(&mut out, "EXECUTE s1");
    s.write_all(&out).await.unwrap();
    let reply = until_ready(&mut s).await;
    assert!(
        contains(&reply, b"C42501"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

const READ_ANYTHING: &str = r#"
rules:
  - {action: allow, match: {classes: [read, control]}}
"#;

/// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let c =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    (c.cert.pem(), c.signing_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_tls_is_verified_against_the_ca() {
    let pg = Postgres::start();
    let (cert, key) = self_signed();
    pg.enable_tls(&cert, &key);
    let tls = "    tls: {mode: verifyFull, caFile: ca.pem, serverName: localhost}";
    let sc = Running::start_with(&pg, tls, READ_ANYTHING, |d| {
        std::fs::write(d.join("ca.pem"), &cert).unwrap()
    })
    .await;
    let client = sc.connect().await;
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the sidecar's upstream connection is encrypted");
    // A server whose certificate another CA signed is refused.
    let (other, _) = self_signed();
    let sc = Running::start_with(&pg, tls, READ_ANYTHING, |d| {
        std::fs::write(d.join("ca.pem"), &other).unwrap()
    })
    .await;
    let err = sc
        .config(&sc.agent_token())
        .connect(tokio_postgres::NoTls)
        .await
        .err()
        .expect("refused");
    let text = format!("{err:?}");
    assert!(text.contains("TLS to the database failed"), "{text}");
    assert!(!text.contains(PROXY_PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_can_use_tls_to_the_sidecar() {
    let pg = Postgres::shared();
    let (cert, key) = self_signed();
    let extra =
        format!("{READ_ANYTHING}proxy: {{clientTls: {{certFile: tls.crt, keyFile: tls.key}}}}\n");
    let sc = Running::start_with(pg, "", &extra, |d| {
        std::fs::write(d.join("tls.crt"), &cert).unwrap();
        std::fs::write(d.join("tls.key"), &key).unwrap();
        std::fs::write(d.join("root.crt"), &cert).unwrap();
    })
    .await;
    let (dir, port, token) = (sc.dir.clone(), sc.addr.port(), sc.agent_token());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin_dir().join("psql"))
            .arg(format!(
                "host=localhost port={port} user=agent-7 dbname=payments sslmode=verify-full sslrootcert={}",
                dir.join("root.crt").display()
            ))
            .args(["-X", "-A", "-t", "-c", "SELECT 'over tls'"])
            .env("PGPASSWORD", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("over tls"));
}

#[tokio::test(flavor = "multi_thread")]
async fn statements_are_refused_while_the_audit_trail_is_down() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, READ_ANYTHING).await;
    let client = sc.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    // The audit log's path becomes unwritable.
    std::fs::rename(sc.audit_log(), sc.dir.join("audit.log.moved")).unwrap();
    std::fs::create_dir(sc.audit_log()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let err = loop {
        match client.simple_query("SELECT 2").await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "statements still allowed with the audit trail down"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let m = err.as_db_error().unwrap().message().to_string();
    assert!(m.contains("audit trail is unavailable"), "{m}");
}

//! Just-in-time approvals on the data path, with the local approval store:
//! a held statement runs once approved, fails with the reviewer's reason
//! when denied, is withdrawn when the agent goes away; in deferred mode an
//! approval lets the same statement run again until the grant ends.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cardgate_e2e::pg::Postgres;
use support::sidecar::Running;

fn rules(settings: &str) -> String {
    format!(
        r#"
rules:
  - {{action: allow, match: {{classes: [control, read]}}}}
  - {{name: writes, action: requireApproval, match: {{classes: [write]}}}}
approval:
  settings: {settings}
  store: {{directory: approvals}}
"#
    )
}

/// Waits for the (first) request file in the approvals directory.
async fn request(dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = std::fs::read_dir(dir.join("approvals"))
            .unwrap()
            .flatten()
            .find_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")
                    .map(str::to_string)
            });
        if let Some(name) = found {
            return name;
        }
        assert!(Instant::now() < deadline, "no approval request appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn phase(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join("approvals").join(format!("{name}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["status"]["phase"]
        .as_str()
        .unwrap_or("Pending")
        .to_string()
}

/// Runs `cardgate-sidecar approvals …` as an approver would, in a second
/// terminal.
fn approvals(config: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .arg("approvals")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "approvals {args:?}: {text}");
    text
}

/// Waits until the audit trail has a record for which `want` holds (the
/// reviews and decisions of a local store are recorded as the sidecar sees
/// the directory change).
async fn record_where(
    sc: &Running,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(r) = sc.records().into_iter().find(|r| want(r)) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no such audit record in {:#?}",
            sc.records()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn config(sc: &Running) -> PathBuf {
    sc.dir.join("cardgate.yaml")
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_write_runs_once_approved() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, &rules("{approvers: {users: [alice]}, timeout: 60s}")).await;
    let client = sc.connect().await;
    let update = tokio::spawn(async move {
        client
            .execute(
                "UPDATE orders SET memo = 'approved refund' WHERE id = 11",
                &[],
            )
            .await
    });
    let name = request(&sc.dir).await;
    assert_eq!(phase(&sc.dir, &name), "Pending");
    assert!(
        !update.is_finished(),
        "the statement must wait for the decision"
    );
    // Self-approval by the requester is refused by the store.
    let out = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .args(["approvals", "--config"])
        .arg(config(&sc))
        .args(["approve", &name, "--as", "agent-7"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    approvals(
        &config(&sc),
        &["approve", &name, "--as", "alice", "--reason", "ticket 4711"],
    );
    let rows = tokio::time::timeout(Duration::from_secs(10), update)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(
        pg.psql("payments", "SELECT memo FROM orders WHERE id = 11")
            .trim(),
        "approved refund"
    );
    assert_eq!(phase(&sc.dir, &name), "Consumed");
    let records = sc.records();
    let run = records
        .iter()
        .find(|r| r["event"] == "statement" && r["statement"]["approval"] == name.as_str())
        .expect("the statement's record names its approval");
    assert_eq!(run["outcome"], "success");
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "approval.created" && r["approval"]["name"] == name.as_str())
    );
    // Without an operator the sidecar records who reviewed, and the outcome.
    let review = record_where(&sc, |r| r["event"] == "approval.review").await;
    assert_eq!(review["actor"]["subject"], "alice");
    assert_eq!(review["approval"]["name"], name.as_str());
    assert_eq!(review["approval"]["decision"], "Approved");
    assert_eq!(review["approval"]["reason"], "ticket 4711");
    let decided = record_where(&sc, |r| {
        r["event"] == "approval.decided" && r["approval"]["decision"] == "Consumed"
    })
    .await;
    assert_eq!(decided["outcome"], "success");
    assert_eq!(decided["approval"]["name"], name.as_str());
    // Each review and outcome is recorded once, however often the sidecar
    // looks at the directory.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reviews = sc
        .records()
        .into_iter()
        .filter(|r| r["event"] == "approval.review")
        .count();
    assert_eq!(reviews, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_write_fails_with_the_reason_and_the_session_goes_on() {
    let pg = Postgres::shared();
    let sc = Running::start(
        pg,
        &rules("{approvers: {users: [alice]}, timeout: 60s, retention: 1s}"),
    )
    .await;
    let client = sc.connect().await;
    let update = tokio::spawn(async move {
        let r = client
            .execute("UPDATE orders SET memo = 'nope' WHERE id = 12", &[])
            .await;
        let after = client
            .query_one("SELECT 1::int4", &[])
            .await
            .map(|r| r.get::<_, i32>(0));
        (r, after)
    });
    let name = request(&sc.dir).await;
    approvals(
        &config(&sc),
        &[
            "deny",
            &name,
            "--as",
            "alice",
            "--reason",
            "use the refund API",
        ],
    );
    let (r, after) = tokio::time::timeout(Duration::from_secs(10), update)
        .await
        .unwrap()
        .unwrap();
    let err = r.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"));
    let m = message(&err);
    assert!(
        m.contains(&name) && m.contains("denied by alice") && m.contains("use the refund API"),
        "{m}"
    );
    assert_eq!(after.unwrap(), 1);
    assert_ne!(
        pg.psql("payments", "SELECT memo FROM orders WHERE id = 12")
            .trim(),
        "nope"
    );
    // The denial is recorded with its reviewer; once the retention ends the
    // request's final state is recorded and its file deleted.
    let decided = record_where(&sc, |r| r["event"] == "approval.decided").await;
    assert_eq!(decided["outcome"], "failure");
    assert_eq!(decided["actor"]["subject"], "alice");
    assert_eq!(decided["approval"]["decision"], "Denied");
    let gone = record_where(&sc, |r| {
        r["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("retention of 1s ended; deleting the request"))
    })
    .await;
    assert_eq!(gone["approval"]["name"], name.as_str());
    let file = sc.dir.join("approvals").join(format!("{name}.json"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while file.exists() {
        assert!(
            Instant::now() < deadline,
            "{} outlived its retention",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!approvals(&config(&sc), &["list", "--all"]).contains(&name));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_withdraws_its_request() {
    let pg = Postgres::shared();
    let sc = Running::start(pg, &rules("{approvers: {users: [alice]}, timeout: 60s}")).await;
    // psql, killed while its statement waits: the connection closes.
    let mut psql = Command::new(cardgate_e2e::pg::bin_dir().join("psql"))
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &sc.addr.port().to_string(),
            "-U",
            "agent-7",
            "-d",
            "payments",
        ])
        .args(["-c", "UPDATE orders SET memo = 'gone' WHERE id = 13"])
        .env("PGPASSWORD", sc.agent_token())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let name = request(&sc.dir).await;
    psql.kill().unwrap();
    psql.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while phase(&sc.dir, &name) != "Withdrawn" {
        assert!(Instant::now() < deadline, "still {}", phase(&sc.dir, &name));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        sc.records()
            .iter()
            .any(|r| r["event"] == "approval.withdrawn")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deferred_mode_grants_the_same_statement_until_the_grant_ends() {
    let pg = Postgres::shared();
    let sc = Running::start(
        pg,
        &rules("{approvers: {users: [alice]}, mode: deferred, grantTtl: 3s, maxUses: 2}"),
    )
    .await;
    let client = sc.connect().await;
    let sql = "UPDATE orders SET memo = memo || '+' WHERE id = 14";
    let err = client.execute(sql, &[]).await.unwrap_err();
    let m = message(&err);
    let name = request(&sc.dir).await;
    assert!(
        m.contains(&name) && m.contains("run the same statement again"),
        "{m}"
    );
    approvals(&config(&sc), &["approve", &name, "--as", "alice"]);
    assert_eq!(client.execute(sql, &[]).await.unwrap(), 1);
    // A different statement is not covered by the approval.
    assert!(
        client
            .execute("UPDATE orders SET memo = 'x' WHERE id = 15", &[])
            .await
            .is_err()
    );
    assert_eq!(client.execute(sql, &[]).await.unwrap(), 1);
    assert_eq!(phase(&sc.dir, &name), "Consumed", "two of two uses");
    // Used up: the next run asks again.
    let err = client.execute(sql, &[]).await.unwrap_err();
    assert!(
        message(&err).contains("needs approval"),
        "{}",
        message(&err)
    );
}

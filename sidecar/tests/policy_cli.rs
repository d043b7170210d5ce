//! `cardgate-sidecar check`, run as the built binary: one JSON object per
//! statement string, from `--sql` or standard input, in one session; a bad
//! configuration fails with every problem listed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

const CONFIG: &str = r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {namespace: payments, name: agent-readonly}
identity:
  issuers:
    - issuer: https://issuer.example
      audiences: [cardgate]
      jwksFile: jwks.json
  subjects:
    - group: payments-agents
    - subject: system:serviceaccount:payments:batch
targets:
  - name: payments-db
    listen: 127.0.0.1:15432
    upstream: {host: 127.0.0.1, port: 5432}
    credentials: {username: proxy, passwordFile: pw}
  - name: ledger-db
    listen: 127.0.0.1:15433
    upstream: {host: 127.0.0.1, port: 5433}
    credentials: {username: proxy, passwordFile: pw}
  - name: billing-api
    protocol: http
    listen: 127.0.0.1:18080
    upstream: {host: 127.0.0.1, port: 8080}
approval:
  settings:
    approvers: {users: [alice]}
  store: {directory: approvals}
rules:
  - {name: session, action: allow, match: {classes: [control]}}
  - {name: reads, action: allow, match: {classes: [read], tables: ["public.*"]}}
  - {name: ledger-writes, action: allow, match: {targets: [ledger-db], classes: [write]}}
  - {name: writes, action: requireApproval, match: {classes: [write]}}
  - {name: no-ddl, action: deny, match: {classes: [ddl, dangerous]}}
defaultAction: deny
"#;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new(config: &str) -> Dir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cardgate.yaml"), config).unwrap();
        Dir(dir)
    }

    fn config(&self) -> PathBuf {
        self.0.path().join("cardgate.yaml")
    }
}

fn check(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("CARDGATE_POD_NAMESPACE")
        .env_remove("CARDGATE_POD_SERVICE_ACCOUNT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn sql_argument_prints_class_relations_and_decision() {
    let dir = Dir::new(CONFIG);
    let out = lines(&check(
        &dir.config(),
        &[
            "--sql",
            "SELECT * FROM orders o JOIN payments.cards c USING (id)",
            "--sql",
            "SELECT * FROM orders",
            "--sql",
            "DROP TABLE orders",
        ],
        "",
    ));
    assert_eq!(
        out,
        [
            json!({
                "class": "read",
                "relations": {"read": ["payments.cards", "public.orders"], "write": []},
                "action": "deny",
                "rule": "defaultAction",
                "reason": "cardgate: denied by AccessPolicy payments/agent-readonly defaultAction (read)",
            }),
            json!({
                "class": "read",
                "relations": {"read": ["public.orders"], "write": []},
                "action": "allow",
                "rule": "rule 2 (reads)",
                "reason": "allowed by rule 2 (reads)",
            }),
            json!({
                "class": "ddl",
                "relations": {"read": [], "write": ["public.orders"]},
                "action": "deny",
                "rule": "rule 5 (no-ddl)",
                "reason": "cardgate: denied by AccessPolicy payments/agent-readonly rule 5 no-ddl (ddl)",
            }),
        ]
    );
}

#[test]
fn stdin_lines_share_one_session() {
    let dir = Dir::new(CONFIG);
    let input = "\
PREPARE q AS SELECT * FROM orders WHERE id = $1
EXECUTE q(1)

PREPARE d AS DELETE FROM orders
EXECUTE d
SET search_path = payments
SELECT * FROM cards
SELEC 4111111111111111
SELECT pg_read_file('/etc/passwd')
";
    let out = lines(&check(&dir.config(), &[], input));
    let summary: Vec<(String, String)> = out
        .iter()
        .map(|l| {
            (
                l["class"].as_str().unwrap().to_owned(),
                l["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("read", "allow"),
        ("read", "allow"),
        // Held for approval, so never prepared: the EXECUTE is unknown.
        ("write", "requireApproval"),
        ("unparseable", "deny"),
        ("control", "allow"),
        ("read", "deny"),
        ("unparseable", "deny"),
        ("dangerous", "deny"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(c, a)| (c.to_string(), a.to_string()))
        .collect();
    assert_eq!(summary, want);
    assert_eq!(out[1]["relations"]["read"], json!(["public.orders"]));
    assert_eq!(
        out[3]["error"],
        json!("EXECUTE names unknown prepared statement \"d\"")
    );
    assert_eq!(out[5]["relations"]["read"], json!(["payments.cards"]));
    let bad = out[6].to_string();
    assert!(bad.contains("syntax error"), "{bad}");
    assert!(!bad.contains("4111111111111111"), "{bad}");
    assert_eq!(
        out[7]["notes"],
        json!(["pg_read_file: reads or writes files on the database server"])
    );
}

#[test]
fn target_selects_the_rules_that_apply() {
    let dir = Dir::new(CONFIG);
    let sql = ["--sql", "DELETE FROM entries"];
    let default = lines(&check(&dir.config(), &sql, ""));
    assert_eq!(default[0]["action"], "requireApproval");
    let ledger = lines(&check(
        &dir.config(),
        &["--target", "ledger-db", "--sql", "DELETE FROM entries"],
        "",
    ));
    assert_eq!(ledger[0]["action"], "allow");
    assert_eq!(ledger[0]["rule"], "rule 3 (ledger-writes)");
}

#[test]
fn unknown_or_non_sql_targets_fail() {
    let dir = Dir::new(CONFIG);
    let out = check(
        &dir.config(),
        &["--target", "nope", "--sql", "SELECT 1"],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown target \"nope\""), "{err}");
    let out = check(
        &dir.config(),
        &["--target", "billing-api", "--sql", "SELECT 1"],
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a postgres target"));
}

#[test]
fn subjects_not_admitted_are_denied() {
    let dir = Dir::new(CONFIG);
    let sql = ["--sql", "SELECT * FROM orders"];
    let member = lines(&check(
        &dir.config(),
        &[
            &["--subject", "agent-7", "--group", "payments-agents"],
            &sql[..],
        ]
        .concat(),
        "",
    ));
    assert_eq!(member[0]["action"], "allow");
    let named = lines(&check(
        &dir.config(),
        &[
            &["--subject", "system:serviceaccount:payments:batch"],
            &sql[..],
        ]
        .concat(),
        "",
    ));
    assert_eq!(named[0]["action"], "allow");
    let stranger = lines(&check(
        &dir.config(),
        &[&["--subject", "agent-7", "--group", "other"], &sql[..]].concat(),
        "",
    ));
    assert_eq!(stranger[0]["action"], "deny");
    assert_eq!(stranger[0]["rule"], "identity.subjects");
    assert_eq!(
        stranger[0]["reason"],
        "cardgate: subject \"agent-7\" is not admitted by AccessPolicy payments/agent-readonly (identity.subjects)"
    );
    // The statement is still classified.
    assert_eq!(stranger[0]["class"], "read");
}

#[test]
fn invalid_configuration_lists_every_problem() {
    let broken = CONFIG
        .replace("defaultAction: deny", "defaultAction: deny\ncolour: red")
        .replace("classes: [ddl, dangerous]", "classes: [ddl, nonsense]");
    let dir = Dir::new(&broken);
    let out = check(&dir.config(), &["--sql", "SELECT 1"], "");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");
    assert!(err.contains("nonsense"), "{err}");
    let out = check(Path::new("/nonexistent/cardgate.yaml"), &[], "");
    assert!(!out.status.success());
}

//! Evidence over an export built from real sidecar runs: two sidecar
//! processes (two "pods" with their own pod identity) in front of the test
//! PostgreSQL, several sessions, masked reads, a refused statement, a failed
//! login and an approved write; their stdout interleaved and wrapped the
//! way Fluent Bit, Vector and the kubelet store it. The export verifies;
//! then each tampering is named with the record that shows it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cardgate_crds::audit::record_hash;
use cardgate_crds::evidence::{Export, FindingKind, Options, Report, examine};
use cardgate_crds::pod::{
    ENV_NODE_NAME, ENV_POD_NAME, ENV_POD_NAMESPACE, ENV_POD_SERVICE_ACCOUNT, ENV_POD_UID,
};
use cardgate_e2e::pg::{PANS, PROXY_PASSWORD, PROXY_USER, Postgres, free_port};
use cardgate_sidecar::identity::dev::{DevAlgorithm, DevKey, keygen};
use serde_json::{Value, json};

const ISSUER: &str = "https://dev.cardgate.test";

/// A sidecar process with its own pod identity and its stdout collected.
struct Pod {
    name: &'static str,
    uid: &'static str,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    key: DevKey,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Pod {
    fn start(pg: &Postgres, name: &'static str, uid: &'static str) -> Pod {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        keygen(d, DevAlgorithm::Es256, false).unwrap();
        let key =
            DevKey::from_pem(&std::fs::read_to_string(d.join("dev-signing-key.pem")).unwrap())
                .unwrap();
        std::fs::write(d.join("upstream-password"), format!("{PROXY_PASSWORD}\n")).unwrap();
        std::fs::create_dir(d.join("approvals")).unwrap();
        std::fs::set_permissions(
            d.join("approvals"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let port = free_port();
        let config = format!(
            r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {{name: agents, namespace: payments}}
identity:
  issuers: [{{issuer: {ISSUER}, audiences: [cardgate], jwksFile: dev-jwks.json}}]
  subjects: [{{group: payments-agents}}]
targets:
  - name: payments-db
    listen: 127.0.0.1:{port}
    upstream: {{host: 127.0.0.1, port: {pg_port}}}
    database: payments
    credentials: {{username: {PROXY_USER}, passwordFile: upstream-password}}
audit:
  sinks: [{{type: stdout}}]
admin: {{listen: "127.0.0.1:0"}}
rules:
  - {{name: reads, action: allow, match: {{classes: [control, read]}}}}
  - {{name: writes, action: requireApproval, match: {{classes: [write]}}}}
approval:
  settings: {{approvers: {{users: [alice]}}, timeout: 60s}}
  store: {{directory: approvals}}
"#,
            pg_port = pg.port
        );
        std::fs::write(d.join("cardgate.yaml"), config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(d.join("cardgate.yaml"))
            .env(ENV_POD_NAME, name)
            .env(ENV_POD_NAMESPACE, "payments")
            .env(ENV_POD_UID, uid)
            .env(ENV_POD_SERVICE_ACCOUNT, "agent")
            .env(ENV_NODE_NAME, "node-1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(d.join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let lines = stdout.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let pod = Pod {
            name,
            uid,
            child,
            port,
            dir,
            key,
            stdout,
        };
        pod.wait_until(|_| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        pod
    }

    fn wait_until(&self, ready: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&self.stdout.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "{}: not ready; stderr: {}",
                self.name,
                std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn connect(
        &self,
        subject: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let groups = vec!["payments-agents".to_string()];
        let token = self
            .key
            .mint(ISSUER, "cardgate", subject, &groups, 600)
            .unwrap();
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user(subject)
            .password(token)
            .dbname("payments")
            .connect(tokio_postgres::NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Stops the process as Kubernetes does (SIGTERM) and returns its
    /// stdout: the audit records.
    fn stop(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        assert!(self.child.wait().unwrap().success());
        self.wait_until(|l| l.last().is_some_and(|l| l.contains("\"audit.stop\"")));
        self.stdout.lock().unwrap().clone()
    }
}

/// A session per pod with masked reads; a refused statement; a failed
/// login; on pod A a write approved by alice in a second terminal.
async fn run_workload(a: &Pod, b: &Pod) {
    let c = a.connect("agent-7").await.unwrap();
    let rows = c
        .query("SELECT pan, note FROM cards ORDER BY id", &[])
        .await
        .unwrap();
    assert!(!rows.is_empty());
    assert!(c.batch_execute("DROP TABLE customers").await.is_err());
    let update = tokio::spawn(async move {
        c.execute("UPDATE orders SET memo = 'evidence' WHERE id = 11", &[])
            .await
    });
    let request = wait_for_request(a.dir.path()).await;
    let out = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .args(["approvals", "--config"])
        .arg(a.dir.path().join("cardgate.yaml"))
        .args([
            "approve",
            &request,
            "--as",
            "alice",
            "--reason",
            "ticket 4711",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(update.await.unwrap().unwrap(), 1);
    a.wait_until(|l| l.iter().any(|l| l.contains("\"approval.decided\"")));

    let b1 = b.connect("agent-9").await.unwrap();
    let b2 = b.connect("agent-9").await.unwrap();
    b1.query("SELECT * FROM cards", &[]).await.unwrap();
    b2.query("SELECT pan FROM cards WHERE id = 2", &[])
        .await
        .unwrap();
    b1.query("SELECT id, memo FROM orders", &[]).await.unwrap();
    let mut bad = tokio_postgres::Config::new();
    bad.host("127.0.0.1")
        .port(b.port)
        .user("agent-9")
        .password("not-a-token")
        .dbname("payments");
    assert!(bad.connect(tokio_postgres::NoTls).await.is_err());
}

async fn wait_for_request(dir: &Path) -> String {
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

/// Pod A's records as Fluent Bit writes them, pod B's as Vector does,
/// interleaved as one SIEM export.
fn siem_export(a: &[String], a_uid: &str, b: &[String], b_uid: &str) -> Vec<String> {
    let fluent = |l: &String| {
        json!({"time": "2026-12-03T04:00:00.000000001Z", "stream": "stdout", "_p": "F", "log": l,
               "kubernetes": {"pod_name": "agent-a", "namespace_name": "payments", "pod_id": a_uid}})
        .to_string()
    };
    let vector = |l: &String| {
        json!({"message": l, "source_type": "kubernetes_logs", "stream": "stdout",
               "kubernetes": {"pod_name": "agent-b", "pod_namespace": "payments", "pod_uid": b_uid}})
        .to_string()
    };
    let mut out = Vec::new();
    for i in 0..a.len().max(b.len()) {
        out.extend(a.get(i).map(fluent));
        out.extend(b.get(i).map(vector));
    }
    out
}

/// Pod A's stdout as the kubelet stores it, long lines split into P parts.
fn cri_log(lines: &[String]) -> String {
    let mut out = String::new();
    for l in lines {
        let chunks: Vec<&str> = l
            .as_bytes()
            .chunks(300)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        for (i, c) in chunks.iter().enumerate() {
            let tag = if i + 1 == chunks.len() { "F" } else { "P" };
            out.push_str(&format!(
                "2026-12-03T04:00:00.000000001Z stdout {tag} {c}\n"
            ));
        }
    }
    out
}

fn examine_lines(lines: &[String]) -> Report {
    let mut e = Export::default();
    e.read("siem.jsonl", (lines.join("\n") + "\n").as_bytes())
        .unwrap();
    examine(&e, &Options::default())
}

/// The record inside an export line.
fn inner(line: &str) -> Value {
    let v: Value = serde_json::from_str(line).unwrap();
    let text = v.get("log").or_else(|| v.get("message")).unwrap();
    serde_json::from_str(text.as_str().unwrap()).unwrap()
}

/// Replaces the record inside an export line.
fn rewrap(line: &str, record: &Value) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    let field = if v.get("log").is_some() {
        "log"
    } else {
        "message"
    };
    v[field] = Value::String(record.to_string());
    v.to_string()
}

/// Export line index of pod `pod`'s record where `want` holds.
fn find(lines: &[String], pod: &str, want: impl Fn(&Value) -> bool) -> usize {
    lines
        .iter()
        .position(|l| {
            let r = inner(l);
            r["origin"]["pod"] == pod && want(&r)
        })
        .unwrap_or_else(|| panic!("no such record of {pod}"))
}

fn only_failures(r: &Report) -> Vec<(FindingKind, usize, Option<u64>)> {
    r.findings
        .iter()
        .map(|f| (f.kind, f.records[0].at.line, f.records[0].seq))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_from_real_sidecars_verifies_and_every_tampering_is_named() {
    let pg = Postgres::shared();
    let a = Pod::start(pg, "agent-a", "0a0a0a0a-1111-4000-8000-00000000000a");
    let b = Pod::start(pg, "agent-b", "0b0b0b0b-2222-4000-8000-00000000000b");
    run_workload(&a, &b).await;
    let (a_uid, b_uid) = (a.uid, b.uid);
    let a_lines = a.stop();
    let b_lines = b.stop();

    // Every record carries its chain id and pod UID.
    for (lines, uid) in [(&a_lines, a_uid), (&b_lines, b_uid)] {
        let chain = inner_raw(&lines[0])["chain"].clone();
        assert!(chain.is_string());
        for l in lines.iter() {
            let r = inner_raw(l);
            assert_eq!(
                (&r["chain"], r["origin"]["podUid"].as_str()),
                (&chain, Some(uid)),
                "{l}"
            );
        }
    }

    // Intact, in each format.
    let siem = siem_export(&a_lines, a_uid, &b_lines, b_uid);
    let report = examine_lines(&siem);
    assert!(report.verified, "{:#?}", report.findings);
    assert_eq!(report.chains.len(), 2);
    assert!(report.chains.iter().all(|c| c.intact && c.closed));
    assert_eq!(report.summary.records, a_lines.len() + b_lines.len());
    assert!(
        report.summary.masked_values >= PANS.len() as u64,
        "{:?}",
        report.summary
    );
    assert!(report.summary.denials >= 2, "{:?}", report.summary);
    let fields = report
        .requirements
        .iter()
        .find(|q| q.id == "10.2.2")
        .unwrap();
    assert_eq!(
        fields.status,
        cardgate_crds::evidence::report::Status::Pass,
        "{fields:#?}"
    );
    let approval = &report.approvals[0];
    assert_eq!(approval.requester.as_deref(), Some("agent-7"));
    assert_eq!(approval.reviews[0].reviewer, "alice");
    assert_eq!(approval.runs.len(), 1);
    let mut cri = Export::default();
    cri.read("a.log", cri_log(&a_lines).as_bytes()).unwrap();
    let cri_report = examine(&cri, &Options::default());
    assert!(cri_report.verified, "{:#?}", cri_report.findings);
    assert_eq!(cri_report.summary.records, a_lines.len());
    let html = cardgate_crds::evidence::html::render(&report);
    for section in [
        "summary",
        "requirements",
        "findings",
        "chains",
        "approvals",
        "req-10.2.2",
    ] {
        assert!(html.contains(&format!("id=\"{section}\"")), "{section}");
    }
    // No external assets: nothing the browser would fetch.
    for fetch in ["src=", "href=", "<link", "<script", "url(", "@import"] {
        assert!(!html.contains(fetch), "{fetch}");
    }

    // A modified record: pod A's masked read, with its row count changed.
    let mut t = siem.clone();
    let i = find(&t, "agent-a", |r| {
        r["statement"]["text"]
            .as_str()
            .is_some_and(|s| s.contains("FROM cards"))
    });
    let mut r = inner(&t[i]);
    r["statement"]["rows"] = json!(0);
    t[i] = rewrap(&t[i], &r);
    let f = only_failures(&examine_lines(&t));
    assert_eq!(f, [(FindingKind::Modified, i + 1, r["seq"].as_u64())]);

    // A removed middle record of pod B.
    let mut t = siem.clone();
    let i = find(&t, "agent-b", |r| r["event"] == "statement");
    let gone = inner(&t[i]);
    t.remove(i);
    let report = examine_lines(&t);
    let next = gone["seq"].as_u64().unwrap() + 1;
    assert_eq!(only_failures(&report).len(), 1, "{:#?}", report.findings);
    assert_eq!(report.findings[0].kind, FindingKind::Missing);
    assert_eq!(report.findings[0].records[0].seq, Some(next));
    assert!(
        report.findings[0]
            .message
            .contains(gone["chain"].as_str().unwrap())
    );

    // A removed tail of pod A: its last records, audit.stop among them.
    let mut t = siem.clone();
    let stop = find(&t, "agent-a", |r| r["event"] == "audit.stop");
    let before = find(&t, "agent-a", |r| {
        r["seq"].as_u64() == inner(&siem[stop])["seq"].as_u64().map(|s| s - 2)
    });
    t.retain(|l| {
        let r = inner(l);
        r["origin"]["pod"] != "agent-a" || r["seq"].as_u64() <= inner(&siem[before])["seq"].as_u64()
    });
    let report = examine_lines(&t);
    assert_eq!(
        only_failures(&report),
        [(
            FindingKind::Unclosed,
            before + 1,
            inner(&siem[before])["seq"].as_u64()
        )]
    );
    assert!(report.findings[0].message.contains(a_uid));

    // A forged approval: the review rewritten to the requester and the rest
    // of pod A's chain resealed, so every link verifies.
    let mut t = siem.clone();
    let i = find(&t, "agent-a", |r| r["event"] == "approval.review");
    reseal_from(&mut t, i, "agent-a", |r| {
        r["actor"]["subject"] = json!("agent-7");
        r["approval"]["reviewer"] = json!("agent-7");
    });
    let report = examine_lines(&t);
    assert_eq!(
        only_failures(&report),
        [(
            FindingKind::SelfApproval,
            i + 1,
            inner(&t[i])["seq"].as_u64()
        )]
    );
    assert!(
        report.findings[0]
            .message
            .contains("reviewer equals requester")
    );

    // A raw PAN spliced into a shipper's metadata next to an intact record.
    let mut t = siem.clone();
    let i = find(&t, "agent-b", |r| r["event"] == "statement");
    let mut env: Value = serde_json::from_str(&t[i]).unwrap();
    env["kubernetes"]["annotations"] = json!({"note": format!("card {}", PANS[0])});
    t[i] = env.to_string();
    let report = examine_lines(&t);
    assert_eq!(
        only_failures(&report),
        [(FindingKind::RawPan, i + 1, inner(&t[i])["seq"].as_u64())]
    );
    assert!(!serde_json::to_string(&report).unwrap().contains(PANS[0]));
}

/// The record of a raw stdout line.
fn inner_raw(line: &str) -> Value {
    serde_json::from_str(line).unwrap()
}

/// Applies `edit` to the record at export line `from` and reseals it and
/// every later record of `pod`'s chain.
fn reseal_from(lines: &mut [String], from: usize, pod: &str, edit: impl Fn(&mut Value)) {
    let mut prev: Option<String> = None;
    for (i, line) in lines.iter_mut().enumerate().skip(from) {
        let mut r = inner(line);
        if r["origin"]["pod"] != pod {
            continue;
        }
        if i == from {
            edit(&mut r);
        }
        if let Some(p) = &prev {
            r["prevHash"] = json!(p);
        }
        let h = record_hash(&r);
        r["hash"] = json!(h);
        prev = Some(h);
        *line = rewrap(line, &r);
    }
}

//! `cardgate-sidecar approvals`, run as the built binary on a temporary
//! standalone setup: list, show, approve, deny, the refusals, concurrent
//! reviewers in separate processes, damaged files, a Kubernetes-store
//! configuration, and a directory the user cannot write.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use cardgate_crds::v1alpha1::{ApprovalMode, Requester, StatementClass};
use cardgate_sidecar::approval::{Directory, NewRequest, fingerprint};
use jiff::Timestamp;

const CONFIG: &str = r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {name: payments}
identity:
  issuers:
    - issuer: https://issuer.example
      audiences: [cardgate]
      jwksFile: jwks.json
targets:
  - name: payments-db
    listen: 127.0.0.1:15432
    upstream: {host: 127.0.0.1, port: 5432}
    credentials: {username: proxy, passwordFile: pw}
approval:
  settings:
    approvers: {users: [alice, bob], groups: [dba-oncall]}
    quorum: 2
  store: {directory: approvals}
rules:
  - {name: writes, action: requireApproval, match: {classes: [write]}}
"#;

struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new(config: &str) -> Setup {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cardgate.yaml"), config).unwrap();
        let dir = root.path().join("approvals");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Setup { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("approvals")
    }

    fn config(&self) -> PathBuf {
        self.root.path().join("cardgate.yaml")
    }

    /// A Pending request as the sidecar would write it.
    fn request(&self, statement: &str, quorum: i32) -> String {
        let req = NewRequest {
            policy: "payments".into(),
            policy_namespace: None,
            rule: "rule 1 (writes)".into(),
            target: "payments-db".into(),
            statement_masked: statement.into(),
            fingerprint: fingerprint(statement, "payments-db", "agent-7"),
            class: StatementClass::Write,
            requester: Requester {
                subject: "agent-7".into(),
                ..Requester::default()
            },
            mode: ApprovalMode::Wait,
            quorum,
            timeout: Duration::from_secs(900),
            grant_ttl: Duration::from_secs(3600),
            max_uses: 1,
        };
        Directory::open(self.dir())
            .unwrap()
            .create(&req, Timestamp::now())
            .unwrap()
            .metadata
            .name
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        approvals(&self.config(), args, Some("alice"))
    }
}

fn approvals(config: &Path, args: &[&str], user: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"));
    cmd.arg("approvals").arg("--config").arg(config).args(args);
    match user {
        Some(u) => cmd.env("USER", u),
        None => cmd.env_remove("USER"),
    };
    cmd.output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

#[test]
fn list_approve_show_and_deny() {
    let s = Setup::new(CONFIG);
    let first = s.request(
        "UPDATE cards SET status = 'blocked' WHERE pan = '4111111111111111'",
        2,
    );
    let second = s.request("DELETE FROM orders WHERE id = 42", 2);

    let listing = ok(s.run(&["list"]));
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "REQUESTER",
            "TARGET",
            "RULE",
            "AGE",
            "STATEMENT"
        ]
    );
    assert!(lines[1].starts_with(&first), "{listing}");
    assert!(lines[1].contains("Pending 0/2"), "{listing}");
    assert!(lines[1].contains("agent-7"), "{listing}");
    assert!(lines[1].contains("payments-db"), "{listing}");
    assert!(lines[1].contains("rule 1 (writes)"), "{listing}");
    assert!(
        // masked again by the store before the preview was cut
        lines[1].ends_with("UPDATE cards SET status = 'blocked' WHERE pan = '411111****…"),
        "{listing}"
    );
    assert!(!listing.contains("4111111111111111"), "{listing}");

    // $USER is the default reviewer
    assert_eq!(
        ok(s.run(&["approve", &first, "--reason", "incident 7"])),
        format!("{first}: approval by alice recorded; still pending (1 of 2 approvals)\n")
    );
    assert_eq!(
        ok(s.run(&["approve", &first, "--as", "bob"])),
        format!("{first}: approval by bob recorded; now Approved\n")
    );
    let shown = ok(s.run(&["show", &first]));
    assert!(shown.contains("Phase:       Approved"), "{shown}");
    assert!(
        shown.contains("Decision:    approved by alice, bob"),
        "{shown}"
    );
    assert!(shown.contains("  - Approved by alice at "), "{shown}");
    assert!(shown.contains(": incident 7"), "{shown}");
    assert!(shown.contains("  - Approved by bob at "), "{shown}");
    assert!(
        shown.contains("    UPDATE cards SET status = 'blocked' WHERE pan = '411111******1111'\n"),
        "{shown}"
    );
    assert!(!shown.contains("4111111111111111"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(s.run(&["show", &first, "--json"]))).unwrap();
    assert_eq!(json["kind"], "ApprovalRequest");
    assert_eq!(json["status"]["phase"], "Approved");
    assert_eq!(json["spec"]["reviews"][1]["reviewer"], "bob");

    // a denial needs --reason (clap refuses), then the first denial decides
    let out = s.run(&["deny", &second]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--reason"), "{}", stderr(&out));
    assert_eq!(
        ok(s.run(&[
            "deny",
            &second,
            "--reason",
            "not during the freeze",
            "--as",
            "bob"
        ])),
        format!("{second}: denial by bob recorded; now Denied\n")
    );
    let listing = ok(s.run(&["list"]));
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&first) && l.contains("Approved")),
        "{listing}"
    );
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&second) && l.contains("Denied")),
        "{listing}"
    );
}

#[test]
fn refusals_exit_1_with_the_reason_and_change_nothing() {
    let s = Setup::new(CONFIG);
    let name = s.request("UPDATE t SET a = 1", 1);
    let before = std::fs::read(s.dir().join(format!("{name}.json"))).unwrap();

    let out = s.run(&["approve", &name, "--as", "agent-7"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "cardgate-sidecar approvals: cardgate: agent-7 cannot approve their own request\n"
    );
    let out = s.run(&["approve", &name, "--as", "mallory"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "cardgate-sidecar approvals: cardgate: mallory is not an approver of AccessPolicy payments (approvers: users alice, bob; groups dba-oncall)\n"
    );
    let out = approvals(&s.config(), &["approve", &name], None);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "cardgate-sidecar approvals: cardgate: no reviewer name; say who you are with --as NAME\n"
    );
    let out = s.run(&["approve", "../../etc/passwd"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not a valid request name"),
        "{}",
        stderr(&out)
    );
    let out = s.run(&["approve", "payments-00000000-none"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "cardgate-sidecar approvals: approval request payments-00000000-none not found\n"
    );
    assert_eq!(
        std::fs::read(s.dir().join(format!("{name}.json"))).unwrap(),
        before
    );

    // a group claim is accepted as stated
    assert_eq!(
        ok(s.run(&["approve", &name, "--as", "dave", "--group", "dba-oncall"])),
        format!("{name}: approval by dave recorded; now Approved\n")
    );
}

#[test]
fn reviewers_in_separate_processes_do_not_lose_each_others_reviews() {
    let users: Vec<String> = (0..6).map(|i| format!("user-{i}")).collect();
    let config = CONFIG.replace(
        "users: [alice, bob]",
        &format!("users: [{}]", users.join(", ")),
    );
    let s = Setup::new(&config);
    let name = s.request("UPDATE t SET a = 2", 6);
    let mut running: Vec<_> = users
        .iter()
        .map(|u| {
            Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
                .arg("approvals")
                .arg("--config")
                .arg(s.config())
                .args(["approve", &name, "--as", u])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in &mut running {
        assert!(child.wait().unwrap().success());
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(s.run(&["show", &name, "--json"]))).unwrap();
    let mut reviewers: Vec<String> = json["spec"]["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reviewer"].as_str().unwrap().to_owned())
        .collect();
    reviewers.sort();
    assert_eq!(reviewers, users);
    assert_eq!(json["status"]["phase"], "Approved");
    assert_eq!(json["metadata"]["resourceVersion"], "7");
}

#[test]
fn damaged_files_are_listed_as_problems_after_the_good_ones() {
    let s = Setup::new(CONFIG);
    let name = s.request("UPDATE t SET a = 3", 1);
    std::fs::write(
        s.dir().join("payments-00000000-junk.json"),
        b"\x00\x01garbage",
    )
    .unwrap();
    let out = s.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).lines().nth(1).unwrap().starts_with(&name),
        "{}",
        stdout(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("payments-00000000-junk.json is not a valid ApprovalRequest"),
        "{err}"
    );
    assert!(
        err.ends_with(
            "cardgate-sidecar approvals: 1 file(s) in the approval directory could not be read\n"
        ),
        "{err}"
    );
    let out = s.run(&["show", "payments-00000000-junk"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("approval store unavailable: "),
        "{}",
        stderr(&out)
    );
}

#[test]
fn kubernetes_store_configurations_point_to_kubectl() {
    let s = Setup::new(&CONFIG.replace(
        "store: {directory: approvals}",
        "store: {kubernetes: {namespace: payments}}",
    ));
    let out = s.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "cardgate-sidecar approvals: {} keeps approval requests in Kubernetes (namespace payments): use kubectl cardgate approvals | approve NAME | deny NAME --reason …\n",
            s.config().display()
        )
    );
}

#[test]
fn a_directory_the_user_cannot_write_is_an_error() {
    let s = Setup::new(CONFIG);
    std::fs::set_permissions(s.root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(s.config(), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(s.dir(), std::fs::Permissions::from_mode(0o555)).unwrap();
    // root writes anywhere: run as nobody then
    let is_root = effective_uid() == 0;
    let mut cmd = if is_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_cardgate-sidecar"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
    };
    let out = cmd
        .arg("approvals")
        .arg("--config")
        .arg(s.config())
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        format!(
            "cardgate-sidecar approvals: approval store unavailable: cannot write approval directory {}: Permission denied (os error 13)\n",
            s.dir().display()
        )
    );
}

fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

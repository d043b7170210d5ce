//! The local directory approval store end to end: real files, real inotify,
//! real locks, reviews through the same code the `approvals` command runs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cardgate_crds::approval::review::{ReviewRefusal, Reviewer};
use cardgate_crds::config::SidecarConfig;
use cardgate_crds::v1alpha1::{
    ApprovalMode, Approvers, Decision, Phase, Requester, StatementClass,
};
use cardgate_sidecar::approval::cli::{ApprovalsArgs, ApprovalsCommand, ReviewerArgs, execute};
use cardgate_sidecar::approval::{
    Directory, Grant, LocalStore, NewRequest, Resolution, ReviewError, Store, StoreErrorKind,
    fingerprint,
};
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

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
    approvers: {users: [alice, bob, carol], groups: [dba-oncall]}
  store: {directory: approvals}
rules:
  - {name: writes, action: requireApproval, match: {classes: [write]}}
"#;

/// A temporary standalone setup: config file and a 0700 request directory.
struct Setup {
    root: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("cardgate.yaml"), CONFIG).unwrap();
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

    fn store(&self) -> LocalStore {
        LocalStore::open(self.dir()).unwrap()
    }

    fn directory(&self) -> Directory {
        Directory::open(self.dir()).unwrap()
    }

    /// `approvals approve|deny NAME --as WHO` through the command's code.
    fn cli_review(
        &self,
        name: &str,
        who: &str,
        decision: Decision,
        reason: Option<&str>,
    ) -> Result<String, String> {
        let reviewer = ReviewerArgs {
            as_user: Some(who.into()),
            groups: vec![],
        };
        let command = match decision {
            Decision::Approved => ApprovalsCommand::Approve {
                name: name.into(),
                reason: reason.map(str::to_owned),
                reviewer,
            },
            Decision::Denied => ApprovalsCommand::Deny {
                name: name.into(),
                reason: reason.unwrap_or_default().into(),
                reviewer,
            },
        };
        let args = ApprovalsArgs {
            config: Some(self.config()),
            command,
        };
        let mut out = Vec::new();
        execute(&args, Timestamp::now(), None, &mut out)
            .map(|()| String::from_utf8(out).unwrap())
            .map_err(|e| e.to_string())
    }
}

fn request(statement: &str, mode: ApprovalMode, quorum: i32, timeout: Duration) -> NewRequest {
    NewRequest {
        policy: "payments".into(),
        policy_namespace: None,
        rule: "rule 1 (writes)".into(),
        target: "payments-db".into(),
        statement_masked: statement.into(),
        fingerprint: fingerprint(statement, "payments-db", "agent-7"),
        class: StatementClass::Write,
        requester: Requester {
            subject: "agent-7".into(),
            issuer: Some("https://issuer.example".into()),
            ..Requester::default()
        },
        mode,
        quorum,
        timeout,
        grant_ttl: Duration::from_secs(3600),
        max_uses: 2,
    }
}

fn approvers() -> Approvers {
    SidecarConfig::from_text(CONFIG, "test")
        .unwrap()
        .approval
        .unwrap()
        .settings
        .approvers
}

fn who(name: &str) -> Reviewer {
    Reviewer {
        name: name.into(),
        groups: vec![],
    }
}

fn phase(dir: &Path, name: &str) -> String {
    let v: Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{name}.json"))).unwrap()).unwrap();
    v["status"]["phase"].as_str().unwrap().to_owned()
}

/// Longer than any notification takes, far shorter than the 30 s safety
/// re-read: a wait that ends within it was woken by the change itself.
const PROMPT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn request_file_is_an_approval_request_object_only_the_owner_can_read() {
    let s = Setup::new();
    let store = s.store();
    let name = store
        .create(&request(
            "UPDATE cards SET status = 'blocked' WHERE id = 7",
            ApprovalMode::Wait,
            1,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    assert!(name.starts_with(&format!(
        "payments-{}-",
        &fingerprint(
            "UPDATE cards SET status = 'blocked' WHERE id = 7",
            "payments-db",
            "agent-7"
        )[..8]
    )));
    let file = s.dir().join(format!("{name}.json"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["apiVersion"], "cardgate.dev/v1alpha1");
    assert_eq!(v["kind"], "ApprovalRequest");
    assert_eq!(v["metadata"]["name"], name.as_str());
    assert_eq!(v["metadata"]["resourceVersion"], "1");
    assert_eq!(v["metadata"]["labels"]["cardgate.dev/policy"], "payments");
    assert_eq!(
        v["spec"]["statement"]["preview"],
        "UPDATE cards SET status = 'blocked' WHERE id = 7"
    );
    assert_eq!(v["spec"]["statement"]["class"], "write");
    assert_eq!(v["spec"]["mode"], "wait");
    assert_eq!(v["spec"]["requester"]["subject"], "agent-7");
    assert_eq!(v["status"]["phase"], "Pending");
    // nothing but the request file is left behind (no temporary files)
    let names: Vec<String> = std::fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != ".lock")
        .collect();
    assert_eq!(names, [format!("{name}.json")]);
}

#[tokio::test]
async fn approval_from_another_task_wakes_the_waiter() {
    let s = Setup::new();
    let store = s.store();
    let name = store
        .create(&request(
            "DELETE FROM orders WHERE id = 1",
            ApprovalMode::Wait,
            2,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        let name = name.clone();
        async move { store.wait(&name).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = s
        .cli_review(&name, "alice", Decision::Approved, Some("ticket 12"))
        .unwrap();
    assert_eq!(
        out,
        format!("{name}: approval by alice recorded; still pending (1 of 2 approvals)\n")
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiter.is_finished(),
        "one approval of a quorum of two must not release the statement"
    );
    let out = s
        .cli_review(&name, "bob", Decision::Approved, None)
        .unwrap();
    assert_eq!(
        out,
        format!("{name}: approval by bob recorded; now Approved\n")
    );
    let resolution = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("woken by the change")
        .unwrap()
        .unwrap();
    assert_eq!(
        resolution,
        Resolution::Approved {
            name: name.clone(),
            reviewers: vec!["alice".into(), "bob".into()]
        }
    );
    assert_eq!(phase(&s.dir(), &name), "Approved");
}

#[tokio::test]
async fn denial_reaches_the_waiter_with_reviewer_and_reason() {
    let s = Setup::new();
    let store = s.store();
    let name = store
        .create(&request(
            "UPDATE accounts SET limit = 0",
            ApprovalMode::Wait,
            2,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        let name = name.clone();
        async move { store.wait(&name).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.cli_review(&name, "carol", Decision::Denied, None)
            .unwrap_err(),
        "cardgate: a denial needs a reason (deny NAME --reason …)"
    );
    assert_eq!(
        s.cli_review(
            &name,
            "carol",
            Decision::Denied,
            Some("card 4111 1111 1111 1111 is not in scope"),
        )
        .unwrap_err(),
        "cardgate: spec.reviews[0].reason holds what looks like an unmasked card number; cardgate never stores card numbers"
    );
    s.cli_review(&name, "carol", Decision::Denied, Some("not in scope"))
        .unwrap();
    let resolution = tokio::time::timeout(PROMPT, waiter)
        .await
        .expect("woken by the change")
        .unwrap()
        .unwrap();
    let Resolution::Denied {
        name: n,
        reviewer,
        reason,
    } = resolution
    else {
        panic!("expected a denial, got {resolution:?}");
    };
    assert_eq!((n.as_str(), reviewer.as_str()), (name.as_str(), "carol"));
    assert_eq!(reason, "not in scope");
    let raw = std::fs::read_to_string(s.dir().join(format!("{name}.json"))).unwrap();
    assert!(!raw.contains("4111 1111 1111 1111"));
}

#[tokio::test]
async fn undecided_request_expires_and_then_refuses_reviews() {
    let s = Setup::new();
    let store = s.store();
    let name = store
        .create(&request(
            "TRUNCATE audit_tmp",
            ApprovalMode::Wait,
            1,
            Duration::from_secs(1),
        ))
        .await
        .unwrap();
    let resolution = tokio::time::timeout(PROMPT, store.wait(&name))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resolution, Resolution::Expired { name: name.clone() });
    assert_eq!(phase(&s.dir(), &name), "Expired");
    assert_eq!(
        s.cli_review(&name, "alice", Decision::Approved, None)
            .unwrap_err(),
        format!("cardgate: {name} is already Expired; nothing can change")
    );
}

#[tokio::test]
async fn withdrawal_ends_the_wait_and_is_final() {
    let s = Setup::new();
    let store = s.store();
    let name = store
        .create(&request(
            "UPDATE t SET a = 1",
            ApprovalMode::Wait,
            1,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        let name = name.clone();
        async move { store.wait(&name).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.withdraw(&name).await.unwrap();
    let resolution = tokio::time::timeout(PROMPT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resolution, Resolution::Withdrawn { name: name.clone() });
    assert_eq!(phase(&s.dir(), &name), "Withdrawn");
    assert_eq!(
        s.cli_review(&name, "alice", Decision::Approved, None)
            .unwrap_err(),
        format!("cardgate: {name} is already Withdrawn; nothing can change")
    );
    // withdrawing a decided request changes nothing
    let other = store
        .create(&request(
            "UPDATE t SET a = 2",
            ApprovalMode::Wait,
            1,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    s.cli_review(&other, "alice", Decision::Approved, None)
        .unwrap();
    store.withdraw(&other).await.unwrap();
    assert_eq!(phase(&s.dir(), &other), "Approved");
}

#[tokio::test]
async fn deferred_grant_is_found_used_and_consumed() {
    let s = Setup::new();
    let store = s.store();
    let stmt = "UPDATE cards SET status = 'closed' WHERE id = 9";
    let req = request(stmt, ApprovalMode::Deferred, 1, Duration::from_secs(900));
    let name = store.create(&req).await.unwrap();
    assert_eq!(store.find_grant(&req.fingerprint).await.unwrap(), None);
    let err = store.record_use(&name).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::GrantUnusable);
    assert_eq!(
        err.to_string(),
        format!("approval request {name} is Pending")
    );

    s.cli_review(&name, "bob", Decision::Approved, Some("one-off fix"))
        .unwrap();
    assert_eq!(
        store.find_grant(&req.fingerprint).await.unwrap(),
        Some(Grant {
            name: name.clone(),
            uses_left: 2
        })
    );
    // another statement, target or requester is not covered
    assert_eq!(
        store
            .find_grant(&fingerprint(stmt, "payments-db", "agent-8"))
            .await
            .unwrap(),
        None
    );

    store.record_use(&name).await.unwrap();
    assert_eq!(
        store.find_grant(&req.fingerprint).await.unwrap(),
        Some(Grant {
            name: name.clone(),
            uses_left: 1
        })
    );
    store.record_use(&name).await.unwrap();
    assert_eq!(phase(&s.dir(), &name), "Consumed");
    assert_eq!(store.find_grant(&req.fingerprint).await.unwrap(), None);
    let err = store.record_use(&name).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("approval {name} is used up (2 of 2 runs)")
    );
}

#[tokio::test]
async fn deferred_grant_ends_with_its_ttl() {
    let s = Setup::new();
    let dir = s.directory();
    let req = request(
        "DELETE FROM sessions",
        ApprovalMode::Deferred,
        1,
        Duration::from_secs(900),
    );
    let now = Timestamp::now();
    let name = dir.create(&req, now).unwrap().metadata.name.unwrap();
    dir.review(
        &name,
        &approvers(),
        &who("alice"),
        Decision::Approved,
        None,
        now,
    )
    .unwrap();
    let later = now + SignedDuration::from_secs(3601);
    let err = dir.record_use(&name, later).unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::GrantUnusable);
    assert!(
        err.to_string()
            .starts_with(&format!("approval {name} expired at ")),
        "{err}"
    );
    dir.record_use(&name, now + SignedDuration::from_secs(3599))
        .unwrap();
}

#[tokio::test]
async fn concurrent_reviews_are_all_kept() {
    let s = Setup::new();
    let store = s.store();
    let reviewers: Vec<String> = (0..8).map(|i| format!("reviewer-{i}")).collect();
    let approvers = Approvers {
        users: reviewers.clone(),
        groups: vec![],
    };
    let name = store
        .create(&request(
            "UPDATE t SET a = 3",
            ApprovalMode::Wait,
            8,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        let name = name.clone();
        async move { store.wait(&name).await }
    });
    let threads: Vec<_> = reviewers
        .iter()
        .map(|r| {
            // a separate open of the directory per reviewer, like separate processes
            let dir = Directory::open(s.dir()).unwrap();
            let (name, approvers, r) = (name.clone(), approvers.clone(), r.clone());
            std::thread::spawn(move || {
                dir.review(
                    &name,
                    &approvers,
                    &who(&r),
                    Decision::Approved,
                    None,
                    Timestamp::now(),
                )
                .unwrap()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let Resolution::Approved {
        reviewers: mut got, ..
    } = tokio::time::timeout(PROMPT, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    else {
        panic!("expected an approval");
    };
    got.sort();
    assert_eq!(got, reviewers);
    let obj = s.directory().get(&name, Timestamp::now()).unwrap();
    assert_eq!(obj.spec.reviews.len(), 8);
    // one write for the creation and one per review: none was lost
    assert_eq!(obj.metadata.resource_version.as_deref(), Some("9"));
}

#[tokio::test]
async fn self_approval_and_strangers_are_refused_and_change_nothing() {
    let s = Setup::new();
    let dir = s.directory();
    let now = Timestamp::now();
    let name = dir
        .create(
            &request(
                "UPDATE t SET a = 4",
                ApprovalMode::Wait,
                1,
                Duration::from_secs(900),
            ),
            now,
        )
        .unwrap()
        .metadata
        .name
        .unwrap();
    let mut approvers = approvers();
    approvers.users.push("agent-7".into());
    let err = dir
        .review(
            &name,
            &approvers,
            &who("agent-7"),
            Decision::Approved,
            None,
            now,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cardgate: agent-7 cannot approve their own request"
    );
    let err = dir
        .review(
            &name,
            &approvers,
            &who("mallory"),
            Decision::Approved,
            None,
            now,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cardgate: mallory is not an approver of AccessPolicy payments (approvers: users alice, bob, carol, agent-7; groups dba-oncall)"
    );
    let oncall = Reviewer {
        name: "dave".into(),
        groups: vec!["dba-oncall".into()],
    };
    let obj = dir
        .review(&name, &approvers, &oncall, Decision::Approved, None, now)
        .unwrap();
    assert_eq!(obj.status.unwrap().phase, Phase::Approved);
    let err = dir
        .review(
            &name,
            &approvers,
            &who("alice"),
            Decision::Approved,
            None,
            now,
        )
        .unwrap_err();
    assert!(matches!(
        err,
        ReviewError::Refused(ReviewRefusal::Decided {
            phase: Phase::Approved,
            ..
        })
    ));
    let obj = dir.get(&name, now).unwrap();
    assert_eq!(obj.spec.reviews.len(), 1);
    assert_eq!(obj.spec.reviews[0].reviewer.as_deref(), Some("dave"));
}

#[tokio::test]
async fn damaged_files_are_reported_not_fatal() {
    let s = Setup::new();
    let store = s.store();
    let good = store
        .create(&request(
            "UPDATE t SET a = 5",
            ApprovalMode::Deferred,
            1,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    std::fs::write(s.dir().join("payments-00000000-junk.json"), b"{ not json").unwrap();
    std::fs::write(
        s.dir().join("payments-00000000-pans.json"),
        br#"{"apiVersion":"cardgate.dev/v1alpha1","kind":"ApprovalRequest","metadata":{"name":"payments-00000000-pans"},"spec":{"quorum":"4111111111111111"}}"#,
    )
    .unwrap();
    std::fs::write(s.dir().join("README.txt"), b"not a request").unwrap();

    let (requests, problems) = s.directory().list(Timestamp::now()).unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].metadata.name.as_deref(), Some(good.as_str()));
    let mut texts: Vec<String> = problems.iter().map(|p| p.error.to_string()).collect();
    texts.sort();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].contains("payments-00000000-junk.json is not a valid ApprovalRequest"),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("payments-00000000-pans.json is not a valid ApprovalRequest"),
        "{texts:?}"
    );
    assert!(
        !texts[1].contains("4111111111111111"),
        "errors are masked: {texts:?}"
    );

    let err = store.wait("payments-00000000-junk").await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(
        err.to_string().starts_with("approval store unavailable: "),
        "{err}"
    );
    // the good request still works around the damage
    s.cli_review(&good, "alice", Decision::Approved, None)
        .unwrap();
    let req = request(
        "UPDATE t SET a = 5",
        ApprovalMode::Deferred,
        1,
        Duration::from_secs(900),
    );
    assert!(store.find_grant(&req.fingerprint).await.unwrap().is_some());
    assert_eq!(
        store
            .wait("payments-00000000-none")
            .await
            .unwrap_err()
            .kind(),
        StoreErrorKind::NotFound
    );
}

#[tokio::test]
async fn unusable_directories_are_store_errors() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("nope");
    let err = LocalStore::open(&missing).err().unwrap();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert_eq!(
        err.to_string(),
        format!(
            "approval store unavailable: approval directory {0} does not exist (create it with: mkdir -m 700 {0})",
            missing.display()
        )
    );
    let file = root.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = LocalStore::open(&file).err().unwrap();
    assert!(err.to_string().ends_with("is not a directory"), "{err}");
    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = LocalStore::open(&shared).err().unwrap();
    assert!(
        err.to_string()
            .contains("is writable by other users (mode 770)"),
        "{err}"
    );

    // a directory removed under a running store fails the next operation
    let s = Setup::new();
    let store = s.store();
    std::fs::remove_dir_all(s.dir()).unwrap();
    let err = store
        .create(&request(
            "UPDATE t SET a = 6",
            ApprovalMode::Wait,
            1,
            Duration::from_secs(900),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(
        err.to_string().contains("cannot write approval directory"),
        "{err}"
    );
}

#[tokio::test]
async fn from_config_opens_the_configured_store_and_fails_closed() {
    let s = Setup::new();
    let config = SidecarConfig::load(&s.config()).unwrap();
    let store = Store::from_config(config.approval.as_ref().unwrap())
        .await
        .unwrap();
    let name = store
        .create(&request(
            "UPDATE t SET a = 7",
            ApprovalMode::Wait,
            1,
            Duration::from_secs(900),
        ))
        .await
        .unwrap();
    assert!(s.dir().join(format!("{name}.json")).exists());

    // Kubernetes store outside a pod: no token or CA to use
    let text = CONFIG.replace(
        "store: {directory: approvals}",
        "store: {kubernetes: {namespace: payments}}",
    );
    let config = SidecarConfig::from_text(&text, "test").unwrap();
    let err = Store::from_config(config.approval.as_ref().unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(
        err.to_string()
            .starts_with("approval store unavailable: cannot read the cluster CA /var/run/cardgate/tokens/kube/ca.crt"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_requests_are_refused_before_anything_is_written() {
    let s = Setup::new();
    let store = s.store();
    let mut bad = request(
        "UPDATE t SET a = 8",
        ApprovalMode::Wait,
        0,
        Duration::from_secs(900),
    );
    let err = store.create(&bad).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Invalid);
    bad.quorum = 1;
    bad.fingerprint = "../../etc".into();
    assert_eq!(
        store.create(&bad).await.unwrap_err().kind(),
        StoreErrorKind::Invalid
    );
    assert_eq!(
        store.wait("../cardgate").await.unwrap_err().kind(),
        StoreErrorKind::Invalid
    );
    let left: Vec<_> = std::fs::read_dir(s.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The directory store applies the admission webhook's review rules, not a
/// copy of them: each review below is one the webhook refuses in a cluster
/// (operator/tests/approval_admission.rs), with the same message, and it
/// leaves the request without a review.
#[tokio::test]
async fn reviews_the_admission_webhook_refuses_are_refused_here_too() {
    let s = Setup::new();
    let dir = s.directory();
    let now = Timestamp::now();
    let name = dir
        .create(
            &request(
                "UPDATE t SET a = 6",
                ApprovalMode::Wait,
                1,
                Duration::from_secs(900),
            ),
            now,
        )
        .unwrap()
        .metadata
        .name
        .unwrap();
    let long = "x".repeat(1025);
    for (decision, reason, message) in [
        (
            Decision::Approved,
            "refund card 4111 1111 1111 1111",
            "cardgate: spec.reviews[0].reason holds what looks like an unmasked card number; cardgate never stores card numbers",
        ),
        (
            Decision::Denied,
            long.as_str(),
            "cardgate: the reason is longer than 1024 characters",
        ),
    ] {
        let err = dir
            .review(
                &name,
                &approvers(),
                &who("alice"),
                decision,
                Some(reason),
                now,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), message);
    }
    let obj = dir.get(&name, now).unwrap();
    assert!(obj.spec.reviews.is_empty(), "{:?}", obj.spec.reviews);
    assert_eq!(obj.status.unwrap().phase, Phase::Pending);
}

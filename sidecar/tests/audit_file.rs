//! The file sink: chains that verify, reopening, refusing damaged logs,
//! concurrency, durability and failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardgate_crds::audit::{
    AuditRecord, EventKind, Origin, Outcome, StatementDetails, VerifyOptions, verify_file,
};
use cardgate_crds::config::{AuditConfig, AuditSink, AuditSinkType, FsyncPolicy};
use cardgate_crds::v1alpha1::{RuleAction, StatementClass};
use cardgate_sidecar::admin::Metrics;
use cardgate_sidecar::audit::{AuditError, AuditLog, AuditOptions};
use serde_json::Value;

fn file_config(path: &Path, fsync: FsyncPolicy) -> AuditConfig {
    AuditConfig {
        sinks: vec![AuditSink {
            kind: AuditSinkType::File,
            path: Some(path.display().to_string()),
            fsync,
            url: None,
            ca_file: None,
            token_file: None,
        }],
        recordings_dir: None,
    }
}

fn origin() -> Origin {
    Origin {
        component: "sidecar".into(),
        pod: Some("agent-0".into()),
        ..Origin::default()
    }
}

fn statement(marker: &str) -> AuditRecord {
    let mut r = AuditRecord::new(EventKind::Statement, Outcome::Success, origin());
    r.statement = Some(StatementDetails {
        text: format!("SELECT '{marker}'"),
        class: StatementClass::Read,
        decision: RuleAction::Allow,
        rule: "rule 1".into(),
        protocol: Some("simple".into()),
        rows: Some(1),
        bytes: Some(10),
        duration_us: Some(42),
        masked_values: Some(0),
        sqlstate: None,
        approval: None,
    });
    r.message = Some(marker.into());
    r
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn verified(path: &Path) -> cardgate_crds::audit::VerifyReport {
    let report = verify_file(path, &VerifyOptions::default()).unwrap();
    assert!(report.ok(), "{report}");
    report
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn file_sink_writes_a_chain_that_verifies() {
    let d = dir();
    let path = d.path().join("audit.log");
    let log = AuditLog::open(&file_config(&path, FsyncPolicy::Always), origin())
        .await
        .unwrap();
    for i in 0..100 {
        log.record(statement(&format!("s{i}"))).unwrap();
    }
    log.close().await.unwrap();

    let report = verified(&path);
    assert_eq!(report.records, 102);
    assert!(report.closed, "the last record is audit.stop");
    let records = lines(&path);
    assert_eq!(records[0]["event"], "audit.start");
    assert_eq!(records[0]["origin"]["pod"], "agent-0");
    assert_eq!(records[1]["message"], "s0");
    assert_eq!(records[100]["message"], "s99");
    assert_eq!(records[101]["event"], "audit.stop");
}

#[tokio::test]
async fn reopening_continues_the_chain() {
    let d = dir();
    let path = d.path().join("audit.log");
    let cfg = file_config(&path, FsyncPolicy::Batch);
    let log = AuditLog::open(&cfg, origin()).await.unwrap();
    log.record(statement("first run")).unwrap();
    log.close().await.unwrap();
    let first = lines(&path);
    let stop = first.last().unwrap().clone();

    let log = AuditLog::open(&cfg, origin()).await.unwrap();
    log.record(statement("second run")).unwrap();
    log.close().await.unwrap();

    let report = verified(&path);
    assert_eq!(report.records, 6);
    let all = lines(&path);
    let restart = &all[first.len()];
    assert_eq!(restart["event"], "audit.start");
    assert_eq!(restart["seq"], stop["seq"].as_u64().unwrap() + 1);
    assert_eq!(restart["prevHash"], stop["hash"]);
    // One chain, one id, across the restart.
    assert!(stop["chain"].is_string(), "{stop}");
    assert!(all.iter().all(|r| r["chain"] == stop["chain"]), "{all:?}");
    assert!(
        restart["message"]
            .as_str()
            .unwrap()
            .contains("continuing the chain"),
        "{restart}"
    );
}

#[tokio::test]
async fn reopening_a_large_log_reads_only_its_tail_and_continues() {
    let d = dir();
    let path = d.path().join("audit.log");
    let cfg = file_config(&path, FsyncPolicy::Never);
    let log = AuditLog::open(&cfg, origin()).await.unwrap();
    let filler = "x".repeat(3000);
    for i in 0..800 {
        log.record(statement(&format!("{i}{filler}"))).unwrap();
    }
    log.close().await.unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 2 << 20);

    let log = AuditLog::open(&cfg, origin()).await.unwrap();
    log.close().await.unwrap();
    assert_eq!(verified(&path).records, 804);
}

async fn write_log(path: &Path, n: usize) {
    let log = AuditLog::open(&file_config(path, FsyncPolicy::Never), origin())
        .await
        .unwrap();
    for i in 0..n {
        log.record(statement(&format!("s{i}"))).unwrap();
    }
    log.close().await.unwrap();
}

#[tokio::test]
async fn a_modified_log_is_refused_and_left_untouched() {
    let d = dir();
    let path = d.path().join("audit.log");
    write_log(&path, 10).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = text.replacen("SELECT 's4'", "SELECT 's5'", 1);
    assert_ne!(text, tampered);
    std::fs::write(&path, &tampered).unwrap();

    let err = AuditLog::open(&file_config(&path, FsyncPolicy::Always), origin())
        .await
        .unwrap_err();
    match &err {
        AuditError::Corrupt { problem, .. } => {
            assert!(problem.contains("seq=6"), "{problem}");
            assert!(problem.contains("modified"), "{problem}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    assert!(err.to_string().contains("move it aside"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), tampered);
}

#[tokio::test]
async fn a_log_cut_off_mid_record_is_refused() {
    let d = dir();
    let path = d.path().join("audit.log");
    write_log(&path, 3).await;
    let bytes = std::fs::read(&path).unwrap();
    let cut = &bytes[..bytes.len() - 40];
    std::fs::write(&path, cut).unwrap();

    let err = AuditLog::open(&file_config(&path, FsyncPolicy::Always), origin())
        .await
        .unwrap_err();
    let AuditError::Corrupt { problem, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert!(problem.contains("cut off"), "{problem}");
    assert!(problem.contains("after seq=4"), "{problem}");
    assert_eq!(std::fs::read(&path).unwrap(), cut);
}

#[tokio::test]
async fn a_damaged_tail_of_a_large_log_is_named_by_its_line_in_the_whole_file() {
    let d = dir();
    let path = d.path().join("audit.log");
    let log = AuditLog::open(&file_config(&path, FsyncPolicy::Never), origin())
        .await
        .unwrap();
    let filler = "y".repeat(3000);
    for i in 0..600 {
        log.record(statement(&format!("{i}{filler}"))).unwrap();
    }
    log.close().await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let tampered = text.replacen("\"599y", "\"598y", 1);
    std::fs::write(&path, tampered).unwrap();

    let err = AuditLog::open(&file_config(&path, FsyncPolicy::Always), origin())
        .await
        .unwrap_err();
    let AuditError::Corrupt { problem, .. } = &err else {
        panic!("expected Corrupt, got {err}");
    };
    assert!(problem.contains("line 601"), "{problem}");
}

#[tokio::test]
async fn a_directory_or_a_device_is_not_a_log() {
    let d = dir();
    let err = AuditLog::open(&file_config(d.path(), FsyncPolicy::Always), origin())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a directory"), "{err}");

    let err = AuditLog::open(
        &file_config(Path::new("/dev/null"), FsyncPolicy::Always),
        origin(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    let missing: PathBuf = d.path().join("no/such/dir/audit.log");
    let err = AuditLog::open(&file_config(&missing, FsyncPolicy::Always), origin())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_records_form_one_chain() {
    let d = dir();
    let path = d.path().join("audit.log");
    let log = Arc::new(
        AuditLog::open(&file_config(&path, FsyncPolicy::Batch), origin())
            .await
            .unwrap(),
    );
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..500 {
                    if i % 50 == 0 {
                        log.record_durable(statement(&format!("t{t}-{i}")))
                            .await
                            .unwrap();
                    } else {
                        log.record(statement(&format!("t{t}-{i}"))).unwrap();
                    }
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    Arc::into_inner(log).unwrap().close().await.unwrap();

    assert_eq!(verified(&path).records, 16 * 500 + 2);
    let records = lines(&path);
    for t in 0..16 {
        let seqs: Vec<u64> = records
            .iter()
            .filter(|r| {
                r["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&format!("t{t}-")))
            })
            .map(|r| r["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs.len(), 500, "task {t}");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "task {t}: records keep their order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_durable_returns_once_the_record_is_in_the_file() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        let d = dir();
        let path = d.path().join("audit.log");
        let log = Arc::new(
            AuditLog::open(&file_config(&path, policy), origin())
                .await
                .unwrap(),
        );
        for i in 0..20 {
            let marker = format!("durable-{i}");
            log.record_durable(statement(&marker)).await.unwrap();
            let on_disk = lines(&path);
            assert_eq!(
                on_disk.last().unwrap()["message"],
                marker.as_str(),
                "{policy:?}"
            );
        }
        // Group commit: many sessions waiting at once all get their answer.
        let waiting: Vec<_> = (0..64)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.record_durable(statement(&format!("g{i}"))).await })
            })
            .collect();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(lines(&path).len(), 1 + 20 + 64);
        Arc::into_inner(log).unwrap().close().await.unwrap();
        verified(&path);
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric_line(metrics: &Metrics, name: &str) -> String {
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name}"))
        .to_string()
}

#[tokio::test]
async fn a_replaced_log_fails_closed_and_the_outage_is_recorded_after_recovery() {
    let d = dir();
    let path = d.path().join("audit.log");
    let metrics = Metrics::new();
    let log = AuditLog::open_with(
        &file_config(&path, FsyncPolicy::Always),
        origin(),
        AuditOptions {
            metrics: metrics.audit(),
            ..AuditOptions::default()
        },
    )
    .await
    .unwrap();
    log.record(statement("before")).unwrap();
    assert!(log.healthy());

    // Someone moves the log away and puts a directory in its place.
    let moved = d.path().join("moved.log");
    std::fs::rename(&path, &moved).unwrap();
    std::fs::create_dir(&path).unwrap();
    let _ = log.record(statement("in flight"));
    wait_until("the trail to turn unhealthy", || !log.healthy()).await;

    let err = log.record(statement("refused")).unwrap_err();
    assert!(
        matches!(&err, AuditError::Unhealthy(m) if m.contains("replaced")),
        "{err}"
    );
    let err = log
        .record_durable(statement("refused too"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::Unhealthy(_)), "{err}");
    assert_eq!(
        metric_line(&metrics, "cardgate_audit_healthy"),
        "cardgate_audit_healthy 0"
    );
    assert_eq!(
        metric_line(&metrics, "cardgate_audit_failures_total"),
        r#"cardgate_audit_failures_total{sink="file"} 1"#
    );
    assert_eq!(
        metric_line(&metrics, "cardgate_audit_refused_total"),
        "cardgate_audit_refused_total 2"
    );

    // The file comes back: the trail catches up and accepts records again.
    std::fs::remove_dir(&path).unwrap();
    std::fs::rename(&moved, &path).unwrap();
    wait_until("the trail to recover", || log.healthy()).await;
    assert_eq!(
        metric_line(&metrics, "cardgate_audit_healthy"),
        "cardgate_audit_healthy 1"
    );
    log.record(statement("after")).unwrap();
    log.close().await.unwrap();

    verified(&path);
    let records = lines(&path);
    let events: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap(),
                r["message"].as_str().unwrap_or(""),
            )
        })
        .collect();
    let pos = |pred: &dyn Fn(&(&str, &str)) -> bool| events.iter().position(pred).unwrap();
    let paused = pos(&|(e, m)| *e == "audit.stop" && m.contains("paused"));
    let resumed = pos(&|(e, m)| *e == "audit.start" && m.contains("resumed"));
    let after = pos(&|(_, m)| *m == "after");
    assert!(pos(&|(_, m)| *m == "in flight") < paused);
    assert!(paused < resumed && resumed < after, "{events:?}");
    assert!(
        events[resumed].1.contains("2 events were refused"),
        "{events:?}"
    );
    assert!(!events.iter().any(|(_, m)| m.starts_with("refused")));
}

#[tokio::test]
async fn a_full_queue_refuses_records_then_recovers_and_keeps_every_accepted_one() {
    let d = dir();
    let path = d.path().join("audit.log");
    let metrics = Metrics::new();
    let log = AuditLog::open_with(
        &file_config(&path, FsyncPolicy::Always),
        origin(),
        AuditOptions {
            metrics: metrics.audit(),
            queue_capacity: 4,
            ..AuditOptions::default()
        },
    )
    .await
    .unwrap();
    // Each batch waits for an fsync, so a tight loop outruns the writer.
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..5_000 {
        match log.record(statement(&format!("b{i}"))) {
            Ok(()) => accepted += 1,
            Err(AuditError::Backlog(_)) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(refused > 0, "the queue limit was never reached");
    wait_until("the queue to drain", || log.healthy()).await;
    log.record(statement("after the backlog")).unwrap();
    log.close().await.unwrap();

    assert_eq!(verified(&path).records, accepted + 3);
    assert_eq!(
        metric_line(&metrics, "cardgate_audit_refused_total"),
        format!("cardgate_audit_refused_total {refused}")
    );
    assert!(
        metrics
            .encode()
            .contains(r#"cardgate_audit_failures_total{sink="queue"}"#)
    );
}

#[test]
fn the_log_is_shared_across_session_tasks() {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<AuditLog>();
}

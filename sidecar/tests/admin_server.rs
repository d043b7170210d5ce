//! The admin endpoint over real HTTP: metric families after increments,
//! readiness flipping with its flags and with the audit trail's health.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardgate_crds::audit::{AuditRecord, EventKind, Origin, Outcome};
use cardgate_crds::config::{AuditConfig, AuditSink, AuditSinkType, FsyncPolicy};
use cardgate_crds::v1alpha1::{RuleAction, StatementClass};
use cardgate_sidecar::admin::{AdminServer, Metrics, Readiness};
use cardgate_sidecar::audit::{AuditLog, AuditOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 GET; returns status code, headers and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn metrics_show_every_family_after_increments() {
    let metrics = Arc::new(Metrics::new());
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        Readiness::new(),
    )
    .await
    .unwrap();
    let _session = metrics.session();
    metrics
        .statement(StatementClass::Read, RuleAction::Allow)
        .inc();
    metrics
        .statement(StatementClass::Ddl, RuleAction::Deny)
        .inc();
    metrics.auth_failure("expired");
    metrics.masked_values.inc_by(3);
    metrics.upstream_error("connect");
    metrics.observe_overhead(Duration::from_micros(50));

    let (status, head, body) = get(server.local_addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    for expected in [
        "# TYPE cardgate_sessions_active gauge",
        "cardgate_sessions_active 1",
        "cardgate_sessions_total 1",
        r#"cardgate_statements_total{class="read",decision="allow"} 1"#,
        r#"cardgate_statements_total{class="ddl",decision="deny"} 1"#,
        r#"cardgate_statements_total{class="write",decision="requireApproval"} 0"#,
        r#"cardgate_auth_failures_total{reason="expired"} 1"#,
        "cardgate_masked_values_total 3",
        r#"cardgate_upstream_errors_total{reason="connect"} 1"#,
        "# TYPE cardgate_statement_overhead_seconds histogram",
        r#"cardgate_statement_overhead_seconds_bucket{le="0.0001"} 1"#,
        "cardgate_statement_overhead_seconds_count 1",
        "cardgate_audit_records_total 0",
        "cardgate_audit_healthy 1",
        "# EOF",
    ] {
        assert!(body.contains(expected), "missing {expected:?} in\n{body}");
    }
    let (status, _, body) = get(server.local_addr(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(server.local_addr(), "/other").await.0, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn readyz_follows_the_flags_and_the_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let config = readiness.flag("config");
    let listeners = readiness.flag("listeners");
    let server = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        metrics.clone(),
        readiness.clone(),
    )
    .await
    .unwrap();
    let addr = server.local_addr();

    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body, "not ready\nconfig: failing\nlisteners: failing\n");

    config.set(true);
    let log = Arc::new(
        AuditLog::open_with(
            &AuditConfig {
                sinks: vec![AuditSink {
                    kind: AuditSinkType::File,
                    path: Some(path.display().to_string()),
                    fsync: FsyncPolicy::Always,
                    url: None,
                    ca_file: None,
                    token_file: None,
                }],
                recordings_dir: None,
            },
            Origin::default(),
            AuditOptions {
                metrics: metrics.audit(),
                ..AuditOptions::default()
            },
        )
        .await
        .unwrap(),
    );
    let probe = log.clone();
    readiness.probe("audit", move || probe.healthy());
    assert_eq!(get(addr, "/readyz").await.0, 503, "listeners not bound yet");
    listeners.set(true);
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body, "ready\nconfig: ok\nlisteners: ok\naudit: ok\n");

    // The audit log is replaced by a directory: the trail fails, so does readiness.
    std::fs::rename(&path, dir.path().join("moved")).unwrap();
    std::fs::create_dir(&path).unwrap();
    let _ = log.record(AuditRecord::new(
        EventKind::SessionStart,
        Outcome::Success,
        Origin::default(),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, body) = get(addr, "/readyz").await;
        if status == 503 {
            assert!(body.contains("audit: failing"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readiness never failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (_, _, body) = get(addr, "/metrics").await;
    assert!(body.contains("cardgate_audit_healthy 0"), "{body}");
    // audit.start, the record, and the trail's own "paused" record.
    assert!(body.contains("cardgate_audit_records_total 3"), "{body}");
    assert!(
        body.contains(r#"cardgate_audit_failures_total{sink="file"} 1"#),
        "{body}"
    );
}

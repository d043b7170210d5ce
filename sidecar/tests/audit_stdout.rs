//! The stdout sink, seen from outside the process: one JSON record per
//! line, never mixed with the process's other output, forming one chain.
//!
//! Runs without the test harness because the harness writes to stdout too:
//! the test re-executes itself as a child whose stdout it inspects.

use std::process::Command;

use cardgate_crds::audit::{AuditRecord, EventKind, Origin, Outcome, VerifyOptions, verify};
use cardgate_crds::config::{AuditConfig, AuditSink, AuditSinkType, FsyncPolicy};
use cardgate_sidecar::audit::AuditLog;

const CHILD: &str = "CARDGATE_AUDIT_STDOUT_CHILD";
const TASKS: usize = 8;
const PER_TASK: usize = 200;
const NOISE: usize = 500;

fn main() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut records = Vec::new();
    let mut noise = 0;
    for line in stdout.lines() {
        if let Some(n) = line.strip_prefix("noise ") {
            assert!(n.parse::<usize>().is_ok(), "mangled line: {line:?}");
            noise += 1;
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON record per line ({e}): {line:?}"));
        assert!(v.is_object(), "{line}");
        records.push(line.to_string());
    }
    assert_eq!(noise, NOISE);
    let joined = records.join("\n") + "\n";
    let report = verify(joined.as_bytes(), &VerifyOptions::default()).unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(report.records as usize, TASKS * PER_TASK + 2);
    assert!(report.closed);
    println!("audit_stdout: 1 passed, 0 failed");
}

fn child() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = AuditConfig {
            sinks: vec![AuditSink {
                kind: AuditSinkType::Stdout,
                path: None,
                fsync: FsyncPolicy::default(),
                url: None,
                ca_file: None,
                token_file: None,
            }],
            recordings_dir: None,
        };
        let origin = Origin {
            component: "sidecar".into(),
            ..Origin::default()
        };
        let log = std::sync::Arc::new(AuditLog::open(&cfg, origin.clone()).await.unwrap());
        let noise = std::thread::spawn(|| {
            for i in 0..NOISE {
                println!("noise {i}");
                eprintln!("diagnostics go to stderr {i}");
            }
        });
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| {
                let log = log.clone();
                let origin = origin.clone();
                tokio::spawn(async move {
                    for i in 0..PER_TASK {
                        let mut r = AuditRecord::new(
                            EventKind::Statement,
                            Outcome::Success,
                            origin.clone(),
                        );
                        r.message = Some(format!("t{t} r{i} {}", "z".repeat(i * 7)));
                        log.record(r).unwrap();
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        noise.join().unwrap();
        std::sync::Arc::into_inner(log)
            .unwrap()
            .close()
            .await
            .unwrap();
    });
}

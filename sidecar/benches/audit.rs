//! Audit trail and recording costs.
//!
//! - `record/caller`: what `AuditLog::record` costs the statement's own
//!   thread (health check + enqueue); sealing and writing happen elsewhere.
//! - `record/seal`: what the writer thread spends to chain, hash and
//!   serialize one statement record.
//! - `throughput/*`: records per second through the writer thread to a file
//!   (seal, hash, write, fsync per policy), until the last one is durable.
//! - `durable/always-64-sessions`: 64 sessions each waiting for its record
//!   under `fsync: always` — group commit shares one fsync among them.
//! - `recording/row`: one recorded result row on the session's thread.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cardgate_crds::audit::{
    Actor, AuditRecord, Chain, EventKind, Origin, Outcome, Resource, StatementDetails,
};
use cardgate_crds::config::{AuditConfig, AuditSink, AuditSinkType, FsyncPolicy};
use cardgate_crds::v1alpha1::{RuleAction, StatementClass};
use cardgate_sidecar::audit::{AuditLog, AuditOptions};
use cardgate_sidecar::recording::{RecordingLimits, Recordings, SessionInfo};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn record() -> AuditRecord {
    let origin = Origin {
        component: "sidecar".into(),
        namespace: Some("payments".into()),
        pod: Some("agent-7d9f".into()),
        session: Some("s-1234".into()),
        client: Some("127.0.0.1:50512".into()),
        ..Origin::default()
    };
    let mut r = AuditRecord::new(EventKind::Statement, Outcome::Success, origin);
    r.statement = Some(StatementDetails {
        text: "SELECT id, pan, expiry FROM cards WHERE customer_id = $1".into(),
        class: StatementClass::Read,
        decision: RuleAction::Allow,
        rule: "rule 1".into(),
        protocol: Some("extended".into()),
        rows: Some(3),
        bytes: Some(180),
        duration_us: Some(412),
        masked_values: Some(3),
        sqlstate: None,
        approval: None,
    });
    r.policy = Some("payments/agent-readonly".into());
    r.actor = Some(Actor {
        subject: "system:serviceaccount:payments:agent".into(),
        issuer: Some("https://kubernetes.default.svc.cluster.local".into()),
        groups: vec!["system:serviceaccounts".into()],
    });
    r.resource = Some(Resource {
        target: Some("payments-db".into()),
        database: Some("payments".into()),
        reads: vec!["public.cards".into()],
        ..Resource::default()
    });
    r
}

fn open(rt: &tokio::runtime::Runtime, dir: &std::path::Path, fsync: FsyncPolicy) -> AuditLog {
    let cfg = AuditConfig {
        sinks: vec![AuditSink {
            kind: AuditSinkType::File,
            path: Some(dir.join(format!("{fsync:?}.log")).display().to_string()),
            fsync,
            url: None,
            ca_file: None,
            token_file: None,
        }],
        recordings_dir: None,
    };
    rt.block_on(AuditLog::open_with(
        &cfg,
        Origin::default(),
        AuditOptions {
            queue_capacity: 1 << 20,
            ..AuditOptions::default()
        },
    ))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let template = record();

    let log = open(&rt, dir.path(), FsyncPolicy::Never);
    let mut g = c.benchmark_group("record");
    g.throughput(Throughput::Elements(1));
    let mut chain = Chain::default();
    g.bench_function("seal", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |r| chain.seal(black_box(r)),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("caller", |b| {
        b.iter_custom(|iters| {
            // Time only the calls; let the writer drain between bursts so
            // the queue never fills.
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let burst = left.min(10_000);
                let records: Vec<AuditRecord> = (0..burst).map(|_| template.clone()).collect();
                let start = Instant::now();
                for r in records {
                    log.record(black_box(r)).unwrap();
                }
                spent += start.elapsed();
                rt.block_on(log.record_durable(template.clone())).unwrap();
                left -= burst;
            }
            spent
        });
    });
    g.finish();
    rt.block_on(log.close()).unwrap();

    let mut g = c.benchmark_group("throughput");
    const N: u64 = 20_000;
    g.throughput(Throughput::Elements(N));
    g.sample_size(10);
    for policy in [FsyncPolicy::Never, FsyncPolicy::Batch, FsyncPolicy::Always] {
        let log = open(&rt, dir.path(), policy);
        g.bench_function(format!("{policy:?}").to_lowercase(), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let records: Vec<AuditRecord> = (0..N).map(|_| template.clone()).collect();
                    let start = Instant::now();
                    for r in records {
                        log.record(r).unwrap();
                    }
                    rt.block_on(log.record_durable(template.clone())).unwrap();
                    spent += start.elapsed();
                }
                spent
            });
        });
        rt.block_on(log.close()).unwrap();
    }
    g.finish();

    let mut g = c.benchmark_group("durable");
    g.sample_size(10);
    const SESSIONS: u64 = 64;
    g.throughput(Throughput::Elements(SESSIONS));
    let log = Arc::new(open(&rt, dir.path(), FsyncPolicy::Always));
    g.bench_function("always-64-sessions", |b| {
        b.iter(|| {
            rt.block_on(async {
                let waiting: Vec<_> = (0..SESSIONS)
                    .map(|_| {
                        let log = log.clone();
                        let r = template.clone();
                        tokio::spawn(async move { log.record_durable(r).await })
                    })
                    .collect();
                for w in waiting {
                    w.await.unwrap().unwrap();
                }
            })
        });
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("always-1-session", |b| {
        b.iter(|| rt.block_on(log.record_durable(template.clone())).unwrap());
    });
    g.finish();
    rt.block_on(Arc::into_inner(log).unwrap().close()).unwrap();

    let recordings = Recordings::open(
        dir.path().join("rec"),
        RecordingLimits {
            max_rows_per_statement: u64::MAX,
            max_bytes_per_session: u64::MAX,
        },
    )
    .unwrap();
    let mut rec = recordings
        .start(&SessionInfo {
            session: "bench",
            subject: "agent",
            target: "payments",
            database: Some("shop"),
            client: None,
        })
        .unwrap();
    let row: [Option<&[u8]>; 4] = [
        Some(b"1042"),
        Some(b"411111******1111"),
        Some(b"12/29"),
        None,
    ];
    let mut g = c.benchmark_group("recording");
    g.throughput(Throughput::Elements(1));
    g.bench_function("row", |b| b.iter(|| rec.row(black_box(row))));
    g.finish();
    rec.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

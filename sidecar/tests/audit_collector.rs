//! The collector sink against a real HTTPS server (rcgen certificates,
//! rustls, hyper): records arrive in chain order with the bearer token; a
//! collector that fails turns the trail unhealthy without losing records.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cardgate_crds::audit::{AuditRecord, EventKind, Origin, Outcome, VerifyOptions, verify};
use cardgate_crds::config::{AuditConfig, AuditSink, AuditSinkType, FsyncPolicy};
use cardgate_sidecar::audit::{AuditError, AuditLog, AuditOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

#[derive(Clone, Debug)]
struct Received {
    path: String,
    content_type: String,
    authorization: String,
    body: Vec<u8>,
    answered: u16,
}

struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    dir: tempfile::TempDir,
}

impl Collector {
    async fn start() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cardgate test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("token"), "test-token\n").unwrap();

        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (r, s) = (received.clone(), status.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let (r, s) = (r.clone(), s.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (r, s) = (r.clone(), s.clone());
                        async move {
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .map(|v| v.to_str().unwrap().to_string())
                                    .unwrap_or_default()
                            };
                            let path = req.uri().path().to_string();
                            let content_type = header("content-type");
                            let authorization = header("authorization");
                            let body = req.into_body().collect().await?.to_bytes().to_vec();
                            let answered = s.load(Ordering::SeqCst);
                            r.lock().unwrap().push(Received {
                                path,
                                content_type,
                                authorization,
                                body,
                                answered,
                            });
                            let mut resp = Response::new(Full::new(Bytes::from_static(b"noted")));
                            *resp.status_mut() = StatusCode::from_u16(answered).unwrap();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            status,
            dir,
        }
    }

    fn sink(&self) -> AuditSink {
        AuditSink {
            kind: AuditSinkType::Collector,
            path: None,
            fsync: FsyncPolicy::default(),
            url: Some(format!("https://localhost:{}", self.addr.port())),
            ca_file: Some(self.path("ca.pem").display().to_string()),
            token_file: Some(self.path("token").display().to_string()),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Everything the collector accepted, in order.
    fn accepted_lines(&self) -> Vec<u8> {
        self.received()
            .into_iter()
            .filter(|r| r.answered < 300)
            .flat_map(|r| r.body)
            .collect()
    }
}

fn config(sinks: Vec<AuditSink>) -> AuditConfig {
    AuditConfig {
        sinks,
        recordings_dir: None,
    }
}

fn origin() -> Origin {
    Origin {
        component: "sidecar".into(),
        ..Origin::default()
    }
}

fn event(marker: &str) -> AuditRecord {
    let mut r = AuditRecord::new(EventKind::SessionStart, Outcome::Success, origin());
    r.message = Some(marker.into());
    r
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn verified(bytes: &[u8]) -> cardgate_crds::audit::VerifyReport {
    let report = verify(bytes, &VerifyOptions::default()).unwrap();
    assert!(report.ok(), "{report}");
    report
}

#[tokio::test]
async fn the_collector_receives_every_record_with_the_bearer_token() {
    let c = Collector::start().await;
    let log = AuditLog::open(&config(vec![c.sink()]), origin())
        .await
        .unwrap();
    for i in 0..50 {
        log.record(event(&format!("e{i}"))).unwrap();
    }
    wait_until("the first records to arrive", || !c.received().is_empty()).await;
    // Projected tokens rotate in place: the next request carries the new one.
    std::fs::write(c.path("token"), "rotated-token").unwrap();
    for i in 50..60 {
        log.record(event(&format!("e{i}"))).unwrap();
    }
    log.close().await.unwrap();

    let received = c.received();
    for r in &received {
        assert_eq!(r.path, "/v1/audit");
        assert_eq!(r.content_type, "application/x-ndjson");
        assert!(
            r.authorization == "Bearer test-token" || r.authorization == "Bearer rotated-token",
            "{}",
            r.authorization
        );
    }
    assert_eq!(received[0].authorization, "Bearer test-token");
    assert_eq!(
        received.last().unwrap().authorization,
        "Bearer rotated-token"
    );
    let report = verified(&c.accepted_lines());
    assert_eq!(report.records, 62);
    assert!(report.closed);
}

#[tokio::test]
async fn a_collector_answering_500_fails_closed_and_loses_nothing() {
    let c = Collector::start().await;
    let log = AuditLog::open_with(
        &config(vec![c.sink()]),
        origin(),
        AuditOptions {
            collector_max_delay: Duration::from_millis(300),
            ..AuditOptions::default()
        },
    )
    .await
    .unwrap();
    log.record(event("accepted")).unwrap();
    wait_until("the first record to be accepted", || {
        !c.accepted_lines().is_empty()
    })
    .await;

    c.status.store(500, Ordering::SeqCst);
    log.record(event("while failing")).unwrap();
    wait_until("the trail to turn unhealthy", || !log.healthy()).await;
    let err = log.record(event("refused")).unwrap_err();
    assert!(
        matches!(&err, AuditError::Unhealthy(m) if m.contains("500")),
        "{err}"
    );

    c.status.store(200, Ordering::SeqCst);
    wait_until("the trail to recover", || log.healthy()).await;
    log.record(event("after")).unwrap();
    log.close().await.unwrap();

    let lines = c.accepted_lines();
    verified(&lines);
    let text = String::from_utf8(lines).unwrap();
    for expected in ["accepted", "while failing", "paused", "resumed", "after"] {
        assert!(text.contains(expected), "{expected} missing from {text}");
    }
    assert!(!text.contains("\"refused\""));
}

#[tokio::test]
async fn an_overflowing_buffer_fails_closed() {
    let c = Collector::start().await;
    c.status.store(503, Ordering::SeqCst);
    let log = AuditLog::open_with(
        &config(vec![c.sink()]),
        origin(),
        AuditOptions {
            collector_buffer_bytes: 4096,
            collector_max_delay: Duration::from_secs(600),
            ..AuditOptions::default()
        },
    )
    .await
    .unwrap();
    let mut refused = None;
    for i in 0..5_000 {
        if let Err(e) = log.record(event(&format!("e{i}"))) {
            refused = Some(e);
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let err = refused.expect("the buffer limit must stop the trail");
    assert!(
        matches!(&err, AuditError::Unhealthy(m) if m.contains("buffer full")),
        "{err}"
    );
}

fn open_err(sink: AuditSink) -> AuditError {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(AuditLog::open(&config(vec![sink]), origin()))
        .unwrap_err()
}

#[tokio::test]
async fn misconfigured_collectors_are_refused_at_open() {
    let c = Collector::start().await;
    let base = c.sink();
    let checks: Vec<(AuditSink, &str)> = vec![
        (
            AuditSink {
                url: Some(format!("http://localhost:{}", c.addr.port())),
                ..base.clone()
            },
            "https",
        ),
        (
            AuditSink {
                ca_file: None,
                ..base.clone()
            },
            "caFile is required",
        ),
        (
            AuditSink {
                token_file: Some("/nonexistent/token".into()),
                ..base.clone()
            },
            "cannot read token file",
        ),
        (
            AuditSink {
                ca_file: Some(Path::new("/dev/null").display().to_string()),
                ..base.clone()
            },
            "holds no certificate",
        ),
    ];
    for (sink, expected) in checks {
        let err = tokio::task::spawn_blocking(move || open_err(sink))
            .await
            .unwrap();
        assert!(err.to_string().contains(expected), "{err}");
    }
}

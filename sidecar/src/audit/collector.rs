//! The collector sink: ships records to the operator's audit collector.
//!
//! Contract (docs/operations.md): `POST /v1/audit` over HTTPS with
//! `Content-Type: application/x-ndjson`, a body of whole JSON lines in chain
//! order, and `Authorization: Bearer <token>`; any 2xx means the collector
//! has accepted every line of the body. Delivery is asynchronous: batches
//! wait in a bounded buffer and are retried with backoff. The buffer never
//! drops a record; when it overflows, or the collector has accepted nothing
//! for too long, the sink reports a failure and the trail turns unhealthy
//! (fail closed) while delivery keeps being retried.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cardgate_crds::config::AuditSink;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_rustls::TlsConnector;

use super::AuditError;

/// Path used when the configured URL has none.
pub const DEFAULT_PATH: &str = "/v1/audit";
/// Media type of the request body.
pub const NDJSON: &str = "application/x-ndjson";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_POST_BYTES: usize = 1 << 20;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Records sealed together, in chain order; `last` is the seq of the last one.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) bytes: Bytes,
    pub(crate) last: u64,
}

/// What a collector's delivery task reports to the writer.
pub(crate) enum CollectorEvent {
    /// The collector accepted every record up to this seq.
    Acked(u64),
    /// The buffer overflowed or nothing was accepted for too long.
    Failed(String),
    /// Everything buffered has been accepted again.
    Recovered,
}

/// Limits of one collector sink.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) buffer_bytes: usize,
    pub(crate) max_delay: Duration,
}

/// Where and how to reach a collector; checked when the trail opens.
#[derive(Clone)]
pub(crate) struct Endpoint {
    url: String,
    host: String,
    port: u16,
    authority: HeaderValue,
    path: String,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url).finish()
    }
}

impl Endpoint {
    /// Checks the sink's URL, CA bundle and token file.
    pub(crate) fn new(sink: &AuditSink) -> Result<Self, AuditError> {
        let url = sink.url.clone().unwrap_or_default();
        let err = |reason: String| AuditError::Open {
            sink: format!("collector {url}"),
            reason,
        };
        let uri: Uri = url
            .parse()
            .map_err(|e| err(format!("not a valid URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(err(
                "the collector must be reached over https: records and the bearer token must not cross the network in clear"
                    .into(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| err("the URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let authority = HeaderValue::from_str(uri.authority().map_or("", |a| a.as_str()))
            .map_err(|e| err(format!("bad host: {e}")))?;
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => DEFAULT_PATH.to_string(),
            Some(p) => p.to_string(),
        };
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| err(format!("bad host name: {e}")))?;
        let ca = sink.ca_file.as_deref().ok_or_else(|| {
            err("caFile is required: the collector's certificate must be verified against a known CA".into())
        })?;
        let mut roots = rustls::RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| err(format!("cannot read caFile {ca}: {e}")))?;
        for cert in certs {
            let cert = cert.map_err(|e| err(format!("caFile {ca}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| err(format!("caFile {ca}: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err(format!("caFile {ca} holds no certificate")));
        }
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let token_file = sink.token_file.as_ref().map(PathBuf::from);
        if let Some(t) = &token_file {
            read_token(t).map_err(err)?;
        }
        Ok(Self {
            url,
            host,
            port,
            authority,
            path,
            server_name,
            tls: Arc::new(tls),
            token_file,
        })
    }

    /// The configured URL, for messages.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// Starts a delivery task; it tells `report` how delivery goes and ends
/// when the returned sender is dropped and its buffer is delivered (or
/// `max_delay` has passed).
pub(crate) fn spawn(
    endpoint: Endpoint,
    limits: Limits,
    report: impl Fn(CollectorEvent) + Send + Sync + 'static,
) -> UnboundedSender<Batch> {
    let (tx, rx) = unbounded_channel();
    tokio::spawn(deliver(endpoint, limits, report, rx));
    tx
}

struct Queued {
    batch: Batch,
    since: Instant,
}

/// The delivery task's buffer and health.
struct Buffer {
    queue: VecDeque<Queued>,
    bytes: usize,
    failed: bool,
    open: bool,
    limits: Limits,
}

impl Buffer {
    /// Takes a batch from the writer (or notes that the writer is gone) and
    /// reports an overflow: the batch is kept, the trail turns unhealthy.
    fn receive(&mut self, batch: Option<Batch>, report: &impl Fn(CollectorEvent)) {
        let Some(batch) = batch else {
            self.open = false;
            return;
        };
        self.bytes += batch.bytes.len();
        self.queue.push_back(Queued {
            batch,
            since: Instant::now(),
        });
        if !self.failed && self.bytes > self.limits.buffer_bytes {
            self.failed = true;
            report(CollectorEvent::Failed(format!(
                "buffer full: {} bytes not yet accepted by the collector (limit {})",
                self.bytes, self.limits.buffer_bytes
            )));
        }
    }
}

async fn deliver(
    endpoint: Endpoint,
    limits: Limits,
    report: impl Fn(CollectorEvent),
    mut rx: UnboundedReceiver<Batch>,
) {
    let mut buf = Buffer {
        queue: VecDeque::new(),
        bytes: 0,
        failed: false,
        open: true,
        limits,
    };
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = String::new();

    loop {
        if buf.queue.is_empty() {
            if !buf.open {
                return;
            }
            let b = rx.recv().await;
            buf.receive(b, &report);
            continue;
        }
        // One POST of the oldest batches, while new batches keep arriving.
        let (body, n, last) = coalesce(&buf.queue);
        let attempt = post(&endpoint, &mut conn, body);
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                r = &mut attempt => break r,
                b = rx.recv(), if buf.open => buf.receive(b, &report),
            }
        };
        match result {
            Ok(()) => {
                for q in buf.queue.drain(..n) {
                    buf.bytes -= q.batch.bytes.len();
                }
                report(CollectorEvent::Acked(last));
                backoff = FIRST_BACKOFF;
                last_error.clear();
                if buf.failed && buf.queue.is_empty() {
                    buf.failed = false;
                    tracing::info!(collector = %endpoint.url, "audit collector accepts records again");
                    report(CollectorEvent::Recovered);
                }
            }
            Err(e) => {
                if e != last_error {
                    tracing::warn!(collector = %endpoint.url, error = %e, "audit collector did not accept records; retrying");
                    last_error.clone_from(&e);
                }
                let waited = buf
                    .queue
                    .front()
                    .map_or(Duration::ZERO, |q| q.since.elapsed());
                if !buf.failed && waited >= limits.max_delay {
                    buf.failed = true;
                    report(CollectorEvent::Failed(format!(
                        "no records accepted for {:.1} s: {e}",
                        waited.as_secs_f64()
                    )));
                }
                if !buf.open && waited >= limits.max_delay {
                    tracing::error!(collector = %endpoint.url, pending_bytes = buf.bytes, "audit trail closed with records the collector never accepted; the other sinks hold them");
                    return;
                }
                let until = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        b = rx.recv(), if buf.open => buf.receive(b, &report),
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// The body of the next POST: the oldest batches up to `MAX_POST_BYTES`
/// (at least one), how many they are, and the seq of the last record.
fn coalesce(queue: &VecDeque<Queued>) -> (Bytes, usize, u64) {
    let first = &queue[0].batch;
    let mut size = first.bytes.len();
    let mut n = 1;
    while n < queue.len() && size + queue[n].batch.bytes.len() <= MAX_POST_BYTES {
        size += queue[n].batch.bytes.len();
        n += 1;
    }
    if n == 1 {
        return (first.bytes.clone(), 1, first.last);
    }
    let mut body = BytesMut::with_capacity(size);
    for q in queue.iter().take(n) {
        body.extend_from_slice(&q.batch.bytes);
    }
    (body.freeze(), n, queue[n - 1].batch.last)
}

async fn post(
    ep: &Endpoint,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: Bytes,
) -> Result<(), String> {
    let mut req = Request::post(ep.path.as_str())
        .header(HOST, ep.authority.clone())
        .header(CONTENT_TYPE, NDJSON)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    if let Some(path) = &ep.token_file {
        let token = read_token(path)?;
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            format!(
                "token file {} holds characters not allowed in a header",
                path.display()
            )
        })?;
        value.set_sensitive(true);
        req.headers_mut().insert(AUTHORIZATION, value);
    }
    if conn.as_ref().is_none_or(SendRequest::is_closed) {
        *conn = Some(connect(ep).await?);
    }
    let sender = conn.as_mut().expect("connected above");
    let exchange = async {
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, hyper::Error>((status, body))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => {
            *conn = None;
            Err(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()))
        }
        Ok(Err(e)) => {
            *conn = None;
            Err(format!("request failed: {e}"))
        }
        Ok(Ok((status, _))) if status.is_success() => Ok(()),
        Ok(Ok((status, body))) => {
            let text: String = String::from_utf8_lossy(&body[..body.len().min(200)])
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(format!("collector answered {status}: {}", text.trim()))
        }
    }
}

async fn connect(ep: &Endpoint) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((ep.host.as_str(), ep.port)),
    )
    .await
    .map_err(|_| format!("connecting to {}:{} timed out", ep.host, ep.port))?
    .map_err(|e| format!("cannot connect to {}:{}: {e}", ep.host, ep.port))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TlsConnector::from(ep.tls.clone()).connect(ep.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "audit collector connection ended");
        }
    });
    Ok(sender)
}

/// Reads the bearer token; re-read for every request because projected
/// service-account tokens are rotated in place.
fn read_token(path: &std::path::Path) -> Result<String, String> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

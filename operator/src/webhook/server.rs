//! The HTTPS admission server: TLS from a hot-reloadable resolver, HTTP/1.1
//! and HTTP/2 (the API server uses both), one route per webhook.
//!
//! Handlers implement [`Admit`] for one object type and are mounted on a
//! path with [`Router::admit`]; the pod webhooks are two of them, and the
//! ApprovalRequest webhook joins as another.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use kube::Resource;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use crate::tls::CertResolver;

/// Largest AdmissionReview accepted; the API server caps objects near 3 MiB.
const MAX_BODY: usize = 8 << 20;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// One admission request as the handler sees it.
pub struct Admission<K: Resource> {
    /// The typed request.
    pub request: AdmissionRequest<K>,
    /// `request.object` exactly as the API server sent it; mutating handlers
    /// check their patch against it.
    pub raw_object: Option<Value>,
}

/// An admission webhook for objects of type `Object`.
pub trait Admit: Send + Sync + 'static {
    /// The kind of object reviewed.
    type Object: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static;

    /// Decides one request. Never fails: problems become denials.
    fn admit(
        &self,
        admission: Admission<Self::Object>,
    ) -> impl Future<Output = AdmissionResponse> + Send;
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

trait Route: Send + Sync {
    fn call(&self, body: Bytes) -> BoxFuture<'_, Vec<u8>>;
}

struct Typed<H>(H);

impl<H: Admit> Route for Typed<H> {
    fn call(&self, body: Bytes) -> BoxFuture<'_, Vec<u8>> {
        Box::pin(async move {
            let response = match decode::<H::Object>(&body) {
                Ok(admission) => self.0.admit(admission).await,
                Err(response) => *response,
            };
            encode(response)
        })
    }
}

/// Paths to handlers.
#[derive(Default)]
pub struct Router {
    routes: HashMap<String, Box<dyn Route>>,
}

impl Router {
    /// An empty router (every path answers 404).
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `handler` at `path` (e.g. `/validate/approvalrequests`).
    pub fn admit<H: Admit>(mut self, path: &str, handler: H) -> Self {
        self.routes
            .insert(path.to_string(), Box::new(Typed(handler)));
        self
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(route) = self.routes.get(req.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "no such webhook");
        };
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview");
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                warn!(error = %e, "unreadable admission request body");
                return plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body too large or unreadable",
                );
            }
        };
        let json = route.call(body).await;
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response"))
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r
}

/// Parses an AdmissionReview. A body that is not one still gets a denial
/// carrying the request's uid when it can be found, so the API server reports
/// the reason instead of a protocol error.
fn decode<K>(body: &[u8]) -> Result<Admission<K>, Box<AdmissionResponse>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(AdmissionResponse::invalid(format!(
            "cardgate: not JSON: {e}"
        )))
    })?;
    let uid = value
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let raw_object = value
        .pointer("/request/object")
        .filter(|o| !o.is_null())
        .cloned();
    let invalid = |msg: String| {
        let mut r = AdmissionResponse::invalid(msg);
        r.uid = uid.clone();
        Box::new(r)
    };
    let review: AdmissionReview<K> = serde_json::from_value(value).map_err(|e| {
        invalid(format!(
            "cardgate: not an AdmissionReview for this webhook: {e}"
        ))
    })?;
    let request: AdmissionRequest<K> = review
        .try_into()
        .map_err(|_| invalid("cardgate: the AdmissionReview has no request".into()))?;
    Ok(Admission {
        request,
        raw_object,
    })
}

/// Serializes the response as the API server reads it: an AdmissionReview
/// v1 whose `response.patch` is base64 (Go's encoding of `[]byte`).
fn encode(response: AdmissionResponse) -> Vec<u8> {
    let patch = response.patch.clone();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or(Value::Null);
    if let (Some(patch), Some(resp)) = (patch, review.get_mut("response")) {
        resp["patch"] = Value::String(STANDARD.encode(patch));
    }
    if review
        .get("apiVersion")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        review["apiVersion"] = "admission.k8s.io/v1".into();
        review["kind"] = "AdmissionReview".into();
    }
    serde_json::to_vec(&review).unwrap_or_default()
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open
/// requests finish (bounded by a drain timeout).
pub async fn run(
    listener: TcpListener,
    resolver: Arc<CertResolver>,
    router: Arc<Router>,
    shutdown: impl Future<Output = ()>,
) {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("the ring provider supports the default protocol versions")
    .with_no_client_auth()
    .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = service_fn(move |req| {
                let router = router.clone();
                async move { Ok::<_, Infallible>(router.handle(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("admission connections still open after the drain timeout");
    }
}

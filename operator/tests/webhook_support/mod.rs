//! A mocked Kubernetes API (tower-test) and a real HTTPS client for the
//! webhook tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::Client;
use kube::client::Body;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The DNS name the API server uses for the webhook Service.
pub const SERVICE_DNS: &str = "cardgate-operator.cardgate-system.svc";

/// A client whose requests arrive at the returned handle.
pub fn mock_client() -> (Client, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiHandle(handle))
}

/// The API server's side of a mocked client.
pub struct ApiHandle(tower_test::mock::Handle<Request<Body>, Response<Body>>);

/// One request the code under test made.
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

impl ApiHandle {
    /// Waits for the next request and answers it with `status` and `body`;
    /// a `Null` body echoes the request's body, as the API server does on a
    /// successful create or update.
    pub async fn expect(&mut self, status: u16, body: Value) -> Seen {
        let (req, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .expect("the code under test made no further request")
            .expect("the client was dropped");
        let seen = Seen {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().unwrap_or_default().to_string(),
            content_type: req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            body: {
                let bytes = req.into_body().collect_bytes().await.unwrap();
                if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                }
            },
        };
        let body = if body.is_null() { &seen.body } else { &body };
        send.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap(),
        );
        seen
    }

    /// Asserts that no further request arrives (the client is dropped, or
    /// stays silent for a while).
    pub async fn expect_nothing(&mut self) {
        let next = tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await;
        if let Ok(Some((req, _))) = next {
            panic!(
                "unexpected request to the API: {} {}",
                req.method(),
                req.uri()
            );
        }
    }

    /// Answers every request with `respond(method, path, body)` until the
    /// client is dropped.
    pub fn serve_forever(
        self,
        respond: impl Fn(&str, &str) -> (u16, Value) + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.serve_requests(move |method, path, _query, _body| Some(respond(method, path)))
    }

    /// Answers every request with `respond(method, path, query, body)`;
    /// `None` leaves the request open (a watch with nothing to report).
    pub fn serve_requests(
        mut self,
        respond: impl Fn(&str, &str, &str, &Value) -> Option<(u16, Value)> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Some((req, send)) = self.0.next_request().await {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let query = req.uri().query().unwrap_or_default().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                match respond(&method, &path, &query, &body) {
                    Some((status, body)) => send.send_response(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&body).unwrap()))
                            .unwrap(),
                    ),
                    None => open.push(send),
                }
            }
        })
    }
}

/// The Status body the API server sends with an error.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "status": "Failure",
        "code": code, "reason": reason, "message": message
    })
}

/// What a client saw of one HTTPS exchange.
pub struct Exchange {
    pub status: StatusCode,
    pub body: Bytes,
    pub peer_cert: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
}

/// Posts `body` to `path` over TLS, trusting only `ca_pem` and checking the
/// certificate against the Service's DNS name, with HTTP/2 when `h2`.
pub async fn post(addr: SocketAddr, ca_pem: &str, path: &str, body: Vec<u8>, h2: bool) -> Exchange {
    request(addr, ca_pem, "POST", path, body, h2).await
}

pub async fn request(
    addr: SocketAddr,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: Vec<u8>,
    h2: bool,
) -> Exchange {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(SERVICE_DNS).unwrap(), tcp)
        .await
        .expect("TLS handshake with the webhook");
    let (_, conn) = tls.get_ref();
    let peer_cert = conn.peer_certificates().unwrap()[0].clone().into_owned();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let req = Request::builder()
        .method(method)
        .uri(format!("https://{SERVICE_DNS}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let io = TokioIo::new(tls);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Exchange {
        status,
        body,
        peer_cert,
        alpn,
    }
}

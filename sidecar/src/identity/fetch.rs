//! One HTTPS GET at a time, for discovery documents and key sets: hyper's
//! HTTP/1 client over rustls (ring), verified against the issuer's CA
//! bundle or the system trust store, with an overall timeout and a cap on
//! the body. Fetches are rare (start-up, key rotation), so there is no
//! connection pool.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, AUTHORIZATION, HOST, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Fetches over HTTPS for one issuer.
#[derive(Clone)]
pub(crate) struct HttpsClient {
    tls: TlsConnector,
    bearer_token_file: Option<PathBuf>,
    timeout: Duration,
}

/// Where the client's trust comes from.
pub(crate) enum Trust<'a> {
    /// Only the certificates in this PEM bundle.
    CaFile(&'a std::path::Path),
    /// The system trust store (honours `SSL_CERT_FILE` / `SSL_CERT_DIR`).
    System,
}

impl HttpsClient {
    /// Builds the TLS configuration once; errors are configuration problems.
    pub fn new(
        trust: Trust<'_>,
        bearer_token_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Result<HttpsClient, String> {
        let mut roots = RootCertStore::empty();
        match trust {
            Trust::CaFile(path) => {
                let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .map_err(|e| e.to_string())?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err("no usable certificate in the bundle".into());
                }
            }
            Trust::System => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(match found.errors.first() {
                        Some(e) => e.to_string(),
                        None => "no certificates found".into(),
                    });
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpsClient {
            tls: TlsConnector::from(Arc::new(config)),
            bearer_token_file,
            timeout,
        })
    }

    /// GETs `url` and returns the body of a 200 response of at most
    /// `limit` bytes. The error says what failed, for the operator and the
    /// refused agent alike.
    pub async fn get(&self, url: &str, limit: usize) -> Result<Bytes, String> {
        match tokio::time::timeout(self.timeout, self.get_inner(url, limit)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from {url} within {} s",
                self.timeout.as_secs_f32()
            )),
        }
    }

    async fn get_inner(&self, url: &str, limit: usize) -> Result<Bytes, String> {
        let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{url} is not an https:// URL"));
        }
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err(format!("{url} has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url} carries credentials in the URL; use bearerTokenFile"
            ));
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a valid server name"))?;
        let bearer = match &self.bearer_token_file {
            Some(path) => {
                let token = tokio::fs::read_to_string(path)
                    .await
                    .map_err(|e| format!("cannot read bearerTokenFile {}: {e}", path.display()))?;
                let mut value = HeaderValue::try_from(format!("Bearer {}", token.trim()))
                    .map_err(|_| format!("bearerTokenFile {} is not a token", path.display()))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };

        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let tls = self
            .tls
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority} failed: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with {authority} failed: {e}"))?;
        let connection = AbortOnDrop(tokio::spawn(connection));

        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut request = Request::get(path)
            .header(HOST, authority.as_str())
            // kube-apiserver serves /openid/v1/jwks only as
            // application/jwk-set+json and answers 406 to a plain
            // application/json; discovery documents are application/json.
            .header(ACCEPT, "application/jwk-set+json, application/json")
            .header(
                USER_AGENT,
                concat!("cardgate-sidecar/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(bearer) = bearer {
            request = request.header(AUTHORIZATION, bearer);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot build a request for {url}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP with {authority} failed: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("{url} answered HTTP {}", response.status()));
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading {url} failed: {e}"))?
            .to_bytes();
        drop(connection);
        Ok(body)
    }
}

/// Ends the connection task when the fetch ends or times out.
struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

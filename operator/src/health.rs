//! The metrics and health server every replica runs: `/metrics`,
//! `/healthz` (the process serves requests) and `/readyz` (every registered
//! readiness check passes; the kubelet takes the replica out of its Services
//! otherwise).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Named readiness checks; `/readyz` passes when all of them do.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

/// One readiness check, failing until set.
#[derive(Clone)]
pub struct ReadyFlag {
    readiness: Readiness,
    name: &'static str,
}

impl Readiness {
    /// Adds a check named `name` that fails until [`ReadyFlag::set`].
    pub fn register(&self, name: &'static str) -> ReadyFlag {
        self.lock().insert(name, false);
        ReadyFlag {
            readiness: self.clone(),
            name,
        }
    }

    /// `Ok` when every check passes, else the failing checks' names.
    pub fn report(&self) -> Result<(), Vec<&'static str>> {
        let failing: Vec<&'static str> = self
            .lock()
            .iter()
            .filter(|(_, ok)| !**ok)
            .map(|(name, _)| *name)
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        // A panic elsewhere while holding the lock leaves a plain map behind;
        // keep serving it.
        self.checks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ReadyFlag {
    /// Marks the check as passing or failing.
    pub fn set(&self, ready: bool) {
        self.readiness.lock().insert(self.name, ready);
    }
}

fn text(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static status and header are valid")
}

/// Answers one request; separate from the socket so it is tested directly.
pub fn route(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "GET only\n".into());
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match readiness.report() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ok\n".into()),
            Err(failing) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {}\n", failing.join(", ")),
            ),
        },
        _ => text(StatusCode::NOT_FOUND, PLAIN, "not found\n".into()),
    }
}

/// Serves until `shutdown`, then lets open connections finish.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics server: accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let resp = route(req.method(), req.uri().path(), &metrics, &readiness);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics server: connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn readyz_names_the_failing_checks() {
        let m = Metrics::new();
        let r = Readiness::default();
        let crds = r.register("crds");
        let _webhook = r.register("webhook");
        let resp = route(&Method::GET, "/readyz", &m, &r);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        crds.set(true);
        assert_eq!(r.report(), Err(vec!["webhook"]));
        assert_eq!(
            route(&Method::GET, "/healthz", &m, &r).status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&Method::POST, "/metrics", &m, &r).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(&Method::GET, "/nope", &m, &r).status(),
            StatusCode::NOT_FOUND
        );
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_over_http_and_stops_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let readiness = Readiness::default();
        let flag = readiness.register("crds");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, metrics, readiness, shutdown.clone()));

        let resp = get(addr, "/readyz").await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(resp.ends_with("not ready: crds\n"), "{resp}");
        flag.set(true);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let resp = get(addr, "/metrics").await;
        assert!(resp.contains("application/openmetrics-text"), "{resp}");
        assert!(
            resp.contains("# TYPE cardgate_operator_leader gauge"),
            "{resp}"
        );

        shutdown.cancel();
        server.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

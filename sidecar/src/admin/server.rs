//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! Plain HTTP/1.1 on its own port (loopback unless configured otherwise):
//! it carries no cardholder data and no secrets, only counters and health.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};
use super::readiness::Readiness;

const TEXT: &str = "text/plain; charset=utf-8";

/// A running admin endpoint; dropping it (or [`AdminServer::shutdown`])
/// stops it and closes its connections.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Binds `addr` (e.g. `admin.listen` from the configuration; port 0 picks
    /// a free port) and serves until shut down.
    pub async fn bind(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        readiness: Readiness,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, metrics, readiness));
        Ok(Self { addr, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes open connections.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, readiness: Readiness) {
    // Connection tasks live in the set so that aborting this task ends them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin endpoint: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let metrics = metrics.clone();
                let readiness = readiness.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let response = respond(req.method(), req.uri().path(), &metrics, &readiness);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    if let Err(e) = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "admin endpoint: connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers one admin request; pure apart from reading the metrics and flags.
pub fn respond(
    method: &Method,
    path: &str,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into());
    }
    if method != Method::GET && method != Method::HEAD {
        let mut r = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.encode()),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        _ => {
            let status = readiness.status();
            let ready = status.iter().all(|(_, ok)| *ok);
            let mut body = String::from(if ready { "ready\n" } else { "not ready\n" });
            for (name, ok) in status {
                body.push_str(name);
                body.push_str(if ok { ": ok\n" } else { ": failing\n" });
            }
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(code, TEXT, body)
        }
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_methods() {
        let m = Metrics::new();
        let r = Readiness::new();
        assert_eq!(
            respond(&Method::GET, "/healthz", &m, &r).status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&Method::GET, "/nope", &m, &r).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&Method::POST, "/metrics", &m, &r).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let flag = r.flag("listeners");
        assert_eq!(
            respond(&Method::GET, "/readyz", &m, &r).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        flag.set(true);
        assert_eq!(
            respond(&Method::GET, "/readyz", &m, &r).status(),
            StatusCode::OK
        );
    }
}

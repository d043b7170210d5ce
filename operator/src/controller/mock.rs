//! A scripted API server for reconcile tests (tower-test, controller-rs
//! style): each expected request is checked exactly (method, path with
//! query, content type, body) and answered with JSON shaped like the real
//! API server's; any request beyond the script fails the test.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle};

use super::Context;
use crate::fixtures;
use crate::metrics::Metrics;

/// Time the test clock reads.
pub const NOW: &str = "2026-11-22T10:00:00Z";
/// SSA content type.
pub const APPLY: &str = "application/apply-patch+yaml";
/// Merge-patch content type.
pub const MERGE: &str = "application/merge-patch+json";

/// What the request body must be.
pub enum BodyCheck {
    /// No body (GET, DELETE).
    Empty,
    /// Exactly this JSON.
    Exact(Value),
    /// At least these fields with these values (for bodies with server-side
    /// random parts, e.g. Event names and times).
    Includes(Value),
    /// Checked by the test's own assertions.
    With(Box<dyn FnOnce(&Value) + Send>),
}

/// How to answer.
pub enum Reply {
    /// This status and JSON.
    Json(StatusCode, Value),
    /// 200 with the applied object as stored: the request body plus the
    /// metadata the server adds.
    Stored,
    /// This status and a plain-text body (the API server's answer for a
    /// resource it does not serve at all).
    Text(StatusCode, String),
    /// 200 with this object carrying the applied status (status
    /// subresource: the server answers with the whole object).
    WithStatus(Value),
}

/// One expected request and its answer.
pub struct Exchange {
    method: Method,
    uri: String,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    body: BodyCheck,
    reply: Reply,
}

impl Exchange {
    fn new(method: Method, uri: impl Into<String>) -> Self {
        Self {
            method,
            uri: uri.into(),
            content_type: None,
            accept: None,
            body: BodyCheck::Empty,
            reply: Reply::Json(StatusCode::OK, json!({})),
        }
    }

    /// A GET of `uri`.
    pub fn get(uri: impl Into<String>) -> Self {
        Self::new(Method::GET, uri)
    }

    /// A DELETE of `uri` (kube sends empty DeleteOptions).
    pub fn delete(uri: impl Into<String>) -> Self {
        let mut e = Self::new(Method::DELETE, uri);
        e.content_type = Some("application/json");
        e.body = BodyCheck::Exact(json!({}));
        e
    }

    /// A DELETE of `uri` whose DeleteOptions `check` asserts on (e.g.
    /// preconditions, or what must have happened before).
    pub fn delete_checked(
        uri: impl Into<String>,
        check: impl FnOnce(&Value) + Send + 'static,
    ) -> Self {
        let mut e = Self::new(Method::DELETE, uri);
        e.content_type = Some("application/json");
        e.body = BodyCheck::With(Box::new(check));
        e
    }

    /// A POST to `uri` with a body including `fields`.
    pub fn post(uri: impl Into<String>, fields: Value) -> Self {
        let mut e = Self::new(Method::POST, uri);
        e.content_type = Some("application/json");
        e.body = BodyCheck::Includes(fields);
        e
    }

    /// A server-side apply of exactly `body` to `uri`.
    pub fn apply(uri: impl Into<String>, body: Value) -> Self {
        let mut e = Self::new(Method::PATCH, uri);
        e.content_type = Some(APPLY);
        e.body = BodyCheck::Exact(body);
        e.reply = Reply::Stored;
        e
    }

    /// A server-side apply to `uri` whose body `check` asserts on.
    pub fn apply_any(uri: impl Into<String>, check: impl FnOnce(&Value) + Send + 'static) -> Self {
        let mut e = Self::new(Method::PATCH, uri);
        e.content_type = Some(APPLY);
        e.body = BodyCheck::With(Box::new(check));
        e.reply = Reply::Stored;
        e
    }

    /// A merge patch of exactly `body` to `uri`.
    pub fn merge(uri: impl Into<String>, body: Value) -> Self {
        let mut e = Self::new(Method::PATCH, uri);
        e.content_type = Some(MERGE);
        e.body = BodyCheck::Exact(body);
        e
    }

    /// Answers with `status` and a plain-text body.
    pub fn reply_text(mut self, status: u16, body: &str) -> Self {
        self.reply = Reply::Text(StatusCode::from_u16(status).unwrap(), body.into());
        self
    }

    /// Answers a status apply with `object` carrying the applied status.
    pub fn returning(mut self, object: Value) -> Self {
        self.reply = Reply::WithStatus(object);
        self
    }

    /// Expects a metadata-only request (list or get).
    pub fn metadata_only(mut self) -> Self {
        self.accept = Some("as=PartialObjectMetadata");
        self
    }

    /// Answers with `status` and `body`.
    pub fn reply(mut self, status: u16, body: Value) -> Self {
        self.reply = Reply::Json(StatusCode::from_u16(status).unwrap(), body);
        self
    }
}

/// The API server's 404 for `resource` `name`.
pub fn not_found(resource: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure",
        "message": format!("{resource} \"{name}\" not found"),
        "reason": "NotFound",
        "details": {"name": name, "kind": resource},
        "code": 404
    })
}

/// A list answer of `kind`.
pub fn list(api_version: &str, kind: &str, items: Vec<Value>) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"resourceVersion": "5001"},
        "items": items,
    })
}

/// The object as the server stores it after an apply.
fn stored(mut body: Value) -> Value {
    let meta = body["metadata"]
        .as_object_mut()
        .expect("applied objects have metadata");
    meta.entry("uid")
        .or_insert(json!("00000000-0000-4000-8000-00000000a001"));
    meta.insert("resourceVersion".into(), json!("5002"));
    meta.entry("creationTimestamp").or_insert(json!(NOW));
    meta.entry("generation").or_insert(json!(1));
    body
}

/// Whether `actual` has every field of `expected` with the same value.
fn includes(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| includes(av, v))),
        _ => actual == expected,
    }
}

fn header(req: &Request<Body>, name: &str) -> String {
    req.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The scripted server's side of the mocked client.
pub struct ApiServer(Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Serves `script` in order, then requires that no other request comes
    /// before the client is dropped.
    pub fn run(self, script: Vec<Exchange>) -> JoinHandle<()> {
        let mut handle = self.0;
        tokio::spawn(async move {
            let total = script.len();
            for (i, exp) in script.into_iter().enumerate() {
                let step = format!("request {}/{total} ({} {})", i + 1, exp.method, exp.uri);
                let (req, send) =
                    tokio::time::timeout(Duration::from_secs(5), handle.next_request())
                        .await
                        .unwrap_or_else(|_| panic!("{step}: never sent"))
                        .unwrap_or_else(|| {
                            panic!("{step}: the client finished without sending it")
                        });
                assert_eq!(
                    (req.method(), req.uri().to_string()),
                    (&exp.method, exp.uri.clone()),
                    "{step}: unexpected request"
                );
                let (content_type, accept) = (header(&req, "content-type"), header(&req, "accept"));
                if let Some(ct) = exp.content_type {
                    assert_eq!(content_type, ct, "{step}: content type");
                }
                if let Some(acc) = exp.accept {
                    assert!(accept.contains(acc), "{step}: accept {accept:?}");
                }
                let bytes = req.into_body().collect_bytes().await.unwrap();
                let body: Option<Value> = (!bytes.is_empty()).then(|| {
                    serde_json::from_slice(&bytes)
                        .unwrap_or_else(|e| panic!("{step}: body is not JSON: {e}"))
                });
                match (exp.body, &body) {
                    (BodyCheck::Empty, None) => {}
                    (BodyCheck::Exact(e), Some(b)) => assert!(
                        &e == b,
                        "{step}: body differs\n--- expected\n{}\n--- sent\n{}",
                        serde_json::to_string_pretty(&e).unwrap(),
                        serde_json::to_string_pretty(b).unwrap()
                    ),
                    (BodyCheck::With(check), Some(b)) => check(b),
                    (BodyCheck::Includes(e), Some(b)) => assert!(
                        includes(b, &e),
                        "{step}: body lacks fields\n--- expected at least\n{}\n--- sent\n{}",
                        serde_json::to_string_pretty(&e).unwrap(),
                        serde_json::to_string_pretty(b).unwrap()
                    ),
                    (_, b) => panic!("{step}: unexpected body {b:?}"),
                }
                let (status, content_type, answer) = match exp.reply {
                    Reply::Json(s, v) => (s, "application/json", serde_json::to_vec(&v).unwrap()),
                    Reply::Text(s, t) => (s, "text/plain; charset=utf-8", t.into_bytes()),
                    Reply::Stored => (
                        StatusCode::OK,
                        "application/json",
                        serde_json::to_vec(&stored(body.unwrap())).unwrap(),
                    ),
                    Reply::WithStatus(mut object) => {
                        object["status"] = body.unwrap()["status"].clone();
                        (
                            StatusCode::OK,
                            "application/json",
                            serde_json::to_vec(&object).unwrap(),
                        )
                    }
                };
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Body::from(answer))
                        .unwrap(),
                );
            }
            if let Ok(Some((req, _))) =
                tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await
            {
                panic!(
                    "unexpected request after the script: {} {}",
                    req.method(),
                    req.uri()
                );
            }
        })
    }
}

/// A context whose client talks to the scripted server, with a fixed clock
/// and the fixture settings.
pub fn context() -> (Arc<Context>, ApiServer) {
    context_with(|_| {})
}

/// [`context`], adjusted by `adjust` (e.g. a captured audit log).
pub fn context_with(adjust: impl FnOnce(&mut Context)) -> (Arc<Context>, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let settings = fixtures::settings();
    let (_tx, ca) = watch::channel(settings.collector_ca.clone());
    let mut ctx = Context::new(
        client,
        Arc::new(Metrics::new()),
        "cardgate-operator-7d9f8-abcde",
        settings,
        ca,
    );
    ctx.now = || NOW.parse().unwrap();
    adjust(&mut ctx);
    (Arc::new(ctx), ApiServer(handle))
}

/// Waits for the script to finish once the test dropped its context.
pub async fn verify(server: JoinHandle<()>) {
    match tokio::time::timeout(Duration::from_secs(10), server).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("mock server task failed: {e}"),
        Err(_) => panic!("mock server did not finish: is a context still alive?"),
    }
}

//! The Kubernetes approval store against a mocked API server (tower-test):
//! every request the store sends is checked (method, path and query,
//! content type, body) and answered with the JSON shapes the real API server
//! uses, watch event lines included. One test connects over real TLS with a
//! token file and a CA file, the way the sidecar does in a pod.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardgate_crds::v1alpha1::{ApprovalMode, Requester, StatementClass};
use cardgate_sidecar::approval::{
    ClusterAccess, Grant, KubeStore, NewRequest, Resolution, StoreErrorKind, fingerprint,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use jiff::{SignedDuration, Timestamp};
use kube::client::Body;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower_test::mock::{self, Handle, SendResponse};

const NS: &str = "payments";
const SA: &str = "system:serviceaccount:payments:report-agent";
const BASE: &str = "/apis/cardgate.dev/v1alpha1/namespaces/payments/approvalrequests";
const STATEMENT: &str = "UPDATE cards SET status = 'blocked' WHERE id = 7";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

fn store() -> (KubeStore, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, NS);
    (
        KubeStore::with_client(client, NS).with_service_account(Some(SA.into())),
        handle,
    )
}

fn fp() -> String {
    fingerprint(STATEMENT, "payments-db", "agent-7")
}

fn new_request(mode: ApprovalMode) -> NewRequest {
    NewRequest {
        policy: "payments".into(),
        policy_namespace: Some(NS.into()),
        rule: "rule 2 (writes)".into(),
        target: "payments-db".into(),
        statement_masked: STATEMENT.into(),
        fingerprint: fp(),
        class: StatementClass::Write,
        requester: Requester {
            subject: "agent-7".into(),
            issuer: Some("https://issuer.example".into()),
            groups: vec!["agents".into()],
            service_account: String::new(),
            pod: "report-agent-7f9c".into(),
            pod_uid: "0b9c1d2e".into(),
            node: None,
        },
        mode,
        quorum: 1,
        timeout: Duration::from_secs(900),
        grant_ttl: Duration::from_secs(3600),
        max_uses: 2,
    }
}

fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// An ApprovalRequest as the API server returns it.
fn object(
    name: &str,
    rv: &str,
    mode: &str,
    expires: Timestamp,
    reviews: Value,
    status: Value,
) -> Value {
    json!({
        "apiVersion": "cardgate.dev/v1alpha1",
        "kind": "ApprovalRequest",
        "metadata": {
            "name": name,
            "namespace": NS,
            "resourceVersion": rv,
            "uid": "5f1c",
            "creationTimestamp": ts(Timestamp::now()),
            "labels": {"cardgate.dev/policy": "payments", "cardgate.dev/fingerprint": &fp()[..63]},
        },
        "spec": {
            "requester": {"subject": "agent-7", "serviceAccount": SA, "pod": "report-agent-7f9c", "podUid": "0b9c1d2e"},
            "policy": "payments",
            "rule": "rule 2 (writes)",
            "target": "payments-db",
            "statement": {"text": STATEMENT, "preview": STATEMENT, "fingerprint": fp(), "class": "write"},
            "mode": mode,
            "quorum": 1,
            "expiresAt": ts(expires),
            "grantTtl": "1h",
            "maxUses": 2,
            "reviews": reviews,
        },
        "status": status,
    })
}

fn pending(name: &str, rv: &str) -> Value {
    object(
        name,
        rv,
        "wait",
        Timestamp::now() + SignedDuration::from_mins(15),
        json!([]),
        json!({"phase": "Pending"}),
    )
}

fn status_json(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Takes the next request: method, path and query, content type, JSON body.
async fn next(
    handle: &mut ApiHandle,
) -> (
    Method,
    String,
    Option<String>,
    Value,
    SendResponse<Response<Body>>,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the store sent a request")
        .expect("the client is alive");
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    (
        parts.method,
        parts.uri.to_string(),
        content_type,
        body,
        send,
    )
}

fn reply(send: SendResponse<Response<Body>>, code: u16, body: &Value) {
    send.send_response(
        Response::builder()
            .status(code)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn reply_lines(send: SendResponse<Response<Body>>, events: &[Value]) {
    let mut text = Vec::new();
    for e in events {
        text.extend(serde_json::to_vec(e).unwrap());
        text.push(b'\n');
    }
    send.send_response(
        Response::builder()
            .status(200)
            .body(Body::from(text))
            .unwrap(),
    );
}

fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": "ApprovalRequestList",
           "metadata": {"resourceVersion": "100"}, "items": items})
}

#[tokio::test]
async fn create_posts_the_request_named_and_labelled_for_the_operator() {
    let (store, mut handle) = store();
    let before = Timestamp::now();
    let task = tokio::spawn(async move { store.create(&new_request(ApprovalMode::Wait)).await });
    let (method, uri, content_type, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::POST);
    assert_eq!(uri, format!("{BASE}?&fieldManager=cardgate-sidecar"));
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let name = body["metadata"]["name"].as_str().unwrap().to_owned();
    let prefix = format!("payments-{}-", &fp()[..8]);
    let suffix = name
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        suffix.len() == 4 && suffix.bytes().all(|b| b.is_ascii_lowercase()),
        "{name}"
    );
    assert_eq!(body["apiVersion"], "cardgate.dev/v1alpha1");
    assert_eq!(body["kind"], "ApprovalRequest");
    assert_eq!(body["metadata"]["namespace"], NS);
    assert_eq!(
        body["metadata"]["labels"],
        json!({"cardgate.dev/policy": "payments", "cardgate.dev/fingerprint": &fp()[..63]})
    );
    let expires: Timestamp = body["spec"]["expiresAt"].as_str().unwrap().parse().unwrap();
    assert!(
        expires >= before + SignedDuration::from_secs(899),
        "{expires}"
    );
    assert!(
        expires <= Timestamp::now() + SignedDuration::from_secs(900),
        "{expires}"
    );
    let mut spec = body["spec"].clone();
    spec.as_object_mut().unwrap().remove("expiresAt");
    assert_eq!(
        spec,
        json!({
            "requester": {
                "subject": "agent-7",
                "issuer": "https://issuer.example",
                "groups": ["agents"],
                "serviceAccount": SA,
                "pod": "report-agent-7f9c",
                "podUid": "0b9c1d2e",
            },
            "policy": "payments",
            "rule": "rule 2 (writes)",
            "target": "payments-db",
            "statement": {"text": STATEMENT, "preview": STATEMENT, "fingerprint": fp(), "class": "write"},
            "mode": "wait",
            "quorum": 1,
            "grantTtl": "3600s",
            "maxUses": 2,
        })
    );
    assert!(
        body.get("status").is_none(),
        "the sidecar never sets a phase: {body}"
    );
    let mut created = body.clone();
    created["metadata"]["resourceVersion"] = json!("1");
    reply(send, 201, &created);
    assert_eq!(task.await.unwrap().unwrap(), name);
}

#[tokio::test]
async fn create_draws_a_new_name_when_the_name_is_taken() {
    let (store, mut handle) = store();
    let task = tokio::spawn(async move { store.create(&new_request(ApprovalMode::Wait)).await });
    let (_, _, _, first, send) = next(&mut handle).await;
    reply(
        send,
        409,
        &status_json(
            409,
            "AlreadyExists",
            "approvalrequests.cardgate.dev \"x\" already exists",
        ),
    );
    let (method, _, _, second, send) = next(&mut handle).await;
    assert_eq!(method, Method::POST);
    assert_eq!(first["spec"], second["spec"]);
    reply(send, 201, &second);
    assert_eq!(
        task.await.unwrap().unwrap(),
        second["metadata"]["name"].as_str().unwrap()
    );
}

#[tokio::test]
async fn forbidden_create_is_a_precise_store_error() {
    let (store, mut handle) = store();
    let task = tokio::spawn(async move { store.create(&new_request(ApprovalMode::Wait)).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(
        send,
        403,
        &status_json(
            403,
            "Forbidden",
            "approvalrequests.cardgate.dev is forbidden: User \"system:serviceaccount:payments:report-agent\" cannot create resource \"approvalrequests\"",
        ),
    );
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    let text = err.to_string();
    assert!(
        text.starts_with("approval store unavailable: the sidecar's service account may not create ApprovalRequests in namespace payments (403 Forbidden; it needs create, get, list, watch on approvalrequests and patch on approvalrequests/status): "),
        "{text}"
    );
    assert!(text.contains("cannot create resource"), "{text}");
}

#[tokio::test]
async fn wait_watches_until_the_operator_approves() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let task = tokio::spawn(async move { store.wait(name).await });
    let (method, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(
        (method, uri.as_str()),
        (Method::GET, format!("{BASE}/{name}").as_str())
    );
    reply(send, 200, &pending(name, "41"));
    // the watcher lists the one object by name, then watches from there
    let (method, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(method, Method::GET);
    assert!(uri.starts_with(&format!("{BASE}?")), "{uri}");
    assert!(
        uri.contains(&format!("fieldSelector=metadata.name%3D{name}")),
        "{uri}"
    );
    assert!(!uri.contains("watch=true"), "{uri}");
    reply(send, 200, &list(vec![pending(name, "41")]));
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert!(uri.contains("watch=true"), "{uri}");
    assert!(
        uri.contains(&format!("fieldSelector=metadata.name%3D{name}")),
        "{uri}"
    );
    assert!(uri.contains("resourceVersion=100"), "{uri}");
    let review = json!([{"decision": "Approved", "reviewer": "alice@example.com", "reason": "ticket 12", "time": ts(Timestamp::now())}]);
    let mut reviewed = pending(name, "42");
    reviewed["spec"]["reviews"] = review.clone();
    let approved = object(
        name,
        "43",
        "wait",
        Timestamp::now() + SignedDuration::from_mins(15),
        review,
        json!({"phase": "Approved", "decidedBy": ["alice@example.com"], "decidedAt": ts(Timestamp::now()), "message": "approved by alice@example.com"}),
    );
    reply_lines(
        send,
        &[
            json!({"type": "MODIFIED", "object": reviewed}),
            json!({"type": "MODIFIED", "object": approved}),
        ],
    );
    let resolution = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        resolution,
        Resolution::Approved {
            name: name.into(),
            reviewers: vec!["alice@example.com".into()]
        }
    );
}

#[tokio::test]
async fn wait_resumes_after_a_dropped_watch() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let task = tokio::spawn(async move { store.wait(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &pending(name, "41"));
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &list(vec![pending(name, "41")]));
    let (_, uri, _, _, send) = next(&mut handle).await;
    assert!(uri.contains("watch=true"), "{uri}");
    // the API server ends the watch with 410 Gone; the watcher lists again
    reply_lines(
        send,
        &[
            json!({"type": "ERROR", "object": status_json(410, "Expired", "too old resource version: 41 (99)")}),
        ],
    );
    loop {
        let (_, uri, _, _, send) = next(&mut handle).await;
        if uri.contains("watch=true") {
            let denied = object(
                name,
                "44",
                "wait",
                Timestamp::now() + SignedDuration::from_mins(15),
                json!([{"decision": "Denied", "reviewer": "bob", "reason": "freeze", "time": ts(Timestamp::now())}]),
                json!({"phase": "Denied", "decidedBy": ["bob"], "message": "denied by bob: freeze"}),
            );
            reply_lines(send, &[json!({"type": "MODIFIED", "object": denied})]);
            break;
        }
        reply(send, 200, &list(vec![pending(name, "43")]));
    }
    let resolution = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        resolution,
        Resolution::Denied {
            name: name.into(),
            reviewer: "bob".into(),
            reason: "freeze".into()
        }
    );
}

#[tokio::test]
async fn decided_request_resolves_without_a_watch() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let task = tokio::spawn(async move { store.wait(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    let denied = object(
        name,
        "44",
        "wait",
        Timestamp::now() + SignedDuration::from_mins(15),
        json!([{"decision": "Denied", "reviewer": "carol", "reason": "card 4111111111111111 is out of scope", "time": ts(Timestamp::now())}]),
        json!({"phase": "Denied", "decidedBy": ["carol"]}),
    );
    reply(send, 200, &denied);
    drop(handle);
    let Resolution::Denied {
        reviewer, reason, ..
    } = task.await.unwrap().unwrap()
    else {
        panic!("expected a denial");
    };
    assert_eq!(reviewer, "carol");
    assert_eq!(reason, "card 411111******1111 is out of scope");
}

#[tokio::test]
async fn wait_ends_at_expiry_with_a_last_read() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let task = tokio::spawn(async move { store.wait(name).await });
    let soon = Timestamp::now() + SignedDuration::from_secs(1);
    let short = object(
        name,
        "41",
        "wait",
        soon,
        json!([]),
        json!({"phase": "Pending"}),
    );
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &short);
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &list(vec![short.clone()]));
    // the watch stays open and silent
    let (_, uri, _, _, _held) = next(&mut handle).await;
    assert!(uri.contains("watch=true"), "{uri}");
    let (method, uri, _, _, send) = next(&mut handle).await;
    assert_eq!((method, uri), (Method::GET, format!("{BASE}/{name}")));
    reply(send, 200, &short);
    assert_eq!(
        task.await.unwrap().unwrap(),
        Resolution::Expired { name: name.into() }
    );
}

#[tokio::test]
async fn forbidden_watch_fails_closed() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let task = tokio::spawn(async move { store.wait(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &pending(name, "41"));
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(
        send,
        403,
        &status_json(
            403,
            "Forbidden",
            "cannot list resource \"approvalrequests\"",
        ),
    );
    let err = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(
        err.to_string().starts_with(&format!(
            "approval store unavailable: the sidecar's service account may not watch ApprovalRequest {name} in namespace payments (403 Forbidden"
        )),
        "{err}"
    );
    // a missing object is not waited for either
    let (store, mut handle) = self::store();
    let task = tokio::spawn(async move { store.wait(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(
        send,
        404,
        &status_json(
            404,
            "NotFound",
            "approvalrequests.cardgate.dev \"payments-0123abcd-wxyz\" not found",
        ),
    );
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        format!("approval request payments/{name} not found")
    );
}

#[tokio::test]
async fn withdraw_applies_withdrawn_at_to_the_status() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let before = Timestamp::now();
    let task = tokio::spawn(async move { store.withdraw(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &pending(name, "41"));
    let (method, uri, content_type, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::PATCH);
    assert_eq!(
        uri,
        format!("{BASE}/{name}/status?&force=true&fieldManager=cardgate-sidecar")
    );
    assert_eq!(
        content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let at: Timestamp = body["status"]["withdrawnAt"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        at >= before - SignedDuration::from_secs(1) && at <= Timestamp::now(),
        "{at}"
    );
    assert_eq!(
        body,
        json!({
            "apiVersion": "cardgate.dev/v1alpha1",
            "kind": "ApprovalRequest",
            "metadata": {"name": name},
            "status": {"withdrawnAt": body["status"]["withdrawnAt"]},
        })
    );
    reply(send, 200, &pending(name, "42"));
    task.await.unwrap().unwrap();

    // a decided request is left alone: only the read happens
    let (store, mut handle) = self::store();
    let task = tokio::spawn(async move { store.withdraw(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    let approved = object(
        name,
        "43",
        "wait",
        Timestamp::now(),
        json!([]),
        json!({"phase": "Approved"}),
    );
    reply(send, 200, &approved);
    drop(handle);
    task.await.unwrap().unwrap();
}

/// A deferred request alice approved (stamped by the webhook) so that its
/// one-hour grant ends at `grant_until`.
fn approved_deferred(name: &str, rv: &str, uses: i32, grant_until: Timestamp) -> Value {
    let approved_at = grant_until - SignedDuration::from_hours(1);
    object(
        name,
        rv,
        "deferred",
        Timestamp::now() + SignedDuration::from_mins(15),
        json!([{"decision": "Approved", "reviewer": "alice", "time": ts(approved_at)}]),
        json!({"phase": "Approved", "decidedBy": ["alice"], "uses": uses, "grantExpiresAt": ts(grant_until)}),
    )
}

/// The held statement of a wait-mode request runs once its approval is
/// recorded: the operator gives wait-mode approvals no grant end, and that
/// must not stop the run. A status claiming Approved without a stamped
/// review does not let it run.
#[tokio::test]
async fn a_wait_mode_approval_is_used_once_and_a_forged_phase_is_not() {
    let name = "payments-0123abcd-wxyz";
    let expires = Timestamp::now() + SignedDuration::from_mins(15);
    let stamped =
        json!([{"decision": "Approved", "reviewer": "alice", "time": ts(Timestamp::now())}]);
    // As the operator writes it: no grantExpiresAt in wait mode.
    let approved = object(
        name,
        "41",
        "wait",
        expires,
        stamped,
        json!({"phase": "Approved", "decidedBy": ["alice"]}),
    );
    let (store, mut handle) = store();
    let task = tokio::spawn(async move { store.record_use(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &approved);
    let (method, _, _, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::PATCH);
    assert_eq!(body["status"], json!({"uses": 1}));
    reply(send, 200, &approved);
    task.await.unwrap().unwrap();

    let forged = object(
        name,
        "41",
        "wait",
        expires,
        json!([]),
        json!({"phase": "Approved", "decidedBy": ["alice"]}),
    );
    let (store, mut handle) = self::store();
    let task = tokio::spawn(async move { store.record_use(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &forged);
    drop(handle);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::GrantUnusable);
    assert_eq!(
        err.to_string(),
        format!("approval request {name} is Pending")
    );
}

#[tokio::test]
async fn record_use_applies_uses_guarded_by_resource_version() {
    let (store, mut handle) = store();
    let name = "payments-0123abcd-wxyz";
    let until = Timestamp::now() + SignedDuration::from_mins(60);
    let task = tokio::spawn(async move { store.record_use(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &approved_deferred(name, "41", 0, until));
    let (method, uri, content_type, body, send) = next(&mut handle).await;
    assert_eq!(method, Method::PATCH);
    assert_eq!(
        uri,
        format!("{BASE}/{name}/status?&force=true&fieldManager=cardgate-sidecar")
    );
    assert_eq!(
        content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(
        body,
        json!({
            "apiVersion": "cardgate.dev/v1alpha1",
            "kind": "ApprovalRequest",
            "metadata": {"name": name, "resourceVersion": "41"},
            "status": {"uses": 1},
        })
    );
    // another replica used it meanwhile: conflict, read again, count on
    reply(
        send,
        409,
        &status_json(
            409,
            "Conflict",
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
    );
    let (method, _, _, _, send) = next(&mut handle).await;
    assert_eq!(method, Method::GET);
    reply(send, 200, &approved_deferred(name, "42", 1, until));
    let (_, _, _, body, send) = next(&mut handle).await;
    assert_eq!(body["metadata"]["resourceVersion"], "42");
    assert_eq!(body["status"], json!({"uses": 2}));
    reply(send, 200, &approved_deferred(name, "43", 2, until));
    task.await.unwrap().unwrap();

    // used up: refused without a patch
    let (store, mut handle) = self::store();
    let task = tokio::spawn(async move { store.record_use(name).await });
    let (_, _, _, _, send) = next(&mut handle).await;
    reply(send, 200, &approved_deferred(name, "43", 2, until));
    drop(handle);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::GrantUnusable);
    assert_eq!(
        err.to_string(),
        format!("approval {name} is used up (2 of 2 runs)")
    );
}

#[tokio::test]
async fn find_grant_selects_by_label_then_full_fingerprint() {
    let (store, mut handle) = store();
    let target = fp();
    let task = tokio::spawn(async move { store.find_grant(&target).await });
    let (method, uri, _, _, send) = next(&mut handle).await;
    assert_eq!(method, Method::GET);
    assert_eq!(
        uri,
        format!(
            "{BASE}?&labelSelector=cardgate.dev%2Ffingerprint%3D{}",
            &fp()[..63]
        )
    );
    let later = Timestamp::now() + SignedDuration::from_mins(50);
    let sooner = Timestamp::now() + SignedDuration::from_mins(20);
    // same 63-character label, different last character: not this statement
    let mut lookalike = approved_deferred("payments-0123abcd-aaaa", "1", 0, sooner);
    let mut other = fp();
    other.replace_range(63.., if other.ends_with('0') { "1" } else { "0" });
    lookalike["spec"]["statement"]["fingerprint"] = json!(other);
    let expired = approved_deferred(
        "payments-0123abcd-bbbb",
        "2",
        0,
        Timestamp::now() - SignedDuration::from_mins(1),
    );
    let used_up = approved_deferred("payments-0123abcd-cccc", "3", 2, sooner);
    let mut waiting = approved_deferred("payments-0123abcd-dddd", "4", 0, sooner);
    waiting["spec"]["mode"] = json!("wait");
    let live_later = approved_deferred("payments-0123abcd-eeee", "5", 1, later);
    let live_sooner = approved_deferred("payments-0123abcd-ffff", "6", 0, sooner);
    // A status patched to Approved by whoever holds the agents' token, with
    // no review behind it, grants nothing, however soon it would end.
    let mut forged = approved_deferred(
        "payments-0123abcd-gggg",
        "7",
        0,
        Timestamp::now() + SignedDuration::from_mins(5),
    );
    forged["spec"]["reviews"] = json!([]);
    reply(
        send,
        200,
        &list(vec![
            lookalike,
            expired,
            used_up,
            waiting,
            live_later,
            live_sooner,
            forged,
        ]),
    );
    assert_eq!(
        task.await.unwrap().unwrap(),
        Some(Grant {
            name: "payments-0123abcd-ffff".into(),
            uses_left: 2
        })
    );
}

// ------------------------------------------------------------ real TLS

/// What the HTTPS test API server saw.
#[derive(Default)]
struct Seen {
    authorization: Vec<Option<String>>,
}

/// An HTTPS server with a certificate from a test CA that answers every
/// request with 403 and records the Authorization header.
async fn tls_api(dir: &std::path::Path) -> (String, std::path::PathBuf, Arc<Mutex<Seen>>) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = dir.join("ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        record.lock().unwrap().authorization.push(
                            req.headers()
                                .get(http::header::AUTHORIZATION)
                                .map(|v| v.to_str().unwrap().to_owned()),
                        );
                        let body = status_json(
                            403,
                            "Forbidden",
                            "approvalrequests.cardgate.dev is forbidden",
                        );
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(StatusCode::FORBIDDEN)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(
                                        serde_json::to_vec(&body).unwrap(),
                                    )))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (format!("https://127.0.0.1:{port}"), ca_file, seen)
}

#[tokio::test]
async fn connects_over_tls_with_the_token_file_and_ca_file() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (url, ca_file, seen) = tls_api(dir.path()).await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "projected-token-1").unwrap();
    let access = ClusterAccess {
        url,
        token_file: token_file.clone(),
        ca_file,
    };
    let store = KubeStore::connect(&access, NS).unwrap();
    let err = store
        .create(&new_request(ApprovalMode::Wait))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("(403 Forbidden;"), "{err}");
    assert_eq!(
        seen.lock().unwrap().authorization,
        [Some("Bearer projected-token-1".to_owned())]
    );

    // a CA that did not sign the server's certificate: no connection
    let other = tempfile::tempdir().unwrap();
    let (_, wrong_ca, _) = tls_api(other.path()).await;
    let store = KubeStore::connect(
        &ClusterAccess {
            ca_file: wrong_ca,
            ..access.clone()
        },
        NS,
    )
    .unwrap();
    let err = store
        .create(&new_request(ApprovalMode::Wait))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable);
    assert!(
        err.to_string().starts_with(
            "approval store unavailable: cannot reach the API server to create ApprovalRequests: "
        ),
        "{err}"
    );
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(
        seen.lock().unwrap().authorization.len(),
        1,
        "no token went to an unverified server"
    );

    // nothing listening
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let store = KubeStore::connect(
        &ClusterAccess {
            url: format!("https://127.0.0.1:{port}"),
            ..access.clone()
        },
        NS,
    )
    .unwrap();
    let err = store.find_grant(&fp()).await.unwrap_err();
    assert!(
        err.to_string().starts_with(
            "approval store unavailable: cannot reach the API server to list ApprovalRequests: "
        ),
        "{err}"
    );

    // missing token file
    let err = KubeStore::connect(
        &ClusterAccess {
            token_file: dir.path().join("none"),
            ..access
        },
        NS,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .starts_with("approval store unavailable: cannot set up the Kubernetes client"),
        "{err}"
    );
}

#[test]
fn cluster_url_follows_the_service_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let access = ClusterAccess::from_lookup(env(&[]));
    assert_eq!(access.url, "https://kubernetes.default.svc");
    assert_eq!(
        access.token_file.to_str(),
        Some("/var/run/cardgate/tokens/kube/token")
    );
    assert_eq!(
        access.ca_file.to_str(),
        Some("/var/run/cardgate/tokens/kube/ca.crt")
    );
    let access = ClusterAccess::from_lookup(env(&[
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ]));
    assert_eq!(access.url, "https://10.96.0.1:443");
    let access = ClusterAccess::from_lookup(env(&[
        ("KUBERNETES_SERVICE_HOST", "fd00::1"),
        ("KUBERNETES_SERVICE_PORT", "6443"),
    ]));
    assert_eq!(access.url, "https://[fd00::1]:6443");
    let access = ClusterAccess::from_lookup(env(&[("KUBERNETES_SERVICE_HOST", "10.96.0.1")]));
    assert_eq!(access.url, "https://kubernetes.default.svc");
}

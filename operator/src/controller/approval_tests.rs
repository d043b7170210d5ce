//! ApprovalRequest reconciles against the scripted API server: every
//! request is asserted exactly, in order; the audit trail is captured and
//! verified; announcements go to a chat webhook on localhost.

use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::audit::{Origin, VerifyOptions, verify};
use cardgate_crds::v1alpha1::{AccessPolicy, ApprovalRequest, Notify};
use kube::runtime::controller::Action;
use serde_json::{Value, json};

use super::approval_request::{ANNOUNCEMENT_POLL, Announcements, reconcile};
use super::mock::{self, Exchange, NOW};
use crate::approval::notify::tests::ChatServer;
use crate::approval::notify::{Notifier, NotifySettings};
use crate::audit::AuditLog;
use crate::audit::tests::Captured;
use crate::fixtures;

const AP: &str = "/apis/cardgate.dev/v1alpha1/namespaces/payments";
const NAME: &str = "support-agent-7f3c9a2e-qwer";
const SSA: &str = "?&force=true&fieldManager=cardgate-operator";
const EXPIRES: &str = "2026-11-22T10:15:00Z";
const MINUTE: Duration = Duration::from_secs(60);

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

/// The sample request as the API server serves it, with `reviews`, a
/// status and a generation (one more than the reviews, as the webhook
/// guarantees).
fn request(quorum: i32, mode: &str, reviews: Value, status: Value) -> ApprovalRequest {
    let generation = 1 + reviews.as_array().unwrap().len();
    let mut r: Value = to_json(&fixtures::yaml::<ApprovalRequest>(
        &std::fs::read_to_string(fixtures::repo().join("config/samples/approvalrequest.yaml"))
            .unwrap(),
    ));
    r["metadata"] = json!({
        "name": NAME, "namespace": "payments", "uid": "ar-uid-1", "generation": generation,
        "resourceVersion": "811", "creationTimestamp": "2026-11-22T09:55:00Z",
        "labels": {"cardgate.dev/policy": "support-agent"}
    });
    r["spec"]["quorum"] = json!(quorum);
    r["spec"]["mode"] = json!(mode);
    r["spec"]["expiresAt"] = json!(EXPIRES);
    r["spec"]["reviews"] = reviews;
    if !status.is_null() {
        r["status"] = status;
    }
    serde_json::from_value(r).unwrap()
}

fn approved(who: &str, at: &str) -> Value {
    json!({"decision": "Approved", "reason": "ticket OPS-7", "reviewer": who, "groups": ["payments-oncall", "system:authenticated"], "time": at})
}

fn denied(who: &str, at: &str) -> Value {
    json!({"decision": "Denied", "reason": "not during the freeze", "reviewer": who, "groups": ["payments-oncall"], "time": at})
}

fn policy_get(policy: &AccessPolicy) -> Exchange {
    Exchange::get(format!("{AP}/accesspolicies/support-agent")).reply(200, to_json(policy))
}

fn decided(status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": "Decided", "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": NOW})
}

fn status_apply(status: Value, request: &ApprovalRequest) -> Exchange {
    Exchange::apply(
        format!("{AP}/approvalrequests/{NAME}/status{SSA}"),
        json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": "ApprovalRequest", "status": status}),
    )
    .returning(to_json(request))
}

fn event(type_: &str, reason: &str, action: &str, note: &str) -> Exchange {
    Exchange::post(
        "/apis/events.k8s.io/v1/namespaces/payments/events?",
        json!({
            "type": type_, "reason": reason, "action": action, "note": note,
            "reportingController": "cardgate-operator",
            "regarding": {"apiVersion": "cardgate.dev/v1alpha1", "kind": "ApprovalRequest",
                          "name": NAME, "namespace": "payments", "uid": "ar-uid-1"},
        }),
    )
    .reply(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "payments"}, "eventTime": NOW}))
}

/// A context auditing into `out` and announcing with quick retries.
fn context(out: &Captured) -> (Arc<super::Context>, mock::ApiServer) {
    let out = out.clone();
    mock::context_with(move |ctx| {
        ctx.audit = Arc::new(AuditLog::new(
            Box::new(out),
            Origin {
                component: "operator".into(),
                namespace: Some("cardgate-system".into()),
                pod: Some("cardgate-operator-7d9f8-abcde".into()),
                ..Origin::default()
            },
        ));
        ctx.approvals = Announcements::new(Notifier::new(NotifySettings {
            attempts: 3,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        }));
    })
}

/// The captured records, after checking that they form an intact chain.
fn records(out: &Captured) -> Vec<Value> {
    let bytes = out.0.lock().unwrap().clone();
    let report = verify(&bytes[..], &VerifyOptions::default()).unwrap();
    assert!(report.ok(), "{report}");
    out.records()
}

/// Reconciles `request` once against `script`.
async fn run(request: ApprovalRequest, script: Vec<Exchange>, out: &Captured) -> Action {
    let (ctx, server) = context(out);
    let handle = server.run(script);
    let action = reconcile(Arc::new(request), ctx.clone()).await.unwrap();
    drop(ctx);
    mock::verify(handle).await;
    action
}

#[tokio::test]
async fn a_new_request_is_pending_announced_in_an_event_and_requeued_at_its_expiry() {
    let policy = fixtures::payments_policy();
    let req = request(1, "wait", json!([]), Value::Null);
    let message = "waiting for 1 more approval (0 of 1); expires at 2026-11-22T10:15:00Z";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [decided("False", "Pending", message, 1)],
                   "observedGeneration": 1, "message": message}),
            &req,
        ),
        event(
            "Normal",
            "Created",
            "Create",
            "system:serviceaccount:payments:support-agent asks to run \"UPDATE orders SET status = 'refunded' WHERE id = 4711\" on payments-db (rule 3 (writes-need-approval)); approve with: kubectl cardgate approve support-agent-7f3c9a2e-qwer -n payments",
        ),
    ];
    let out = Captured::default();
    let action = run(req, script, &out).await;
    // Exactly at expiresAt (10:15) from the fixed clock (10:00).
    assert_eq!(action, Action::requeue(15 * MINUTE));
    assert!(out.records().is_empty(), "nothing to audit yet");
}

#[tokio::test]
async fn quorum_of_two_with_one_approval_stays_pending_and_records_the_review() {
    let policy = fixtures::payments_policy();
    let pending = json!({"phase": "Pending", "observedGeneration": 1, "uses": 0});
    let req = request(
        2,
        "wait",
        json!([approved("alice", "2026-11-22T09:58:00Z")]),
        pending,
    );
    let message = "waiting for 1 more approval (1 of 2: alice); expires at 2026-11-22T10:15:00Z";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [decided("False", "Pending", message, 2)],
                   "observedGeneration": 2, "message": message}),
            &req,
        ),
        event(
            "Normal",
            "Reviewed",
            "Review",
            "alice approved (1 of 2 approvals): ticket OPS-7",
        ),
    ];
    let out = Captured::default();
    let action = run(req, script, &out).await;
    assert_eq!(action, Action::requeue(15 * MINUTE));
    let r = records(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["event"], "approval.review");
    assert_eq!(r[0]["outcome"], "success");
    assert_eq!(
        r[0]["actor"],
        json!({"subject": "alice", "groups": ["payments-oncall", "system:authenticated"]})
    );
    assert_eq!(r[0]["origin"]["component"], "operator");
    assert_eq!(
        r[0]["approval"],
        json!({"name": NAME, "decision": "Approved", "reviewer": "alice", "reason": "ticket OPS-7",
               "fingerprint": "9b2f6c1e8a7d3f4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b"})
    );
    assert_eq!(r[0]["policy"], "payments/support-agent");
    assert_eq!(
        r[0]["resource"],
        json!({"target": "payments-db", "object": format!("ApprovalRequest/payments/{NAME}")})
    );
    assert_eq!(
        r[0]["message"],
        "alice approved (1 of 2 approvals): ticket OPS-7 at 2026-11-22T09:58:00Z"
    );
}

#[tokio::test]
async fn the_second_approval_approves_and_is_audited_before_the_status_changes() {
    let policy = fixtures::payments_policy();
    let pending = json!({"phase": "Pending", "observedGeneration": 2, "uses": 0,
        "conditions": [decided("False", "Pending", "waiting", 2)]});
    let req = request(
        2,
        "wait",
        json!([
            approved("alice", "2026-11-22T09:58:00Z"),
            approved("carol", "2026-11-22T09:59:00Z")
        ]),
        pending,
    );
    let out = Captured::default();
    let seen = out.clone();
    let script = vec![
        policy_get(&policy),
        Exchange::apply_any(
            format!("{AP}/approvalrequests/{NAME}/status{SSA}"),
            move |body| {
                // The review and the decision are in the trail first.
                let events: Vec<Value> =
                    seen.records().iter().map(|r| r["event"].clone()).collect();
                assert_eq!(events, ["approval.review", "approval.decided"]);
                assert_eq!(
                    body["status"],
                    json!({"phase": "Approved",
                       "conditions": [decided("True", "Approved", "approved by alice, carol", 3)],
                       "observedGeneration": 3, "decidedAt": "2026-11-22T09:59:00Z",
                       "decidedBy": ["alice", "carol"], "message": "approved by alice, carol"})
                );
            },
        )
        .returning(to_json(&req)),
        event(
            "Normal",
            "Reviewed",
            "Review",
            "carol approved (2 of 2 approvals): ticket OPS-7",
        ),
        event("Normal", "Approved", "Decide", "approved by alice, carol"),
    ];
    let action = run(req, script, &out).await;
    // Retention (the policy's default, 168h) from the decision at 09:59.
    assert_eq!(action, Action::requeue(168 * 60 * MINUTE - MINUTE));
    let r = records(&out);
    assert_eq!(r[1]["event"], "approval.decided");
    assert_eq!(r[1]["outcome"], "success");
    assert_eq!(r[1]["actor"]["subject"], "carol");
    assert_eq!(r[1]["approval"]["decision"], "Approved");
    assert_eq!(r[1]["message"], "approved by alice, carol");
}

#[tokio::test]
async fn a_denial_decides_at_once() {
    let policy = fixtures::payments_policy();
    let pending = json!({"phase": "Pending", "observedGeneration": 1, "uses": 0});
    let req = request(
        2,
        "wait",
        json!([denied("bob", "2026-11-22T09:58:00Z")]),
        pending,
    );
    let message = "denied by bob: not during the freeze";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Denied", "conditions": [decided("True", "Denied", message, 2)],
                   "observedGeneration": 2, "decidedAt": "2026-11-22T09:58:00Z",
                   "decidedBy": ["bob"], "message": message}),
            &req,
        ),
        event(
            "Normal",
            "Reviewed",
            "Review",
            "bob denied: not during the freeze",
        ),
        event("Warning", "Denied", "Decide", message),
    ];
    let out = Captured::default();
    run(req, script, &out).await;
    let r = records(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[1]["event"], "approval.decided");
    assert_eq!(r[1]["outcome"], "failure");
    assert_eq!(r[1]["actor"]["subject"], "bob");
    assert_eq!(r[1]["approval"]["reason"], "not during the freeze");
}

#[tokio::test]
async fn an_undecided_request_expires_at_expires_at() {
    let policy = fixtures::payments_policy();
    let pending = json!({"phase": "Pending", "observedGeneration": 1, "uses": 0});
    let mut req = request(1, "wait", json!([]), pending);
    req.spec.expires_at.0 = NOW.parse().unwrap();
    let message = "expired at 2026-11-22T10:00:00Z without a decision (0 of 1 approvals)";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Expired", "conditions": [decided("True", "Expired", message, 1)],
                   "observedGeneration": 1, "decidedAt": NOW, "message": message}),
            &req,
        ),
        event("Warning", "Expired", "Decide", message),
    ];
    let out = Captured::default();
    let action = run(req, script, &out).await;
    assert_eq!(action, Action::requeue(168 * 60 * MINUTE));
    let r = records(&out);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["event"], "approval.expired");
    assert!(r[0].get("actor").is_none());
}

#[tokio::test]
async fn sidecar_reports_consume_or_withdraw_and_are_never_written_back() {
    let policy = fixtures::payments_policy();
    // Approved earlier; the sidecar reported the one allowed use.
    let status = json!({"phase": "Approved", "observedGeneration": 2, "uses": 1,
        "decidedAt": "2026-11-22T09:58:00Z", "decidedBy": ["alice"]});
    let req = request(
        1,
        "wait",
        json!([approved("alice", "2026-11-22T09:58:00Z")]),
        status,
    );
    let message = "approved by alice; used 1 of 1 times";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Consumed", "conditions": [decided("True", "Consumed", message, 2)],
                   "observedGeneration": 2, "decidedAt": "2026-11-22T09:58:00Z",
                   "decidedBy": ["alice"], "message": message}),
            &req,
        ),
        event("Normal", "Consumed", "Decide", message),
    ];
    let out = Captured::default();
    run(req, script, &out).await;
    let r = records(&out);
    assert_eq!(r[0]["event"], "approval.decided");
    assert_eq!(r[0]["approval"]["decision"], "Consumed");
    assert_eq!(
        r[0]["actor"]["subject"],
        "system:serviceaccount:payments:support-agent"
    );

    // The agent disconnected while waiting.
    let status = json!({"phase": "Pending", "observedGeneration": 1, "uses": 0,
        "withdrawnAt": "2026-11-22T09:57:00Z"});
    let req = request(1, "wait", json!([]), status);
    let message =
        "withdrawn by the requester at 2026-11-22T09:57:00Z (the client disconnected or cancelled)";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Withdrawn", "conditions": [decided("True", "Withdrawn", message, 1)],
                   "observedGeneration": 1, "decidedAt": "2026-11-22T09:57:00Z", "message": message}),
            &req,
        ),
        event("Normal", "Withdrawn", "Decide", message),
    ];
    let out = Captured::default();
    run(req, script, &out).await;
    let r = records(&out);
    assert_eq!(r[0]["event"], "approval.withdrawn");
    assert_eq!(r[0]["outcome"], "failure");
}

#[tokio::test]
async fn a_deferred_grant_is_approved_until_its_ttl_then_expires() {
    let policy = fixtures::payments_policy();
    let pending = json!({"phase": "Pending", "observedGeneration": 1, "uses": 0});
    let req = request(
        1,
        "deferred",
        json!([approved("alice", "2026-11-22T09:30:00Z")]),
        pending,
    );
    let message =
        "approved by alice; the statement may run until 2026-11-22T10:30:00Z (used 0 of 1 times)";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Approved", "conditions": [decided("True", "Approved", message, 2)],
                   "observedGeneration": 2, "decidedAt": "2026-11-22T09:30:00Z",
                   "decidedBy": ["alice"], "message": message,
                   "grantExpiresAt": "2026-11-22T10:30:00Z"}),
            &req,
        ),
        event(
            "Normal",
            "Reviewed",
            "Review",
            "alice approved (1 of 1 approvals): ticket OPS-7",
        ),
        event("Normal", "Approved", "Decide", message),
    ];
    let out = Captured::default();
    let action = run(req, script, &out).await;
    // The grant ends at 10:30: look again exactly then.
    assert_eq!(action, Action::requeue(30 * MINUTE));

    let status = json!({"phase": "Approved", "observedGeneration": 2, "uses": 0});
    let mut req = request(
        1,
        "deferred",
        json!([approved("alice", "2026-11-22T08:30:00Z")]),
        status,
    );
    req.spec.expires_at.0 = "2026-11-22T08:45:00Z".parse().unwrap();
    let message = "approved by alice; the grant ended at 2026-11-22T09:30:00Z (used 0 of 1 times)";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Expired", "conditions": [decided("True", "Expired", message, 2)],
                   "observedGeneration": 2, "decidedAt": "2026-11-22T08:30:00Z",
                   "decidedBy": ["alice"], "message": message,
                   "grantExpiresAt": "2026-11-22T09:30:00Z"}),
            &req,
        ),
        event("Warning", "Expired", "Decide", message),
    ];
    let out = Captured::default();
    run(req, script, &out).await;
    assert_eq!(records(&out)[0]["event"], "approval.expired");
}

#[tokio::test]
async fn retention_audits_the_final_state_with_every_review_then_deletes() {
    let mut policy = fixtures::payments_policy();
    policy.spec.approval.as_mut().unwrap().retention = "24h".parse().unwrap();
    let status = json!({"phase": "Denied", "observedGeneration": 3, "uses": 0});
    let req = request(
        2,
        "wait",
        json!([
            approved("alice", "2026-11-21T09:58:00Z"),
            denied("bob", "2026-11-21T09:59:00Z")
        ]),
        status,
    );
    let out = Captured::default();
    let seen = out.clone();
    let script = vec![
        policy_get(&policy),
        Exchange::delete_checked(format!("{AP}/approvalrequests/{NAME}?"), move |body| {
            assert_eq!(body, &json!({"preconditions": {"uid": "ar-uid-1"}}));
            let records = seen.records();
            assert_eq!(
                records.len(),
                1,
                "the final state is audited before the delete"
            );
        })
        .reply(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
    ];
    let action = run(req, script, &out).await;
    assert_eq!(action, Action::await_change());
    let r = records(&out);
    assert_eq!(r[0]["event"], "approval.decided");
    assert_eq!(r[0]["approval"]["decision"], "Denied");
    assert_eq!(
        r[0]["message"],
        "retention of 24h after 2026-11-21T09:59:00Z ended; deleting the request. Final state: Denied: denied by bob: not during the freeze; uses 0 of 1. Reviews: 1. Approved by alice (groups payments-oncall, system:authenticated) at 2026-11-21T09:58:00Z: ticket OPS-7; 2. Denied by bob (groups payments-oncall) at 2026-11-21T09:59:00Z: not during the freeze"
    );
}

#[tokio::test]
async fn a_request_not_yet_due_for_deletion_is_kept_and_requeued() {
    let policy = fixtures::payments_policy();
    let status = json!({"phase": "Denied", "observedGeneration": 2, "uses": 0});
    let req = request(
        1,
        "wait",
        json!([denied("bob", "2026-11-21T10:00:00Z")]),
        status,
    );
    let message = "denied by bob: not during the freeze";
    let script = vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Denied", "conditions": [decided("True", "Denied", message, 2)],
                   "observedGeneration": 2, "decidedAt": "2026-11-21T10:00:00Z",
                   "decidedBy": ["bob"], "message": message}),
            &req,
        ),
    ];
    let out = Captured::default();
    let action = run(req, script, &out).await;
    assert_eq!(action, Action::requeue(144 * 60 * MINUTE));
    assert!(out.records().is_empty(), "nothing new happened");
}

fn with_notify(url: &str) -> AccessPolicy {
    let mut policy = fixtures::payments_policy();
    policy.spec.approval.as_mut().unwrap().notify = Some(Notify { url: url.into() });
    policy
}

async fn wait_for_posts(chat: &ChatServer, n: usize) {
    for _ in 0..500 {
        if chat.bodies.lock().unwrap().len() >= n {
            // Let the sender record the outcome.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the chat webhook got fewer than {n} posts");
}

fn notified(status: &str, reason: &str, message: &str) -> Value {
    json!({"type": "Notified", "status": status, "reason": reason, "message": message,
           "observedGeneration": 1, "lastTransitionTime": NOW})
}

#[tokio::test]
async fn a_new_request_is_announced_in_the_background_with_retries() {
    let chat = ChatServer::start(vec![502]).await;
    let policy = with_notify(&chat.url);
    let req = request(1, "wait", json!([]), Value::Null);
    let message = "waiting for 1 more approval (0 of 1); expires at 2026-11-22T10:15:00Z";
    let out = Captured::default();
    let (ctx, server) = context(&out);
    let handle = server.run(vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [
                       decided("False", "Pending", message, 1),
                       notified("Unknown", "Sending", "announcing to 127.0.0.1")],
                   "observedGeneration": 1, "message": message}),
            &req,
        ),
        Exchange::post("/apis/events.k8s.io/v1/namespaces/payments/events?", json!({"reason": "Created"}))
            .reply(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "payments"}, "eventTime": NOW})),
        // The outcome, once the controller looks again.
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [
                       decided("False", "Pending", message, 1),
                       notified("True", "Delivered", "announced to 127.0.0.1 (attempt 2)")],
                   "observedGeneration": 1, "message": message}),
            &req,
        ),
    ]);
    let action = reconcile(Arc::new(req.clone()), ctx.clone()).await.unwrap();
    // Not blocked by the announcement, and back soon for its outcome.
    assert_eq!(action, Action::requeue(ANNOUNCEMENT_POLL));
    wait_for_posts(&chat, 2).await;
    let posts = chat.bodies.lock().unwrap().clone();
    assert_eq!(posts[0], posts[1], "the retry sends the same announcement");
    assert!(
        posts[0]["text"]
            .as_str()
            .unwrap()
            .contains("kubectl cardgate approve support-agent-7f3c9a2e-qwer -n payments"),
        "{}",
        posts[0]
    );
    let mut seen = req;
    seen.status = Some(
        serde_json::from_value(json!({"phase": "Pending", "observedGeneration": 1, "uses": 0,
            "conditions": [decided("False", "Pending", message, 1), notified("Unknown", "Sending", "announcing to 127.0.0.1")]}))
        .unwrap(),
    );
    let action = reconcile(Arc::new(seen), ctx.clone()).await.unwrap();
    assert_eq!(action, Action::requeue(15 * MINUTE));
    drop(ctx);
    mock::verify(handle).await;
}

#[tokio::test]
async fn an_announcement_that_keeps_failing_is_reported_in_status_and_an_event() {
    let chat = ChatServer::start(vec![500, 500, 500]).await;
    let policy = with_notify(&chat.url);
    let message = "waiting for 1 more approval (0 of 1); expires at 2026-11-22T10:15:00Z";
    let sending = json!({"phase": "Pending", "observedGeneration": 1, "uses": 0,
        "conditions": [decided("False", "Pending", message, 1), notified("Unknown", "Sending", "announcing to 127.0.0.1")]});
    let req = request(1, "wait", json!([]), Value::Null);
    let failure = "announcement to 127.0.0.1 failed after 3 attempt(s): HTTP 500";
    let out = Captured::default();
    let (ctx, server) = context(&out);
    let created = Exchange::post(
        "/apis/events.k8s.io/v1/namespaces/payments/events?",
        json!({"reason": "Created"}),
    )
    .reply(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "payments"}, "eventTime": NOW}));
    let handle = server.run(vec![
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [
                       decided("False", "Pending", message, 1),
                       notified("Unknown", "Sending", "announcing to 127.0.0.1")],
                   "observedGeneration": 1, "message": message}),
            &req,
        ),
        created,
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [
                       decided("False", "Pending", message, 1),
                       notified("False", "Failed", failure)],
                   "observedGeneration": 1, "message": message}),
            &req,
        ),
        event("Warning", "NotificationFailed", "Notify", failure),
        // Reported once: the next pass keeps the condition and says nothing.
        policy_get(&policy),
        status_apply(
            json!({"phase": "Pending", "conditions": [
                       decided("False", "Pending", message, 1),
                       notified("False", "Failed", failure)],
                   "observedGeneration": 1, "message": message}),
            &req,
        ),
    ]);
    reconcile(Arc::new(req.clone()), ctx.clone()).await.unwrap();
    wait_for_posts(&chat, 3).await;
    let mut seen = req.clone();
    seen.status = Some(serde_json::from_value(sending).unwrap());
    reconcile(Arc::new(seen.clone()), ctx.clone())
        .await
        .unwrap();
    seen.status.as_mut().unwrap().conditions[1] =
        serde_json::from_value(notified("False", "Failed", failure)).unwrap();
    reconcile(Arc::new(seen), ctx.clone()).await.unwrap();
    drop(ctx);
    mock::verify(handle).await;
}

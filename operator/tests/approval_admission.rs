//! The ApprovalRequest webhooks through the real HTTPS server, one
//! AdmissionReview per rule in the exact shape the API server sends
//! (userInfo, object, oldObject, dryRun, options), against an AccessPolicy
//! cache and a mocked API for the requester pod lookup.

mod webhook_support;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cardgate_crds::v1alpha1::AccessPolicy;
use cardgate_operator::tls::certs::issue_all;
use cardgate_operator::tls::rotation::Lifetimes;
use cardgate_operator::tls::{CertResolver, service_dns_names};
use cardgate_operator::webhook::approvals::{ApprovalContext, ApprovalValidator, ReviewStamper};
use cardgate_operator::webhook::server::{Router, run};
use cardgate_operator::webhook::{MUTATE_APPROVALS_PATH, VALIDATE_APPROVALS_PATH, WebhookMetrics};
use jiff::{SignedDuration, Timestamp};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use webhook_support::{mock_client, post, status};

const NAME: &str = "support-agent-7f3c9a2e-qwer";
const SA: &str = "system:serviceaccount:payments:support-agent";
const POD: &str = "support-agent-6d5b8c7f9d-x2k4q";
const POD_UID: &str = "3f1e4d2a-9c7b-4e8f-a1d2-5b6c7d8e9f01";

struct Webhook {
    addr: SocketAddr,
    ca: String,
    metrics: WebhookMetrics,
    _stop: oneshot::Sender<()>,
    _cache: Writer<AccessPolicy>,
}

fn policy(name: &str, approval: Option<Value>) -> AccessPolicy {
    let mut p = json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": name, "namespace": "payments", "uid": format!("uid-{name}")},
        "spec": {"agentSelector": {"matchLabels": {"app": name}},
                 "targets": [{"name": "payments-db", "service": {"name": "payments-db", "port": 5432},
                              "credentialsSecretRef": {"name": "db"}}]}
    });
    if let Some(a) = approval {
        p["spec"]["approval"] = a;
    }
    serde_json::from_value(p).unwrap()
}

fn pod(name: &str, uid: &str, sa: &str, proxied: Option<&str>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "payments", "uid": uid, "labels": {"app": "support-agent"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "agent", "image": "agent:1"}]},
        "status": {"phase": "Running"}
    });
    if let Some(policy) = proxied {
        p["metadata"]["labels"]["cardgate.dev/proxied"] = json!(policy);
    }
    p
}

async fn start() -> Webhook {
    let (store, mut writer) = reflector::store::<AccessPolicy>();
    writer.apply_watcher_event(&Event::Init);
    for p in [
        policy(
            "support-agent",
            Some(
                json!({"approvers": {"users": ["dave@example.com"], "groups": ["payments-oncall"]},
                        "quorum": 1}),
            ),
        ),
        policy(
            "strict",
            Some(json!({"approvers": {"groups": ["payments-oncall"]}, "quorum": 2})),
        ),
        policy("no-approval", None),
    ] {
        writer.apply_watcher_event(&Event::InitApply(p));
    }
    writer.apply_watcher_event(&Event::InitDone);

    let (client, api) = mock_client();
    api.serve_forever(|method, path| {
        assert_eq!(method, "GET", "the webhook only reads");
        let pods = "/api/v1/namespaces/payments/pods/";
        match path.strip_prefix(pods) {
            Some(POD) => (
                200,
                pod(POD, POD_UID, "support-agent", Some("support-agent")),
            ),
            Some("unlabelled") => (200, pod("unlabelled", "uid-u", "support-agent", None)),
            Some("other-policy") => (
                200,
                pod("other-policy", "uid-o", "support-agent", Some("strict")),
            ),
            Some("other-sa") => (
                200,
                pod("other-sa", "uid-s", "default", Some("support-agent")),
            ),
            Some("flaky") => (
                500,
                status(500, "InternalError", "etcdserver: request timed out"),
            ),
            _ => (404, status(404, "NotFound", "pods not found")),
        }
    });

    let certs = issue_all(
        Timestamp::now(),
        &service_dns_names("cardgate-operator", "cardgate-system"),
        Lifetimes::default(),
        None,
    )
    .unwrap();
    let resolver = CertResolver::new();
    resolver.install(certs.certified_key().unwrap());
    let metrics = WebhookMetrics::default();
    let ctx = Arc::new(ApprovalContext {
        policies: store,
        client,
        metrics: metrics.clone(),
        now: Timestamp::now,
    });
    let router = Router::new()
        .admit(MUTATE_APPROVALS_PATH, ReviewStamper(ctx.clone()))
        .admit(VALIDATE_APPROVALS_PATH, ApprovalValidator(ctx));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(listener, resolver, Arc::new(router), async {
        stopped.await.ok();
    }));
    Webhook {
        addr,
        ca: certs.ca_cert,
        metrics,
        _stop: stop,
        _cache: writer,
    }
}

/// RFC 3339 of now + `minutes`.
fn at(minutes: i64) -> String {
    (Timestamp::now() + SignedDuration::from_mins(minutes))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The request as the API server stores it, with `reviews`.
fn stored(reviews: Value) -> Value {
    let generation = 1 + reviews.as_array().map_or(0, Vec::len);
    json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "ApprovalRequest",
        "metadata": {
            "name": NAME, "namespace": "payments", "uid": "ar-uid-1",
            "resourceVersion": "811", "generation": generation,
            "creationTimestamp": at(-2),
            "labels": {"cardgate.dev/policy": "support-agent"},
            "managedFields": [{"manager": "cardgate-sidecar", "operation": "Update",
                               "apiVersion": "cardgate.dev/v1alpha1", "time": at(-2),
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]
        },
        "spec": {
            "requester": {"subject": "alice", "issuer": "https://idp.example.com",
                          "serviceAccount": SA, "pod": POD, "podUid": POD_UID},
            "policy": "support-agent",
            "rule": "rule 3 (writes-need-approval)",
            "target": "payments-db",
            "statement": {"text": "UPDATE orders SET status = 'refunded' WHERE id = 4711",
                          "preview": "UPDATE orders SET status = 'refunded' WHERE id = 4711",
                          "fingerprint": "7f3c9a2e5b", "class": "write"},
            "mode": "wait", "quorum": 1, "expiresAt": at(13),
            "grantTtl": "1h", "maxUses": 1,
            "reviews": reviews
        },
        "status": {"phase": "Pending", "observedGeneration": generation, "uses": 0}
    })
}

/// `v` with the member at `pointer` set (created if its parent exists).
fn set(mut v: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match parent {
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        other => panic!("{pointer}: {other} is not a container"),
    }
    v
}

fn with_review(old: &Value, review: Value) -> Value {
    let mut new = old.clone();
    new["spec"]["reviews"].as_array_mut().unwrap().push(review);
    new
}

/// A review as the mutating webhook stamps it for `user`.
fn stamped(decision: &str, reason: &str, user: &str, groups: &[&str]) -> Value {
    json!({"decision": decision, "reason": reason, "reviewer": user, "groups": groups, "time": at(0)})
}

const ONCALL: &[&str] = &["payments-oncall", "system:authenticated"];

fn approve() -> Value {
    json!({"decision": "Approved", "reason": "ticket OPS-7"})
}

struct Caller<'a> {
    user: &'a str,
    groups: &'a [&'a str],
}

const BOB: Caller = Caller {
    user: "bob@example.com",
    groups: ONCALL,
};
const SIDECAR: Caller = Caller {
    user: SA,
    groups: &[
        "system:serviceaccounts",
        "system:serviceaccounts:payments",
        "system:authenticated",
    ],
};

/// An AdmissionReview exactly as the API server sends it.
fn review(
    uid: &str,
    operation: &str,
    caller: &Caller,
    object: &Value,
    old: Option<&Value>,
) -> Value {
    let gvk = json!({"group": "cardgate.dev", "version": "v1alpha1", "kind": "ApprovalRequest"});
    let gvr =
        json!({"group": "cardgate.dev", "version": "v1alpha1", "resource": "approvalrequests"});
    let options = match operation {
        "CREATE" => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions", "fieldManager": "cardgate-sidecar"})
        }
        "DELETE" => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
        }
        _ => {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions", "fieldManager": "kubectl-cardgate"})
        }
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": NAME,
            "namespace": "payments",
            "operation": operation,
            "userInfo": {
                "username": caller.user,
                "uid": "5c1b2e8a-1111-4c36-8f0e-6d1e2b3a4c5d",
                "groups": caller.groups,
                "extra": {"authentication.kubernetes.io/credential-id": ["X509SHA256=ab12"]}
            },
            "object": object,
            "oldObject": old.cloned().unwrap_or(Value::Null),
            "dryRun": false,
            "options": options
        }
    })
}

async fn call(w: &Webhook, path: &str, review: &Value) -> Value {
    let ex = post(
        w.addr,
        &w.ca,
        path,
        serde_json::to_vec(review).unwrap(),
        false,
    )
    .await;
    assert_eq!(ex.status, 200, "{}", String::from_utf8_lossy(&ex.body));
    let v: Value = serde_json::from_slice(&ex.body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], review["request"]["uid"]);
    v["response"].clone()
}

/// `resp` refuses with exactly `message`.
fn assert_denied(case: &str, resp: &Value, message: &str) {
    assert_eq!(resp["allowed"], false, "{case}: {resp}");
    assert_eq!(resp["status"]["code"], 403, "{case}");
    assert_eq!(resp["status"]["reason"], "Forbidden", "{case}");
    assert_eq!(resp["status"]["message"], message, "{case}");
    assert!(resp.get("patch").is_none(), "{case}");
}

#[tokio::test]
async fn a_review_is_stamped_with_the_authenticated_caller_whatever_the_body_says() {
    let w = start().await;
    let old = stored(json!([]));
    // The body claims to be dave, long ago: the API server's word wins.
    let claimed = json!({"decision": "Approved", "reason": "ticket OPS-7",
                         "reviewer": "dave@example.com", "groups": ["admins"],
                         "time": "2020-01-01T00:00:00Z"});
    for (case, body) in [("plain", approve()), ("forged", claimed)] {
        let new = with_review(&old, body);
        let before = Timestamp::now();
        let resp = call(
            &w,
            MUTATE_APPROVALS_PATH,
            &review(case, "UPDATE", &BOB, &new, Some(&old)),
        )
        .await;
        assert_eq!(resp["allowed"], true, "{case}: {resp}");
        assert_eq!(resp["patchType"], "JSONPatch", "{case}");
        let patch: json_patch::Patch =
            serde_json::from_slice(&STANDARD.decode(resp["patch"].as_str().unwrap()).unwrap())
                .unwrap();
        let mut doc = new.clone();
        json_patch::patch(&mut doc, &patch.0).unwrap();
        let r = &doc["spec"]["reviews"][0];
        assert_eq!(r["reviewer"], "bob@example.com", "{case}");
        assert_eq!(r["groups"], json!(ONCALL), "{case}");
        assert_eq!(r["decision"], "Approved");
        assert_eq!(r["reason"], "ticket OPS-7");
        let time: Timestamp = r["time"].as_str().unwrap().parse().unwrap();
        assert!(
            time >= before.checked_sub(SignedDuration::from_secs(1)).unwrap()
                && time <= Timestamp::now(),
            "{case}: stamped {time}"
        );
        // What the mutating webhook produced, the validating one admits.
        let resp = call(
            &w,
            VALIDATE_APPROVALS_PATH,
            &review(case, "UPDATE", &BOB, &doc, Some(&old)),
        )
        .await;
        assert_eq!(resp["allowed"], true, "{case}: {resp}");
    }
}

#[tokio::test]
async fn changes_that_add_no_review_pass_unstamped() {
    let w = start().await;
    let old = stored(json!([]));
    let labelled = set(old.clone(), "/metadata/labels/team", json!("payments"));
    for path in [MUTATE_APPROVALS_PATH, VALIDATE_APPROVALS_PATH] {
        let resp = call(
            &w,
            path,
            &review("label", "UPDATE", &BOB, &labelled, Some(&old)),
        )
        .await;
        assert_eq!(resp["allowed"], true, "{path}: {resp}");
        assert!(resp.get("patch").is_none());
    }
    // Metadata stays manageable after the decision (finalizers, labels).
    let decided = set(
        stored(json!([stamped("Denied", "no", "bob@example.com", ONCALL)])),
        "/status/phase",
        json!("Denied"),
    );
    let relabelled = set(decided.clone(), "/metadata/labels/team", json!("payments"));
    let resp = call(
        &w,
        VALIDATE_APPROVALS_PATH,
        &review("late-label", "UPDATE", &BOB, &relabelled, Some(&decided)),
    )
    .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let resp = call(
        &w,
        VALIDATE_APPROVALS_PATH,
        &review("delete", "DELETE", &BOB, &Value::Null, Some(&decided)),
    )
    .await;
    assert_eq!(resp["allowed"], true, "{resp}");
}

#[tokio::test]
async fn every_update_rule_refuses_with_a_precise_message() {
    let w = start().await;
    let open = stored(json!([]));
    let one = stored(json!([stamped(
        "Approved",
        "ticket OPS-7",
        "carol@example.com",
        ONCALL
    )]));
    let strict_one = set(one.clone(), "/spec/policy", json!("strict"));
    let strict_one = set(strict_one, "/spec/quorum", json!(2));
    let mallory = Caller {
        user: "mallory@example.com",
        groups: &["system:authenticated"],
    };
    let alice = Caller {
        user: "alice",
        groups: ONCALL,
    };
    let sa_as_reviewer = Caller {
        user: SA,
        groups: ONCALL,
    };
    let carol = Caller {
        user: "carol@example.com",
        groups: ONCALL,
    };
    let past = at(-1);
    struct Case<'a> {
        name: &'a str,
        caller: &'a Caller<'a>,
        old: Value,
        new: Value,
        message: String,
    }
    let cases = vec![
        Case {
            name: "self-approval-by-subject",
            caller: &alice,
            old: open.clone(),
            new: with_review(&open, approve()),
            message: "cardgate: alice cannot approve their own request".into(),
        },
        Case {
            name: "self-denial-by-service-account",
            caller: &sa_as_reviewer,
            old: open.clone(),
            new: with_review(&open, json!({"decision": "Denied", "reason": "oops"})),
            message: format!("cardgate: {SA} cannot deny their own request"),
        },
        Case {
            name: "not-an-approver",
            caller: &mallory,
            old: open.clone(),
            new: with_review(&open, approve()),
            message: "cardgate: mallory@example.com is not an approver of AccessPolicy support-agent (approvers: users dave@example.com; groups payments-oncall)".into(),
        },
        Case {
            name: "edit-existing-review",
            caller: &BOB,
            old: one.clone(),
            new: with_review(
                &set(one.clone(), "/spec/reviews/0/reason", json!("changed my mind")),
                approve(),
            ),
            message: "cardgate: review 0 cannot be edited or removed; reviews can only be appended".into(),
        },
        Case {
            name: "remove-existing-review",
            caller: &BOB,
            old: one.clone(),
            new: set(one.clone(), "/spec/reviews", json!([])),
            message: "cardgate: review 0 cannot be edited or removed; reviews can only be appended".into(),
        },
        Case {
            name: "two-reviews-at-once",
            caller: &BOB,
            old: open.clone(),
            new: with_review(&with_review(&open, approve()), approve()),
            message: "cardgate: add one review at a time (2 were added)".into(),
        },
        Case {
            name: "spec-change",
            caller: &BOB,
            old: open.clone(),
            new: set(open.clone(), "/spec/target", json!("ledger-db")),
            message: "cardgate: only reviews can be added to an ApprovalRequest; spec.target cannot change".into(),
        },
        Case {
            name: "quorum-lowered",
            caller: &BOB,
            old: strict_one.clone(),
            new: with_review(&set(strict_one.clone(), "/spec/quorum", json!(1)), approve()),
            message: "cardgate: only reviews can be added to an ApprovalRequest; spec.quorum cannot change".into(),
        },
        Case {
            name: "decided-by-reviews-before-the-controller-caught-up",
            caller: &BOB,
            old: one.clone(),
            new: with_review(&one, json!({"decision": "Denied", "reason": "too late"})),
            message: format!("cardgate: {NAME} is already Approved; nothing can change"),
        },
        Case {
            name: "decided-by-status",
            caller: &BOB,
            old: set(open.clone(), "/status/phase", json!("Expired")),
            new: with_review(&set(open.clone(), "/status/phase", json!("Expired")), approve()),
            message: format!("cardgate: {NAME} is already Expired; nothing can change"),
        },
        Case {
            name: "expired-before-the-controller-caught-up",
            caller: &BOB,
            old: set(open.clone(), "/spec/expiresAt", json!(past)),
            new: with_review(&set(open.clone(), "/spec/expiresAt", json!(past)), approve()),
            message: format!("cardgate: {NAME} expired at {past}; it can no longer be reviewed"),
        },
        Case {
            name: "withdrawn",
            caller: &BOB,
            old: set(open.clone(), "/status/withdrawnAt", json!(at(-1))),
            new: with_review(&set(open.clone(), "/status/withdrawnAt", json!(at(-1))), approve()),
            message: format!("cardgate: {NAME} was withdrawn by the requester; it can no longer be reviewed"),
        },
        Case {
            name: "second-review-by-the-same-person",
            caller: &carol,
            old: strict_one.clone(),
            new: with_review(&strict_one, approve()),
            message: format!("cardgate: carol@example.com has already reviewed {NAME}"),
        },
        Case {
            name: "denial-without-reason",
            caller: &BOB,
            old: open.clone(),
            new: with_review(&open, json!({"decision": "Denied", "reason": "  "})),
            message: "cardgate: a denial needs a reason (deny NAME --reason …)".into(),
        },
        Case {
            name: "card-number-in-reason",
            caller: &BOB,
            old: open.clone(),
            new: with_review(&open, json!({"decision": "Approved", "reason": "refund card 4111 1111 1111 1111"})),
            message: "cardgate: spec.reviews[0].reason holds what looks like an unmasked card number; cardgate never stores card numbers".into(),
        },
        Case {
            name: "overlong-reason",
            caller: &BOB,
            old: open.clone(),
            new: with_review(&open, json!({"decision": "Approved", "reason": "x".repeat(1025)})),
            message: "cardgate: the reason is longer than 1024 characters".into(),
        },
        Case {
            name: "policy-gone",
            caller: &BOB,
            old: set(open.clone(), "/spec/policy", json!("deleted")),
            new: with_review(&set(open.clone(), "/spec/policy", json!("deleted")), approve()),
            message: "cardgate: AccessPolicy payments/deleted (spec.policy) does not exist".into(),
        },
        Case {
            name: "policy-without-approvers",
            caller: &BOB,
            old: set(open.clone(), "/spec/policy", json!("no-approval")),
            new: with_review(&set(open.clone(), "/spec/policy", json!("no-approval")), approve()),
            message: "cardgate: AccessPolicy payments/no-approval has no spec.approval, so nobody may approve its requests".into(),
        },
    ];
    let mut denials = 0;
    for case in cases {
        for path in [MUTATE_APPROVALS_PATH, VALIDATE_APPROVALS_PATH] {
            let r = review(case.name, "UPDATE", case.caller, &case.new, Some(&case.old));
            let resp = call(&w, path, &r).await;
            assert_denied(&format!("{} via {path}", case.name), &resp, &case.message);
            denials += 1;
        }
    }
    let text = {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("denials", "", w.metrics.denials.clone());
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &registry).unwrap();
        s
    };
    assert!(
        text.contains(&format!(
            "denials_total{{webhook=\"mutate-approvalrequests\"}} {}",
            denials / 2
        )),
        "{text}"
    );
}

#[tokio::test]
async fn the_validating_webhook_requires_the_callers_own_stamp() {
    let w = start().await;
    let old = stored(json!([]));
    let dave = Caller {
        user: "dave@example.com",
        groups: &["system:authenticated"],
    };
    let late = json!({"decision": "Approved", "reason": "ok", "reviewer": "dave@example.com",
                      "groups": ["system:authenticated"], "time": at(-5)});
    for (case, body) in [
        ("unstamped", approve()),
        (
            "stamped-for-someone-else",
            stamped("Approved", "ok", "bob@example.com", ONCALL),
        ),
        (
            "other-groups",
            stamped("Approved", "ok", "dave@example.com", &["payments-oncall"]),
        ),
        ("old-time", late),
    ] {
        let resp = call(
            &w,
            VALIDATE_APPROVALS_PATH,
            &review(case, "UPDATE", &dave, &with_review(&old, body), Some(&old)),
        )
        .await;
        assert_denied(
            case,
            &resp,
            "cardgate: review 0 does not carry the reviewer, groups and time of the authenticated caller; is MutatingWebhookConfiguration cardgate-approvalrequests installed?",
        );
    }
    // Listed by name rather than group, stamped correctly: admitted, dry
    // run or not.
    let good = with_review(
        &old,
        stamped(
            "Approved",
            "ok",
            "dave@example.com",
            &["system:authenticated"],
        ),
    );
    let mut r = review("dry", "UPDATE", &dave, &good, Some(&old));
    r["request"]["dryRun"] = json!(true);
    let resp = call(&w, VALIDATE_APPROVALS_PATH, &r).await;
    assert_eq!(resp["allowed"], true, "{resp}");
}

/// A new request as the sidecar creates it (no status, no uid yet).
fn created() -> Value {
    let mut v = stored(json!([]));
    v.as_object_mut().unwrap().remove("status");
    for k in [
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
    ] {
        v["metadata"].as_object_mut().unwrap().remove(k);
    }
    v["spec"].as_object_mut().unwrap().remove("reviews");
    v
}

#[tokio::test]
async fn the_sidecar_creates_requests_for_itself_from_a_governed_pod() {
    let w = start().await;
    let resp = call(
        &w,
        VALIDATE_APPROVALS_PATH,
        &review("ok", "CREATE", &SIDECAR, &created(), None),
    )
    .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    // Not a mutating concern: no patch.
    let resp = call(
        &w,
        MUTATE_APPROVALS_PATH,
        &review("ok", "CREATE", &SIDECAR, &created(), None),
    )
    .await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
}

#[tokio::test]
async fn every_create_rule_refuses_with_a_precise_message() {
    let w = start().await;
    let other_sa = Caller {
        user: "system:serviceaccount:payments:billing-agent",
        groups: SIDECAR.groups,
    };
    let foreign = Caller {
        user: "system:serviceaccount:agents:support-agent",
        groups: SIDECAR.groups,
    };
    let pod_case = |pod: &str| set(created(), "/spec/requester/pod", json!(pod));
    let (past, far) = (at(-1), at(25 * 60));
    let mut with_reviews = created();
    with_reviews["spec"]["reviews"] = json!([approve()]);
    let cases: Vec<(&str, &Caller, Value, String)> = vec![
        ("a-person", &BOB, created(), "cardgate: ApprovalRequests are created by the cardgate sidecar with its pod's service account; bob@example.com is not a service account".into()),
        ("for-someone-else", &other_sa, created(), format!("cardgate: system:serviceaccount:payments:billing-agent may only create ApprovalRequests for itself, not for spec.requester.serviceAccount {SA}")),
        ("other-namespace", &foreign, set(created(), "/spec/requester/serviceAccount", json!(foreign.user)), "cardgate: system:serviceaccount:agents:support-agent belongs to another namespace than payments".into()),
        ("with-reviews", &SIDECAR, with_reviews, "cardgate: a new ApprovalRequest cannot carry reviews; approvers add them once it exists".into()),
        ("already-expired", &SIDECAR, set(created(), "/spec/expiresAt", json!(past)), format!("cardgate: spec.expiresAt {past} is not in the future")),
        ("expires-too-late", &SIDECAR, set(created(), "/spec/expiresAt", json!(far)), format!("cardgate: spec.expiresAt {far} is more than 24h ahead; requests must be decided soon")),
        ("raw-card-number", &SIDECAR, set(created(), "/spec/statement/text", json!("UPDATE cards SET pan = '4111111111111111'")), "cardgate: spec.statement.text holds what looks like an unmasked card number; cardgate never stores card numbers".into()),
        ("quorum-below-policy", &SIDECAR, set(set(created(), "/spec/policy", json!("strict")), "/spec/quorum", json!(1)), "cardgate: spec.quorum 1 is below the quorum 2 of AccessPolicy strict".into()),
        ("unknown-policy", &SIDECAR, set(created(), "/spec/policy", json!("deleted")), "cardgate: AccessPolicy payments/deleted (spec.policy) does not exist".into()),
        ("no-such-pod", &SIDECAR, pod_case("gone"), "cardgate: pod gone (spec.requester.pod) does not exist".into()),
        ("pod-uid-differs", &SIDECAR, set(created(), "/spec/requester/podUid", json!("0000")), format!("cardgate: pod {POD} has another UID than spec.requester.podUid 0000")),
        ("pod-runs-as-another-sa", &SIDECAR, set(pod_case("other-sa"), "/spec/requester/podUid", json!("uid-s")), format!("cardgate: pod other-sa runs as service account default, not as {SA}")),
        ("pod-not-governed", &SIDECAR, set(pod_case("unlabelled"), "/spec/requester/podUid", json!("uid-u")), "cardgate: pod unlabelled is not governed by AccessPolicy support-agent (label cardgate.dev/proxied=<none>)".into()),
        ("pod-governed-by-another-policy", &SIDECAR, set(pod_case("other-policy"), "/spec/requester/podUid", json!("uid-o")), "cardgate: pod other-policy is not governed by AccessPolicy support-agent (label cardgate.dev/proxied=strict)".into()),
    ];
    for (name, caller, object, message) in cases {
        let resp = call(
            &w,
            VALIDATE_APPROVALS_PATH,
            &review(name, "CREATE", caller, &object, None),
        )
        .await;
        assert_denied(name, &resp, &message);
    }
    // The pod cannot be checked: closed.
    let resp = call(
        &w,
        VALIDATE_APPROVALS_PATH,
        &review("flaky", "CREATE", &SIDECAR, &pod_case("flaky"), None),
    )
    .await;
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cardgate: cannot check the requester pod payments/flaky (")
            && message.ends_with("; retry"),
        "{message}"
    );
}

#[tokio::test]
async fn requests_before_the_policy_cache_is_loaded_are_refused() {
    let (store, _writer) = reflector::store::<AccessPolicy>();
    let (client, _api) = mock_client();
    let ctx = Arc::new(ApprovalContext {
        policies: store,
        client,
        metrics: WebhookMetrics::default(),
        now: Timestamp::now,
    });
    let certs = issue_all(
        Timestamp::now(),
        &service_dns_names("cardgate-operator", "cardgate-system"),
        Lifetimes::default(),
        None,
    )
    .unwrap();
    let resolver = CertResolver::new();
    resolver.install(certs.certified_key().unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().admit(MUTATE_APPROVALS_PATH, ReviewStamper(ctx));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(listener, resolver, Arc::new(router), async {
        stopped.await.ok();
    }));
    let old = stored(json!([]));
    let r = review(
        "early",
        "UPDATE",
        &BOB,
        &with_review(&old, approve()),
        Some(&old),
    );
    let ex = post(
        addr,
        &certs.ca_cert,
        MUTATE_APPROVALS_PATH,
        serde_json::to_vec(&r).unwrap(),
        true,
    )
    .await;
    let v: Value = serde_json::from_slice(&ex.body).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert_eq!(
        v["response"]["status"]["message"],
        "cardgate: the webhook has not finished loading AccessPolicies yet; retry in a few seconds"
    );
    drop(stop);
}

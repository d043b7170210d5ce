//! Every `x-kubernetes-validations` rule in the generated CRDs, evaluated by a
//! CEL interpreter (kube's, with the Kubernetes extension libraries) against
//! an object it accepts and one it rejects, so the rules are proven to work
//! as the API server would run them — not just present in the YAML.

mod support;

use serde_json::{Value, json};
use support::{api_errors, schema};

fn set(mut v: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    let target = v
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent}"));
    match target {
        Value::Object(m) => {
            m.insert(key.to_string(), value);
        }
        Value::Array(a) => {
            let i: usize = key.parse().expect("index");
            if i == a.len() {
                a.push(value);
            } else {
                a[i] = value;
            }
        }
        _ => panic!("{parent} is not a container"),
    }
    v
}

fn del(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("pointer has a parent");
    match v.pointer_mut(parent).expect("parent exists") {
        Value::Object(m) => {
            m.remove(key);
        }
        Value::Array(a) => {
            a.remove(key.parse().expect("index"));
        }
        _ => panic!("not a container"),
    }
    v
}

#[track_caller]
fn accept(plural: &str, obj: &Value, old: Option<&Value>) {
    let errors = api_errors(plural, obj, old);
    assert!(
        errors.is_empty(),
        "expected {plural} to be accepted, got {errors:#?}\n{obj:#}"
    );
}

#[track_caller]
fn reject(plural: &str, obj: &Value, old: Option<&Value>, message: &str) {
    let errors = api_errors(plural, obj, old);
    assert!(
        errors.iter().any(|e| e.contains(message)),
        "expected {plural} to be rejected with {message:?}, got {errors:#?}\n{obj:#}"
    );
}

fn policy() -> Value {
    json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "p", "namespace": "payments"},
        "spec": {
            "agentSelector": {"matchLabels": {"app": "agent"}},
            "targets": [{
                "name": "db", "service": {"name": "db", "port": 5432},
                "credentialsSecretRef": {"name": "creds"}
            }]
        }
    })
}

fn approval() -> Value {
    json!({"approvers": {"groups": ["oncall"]}, "quorum": 1})
}

const AP: &str = "accesspolicies";
const MR: &str = "maskingrules";
const AR: &str = "approvalrequests";

#[test]
fn access_policy_base_is_accepted() {
    accept(AP, &policy(), None);
}

#[test]
fn require_approval_needs_approval_settings() {
    let p = set(
        policy(),
        "/spec/rules",
        json!([{"action": "requireApproval", "match": {"classes": ["write"]}}]),
    );
    reject(AP, &p, None, "need spec.approval");
    accept(AP, &set(p, "/spec/approval", approval()), None);
}

#[test]
fn at_least_one_target() {
    reject(
        AP,
        &set(policy(), "/spec/targets", json!([])),
        None,
        "at least one target",
    );
}

#[test]
fn subject_has_exactly_one_kind() {
    let both = json!([{"serviceAccount": {"name": "a"}, "oidc": {"issuer": "https://i"}}]);
    reject(
        AP,
        &set(policy(), "/spec/subjects", both),
        None,
        "exactly one of serviceAccount or oidc",
    );
    reject(
        AP,
        &set(policy(), "/spec/subjects", json!([{}])),
        None,
        "exactly one of serviceAccount or oidc",
    );
    accept(
        AP,
        &set(
            policy(),
            "/spec/subjects",
            json!([{"serviceAccount": {"name": "a"}}]),
        ),
        None,
    );
}

#[test]
fn target_has_exactly_one_of_service_or_external() {
    let both = set(
        policy(),
        "/spec/targets/0/external",
        json!({"host": "db.example.com", "port": 5432}),
    );
    reject(AP, &both, None, "exactly one of service or external");
    let neither = del(policy(), "/spec/targets/0/service");
    reject(AP, &neither, None, "exactly one of service or external");
    let external = del(both, "/spec/targets/0/service");
    accept(AP, &external, None);
}

#[test]
fn postgres_targets_need_credentials() {
    let p = del(policy(), "/spec/targets/0/credentialsSecretRef");
    reject(AP, &p, None, "need credentialsSecretRef");
    accept(AP, &set(p, "/spec/targets/0/protocol", json!("http")), None);
}

#[test]
fn ports_are_tcp_ports() {
    reject(
        AP,
        &set(policy(), "/spec/targets/0/service/port", json!(70000)),
        None,
        "TCP port",
    );
    reject(
        AP,
        &set(policy(), "/spec/targets/0/listenPort", json!(0)),
        None,
        "TCP port",
    );
    accept(
        AP,
        &set(policy(), "/spec/targets/0/listenPort", json!(15432)),
        None,
    );
    let ext = del(
        set(
            policy(),
            "/spec/targets/0/external",
            json!({"host": "h", "port": 0}),
        ),
        "/spec/targets/0/service",
    );
    reject(AP, &ext, None, "TCP port");
}

#[test]
fn verify_full_needs_a_ca() {
    let p = set(
        policy(),
        "/spec/targets/0/tls",
        json!({"mode": "verifyFull"}),
    );
    reject(AP, &p, None, "verifyFull needs caSecretRef");
    accept(
        AP,
        &set(
            p,
            "/spec/targets/0/tls/caSecretRef",
            json!({"name": "ca", "key": "ca.crt"}),
        ),
        None,
    );
    accept(
        AP,
        &set(policy(), "/spec/targets/0/tls", json!({"mode": "require"})),
        None,
    );
}

#[test]
fn allowed_clients_need_a_selector() {
    reject(
        AP,
        &set(policy(), "/spec/targets/0/allowedClients", json!([{}])),
        None,
        "needs podSelector",
    );
    accept(
        AP,
        &set(
            policy(),
            "/spec/targets/0/allowedClients",
            json!([{"podSelector": {"matchLabels": {"app": "api"}}}]),
        ),
        None,
    );
}

#[test]
fn limits_are_positive() {
    reject(
        AP,
        &set(policy(), "/spec/limits", json!({"maxRows": 0})),
        None,
        "maxRows must be at least 1",
    );
    reject(
        AP,
        &set(policy(), "/spec/limits", json!({"maxBytes": -1})),
        None,
        "maxBytes must be at least 1",
    );
    accept(
        AP,
        &set(
            policy(),
            "/spec/limits",
            json!({"maxRows": 1, "maxBytes": 1}),
        ),
        None,
    );
}

#[test]
fn approval_quorum_and_approvers() {
    let zero = set(
        policy(),
        "/spec/approval",
        set(approval(), "/quorum", json!(0)),
    );
    reject(AP, &zero, None, "quorum must be at least 1");
    let nobody = set(policy(), "/spec/approval", json!({"approvers": {}}));
    reject(AP, &nobody, None, "at least one user or group");
    let uses = set(
        policy(),
        "/spec/approval",
        set(approval(), "/maxUses", json!(0)),
    );
    reject(AP, &uses, None, "maxUses must be at least 1");
    // quorum defaults to 1 when omitted, as the API server would default it.
    accept(
        AP,
        &set(
            policy(),
            "/spec/approval",
            json!({"approvers": {"users": ["alice"]}}),
        ),
        None,
    );
}

#[test]
fn closed_enums_reject_unknown_values() {
    let p = set(
        policy(),
        "/spec/rules",
        json!([{"action": "allow", "match": {"classes": ["wirte"]}}]),
    );
    reject(AP, &p, None, "wirte");
    reject(
        AP,
        &set(policy(), "/spec/defaultAction", json!("permit")),
        None,
        "permit",
    );
}

fn masking_rule(detectors: Value, action: Value) -> Value {
    json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "MaskingRule",
        "metadata": {"name": "m", "namespace": "payments"},
        "spec": {"detectors": detectors, "action": action}
    })
}

#[test]
fn masking_null_only_for_columns() {
    let col = json!([{"type": "column", "columns": ["*.cvv"]}]);
    accept(MR, &masking_rule(col, json!({"type": "null"})), None);
    let pan = json!([{"type": "pan"}]);
    reject(
        MR,
        &masking_rule(pan, json!({"type": "null"})),
        None,
        "column detectors only",
    );
}

#[test]
fn masking_needs_detectors() {
    reject(
        MR,
        &masking_rule(json!([]), json!({"type": "redact"})),
        None,
        "at least one detector",
    );
}

#[test]
fn regex_and_column_detectors_need_their_fields() {
    let redact = json!({"type": "redact"});
    reject(
        MR,
        &masking_rule(json!([{"type": "regex"}]), redact.clone()),
        None,
        "needs pattern",
    );
    accept(
        MR,
        &masking_rule(
            json!([{"type": "regex", "pattern": "acct-[0-9]{8}"}]),
            redact.clone(),
        ),
        None,
    );
    reject(
        MR,
        &masking_rule(json!([{"type": "pan", "pattern": "x"}]), redact.clone()),
        None,
        "only used by regex",
    );
    reject(
        MR,
        &masking_rule(json!([{"type": "column"}]), redact.clone()),
        None,
        "needs columns or jsonPaths",
    );
    accept(
        MR,
        &masking_rule(
            json!([{"type": "column", "jsonPaths": ["$.card.number"]}]),
            redact,
        ),
        None,
    );
}

#[test]
fn hmac_needs_a_key() {
    let pan = json!([{"type": "pan"}]);
    reject(
        MR,
        &masking_rule(pan.clone(), json!({"type": "hmac"})),
        None,
        "unkeyed hashes",
    );
    accept(
        MR,
        &masking_rule(
            pan,
            json!({"type": "hmac", "hmacKeySecretRef": {"name": "k", "key": "key"}}),
        ),
        None,
    );
}

#[test]
fn truncation_never_reveals_more_than_bin_and_last_four() {
    let pan = || json!([{"type": "pan"}]);
    let t = |l: u8, r: u8| json!({"type": "truncate", "truncate": {"leadingDigits": l, "trailingDigits": r}});
    accept(MR, &masking_rule(pan(), t(6, 4)), None);
    accept(MR, &masking_rule(pan(), t(8, 4)), None);
    accept(MR, &masking_rule(pan(), t(0, 4)), None);
    reject(MR, &masking_rule(pan(), t(7, 4)), None, "at most 6, or 8");
    reject(MR, &masking_rule(pan(), t(9, 4)), None, "at most 6, or 8");
    reject(MR, &masking_rule(pan(), t(6, 5)), None, "at most 4");
    // Defaults (6 + 4) apply when the fields are omitted.
    accept(
        MR,
        &masking_rule(pan(), json!({"type": "truncate", "truncate": {}})),
        None,
    );
    let misplaced = json!({"type": "last4", "truncate": {"leadingDigits": 6}});
    reject(
        MR,
        &masking_rule(pan(), misplaced),
        None,
        "only used by action truncate",
    );
}

fn request() -> Value {
    support::yaml_file("config/samples/approvalrequest.yaml")
}

fn review(decision: &str, reviewer: &str, reason: Option<&str>) -> Value {
    let mut r = json!({"decision": decision, "reviewer": reviewer, "time": "2026-11-22T06:00:00Z"});
    if let Some(reason) = reason {
        r["reason"] = json!(reason);
    }
    r
}

#[test]
fn approval_request_sample_is_accepted() {
    accept(AR, &request(), None);
}

#[test]
fn approval_request_fields_are_immutable() {
    let old = request();
    let new = set(
        old.clone(),
        "/spec/statement/text",
        json!("DELETE FROM orders"),
    );
    reject(AR, &new, Some(&old), "only reviews can be added");
    let new = set(old.clone(), "/spec/quorum", json!(2));
    reject(AR, &new, Some(&old), "only reviews can be added");
    let new = set(old.clone(), "/spec/requester/subject", json!("mallory"));
    reject(AR, &new, Some(&old), "only reviews can be added");
}

#[test]
fn reviews_can_only_be_appended() {
    let old = set(
        set(request(), "/spec/quorum", json!(3)),
        "/spec/reviews",
        json!([review("Approved", "alice", None)]),
    );
    let appended = set(
        old.clone(),
        "/spec/reviews/1",
        review("Approved", "bob", None),
    );
    accept(AR, &appended, Some(&old));
    let edited = set(
        old.clone(),
        "/spec/reviews/0/reason",
        json!("changed my mind"),
    );
    reject(AR, &edited, Some(&old), "can only be appended");
    let removed = set(old.clone(), "/spec/reviews", json!([]));
    reject(AR, &removed, Some(&old), "can only be appended");
    let two = set(
        old.clone(),
        "/spec/reviews/1",
        review("Approved", "bob", None),
    );
    let reordered = set(
        two.clone(),
        "/spec/reviews",
        json!([
            review("Approved", "bob", None),
            review("Approved", "alice", None)
        ]),
    );
    reject(AR, &reordered, Some(&two), "can only be appended");
}

#[test]
fn nothing_changes_once_decided() {
    let denied = set(
        set(request(), "/spec/quorum", json!(2)),
        "/spec/reviews",
        json!([review("Denied", "alice", Some("not during the freeze"))]),
    );
    let more = set(
        denied.clone(),
        "/spec/reviews/1",
        review("Approved", "bob", None),
    );
    reject(AR, &more, Some(&denied), "already decided");
    let approved = set(
        request(),
        "/spec/reviews",
        json!([review("Approved", "alice", None)]),
    );
    let more = set(
        approved.clone(),
        "/spec/reviews/1",
        review("Denied", "bob", Some("too late")),
    );
    reject(AR, &more, Some(&approved), "already decided");
    // A quorum of two with one approval is still open.
    let half = set(
        set(request(), "/spec/quorum", json!(2)),
        "/spec/reviews",
        json!([review("Approved", "alice", None)]),
    );
    let second = set(
        half.clone(),
        "/spec/reviews/1",
        review("Approved", "bob", None),
    );
    accept(AR, &second, Some(&half));
    // A no-op update of a decided request is fine.
    accept(AR, &approved, Some(&approved));
}

#[test]
fn each_reviewer_reviews_once() {
    let twice = set(
        set(request(), "/spec/quorum", json!(2)),
        "/spec/reviews",
        json!([
            review("Approved", "alice", None),
            review("Approved", "alice", None)
        ]),
    );
    reject(AR, &twice, None, "review a request once");
}

#[test]
fn a_denial_needs_a_reason() {
    let bare = set(
        request(),
        "/spec/reviews",
        json!([review("Denied", "alice", None)]),
    );
    reject(AR, &bare, None, "a denial needs a reason");
    let reasoned = set(
        request(),
        "/spec/reviews",
        json!([review("Denied", "alice", Some("use the refund API"))]),
    );
    accept(AR, &reasoned, None);
}

#[test]
fn request_quorum_and_uses_are_positive() {
    reject(
        AR,
        &set(request(), "/spec/quorum", json!(0)),
        None,
        "quorum must be at least 1",
    );
    reject(
        AR,
        &set(request(), "/spec/maxUses", json!(0)),
        None,
        "maxUses must be at least 1",
    );
}

/// Every rule in the generated YAML is exercised by a rejecting case above; a
/// new rule without one fails here.
#[test]
fn every_rule_is_covered() {
    let source = include_str!("cel_rules.rs");
    // The message each `reject(…, "message");` call expects.
    let needles: Vec<&str> = source
        .split("reject(")
        .skip(2)
        .filter_map(|call| call.split(");").next())
        .filter_map(|args| args.rsplit('"').nth(1))
        .filter(|n| !n.is_empty())
        .collect();
    let mut missing = Vec::new();
    for plural in [AP, MR, AR] {
        let mut messages = Vec::new();
        collect_messages(&schema(plural), &mut messages);
        for m in messages {
            if !needles.iter().any(|n| m.contains(n)) {
                missing.push(format!("{plural}: {m}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "CEL rules without a rejecting test: {missing:#?}"
    );
}

fn collect_messages(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                for r in rules {
                    out.push(r["message"].as_str().unwrap_or_default().to_string());
                }
            }
            m.values().for_each(|v| collect_messages(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_messages(v, out)),
        _ => {}
    }
}

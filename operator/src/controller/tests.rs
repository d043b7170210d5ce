//! Reconcile scenarios against the scripted API server: every request the
//! controllers make is asserted exactly, in order, and answered as the API
//! server would.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use sha2::Digest;

use super::mock::{self, Exchange, NOW, list, not_found};
use super::{DEGRADED_RETRY, RESYNC, access_policy, error_policy, masking_rule};
use crate::fixtures;
use crate::metrics::ControllerName;

const AP: &str = "/apis/cardgate.dev/v1alpha1/namespaces";
const SSA: &str = "?&force=true&fieldManager=cardgate-operator";

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Golden file `rel` as JSON documents (the reconciler must send exactly
/// what the rendering tests pinned).
fn golden_docs(rel: &str) -> Vec<Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(rel);
    serde_saphyr::from_multiple(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn golden_config(case: &str) -> (String, String) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(case)
        .join("config.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let text = text.split_once('\n').unwrap().1.to_string();
    let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    (text, hash)
}

fn pod(name: &str, sa: &str, phase: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "payments", "labels": {"cardgate.dev/proxied": "support-agent"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "agent", "image": "agent:1"}]},
        "status": {"phase": phase}
    })
}

fn labels(ns: &str, policy: &str) -> Value {
    json!({
        "app.kubernetes.io/managed-by": "cardgate-operator",
        "cardgate.dev/policy": policy,
        "cardgate.dev/policy-namespace": ns,
    })
}

fn owner(policy: &AccessPolicy) -> Value {
    json!([{
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
        "name": policy.name_any(), "uid": policy.uid().unwrap(),
        "controller": true, "blockOwnerDeletion": true
    }])
}

fn np_meta(ns: &str, name: &str, policy: &str, policy_ns: &str) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "resourceVersion": "77", "labels": labels(policy_ns, policy)}
    })
}

fn event(ns: &str, type_: &str, reason: &str, action: &str, regarding: Value) -> Exchange {
    Exchange::post(
        format!("/apis/events.k8s.io/v1/namespaces/{ns}/events?"),
        json!({
            "type": type_, "reason": reason, "action": action,
            "reportingController": "cardgate-operator",
            "reportingInstance": "cardgate-operator-7d9f8-abcde",
            "regarding": regarding,
        }),
    )
    .reply(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": ns}, "eventTime": NOW}))
}

fn regarding(policy: &AccessPolicy) -> Value {
    json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy", "name": policy.name_any(), "namespace": policy.namespace().unwrap(), "uid": policy.uid().unwrap()})
}

fn condition(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": generation, "lastTransitionTime": NOW})
}

/// The reads every reconcile of the payments sample starts with.
fn payments_reads(service: Value) -> Vec<Exchange> {
    let rules = fixtures::payments_rules();
    vec![
        Exchange::get("/api/v1/namespaces/payments/pods?&labelSelector=cardgate.dev%2Fproxied%3Dsupport-agent").reply(
            200,
            list("v1", "PodList", vec![
                pod("support-agent-6d5b8-x2k4q", "support-agent", "Running"),
                pod("support-agent-6d5b8-p9z7w", "support-agent", "Running"),
                pod("support-agent-6d5b8-n3m1v", "support-agent", "Pending"),
                pod("report-28371", "nightly-report", "Succeeded"),
            ]),
        ),
        Exchange::get(format!("{AP}/payments/maskingrules/card-numbers")).reply(200, to_json(&rules[0])),
        Exchange::get(format!("{AP}/payments/maskingrules/card-verification-values")).reply(200, to_json(&rules[1])),
        Exchange::get("/api/v1/namespaces/payments/services/payments-db").reply(200, service),
        Exchange::get("/api/v1/namespaces/payments/secrets/payments-db-agent-credentials").reply(200, json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "payments-db-agent-credentials", "namespace": "payments"},
            "data": {"username": b64("cardgate_agent"), "password": b64("s3cret-not-logged")}
        })),
        Exchange::get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes").reply(
            200,
            list("discovery.k8s.io/v1", "EndpointSliceList", vec![json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["172.18.0.2"], "conditions": {"ready": true}}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
            })]),
        ),
    ]
}

fn payments_writes(policy: &AccessPolicy) -> Vec<Exchange> {
    let (text, hash) = golden_config("payments-support-agent");
    let nps = golden_docs("payments-support-agent/networkpolicies.yaml");
    let rbac = golden_docs("payments-support-agent/rbac.yaml");
    vec![
        Exchange::apply(
            format!("/api/v1/namespaces/payments/configmaps/cardgate-support-agent{SSA}"),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "cardgate-support-agent", "namespace": "payments",
                    "labels": labels("payments", "support-agent"),
                    "annotations": {"cardgate.dev/config-hash": hash},
                    "ownerReferences": owner(policy),
                },
                "data": {"config.yaml": text, "collector-ca.crt": fixtures::settings().collector_ca.unwrap()},
            }),
        ),
        Exchange::apply(
            format!(
                "/apis/networking.k8s.io/v1/namespaces/payments/networkpolicies/cardgate-support-agent-payments-db{SSA}"
            ),
            nps[0].clone(),
        ),
        Exchange::apply(
            format!(
                "/apis/networking.k8s.io/v1/namespaces/payments/networkpolicies/cardgate-support-agent-egress{SSA}"
            ),
            nps[1].clone(),
        ),
        Exchange::apply(
            format!(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/payments/roles/cardgate-support-agent-sidecar{SSA}"
            ),
            rbac[0].clone(),
        ),
        Exchange::apply(
            format!(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/payments/rolebindings/cardgate-support-agent-sidecar{SSA}"
            ),
            rbac[1].clone(),
        ),
    ]
}

const PAYMENTS_NP_LIST: &str = "/apis/networking.k8s.io/v1/networkpolicies?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcardgate-operator%2Ccardgate.dev%2Fpolicy-namespace%3Dpayments%2Ccardgate.dev%2Fpolicy%3Dsupport-agent";

fn ready_status(hash: &str) -> Value {
    json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
        "status": {
            "observedGeneration": 2,
            "conditions": [
                condition("Ready", "True", "Reconciled", &format!("sidecar configuration {} in ConfigMap cardgate-support-agent; 2 governed pods running", &hash[..12]), 2),
                condition("NetworkPoliciesApplied", "True", "Applied", "applied payments/cardgate-support-agent-payments-db, payments/cardgate-support-agent-egress", 2),
                condition("Degraded", "False", "AsExpected", "no problems found", 2),
            ],
            "governedPods": 2,
            "configHash": hash,
            "generated": [
                {"kind": "ConfigMap", "name": "cardgate-support-agent"},
                {"kind": "NetworkPolicy", "name": "cardgate-support-agent-payments-db"},
                {"kind": "NetworkPolicy", "name": "cardgate-support-agent-egress"},
                {"kind": "Role", "name": "cardgate-support-agent-sidecar"},
                {"kind": "RoleBinding", "name": "cardgate-support-agent-sidecar"},
            ],
        }
    })
}

#[tokio::test]
async fn created_policy_gets_config_network_policies_rbac_status_and_events() {
    let policy = fixtures::payments_policy();
    let (_, hash) = golden_config("payments-support-agent");
    let mut script = payments_reads(to_json(&fixtures::payments_db_service()));
    script.extend(payments_writes(&policy));
    script.extend([
        // A target the policy no longer has left an ingress policy behind.
        Exchange::get(PAYMENTS_NP_LIST).metadata_only().reply(
            200,
            list("meta.k8s.io/v1", "PartialObjectMetadataList", vec![
                np_meta("payments", "cardgate-support-agent-payments-db", "support-agent", "payments"),
                np_meta("payments", "cardgate-support-agent-egress", "support-agent", "payments"),
                np_meta("payments", "cardgate-support-agent-billing-db", "support-agent", "payments"),
            ]),
        ),
        Exchange::delete("/apis/networking.k8s.io/v1/namespaces/payments/networkpolicies/cardgate-support-agent-billing-db?").reply(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": {"name": "cardgate-support-agent-billing-db", "group": "networking.k8s.io", "kind": "networkpolicies", "uid": "uid-cardgate-support-agent-billing-db"}}),
        ),
        Exchange::apply(format!("{AP}/payments/accesspolicies/support-agent/status{SSA}"), ready_status(&hash)).returning(to_json(&policy)),
        event("payments", "Normal", "ConfigRendered", "Render", regarding(&policy)),
        event("payments", "Normal", "NetworkPoliciesApplied", "Apply", regarding(&policy)),
        event("payments", "Normal", "Ready", "Reconcile", regarding(&policy)),
    ]);
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let action = access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    let metrics = ctx.metrics.encode();
    assert!(
        metrics.contains(
            "cardgate_operator_reconciles_total{controller=\"accesspolicy\",outcome=\"ready\"} 1"
        ),
        "{metrics}"
    );
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn unchanged_policy_is_reapplied_without_events() {
    let mut policy = fixtures::payments_policy();
    let (_, hash) = golden_config("payments-support-agent");
    let status = ready_status(&hash)["status"].clone();
    policy.status = Some(serde_json::from_value(status).unwrap());
    let mut script = payments_reads(to_json(&fixtures::payments_db_service()));
    script.extend(payments_writes(&policy));
    script.extend([
        Exchange::get(PAYMENTS_NP_LIST).metadata_only().reply(
            200,
            list(
                "meta.k8s.io/v1",
                "PartialObjectMetadataList",
                vec![
                    np_meta(
                        "payments",
                        "cardgate-support-agent-payments-db",
                        "support-agent",
                        "payments",
                    ),
                    np_meta(
                        "payments",
                        "cardgate-support-agent-egress",
                        "support-agent",
                        "payments",
                    ),
                ],
            ),
        ),
        // Same status, same transition times: a no-op for the API server.
        Exchange::apply(
            format!("{AP}/payments/accesspolicies/support-agent/status{SSA}"),
            ready_status(&hash),
        )
        .returning(to_json(&policy)),
    ]);
    let (ctx, server) = mock::context();
    let server = server.run(script);
    access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    mock::verify(server).await;
}

fn degraded_status(reason: &str, message: &str) -> Value {
    json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
        "status": {
            "observedGeneration": 2,
            "conditions": [
                condition("Ready", "False", reason, message, 2),
                condition("NetworkPoliciesApplied", "False", "Pending", "nothing applied yet: the policy is degraded", 2),
                condition("Degraded", "True", reason, message, 2),
            ],
            "governedPods": 2,
        }
    })
}

#[tokio::test]
async fn missing_service_degrades_the_policy_writes_nothing_and_requeues() {
    let policy = fixtures::payments_policy();
    let message = "1 problem:\n- spec.targets[0].service: Service payments/payments-db not found";
    let mut script = payments_reads(not_found("services", "payments-db"));
    script[3] = Exchange::get("/api/v1/namespaces/payments/services/payments-db")
        .reply(404, not_found("services", "payments-db"));
    script.extend([
        Exchange::apply(
            format!("{AP}/payments/accesspolicies/support-agent/status{SSA}"),
            degraded_status("ServiceNotFound", message),
        )
        .returning(to_json(&policy)),
        event(
            "payments",
            "Warning",
            "ServiceNotFound",
            "Reconcile",
            regarding(&policy),
        ),
    ]);
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let action = access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(DEGRADED_RETRY));
    assert!(ctx.metrics.encode().contains("outcome=\"degraded\"} 1"));
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn invalid_masking_rule_degrades_the_policy_with_every_problem() {
    let policy = fixtures::payments_policy();
    let mut bad = fixtures::payments_rules()[0].clone();
    bad.spec
        .detectors
        .push(fixtures::yaml("{type: regex, pattern: 'a**'}"));
    bad.spec
        .detectors
        .push(fixtures::yaml("{type: column, columns: ['a.b.c.d']}"));
    let mut script = payments_reads(to_json(&fixtures::payments_db_service()));
    script[1] =
        Exchange::get(format!("{AP}/payments/maskingrules/card-numbers")).reply(200, to_json(&bad));
    let problems = match bad.spec.validate() {
        Err(e) => e
            .iter()
            .map(|e| format!("\n- spec.maskingRules: MaskingRule card-numbers: {e}"))
            .collect::<String>(),
        Ok(()) => panic!("the rule is invalid"),
    };
    let message = format!("2 problems:{problems}");
    script.extend([
        Exchange::apply(
            format!("{AP}/payments/accesspolicies/support-agent/status{SSA}"),
            degraded_status("MaskingRuleInvalid", &message),
        )
        .returning(to_json(&policy)),
        event(
            "payments",
            "Warning",
            "MaskingRuleInvalid",
            "Reconcile",
            regarding(&policy),
        ),
    ]);
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let action = access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(DEGRADED_RETRY));
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn degraded_after_ready_keeps_the_last_good_config_in_status() {
    let mut policy = fixtures::payments_policy();
    let (_, hash) = golden_config("payments-support-agent");
    policy.status = Some(serde_json::from_value(ready_status(&hash)["status"].clone()).unwrap());
    let mut script = payments_reads(to_json(&fixtures::payments_db_service()));
    script[4] = Exchange::get("/api/v1/namespaces/payments/secrets/payments-db-agent-credentials")
        .reply(404, not_found("secrets", "payments-db-agent-credentials"));
    let message = "1 problem:\n- spec.targets[0].credentialsSecretRef: Secret payments/payments-db-agent-credentials not found";
    let mut status = ready_status(&hash);
    status["status"]["conditions"] = json!([
        condition("Ready", "False", "CredentialsSecretNotFound", message, 2),
        condition(
            "NetworkPoliciesApplied",
            "True",
            "Applied",
            "applied payments/cardgate-support-agent-payments-db, payments/cardgate-support-agent-egress",
            2
        ),
        condition("Degraded", "True", "CredentialsSecretNotFound", message, 2),
    ]);
    script.extend([
        Exchange::apply(
            format!("{AP}/payments/accesspolicies/support-agent/status{SSA}"),
            status,
        )
        .returning(to_json(&policy)),
        event(
            "payments",
            "Warning",
            "CredentialsSecretNotFound",
            "Reconcile",
            regarding(&policy),
        ),
    ]);
    let (ctx, server) = mock::context();
    let server = server.run(script);
    access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    mock::verify(server).await;
}

const FRAUD_NP_LIST: &str = "/apis/networking.k8s.io/v1/networkpolicies?&labelSelector=app.kubernetes.io%2Fmanaged-by%3Dcardgate-operator%2Ccardgate.dev%2Fpolicy-namespace%3Dagents%2Ccardgate.dev%2Fpolicy%3Dfraud-analyst";

#[tokio::test]
async fn cross_namespace_target_takes_the_finalizer_before_writing_elsewhere() {
    let policy = fixtures::fraud_policy();
    let (text, hash) = golden_config("fraud-analyst-cross-namespace");
    let nps = golden_docs("fraud-analyst-cross-namespace/networkpolicies.yaml");
    let rbac = golden_docs("fraud-analyst-cross-namespace/rbac.yaml");
    let secret = |name: &str, keys: &[&str]| {
        let data: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| (k.to_string(), json!(b64("x"))))
            .collect();
        Exchange::get(format!("/api/v1/namespaces/agents/secrets/{name}"))
            .reply(200, json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "agents"}, "data": data}))
    };
    let pods = list(
        "v1",
        "PodList",
        vec![json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "fraud-analyst-0", "namespace": "agents", "labels": {"cardgate.dev/proxied": "fraud-analyst"}},
            "spec": {"serviceAccountName": "fraud-analyst", "containers": [{"name": "agent", "image": "agent:1"}]},
            "status": {"phase": "Running"}
        })],
    );
    let script = vec![
        Exchange::get("/api/v1/namespaces/agents/pods?&labelSelector=cardgate.dev%2Fproxied%3Dfraud-analyst").reply(200, pods),
        Exchange::get(format!("{AP}/agents/maskingrules/card-tokens")).reply(200, to_json(&fixtures::card_tokens_rule())),
        Exchange::get("/api/v1/namespaces/data/services/ledger-db").reply(200, to_json(&fixtures::ledger_service())),
        secret("ledger-agent", &["user", "pass"]),
        secret("vault-ca", &["ca.crt"]),
        secret("masking-key", &["key"]),
        Exchange::get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?&labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes").reply(
            200,
            list("discovery.k8s.io/v1", "EndpointSliceList", vec![json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["172.18.0.2"]}, {"addresses": ["172.18.0.3"]}, {"addresses": ["172.18.0.9"], "conditions": {"ready": false}}],
                "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
            })]),
        ),
        // Finalizer first: nothing lands in `data` that could be orphaned.
        Exchange::merge(
            format!("{AP}/agents/accesspolicies/fraud-analyst?"),
            json!({"metadata": {"finalizers": ["cardgate.dev/cross-namespace-cleanup"], "resourceVersion": "4711"}}),
        )
        .reply(200, to_json(&policy)),
        Exchange::apply(
            format!("/api/v1/namespaces/agents/configmaps/cardgate-fraud-analyst{SSA}"),
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {
                    "name": "cardgate-fraud-analyst", "namespace": "agents",
                    "labels": labels("agents", "fraud-analyst"),
                    "annotations": {"cardgate.dev/config-hash": hash},
                    "ownerReferences": owner(&policy),
                },
                "data": {"config.yaml": text, "collector-ca.crt": fixtures::settings().collector_ca.unwrap()},
            }),
        ),
        // In `data`: labelled, no owner reference (it would be invalid).
        Exchange::apply(
            format!("/apis/networking.k8s.io/v1/namespaces/data/networkpolicies/cardgate-agents-fraud-analyst-ledger{SSA}"),
            nps[0].clone(),
        ),
        Exchange::apply(
            format!("/apis/networking.k8s.io/v1/namespaces/agents/networkpolicies/cardgate-fraud-analyst-egress{SSA}"),
            nps[1].clone(),
        ),
        Exchange::apply(format!("/apis/rbac.authorization.k8s.io/v1/namespaces/agents/roles/cardgate-fraud-analyst-sidecar{SSA}"), rbac[0].clone()),
        Exchange::apply(format!("/apis/rbac.authorization.k8s.io/v1/namespaces/agents/rolebindings/cardgate-fraud-analyst-sidecar{SSA}"), rbac[1].clone()),
        Exchange::get(FRAUD_NP_LIST).metadata_only().reply(
            200,
            list("meta.k8s.io/v1", "PartialObjectMetadataList", vec![
                np_meta("data", "cardgate-agents-fraud-analyst-ledger", "fraud-analyst", "agents"),
                np_meta("agents", "cardgate-fraud-analyst-egress", "fraud-analyst", "agents"),
            ]),
        ),
    ];
    let (ctx, server) = mock::context();
    // Status and Events follow; their shape is covered by the payments
    // scenarios, so answer them without pinning the bodies here.
    let mut script = script;
    script.push(Exchange::apply_any(format!("{AP}/agents/accesspolicies/fraud-analyst/status{SSA}"), |status| {
        let s = &status["status"];
        assert_eq!(s["conditions"][1]["reason"], "AppliedWithWarnings");
        let msg = s["conditions"][1]["message"].as_str().unwrap();
        assert!(msg.contains("spec.targets[0].allowedClients is empty"), "{msg}");
        assert_eq!(s["generated"][1], json!({"kind": "NetworkPolicy", "name": "cardgate-agents-fraud-analyst-ledger", "namespace": "data"}));
    }).returning(to_json(&fixtures::fraud_policy())));
    for reason in ["ConfigRendered", "NetworkPoliciesApplied", "Ready"] {
        script.push(Exchange::post("/apis/events.k8s.io/v1/namespaces/agents/events?", json!({"reason": reason})).reply(201, json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e", "namespace": "agents"}, "eventTime": NOW})));
    }
    let server = server.run(script);
    access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn deleted_policy_leaves_owned_objects_to_gc_and_cleans_other_namespaces() {
    let mut policy = fixtures::fraud_policy();
    policy.metadata.finalizers = Some(vec!["cardgate.dev/cross-namespace-cleanup".into()]);
    policy.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(NOW.parse().unwrap()),
    );
    let script = vec![
        Exchange::get(FRAUD_NP_LIST).metadata_only().reply(
            200,
            list("meta.k8s.io/v1", "PartialObjectMetadataList", vec![
                np_meta("data", "cardgate-agents-fraud-analyst-ledger", "fraud-analyst", "agents"),
                np_meta("agents", "cardgate-fraud-analyst-egress", "fraud-analyst", "agents"),
            ]),
        ),
        // Only the one in `data`: the egress policy in `agents` carries an
        // owner reference and goes with the policy.
        Exchange::delete("/apis/networking.k8s.io/v1/namespaces/data/networkpolicies/cardgate-agents-fraud-analyst-ledger?")
            .reply(404, not_found("networkpolicies", "cardgate-agents-fraud-analyst-ledger")),
        Exchange::merge(
            format!("{AP}/agents/accesspolicies/fraud-analyst?"),
            json!({"metadata": {"finalizers": [], "resourceVersion": "4711"}}),
        )
        .reply(200, to_json(&policy)),
    ];
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let action = access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn deleted_policy_without_finalizer_needs_no_request() {
    let mut policy = fixtures::payments_policy();
    policy.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(NOW.parse().unwrap()),
    );
    let (ctx, server) = mock::context();
    let server = server.run(vec![]);
    access_policy::reconcile(Arc::new(policy), ctx.clone())
        .await
        .unwrap();
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn api_errors_are_retried_with_growing_backoff_and_counted() {
    let policy = Arc::new(fixtures::payments_policy());
    let mut script = payments_reads(to_json(&fixtures::payments_db_service()));
    let mut writes = payments_writes(&policy);
    let cm = writes.remove(0).reply(409, json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.config.yaml",
        "reason": "Conflict", "code": 409
    }));
    script.push(cm);
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let err = access_policy::reconcile(policy.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("apply ConfigMap payments/cardgate-support-agent:"),
        "{err}"
    );
    assert_eq!(
        error_policy(ControllerName::AccessPolicy, &*policy, &err, &ctx),
        Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        error_policy(ControllerName::AccessPolicy, &*policy, &err, &ctx),
        Action::requeue(Duration::from_secs(4))
    );
    let metrics = ctx.metrics.encode();
    assert!(metrics.contains("cardgate_operator_reconcile_errors_total{controller=\"accesspolicy\",reason=\"Conflict\"} 2"), "{metrics}");
    assert!(metrics.contains("outcome=\"error\"} 1"), "{metrics}");
    drop(ctx);
    mock::verify(server).await;
}

fn rule_status(valid: bool, reason: &str, message: &str, used_by: &[&str]) -> Value {
    json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "MaskingRule",
        "status": {
            "observedGeneration": 1,
            "conditions": [condition("Ready", if valid { "True" } else { "False" }, reason, message, 1)],
            "usedBy": used_by,
        }
    })
}

fn policies_in_payments() -> Exchange {
    let mut other = fixtures::payments_policy();
    other.metadata.name = Some("audit-bot".into());
    other.spec.masking_rules = vec!["card-verification-values".into()];
    Exchange::get(format!("{AP}/payments/accesspolicies?")).reply(
        200,
        list(
            "cardgate.dev/v1alpha1",
            "AccessPolicyList",
            vec![to_json(&fixtures::payments_policy()), to_json(&other)],
        ),
    )
}

#[tokio::test]
async fn invalid_masking_rule_gets_a_condition_listing_every_problem() {
    let mut rule: MaskingRule = fixtures::payments_rules()[0].clone();
    rule.spec
        .detectors
        .push(fixtures::yaml("{type: regex, pattern: '(open'}"));
    rule.spec.action.truncate = Some(fixtures::yaml("{leadingDigits: 7, trailingDigits: 5}"));
    let message = rule
        .spec
        .validate()
        .unwrap_err()
        .to_string()
        .trim_end()
        .to_string();
    assert!(message.starts_with("3 problems:"), "{message}");
    let regarding = json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": "MaskingRule", "name": "card-numbers", "namespace": "payments"});
    let script = vec![
        policies_in_payments(),
        Exchange::apply(
            format!("{AP}/payments/maskingrules/card-numbers/status{SSA}"),
            rule_status(false, "Invalid", &message, &["support-agent"]),
        )
        .returning(to_json(&rule)),
        event("payments", "Warning", "Invalid", "Validate", regarding),
    ];
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let action = masking_rule::reconcile(Arc::new(rule), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(DEGRADED_RETRY));
    drop(ctx);
    mock::verify(server).await;
}

#[tokio::test]
async fn valid_masking_rule_reports_its_users() {
    let rule: MaskingRule = fixtures::payments_rules()[1].clone();
    let regarding = json!({"kind": "MaskingRule", "name": "card-verification-values"});
    let script = vec![
        policies_in_payments(),
        Exchange::apply(
            format!("{AP}/payments/maskingrules/card-verification-values/status{SSA}"),
            rule_status(
                true,
                "Valid",
                "valid; used by 2 AccessPolicies",
                &["audit-bot", "support-agent"],
            ),
        )
        .returning(to_json(&rule)),
        event("payments", "Normal", "Valid", "Validate", regarding),
    ];
    let (ctx, server) = mock::context();
    let server = server.run(script);
    let action = masking_rule::reconcile(Arc::new(rule), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    drop(ctx);
    mock::verify(server).await;
}

//! AdmissionReview round trips through the real HTTPS server, in the exact
//! JSON shape the API server sends, with a client that trusts only the
//! generated CA.

mod inject_support;
mod webhook_support;

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use cardgate_operator::tls::certs::issue_all;
use cardgate_operator::tls::rotation::Lifetimes;
use cardgate_operator::tls::{CertResolver, service_dns_names};
use cardgate_operator::webhook::WebhookMetrics;
use cardgate_operator::webhook::pods::{PodContext, PodInjector, PodValidator};
use cardgate_operator::webhook::server::{Router, run};
use inject_support::{CONFIG_HASH, Catalog, read_pod, rule_cases, settings};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use webhook_support::{mock_client, post, request, status};

struct Webhook {
    addr: SocketAddr,
    ca: String,
    metrics: WebhookMetrics,
    _stop: oneshot::Sender<()>,
    _caches: (Writer<AccessPolicy>, Writer<MaskingRule>),
}

fn extra_policy(name: &str, namespace: &str, app: &str) -> AccessPolicy {
    serde_json::from_value(json!({
        "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"agentSelector": {"matchLabels": {"app": app}},
                 "targets": [{"name": "db", "service": {"name": "db", "port": 5432},
                              "credentialsSecretRef": {"name": "db"}}]}
    }))
    .unwrap()
}

/// Starts the pod webhooks; `synced: false` leaves the caches unsynced.
async fn start(synced: bool) -> Webhook {
    let catalog = Catalog::load();
    let (policies, mut pw): (_, Writer<AccessPolicy>) = reflector::store();
    let (rules, mut rw): (_, Writer<MaskingRule>) = reflector::store();
    if synced {
        pw.apply_watcher_event(&Event::Init);
        let mut all = catalog.policies.clone();
        all.push(extra_policy("first", "shared", "shared-agent"));
        all.push(extra_policy("second", "shared", "shared-agent"));
        all.push(extra_policy(
            "operator-self",
            "cardgate-system",
            "cardgate-operator",
        ));
        all.push(extra_policy("flaky", "unreachable", "flaky-agent"));
        for p in all {
            pw.apply_watcher_event(&Event::InitApply(p));
        }
        pw.apply_watcher_event(&Event::InitDone);
        rw.apply_watcher_event(&Event::Init);
        for r in catalog.rules.clone() {
            rw.apply_watcher_event(&Event::InitApply(r));
        }
        rw.apply_watcher_event(&Event::InitDone);
    }

    let (client, api) = mock_client();
    api.serve_forever(|method, path| {
        assert_eq!(method, "GET", "the webhook only reads");
        let meta = |ns: &str, name: &str| {
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                   "metadata": {"name": name, "namespace": ns,
                                "annotations": {"cardgate.dev/config-hash": CONFIG_HASH}}})
        };
        match path {
            "/api/v1/namespaces/agents/configmaps/cardgate-langflow" => {
                (200, meta("agents", "cardgate-langflow"))
            }
            p if p.starts_with("/api/v1/namespaces/unreachable/") => (
                500,
                status(500, "InternalError", "etcdserver: request timed out"),
            ),
            _ => (404, status(404, "NotFound", "configmaps not found")),
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
    let ctx = Arc::new(PodContext {
        policies,
        masking_rules: rules,
        client,
        settings: settings(false),
        operator_namespace: "cardgate-system".into(),
        metrics: metrics.clone(),
    });
    let router = Router::new()
        .admit("/mutate/pods", PodInjector(ctx.clone()))
        .admit("/validate/pods", PodValidator(ctx));
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
        _caches: (pw, rw),
    }
}

/// An AdmissionReview exactly as the API server sends it for a pod.
fn review(
    uid: &str,
    operation: &str,
    namespace: &str,
    object: &Value,
    old: Option<&Value>,
) -> Value {
    let options_kind = match operation {
        "CREATE" => "CreateOptions",
        _ => "UpdateOptions",
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "9d7c1c4e-2a5b-4c36-8f0e-6d1e2b3a4c5d",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                           "system:authenticated"]
            },
            "object": object,
            "oldObject": old.cloned().unwrap_or(Value::Null),
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options_kind}
        }
    })
}

/// Posts a review and returns the AdmissionReview response.
async fn call(w: &Webhook, path: &str, review: &Value, h2: bool) -> Value {
    let ex = post(w.addr, &w.ca, path, serde_json::to_vec(review).unwrap(), h2).await;
    assert_eq!(ex.status, 200, "{}", String::from_utf8_lossy(&ex.body));
    if h2 {
        assert_eq!(
            ex.alpn.as_deref(),
            Some(&b"h2"[..]),
            "HTTP/2 was not negotiated"
        );
    }
    let v: Value = serde_json::from_slice(&ex.body).unwrap();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(
        v["response"]["uid"], review["request"]["uid"],
        "the response must carry the request's uid"
    );
    v["response"].clone()
}

fn pod_json(rel: &str) -> Value {
    read_pod(rel).0
}

fn to_json(pod: &Pod) -> Value {
    serde_json::to_value(pod).unwrap()
}

#[tokio::test]
async fn mutation_returns_a_base64_json_patch_that_yields_the_golden_pod() {
    let w = start(true).await;
    for (case, namespace, h2) in [
        ("langflow-deployment", "agents", false),
        ("init-containers", "payments", true),
        ("own-volumes", "agents", false),
    ] {
        let raw = pod_json(&format!("{case}/pod.yaml"));
        let uid = format!("uid-{case}");
        let resp = call(
            &w,
            "/mutate/pods",
            &review(&uid, "CREATE", namespace, &raw, None),
            h2,
        )
        .await;
        assert_eq!(resp["allowed"], true, "{case}: {resp}");
        assert_eq!(resp["patchType"], "JSONPatch", "{case}");
        let bytes = STANDARD
            .decode(resp["patch"].as_str().expect("patch is a base64 string"))
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, &patch.0).unwrap();
        let (_, golden) = read_pod(&format!("{case}/expected.yaml"));
        assert_eq!(
            serde_json::from_value::<Pod>(doc).unwrap(),
            golden,
            "{case}"
        );
    }
    assert_eq!(w.metrics.injections.get(), 3);
}

#[tokio::test]
async fn pods_that_are_not_for_the_injector_pass_unchanged() {
    let w = start(true).await;
    let mut opted_out = pod_json("langflow-deployment/pod.yaml");
    opted_out["metadata"]["labels"]["cardgate.dev/inject"] = json!("false");
    let mut unselected = pod_json("langflow-deployment/pod.yaml");
    unselected["metadata"]["labels"]["app"] = json!("web");
    let injected = pod_json("already-injected/pod.yaml");
    let mut own_namespace = pod_json("langflow-deployment/pod.yaml");
    own_namespace["metadata"]["labels"]["app"] = json!("cardgate-operator");
    for (name, pod, ns) in [
        ("opted-out", &opted_out, "agents"),
        ("unselected", &unselected, "agents"),
        ("already-injected", &injected, "agents"),
        ("operator-namespace", &own_namespace, "cardgate-system"),
    ] {
        let resp = call(
            &w,
            "/mutate/pods",
            &review(name, "CREATE", ns, pod, None),
            false,
        )
        .await;
        assert_eq!(resp["allowed"], true, "{name}");
        assert!(resp.get("patch").is_none(), "{name}: {resp}");
        assert!(resp.get("patchType").is_none(), "{name}");
    }
    let update = review("update", "UPDATE", "agents", &unselected, Some(&unselected));
    let resp = call(&w, "/mutate/pods", &update, false).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert_eq!(w.metrics.injections.get(), 0);
}

#[tokio::test]
async fn dry_runs_are_patched_but_not_counted() {
    let w = start(true).await;
    let raw = pod_json("langflow-deployment/pod.yaml");
    let mut r = review("dry", "CREATE", "agents", &raw, None);
    r["request"]["dryRun"] = json!(true);
    let resp = call(&w, "/mutate/pods", &r, false).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_string());
    assert_eq!(w.metrics.injections.get(), 0);
}

#[tokio::test]
async fn injection_refusals_reach_the_pod_author() {
    let w = start(true).await;
    let mut shared = pod_json("langflow-deployment/pod.yaml");
    shared["metadata"]["labels"]["app"] = json!("shared-agent");
    let resp = call(
        &w,
        "/mutate/pods",
        &review("ambiguous", "CREATE", "shared", &shared, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], false);
    assert_eq!(resp["status"]["code"], 403);
    assert_eq!(
        resp["status"]["message"],
        "cardgate: the pod is selected by AccessPolicies first and second; a pod may be governed by one policy only — change the policies' agentSelector or the pod's labels so exactly one matches"
    );

    let mut reserved = pod_json("langflow-deployment/pod.yaml");
    reserved["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "cardgate-state", "emptyDir": {}}));
    let resp = call(
        &w,
        "/mutate/pods",
        &review("reserved", "CREATE", "agents", &reserved, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("already has a volume named \"cardgate-state\""),
        "{resp}"
    );
    assert!(
        w.metrics
            .denials
            .get_or_create(&cardgate_operator::webhook::metrics::WebhookLabel {
                webhook: "mutate-pods".into()
            })
            .get()
            >= 2
    );
}

#[tokio::test]
async fn an_unreadable_configmap_fails_closed() {
    let w = start(true).await;
    let mut pod = pod_json("langflow-deployment/pod.yaml");
    pod["metadata"]["labels"]["app"] = json!("flaky-agent");
    let resp = call(
        &w,
        "/mutate/pods",
        &review("flaky", "CREATE", "unreachable", &pod, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], false);
    let message = resp["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("cardgate: cannot read ConfigMap unreachable/cardgate-flaky"),
        "{message}"
    );
}

#[tokio::test]
async fn every_validating_rule_round_trips() {
    let w = start(true).await;
    for case in rule_cases() {
        let pod = to_json(&case.pod);
        let uid = format!("rule-{}", case.name);
        let resp = call(
            &w,
            "/validate/pods",
            &review(&uid, "CREATE", "agents", &pod, None),
            case.name.len() % 2 == 0,
        )
        .await;
        assert_eq!(resp["allowed"], false, "{}: {resp}", case.name);
        assert_eq!(resp["status"]["code"], 403, "{}", case.name);
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.contains(case.expect), "{}: {message}", case.name);
        assert!(resp.get("patch").is_none());
    }
}

#[tokio::test]
async fn governed_pods_that_keep_the_rules_are_admitted() {
    let w = start(true).await;
    for (case, ns) in [
        ("langflow-deployment", "agents"),
        ("init-containers", "payments"),
        ("own-volumes", "agents"),
        ("transparent-native", "analytics"),
    ] {
        let pod = pod_json(&format!("{case}/expected.yaml"));
        let resp = call(
            &w,
            "/validate/pods",
            &review(case, "CREATE", ns, &pod, None),
            false,
        )
        .await;
        assert_eq!(resp["allowed"], true, "{case}: {resp}");
    }
    // Not governed: privileged pods of other applications are none of our business.
    let mut other = pod_json("langflow-deployment/pod.yaml");
    other["metadata"]["labels"]["app"] = json!("web");
    other["spec"]["containers"][0]["securityContext"]["privileged"] = json!(true);
    let resp = call(
        &w,
        "/validate/pods",
        &review("other", "CREATE", "agents", &other, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], true);
    // Opted out of injection: not governed either.
    let mut opted = pod_json("langflow-deployment/pod.yaml");
    opted["metadata"]["labels"]["cardgate.dev/inject"] = json!("false");
    opted["spec"]["hostNetwork"] = json!(true);
    let resp = call(
        &w,
        "/validate/pods",
        &review("opted", "CREATE", "agents", &opted, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], true);
    // The operator's own namespace is never governed.
    let mut own = to_json(&rule_cases().remove(0).pod);
    own["metadata"]["namespace"] = json!("cardgate-system");
    let resp = call(
        &w,
        "/validate/pods",
        &review("own", "CREATE", "cardgate-system", &own, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], true);
}

#[tokio::test]
async fn in_transparent_pods_only_the_genuine_interception_step_holds_net_admin() {
    let w = start(true).await;
    // The injector puts the interception step first and says which
    // targets keep their connection settings.
    let raw = pod_json("transparent-native/pod.yaml");
    let resp = call(
        &w,
        "/mutate/pods",
        &review("transparent", "CREATE", "analytics", &raw, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        resp["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("payments-db")),
        "{resp}"
    );
    let patch: json_patch::Patch =
        serde_json::from_slice(&STANDARD.decode(resp["patch"].as_str().unwrap()).unwrap()).unwrap();
    let mut pod = raw.clone();
    json_patch::patch(&mut pod, &patch.0).unwrap();
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "cardgate-init");
    assert_eq!(pod["spec"]["initContainers"][1]["name"], "cardgate-sidecar");
    let resp = call(
        &w,
        "/validate/pods",
        &review("transparent-ok", "CREATE", "analytics", &pod, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let mut agent = pod.clone();
    agent["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]);
    let mut impostor = pod.clone();
    impostor["spec"]["initContainers"][0]["image"] = json!("docker.io/attacker/nettools:1");
    let mut shell = pod.clone();
    shell["spec"]["initContainers"][0]["command"] = json!(["/bin/sh", "-c", "iptables -F"]);
    for (name, pod, expect) in [
        (
            "agent",
            agent,
            "container \"report\" adds capability NET_ADMIN",
        ),
        (
            "impostor",
            impostor,
            "container \"cardgate-init\" runs image \"docker.io/attacker/nettools:1\"",
        ),
        (
            "shell",
            shell,
            "container \"cardgate-init\" does not run exactly `cardgate-sidecar init",
        ),
    ] {
        let resp = call(
            &w,
            "/validate/pods",
            &review(name, "CREATE", "analytics", &pod, None),
            false,
        )
        .await;
        assert_eq!(resp["allowed"], false, "{name}: {resp}");
        let message = resp["status"]["message"].as_str().unwrap();
        assert!(message.contains(expect), "{name}: {message}");
    }
}

#[tokio::test]
async fn updates_are_refused_only_for_what_they_introduce() {
    let w = start(true).await;
    let cases = rule_cases();
    let host_network = to_json(&cases.iter().find(|c| c.name == "host-network").unwrap().pod);
    // A label change on a pod that already used hostNetwork stays possible.
    let mut relabelled = host_network.clone();
    relabelled["metadata"]["labels"]["team"] = json!("payments");
    let resp = call(
        &w,
        "/validate/pods",
        &review(
            "relabel",
            "UPDATE",
            "agents",
            &relabelled,
            Some(&host_network),
        ),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], true, "{resp}");
    // Adding a debug container that mounts the sidecar's credentials does not.
    let ok = to_json(&inject_support::injected_langflow());
    let debug = to_json(
        &cases
            .iter()
            .find(|c| c.name == "ephemeral-container")
            .unwrap()
            .pod,
    );
    let mut r = review("debug", "UPDATE", "agents", &debug, Some(&ok));
    r["request"]["subResource"] = json!("ephemeralcontainers");
    r["request"]["requestSubResource"] = json!("ephemeralcontainers");
    let resp = call(&w, "/validate/pods", &r, false).await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("container \"debugger\" mounts volume \"cardgate-cred-agents-db\""),
        "{resp}"
    );
    // Spoofing the label onto a running pod is refused too.
    let plain = pod_json("own-volumes/pod.yaml");
    let mut spoofed = plain.clone();
    spoofed["metadata"]["labels"]["cardgate.dev/proxied"] = json!("langflow");
    let resp = call(
        &w,
        "/validate/pods",
        &review("spoof", "UPDATE", "agents", &spoofed, Some(&plain)),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], false);
}

#[tokio::test]
async fn bad_requests_get_precise_answers() {
    let w = start(true).await;
    let ex = post(
        w.addr,
        &w.ca,
        "/validate/pods",
        b"{not json".to_vec(),
        false,
    )
    .await;
    assert_eq!(ex.status, 200);
    let v: Value = serde_json::from_slice(&ex.body).unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON")
    );

    let mut wrong = review("wrong-kind", "CREATE", "agents", &json!({"spec": 5}), None);
    wrong["request"]["object"] = json!({"apiVersion": "v1", "kind": "Pod", "spec": "nonsense"});
    let resp = call(&w, "/validate/pods", &wrong, false).await;
    assert_eq!(resp["allowed"], false);

    let ex = post(w.addr, &w.ca, "/validate/nothing", b"{}".to_vec(), false).await;
    assert_eq!(ex.status, 404);
    let ex = request(w.addr, &w.ca, "GET", "/mutate/pods", Vec::new(), false).await;
    assert_eq!(ex.status, 405);
}

#[tokio::test]
async fn requests_before_the_caches_are_loaded_are_refused() {
    let w = start(false).await;
    let raw = pod_json("langflow-deployment/pod.yaml");
    let resp = call(
        &w,
        "/mutate/pods",
        &review("early", "CREATE", "agents", &raw, None),
        false,
    )
    .await;
    assert_eq!(resp["allowed"], false);
    assert!(
        resp["status"]["message"]
            .as_str()
            .unwrap()
            .contains("has not finished loading AccessPolicies"),
        "{resp}"
    );
}

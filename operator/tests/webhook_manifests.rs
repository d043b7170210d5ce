//! `config/webhook` builds, passes `kubernetes-validate --strict`, and agrees
//! with the code: paths the server routes, the port it listens on, the names
//! whose caBundle it maintains, the namespace it never governs, and the
//! ApprovalRequest webhooks that must see every review but never a status
//! update.

use std::path::{Path, PathBuf};
use std::process::Command;

use cardgate_operator::webhook::{
    MUTATE_APPROVALS_PATH, MUTATE_PODS_PATH, VALIDATE_APPROVALS_PATH, VALIDATE_PODS_PATH,
    WebhookSettings,
};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    webhook: WebhookSettings,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg(if tool == "kubectl" {
            "version"
        } else {
            "--version"
        })
        .args(if tool == "kubectl" {
            &["--client"][..]
        } else {
            &[][..]
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed");
    }
    ok
}

/// `to` relative to the directory `from` (both absolute).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

fn kustomize(dir: &Path) -> (String, Vec<Value>) {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs = serde_saphyr::from_multiple(&text).unwrap();
    (text, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn the_webhook_manifests_match_what_the_operator_serves() {
    if !have("kubectl") {
        return;
    }
    let settings = Cli::try_parse_from(["op"]).unwrap().webhook;
    let (text, docs) = kustomize(&repo().join("config/webhook"));

    // The Service and Deployment come from config/manager; check them in the
    // full install.
    let (_, all) = kustomize(&repo().join("config/default"));
    let service = find(&all, "Service", &settings.service_name);
    assert_eq!(service["metadata"]["namespace"], settings.service_namespace);
    let port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "webhook")
        .expect("a webhook port on the Service");
    assert_eq!(port["port"], 443);
    let deployment = find(&all, "Deployment", "cardgate-operator");
    let pod = &deployment["spec"]["template"];
    for (k, v) in service["spec"]["selector"].as_object().unwrap() {
        assert_eq!(
            &pod["metadata"]["labels"][k], v,
            "the Service selector {k} misses the operator pods"
        );
    }
    let container_port = pod["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port["targetPort"] || p["containerPort"] == port["targetPort"])
        .expect("the webhook targetPort names a container port");
    assert_eq!(
        container_port["containerPort"],
        settings.bind_address.port()
    );

    let mutating = find(
        &docs,
        "MutatingWebhookConfiguration",
        &settings.mutating_configs[0],
    );
    let validating = find(
        &docs,
        "ValidatingWebhookConfiguration",
        &settings.validating_configs[0],
    );
    let mut hooks = Vec::new();
    for (config, path) in [
        (mutating, MUTATE_PODS_PATH),
        (validating, VALIDATE_PODS_PATH),
    ] {
        for hook in config["webhooks"].as_array().unwrap() {
            hooks.push(hook["name"].as_str().unwrap().to_string());
            assert_eq!(hook["failurePolicy"], "Fail");
            assert_eq!(hook["sideEffects"], "None");
            assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
            let svc = &hook["clientConfig"]["service"];
            assert_eq!(svc["name"], settings.service_name.as_str());
            assert_eq!(svc["namespace"], settings.service_namespace.as_str());
            assert_eq!(svc["port"], 443);
            assert_eq!(svc["path"], path);
            let excluded = hook["namespaceSelector"]["matchExpressions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| {
                    e["key"] == "kubernetes.io/metadata.name"
                        && e["operator"] == "NotIn"
                        && e["values"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|v| v == settings.service_namespace.as_str())
                });
            assert!(
                excluded,
                "{} must exclude the operator's namespace",
                hook["name"]
            );
        }
    }
    assert_eq!(hooks.len(), 3, "{hooks:?}");

    // ApprovalRequests: every namespace, the main resource only (status
    // updates are the sidecar's and the controller's, never reviewed).
    for (kind, name, path, operations) in [
        (
            "MutatingWebhookConfiguration",
            &settings.mutating_configs[1],
            MUTATE_APPROVALS_PATH,
            serde_json::json!(["UPDATE"]),
        ),
        (
            "ValidatingWebhookConfiguration",
            &settings.validating_configs[1],
            VALIDATE_APPROVALS_PATH,
            serde_json::json!(["CREATE", "UPDATE"]),
        ),
    ] {
        assert_eq!(name, "cardgate-approvalrequests");
        let config = find(&docs, kind, name);
        let webhooks = config["webhooks"].as_array().unwrap();
        assert_eq!(webhooks.len(), 1, "{name}");
        let hook = &webhooks[0];
        assert_eq!(hook["failurePolicy"], "Fail");
        assert_eq!(hook["sideEffects"], "None");
        assert_eq!(hook["admissionReviewVersions"], serde_json::json!(["v1"]));
        let svc = &hook["clientConfig"]["service"];
        assert_eq!(svc["name"], settings.service_name.as_str());
        assert_eq!(svc["namespace"], settings.service_namespace.as_str());
        assert_eq!(svc["port"], 443);
        assert_eq!(svc["path"], path);
        assert_eq!(
            hook["rules"],
            serde_json::json!([{"apiGroups": ["cardgate.dev"], "apiVersions": ["v1alpha1"],
                                "operations": operations, "resources": ["approvalrequests"],
                                "scope": "Namespaced"}])
        );
        assert!(
            hook.get("namespaceSelector").is_none(),
            "{name}: every namespace"
        );
        assert!(
            hook.get("objectSelector").is_none(),
            "{name}: every request"
        );
    }

    if have("kubernetes-validate") {
        let file =
            std::env::temp_dir().join(format!("cardgate-webhook-{}.yaml", std::process::id()));
        std::fs::write(&file, text).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .unwrap();
        std::fs::remove_file(&file).ok();
        assert!(
            out.status.success(),
            "kubernetes-validate --strict:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn the_cert_manager_component_switches_the_operator_and_annotates_the_webhooks() {
    if !have("kubectl") {
        return;
    }
    // kustomize only follows relative paths, so the overlay lives in
    // Cargo's per-test scratch directory and refers back to the repository.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cardgate-cm-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A stand-in for config/manager's Deployment with the lists the
    // component appends to.
    std::fs::write(
        dir.join("deployment.yaml"),
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: cardgate-operator
  namespace: cardgate-system
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: cardgate}
  template:
    metadata:
      labels: {app.kubernetes.io/name: cardgate}
    spec:
      containers:
        - name: operator
          image: ghcr.io/cardgate/cardgate-operator:0.1.0
          args: [run]
          volumeMounts: []
      volumes: []
"#,
    )
    .unwrap();
    let webhook = repo().join("config/webhook");
    let component = webhook.join("cert-manager");
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n  - deployment.yaml\ncomponents:\n  - {}\n",
            relative(&dir, &webhook).display(),
            relative(&dir, &component).display()
        ),
    )
    .unwrap();
    let (_, docs) = kustomize(&dir);
    std::fs::remove_dir_all(&dir).ok();
    for (kind, name) in [
        ("MutatingWebhookConfiguration", "cardgate-pod-injector"),
        ("ValidatingWebhookConfiguration", "cardgate-pod-validator"),
        ("MutatingWebhookConfiguration", "cardgate-approvalrequests"),
        (
            "ValidatingWebhookConfiguration",
            "cardgate-approvalrequests",
        ),
    ] {
        assert_eq!(
            find(&docs, kind, name)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "cardgate-system/cardgate-webhook-serving"
        );
    }
    let cert = find(&docs, "Certificate", "cardgate-webhook-serving");
    assert_eq!(
        cert["spec"]["dnsNames"][0],
        "cardgate-operator.cardgate-system.svc"
    );
    let deployment = find(&docs, "Deployment", "cardgate-operator");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let settings = Cli::try_parse_from(
        std::iter::once("op").chain(args.iter().copied().filter(|a| a.starts_with("--"))),
    )
    .unwrap()
    .webhook;
    assert_eq!(
        settings.cert_mode,
        cardgate_operator::webhook::CertMode::CertManager
    );
    assert_eq!(
        container["volumeMounts"][0]["mountPath"],
        settings.cert_dir.to_str().unwrap()
    );
    assert_eq!(
        deployment["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        cert["spec"]["secretName"]
    );
}

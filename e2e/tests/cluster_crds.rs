//! The CRDs and manifests on a real kube-apiserver (e2e/controlplane): the
//! server accepts the generated CRDs, which includes its estimate of every
//! CEL rule's cost against the per-rule budget; the samples apply; the
//! invalid samples are refused by the server's own validation with our
//! messages; and the kustomize and Helm manifests pass a server-side dry run.

use std::time::Duration;

use cardgate_e2e::cluster::{apply, documents};
use cardgate_e2e::controlplane::ControlPlane;
use cardgate_e2e::operator::eventually;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::Api;
use serde_json::json;

const CRDS: [&str; 3] = ["accesspolicies", "maskingrules", "approvalrequests"];

/// Applies the three CRD files under `dir` and waits until each is served.
async fn install_crds(client: &Client, dir: &str) {
    for crd in CRDS {
        let file = format!("{dir}/cardgate.dev_{crd}.yaml");
        for doc in documents(&file) {
            apply(client, &doc)
                .await
                .unwrap_or_else(|e| panic!("the server refused {file}: {e}"));
        }
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in CRDS {
        let name = format!("{crd}.cardgate.dev");
        eventually(
            &format!("{name} to be established"),
            Duration::from_secs(60),
            || established(&api, &name),
        )
        .await;
    }
}

async fn established(api: &Api<CustomResourceDefinition>, name: &str) -> Result<(), String> {
    let crd = api.get(name).await.map_err(|e| e.to_string())?;
    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
    match conditions.iter().find(|c| c.type_ == "Established") {
        Some(c) if c.status == "True" => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

async fn namespace(client: &Client, name: &str) {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    apply(client, &ns).await.expect("namespace");
}

#[tokio::test]
async fn server_accepts_the_crds_within_the_cel_cost_budget_and_the_samples() {
    let Some(cp) = ControlPlane::shared() else {
        return;
    };
    let client = cp.admin().await;
    install_crds(&client, "config/crd/bases").await;
    namespace(&client, "payments").await;
    for sample in [
        "config/samples/maskingrule-card-numbers.yaml",
        "config/samples/maskingrule-card-verification-values.yaml",
        "config/samples/accesspolicy.yaml",
        "config/samples/approvalrequest.yaml",
    ] {
        for doc in documents(sample) {
            apply(&client, &doc)
                .await
                .unwrap_or_else(|e| panic!("{sample}: {e}"));
        }
    }
}

/// The server warns about what it does not understand in a CRD (and drops
/// it, e.g. an unknown `format`); our CRDs give it nothing to warn about.
#[tokio::test]
async fn server_has_no_warnings_for_the_crds() {
    let Some(cp) = ControlPlane::shared() else {
        return;
    };
    let out = cp.kubectl(
        "admin",
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            "config/crd/bases",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
}

/// The chart ships its own copy of the CRDs: a server of its own, so that
/// this copy is validated on create, not compared against the first one.
#[tokio::test]
async fn server_accepts_the_charts_crds() {
    let Some(cp) = ControlPlane::private() else {
        return;
    };
    install_crds(&cp.admin().await, "charts/cardgate/crds").await;
}

/// The message the server must give for an invalid sample: its `# server:`
/// line where the server words it differently from the Rust validation,
/// else its `# expect:` line. `# server: accepted: WHY` records a sample
/// only the operator's validation refuses; the test then checks that the
/// server does accept it, so the note cannot outlive a fix.
fn server_expectation(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|m| m.trim().to_string())
    };
    line("# server:")
        .or_else(|| line("# expect:"))
        .unwrap_or_else(|| panic!("{} has no # expect: line", path.display()))
}

#[tokio::test]
async fn server_refuses_every_invalid_sample_with_its_message() {
    let Some(cp) = ControlPlane::shared() else {
        return;
    };
    let client = cp.admin().await;
    install_crds(&client, "config/crd/bases").await;
    namespace(&client, "payments").await;
    let dir = cardgate_e2e::repo_root().join("crds/tests/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "invalid samples: {files:?}");
    let mut failures = Vec::new();
    for path in files {
        let rel = path.strip_prefix(cardgate_e2e::repo_root()).unwrap();
        let rel = rel.to_str().unwrap();
        let expected = server_expectation(&path);
        let answer = apply(&client, &documents(rel)[0]).await;
        if expected.starts_with("accepted:") {
            if let Err(e) = answer {
                failures.push(format!("{rel}: says the server accepts it, got {e}"));
            }
            continue;
        }
        match answer {
            Ok(_) => failures.push(format!("{rel}: accepted, expected {expected:?}")),
            Err(e) if !e.contains(&expected) => {
                failures.push(format!("{rel}: expected {expected:?}, got {e}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `kubectl apply --server-side --dry-run=server` of `yaml` as the admin.
fn dry_run(cp: &ControlPlane, what: &str, yaml: &str) {
    let file = cp
        .dir()
        .join(format!("{}.yaml", what.replace(['/', ' '], "_")));
    std::fs::write(&file, yaml).unwrap();
    let out = cp.kubectl(
        "admin",
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Server-side dry runs of what users install. The CRDs are installed
/// first: a dry run cannot create the kinds the same request uses. The
/// cert-manager overlay (config/webhook/cert-manager) is left out: it does
/// not render (issue 12 item 4, fixed there).
#[tokio::test]
async fn kustomize_and_helm_manifests_pass_a_server_side_dry_run() {
    let Some(cp) = ControlPlane::shared() else {
        return;
    };
    let client = cp.admin().await;
    install_crds(&client, "config/crd/bases").await;
    // Dry-run objects cannot land in a namespace the same dry run creates.
    namespace(&client, "cardgate-system").await;
    let out = cp.kubectl("admin", &["kustomize", "config/default"]);
    assert!(out.status.success(), "{out:?}");
    dry_run(cp, "config/default", &String::from_utf8_lossy(&out.stdout));

    let out = cp.helm(
        "admin",
        &[
            "template",
            "cardgate",
            "charts/cardgate",
            "--namespace",
            "cardgate-system",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    dry_run(cp, "helm template", &String::from_utf8_lossy(&out.stdout));
}

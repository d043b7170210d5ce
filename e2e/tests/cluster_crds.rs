//! Real-cluster suite for the CRDs: the API server accepts the generated CRDs
//! and the samples, and its own CEL evaluation rejects the invalid samples
//! with our messages. Runs when KUBECONFIG points at a kind/k3d cluster.

use cardgate_e2e::cluster::{apply, client_or_skip, documents};

#[tokio::test]
async fn cluster_accepts_crds_and_samples_and_enforces_cel() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    for crd in ["accesspolicies", "maskingrules", "approvalrequests"] {
        for doc in documents(&format!("config/crd/bases/cardgate.dev_{crd}.yaml")) {
            apply(&client, &doc).await.expect("CRD applies");
        }
    }
    // Established CRDs take a moment to serve.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let ns = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}});
    apply(&client, &ns).await.expect("namespace");
    for sample in [
        "config/samples/maskingrule-card-numbers.yaml",
        "config/samples/maskingrule-card-verification-values.yaml",
        "config/samples/accesspolicy.yaml",
    ] {
        for doc in documents(sample) {
            apply(&client, &doc)
                .await
                .unwrap_or_else(|e| panic!("{sample}: {e}"));
        }
    }
    // CEL rules the API server itself evaluates (not the Rust validators).
    for (file, message) in [
        (
            "crds/tests/invalid/accesspolicy-two-endpoints.yaml",
            "exactly one of service or external",
        ),
        (
            "crds/tests/invalid/maskingrule-truncate-too-much.yaml",
            "at most 6, or 8",
        ),
        (
            "crds/tests/invalid/maskingrule-unkeyed-hmac.yaml",
            "unkeyed hashes",
        ),
        (
            "crds/tests/invalid/approvalrequest-denial-without-reason.yaml",
            "a denial needs a reason",
        ),
    ] {
        let doc = &documents(file)[0];
        let err = apply(&client, doc).await.expect_err(file);
        assert!(err.contains(message), "{file}: {err}");
    }
}

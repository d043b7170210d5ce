//! Access to a real cluster (kind or k3d) for the cluster suite.

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

/// Environment variable that turns a missing cluster into a failure.
pub const REQUIRE_CLUSTER: &str = "CARDGATE_E2E_REQUIRE_CLUSTER";

/// A client for the cluster `KUBECONFIG` points at, or `None` (test skipped)
/// when there is none.
pub async fn client_or_skip() -> Option<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        crate::skip_or_fail(
            REQUIRE_CLUSTER,
            "KUBECONFIG is not set: no cluster to test against",
        );
        return None;
    }
    match Client::try_default().await {
        Ok(c) => Some(c),
        Err(e) => {
            crate::skip_or_fail(REQUIRE_CLUSTER, &format!("cannot reach the cluster: {e}"));
            None
        }
    }
}

/// Reads every YAML document of a file under the repository root.
pub fn documents(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(crate::repo_root().join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Server-side applies one object (any kind) and returns the API server's
/// answer, or its error message.
pub async fn apply(client: &Client, obj: &Value) -> Result<DynamicObject, String> {
    let api_version = obj["apiVersion"].as_str().ok_or("no apiVersion")?;
    let kind = obj["kind"].as_str().ok_or("no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| e.to_string())?;
    let name = obj["metadata"]["name"].as_str().ok_or("no name")?;
    let api: Api<DynamicObject> = match (caps.scope, obj["metadata"]["namespace"].as_str()) {
        (kube::discovery::Scope::Namespaced, Some(ns)) => {
            Api::namespaced_with(client.clone(), ns, &ar)
        }
        (kube::discovery::Scope::Namespaced, None) => {
            Api::default_namespaced_with(client.clone(), &ar)
        }
        _ => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        name,
        &PatchParams::apply("cardgate-e2e").force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|e| e.to_string())
}

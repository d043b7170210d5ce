//! Manifests and server-side apply for the cluster suites (the control
//! plane itself is in [`crate::controlplane`]).

use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::Value;

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

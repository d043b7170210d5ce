//! Installing the operator from `config/` into a real cluster, and the
//! small tools the operator suite needs (polling, `kubectl exec`).

use std::process::Command;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::Value;

use crate::cluster::apply;

/// Image of the operator to deploy (load it into kind first).
pub const OPERATOR_IMAGE_VAR: &str = "CARDGATE_E2E_OPERATOR_IMAGE";
/// Image of the sidecar the webhook injects.
pub const SIDECAR_IMAGE_VAR: &str = "CARDGATE_E2E_SIDECAR_IMAGE";
/// Default operator image (`make e2e-images` builds it).
pub const DEFAULT_OPERATOR_IMAGE: &str = "cardgate-operator:dev";
/// Default sidecar image.
pub const DEFAULT_SIDECAR_IMAGE: &str = "cardgate-sidecar:dev";

fn image(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Runs `kubectl` with `args` and returns (exit success, stdout, stderr).
pub fn kubectl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .args(args)
        .current_dir(crate::repo_root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl {args:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The documents of `kubectl kustomize DIR` (a directory under the
/// repository root).
pub fn kustomize(dir: &str) -> Vec<Value> {
    let (ok, out, err) = kubectl(&["kustomize", dir]);
    assert!(ok, "kubectl kustomize {dir} failed: {err}");
    serde_saphyr::from_multiple(&out).unwrap_or_else(|e| panic!("kustomize {dir}: {e}"))
}

/// Points the operator Deployment at the images under test.
pub fn set_images(doc: &mut Value) {
    if doc["kind"] != "Deployment" || doc["metadata"]["name"] != "cardgate-operator" {
        return;
    }
    let operator = image(OPERATOR_IMAGE_VAR, DEFAULT_OPERATOR_IMAGE);
    let sidecar = image(SIDECAR_IMAGE_VAR, DEFAULT_SIDECAR_IMAGE);
    for c in doc["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .expect("the Deployment has containers")
    {
        c["image"] = operator.clone().into();
        c["imagePullPolicy"] = "IfNotPresent".into();
        for env in c["env"].as_array_mut().into_iter().flatten() {
            if env["name"] == "CARDGATE_SIDECAR_IMAGE" {
                env["value"] = sidecar.clone().into();
            }
        }
    }
}

/// Applies `config/default` (CRDs, RBAC, Deployment, webhooks) with the
/// images under test.
pub async fn install(client: &Client) {
    for mut doc in kustomize("config/default") {
        set_images(&mut doc);
        apply(client, &doc)
            .await
            .unwrap_or_else(|e| panic!("apply {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    }
}

/// Polls `check` every second until it returns `Some`, or panics after
/// `timeout` naming `what` and the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Deletes a namespace and waits until it is gone (leftovers of an earlier
/// run would make the suite's results meaningless).
pub async fn delete_namespace(client: &Client, name: &str) {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(
        &format!("namespace {name} to be deleted"),
        Duration::from_secs(180),
        || {
            let api = api.clone();
            async move {
                match api.get_opt(name).await {
                    Ok(None) => Ok(()),
                    Ok(Some(_)) => Err("still there".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
}

/// Runs `script` with `sh -c` in `container` of `pod`.
pub fn exec(ns: &str, pod: &str, container: &str, script: &str) -> (bool, String, String) {
    kubectl(&[
        "exec", "-n", ns, pod, "-c", container, "--", "sh", "-c", script,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_under_test_replace_the_released_ones() {
        let mut docs = kustomize("config/manager");
        let dep = docs
            .iter_mut()
            .find(|d| d["kind"] == "Deployment")
            .expect("config/manager has the operator Deployment");
        set_images(dep);
        let c = &dep["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["image"],
            image(OPERATOR_IMAGE_VAR, DEFAULT_OPERATOR_IMAGE)
        );
        let env = c["env"].as_array().unwrap();
        let sidecar = env
            .iter()
            .find(|e| e["name"] == "CARDGATE_SIDECAR_IMAGE")
            .expect("the Deployment names the sidecar image");
        assert_eq!(
            sidecar["value"],
            image(SIDECAR_IMAGE_VAR, DEFAULT_SIDECAR_IMAGE)
        );
    }
}

//! Keeping the webhook configurations' `caBundle` on the operator's CA.
//!
//! The bundle is checked on every renewal tick, not only when it changes: a
//! `kubectl apply` or `helm upgrade` of the configurations may empty it, and
//! the API server then refuses to call the webhooks.

use std::fmt::Debug;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use super::TlsError;

/// The webhook configurations whose `caBundle` the operator keeps current.
#[derive(Clone)]
pub struct CaBundleTargets {
    /// Client for the cluster-scoped configurations.
    pub client: Client,
    /// MutatingWebhookConfiguration names.
    pub mutating: Vec<String>,
    /// ValidatingWebhookConfiguration names.
    pub validating: Vec<String>,
}

impl CaBundleTargets {
    /// Sets `caBundle` of every webhook in every configuration to `bundle`
    /// (PEM) where it differs. A configuration that does not exist yet is
    /// skipped with a warning; the next tick tries again.
    pub async fn ensure(&self, bundle: &str) -> Result<(), TlsError> {
        let bundle = bundle.as_bytes();
        for name in &self.mutating {
            let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
            ensure_one(&api, name, bundle, |c| {
                c.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                    .collect()
            })
            .await?;
        }
        for name in &self.validating {
            let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
            ensure_one(&api, name, bundle, |c| {
                c.webhooks
                    .iter()
                    .flatten()
                    .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                    .collect()
            })
            .await?;
        }
        Ok(())
    }
}

type Webhooks = Vec<(String, Option<k8s_openapi::ByteString>)>;

async fn ensure_one<K>(
    api: &Api<K>,
    name: &str,
    bundle: &[u8],
    webhooks: impl Fn(&K) -> Webhooks,
) -> Result<(), TlsError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let Some(config) = api.get_opt(name).await? else {
        warn!(
            kind = %K::kind(&()),
            name,
            "webhook configuration not found; its caBundle will be set once it exists"
        );
        return Ok(());
    };
    let stale: Vec<String> = webhooks(&config)
        .into_iter()
        .filter(|(_, ca)| ca.as_ref().map(|b| b.0.as_slice()) != Some(bundle))
        .map(|(n, _)| n)
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let encoded = STANDARD.encode(bundle);
    let patch = json!({
        "webhooks": stale
            .iter()
            .map(|n| json!({"name": n, "clientConfig": {"caBundle": encoded}}))
            .collect::<Vec<_>>()
    });
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    info!(kind = %K::kind(&()), name, webhooks = ?stale, "updated caBundle");
    Ok(())
}

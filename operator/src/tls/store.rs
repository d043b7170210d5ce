//! The Secret all replicas share the webhook certificates through.
//!
//! Replicas race at start-up and at renewal; the API server settles the race.
//! Creation that meets `AlreadyExists` and replacement that meets `Conflict`
//! (stale resourceVersion) both re-read the Secret and decide again, so every
//! replica ends up with the one CA the winner wrote.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Error as KubeError};
use tracing::info;

use super::TlsError;
use super::certs::{WebhookCerts, issue_all, observe, reissue_serving};
use super::rotation::{Action, Lifetimes, decide};

/// Type of the Secret the operator creates.
const SECRET_TYPE: &str = "kubernetes.io/tls";

/// How often a replica re-reads and decides after losing a race before it
/// gives up for this round.
const ATTEMPTS: usize = 5;

/// Where the certificates live and what they must name.
#[derive(Clone)]
pub struct SecretStore {
    /// Secrets of the operator's namespace.
    pub api: Api<Secret>,
    /// Name of the shared Secret.
    pub name: String,
    /// DNS names of the webhook Service the serving certificate must carry.
    pub dns_names: Vec<String>,
    /// Certificate lifetimes.
    pub lifetimes: Lifetimes,
}

impl SecretStore {
    /// Returns certificates valid at `now`, creating or renewing them in the
    /// Secret when needed (see [`decide`]).
    pub async fn ensure(&self, now: Timestamp) -> Result<WebhookCerts, TlsError> {
        for _ in 0..ATTEMPTS {
            match self.api.get_opt(&self.name).await? {
                None => {
                    let certs = issue_all(now, &self.dns_names, self.lifetimes, None)?;
                    match self
                        .api
                        .create(&PostParams::default(), &self.secret(&certs, None))
                        .await
                    {
                        Ok(_) => {
                            info!(secret = %self.name, "created webhook CA and serving certificate");
                            return Ok(certs);
                        }
                        Err(e) if is_conflict(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(secret) => {
                    let stored = secret.data.as_ref().and_then(|d| {
                        let bytes: BTreeMap<String, Vec<u8>> =
                            d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
                        WebhookCerts::from_data(&bytes)
                    });
                    let observed = stored
                        .as_ref()
                        .and_then(|c| observe(c, &self.dns_names).ok());
                    let action = decide(now, observed.as_ref());
                    let next = match (action, stored) {
                        (Action::Keep { .. }, Some(certs)) => return Ok(certs),
                        (Action::IssueServing, Some(certs)) => {
                            reissue_serving(now, &self.dns_names, self.lifetimes, &certs)?
                        }
                        (Action::RotateCa, Some(certs)) => {
                            issue_all(now, &self.dns_names, self.lifetimes, Some(certs.ca_cert))?
                        }
                        _ => issue_all(now, &self.dns_names, self.lifetimes, None)?,
                    };
                    let replacement = Secret {
                        // The type of an existing Secret cannot change.
                        type_: secret.type_.clone().or(Some(SECRET_TYPE.into())),
                        ..self.secret(&next, Some(secret.metadata))
                    };
                    match self
                        .api
                        .replace(&self.name, &PostParams::default(), &replacement)
                        .await
                    {
                        Ok(_) => {
                            info!(secret = %self.name, ?action, "renewed webhook certificates");
                            return Ok(next);
                        }
                        Err(e) if is_conflict(&e) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(TlsError::Contended(self.name.clone()))
    }

    /// The Secret holding `certs`; `meta` (with its resourceVersion) when
    /// replacing an existing one.
    fn secret(&self, certs: &WebhookCerts, meta: Option<ObjectMeta>) -> Secret {
        let mut metadata = meta.unwrap_or_else(|| ObjectMeta {
            name: Some(self.name.clone()),
            ..Default::default()
        });
        metadata.labels.get_or_insert_with(BTreeMap::new).extend([
            ("app.kubernetes.io/name".to_string(), "cardgate".to_string()),
            (
                "app.kubernetes.io/component".to_string(),
                "webhook-tls".to_string(),
            ),
        ]);
        Secret {
            metadata,
            type_: Some(SECRET_TYPE.into()),
            data: Some(
                certs
                    .to_data()
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v)))
                    .collect(),
            ),
            ..Default::default()
        }
    }
}

/// `AlreadyExists` on create and `Conflict` on update are both 409.
fn is_conflict(e: &KubeError) -> bool {
    matches!(e, KubeError::Api(s) if s.code == 409)
}

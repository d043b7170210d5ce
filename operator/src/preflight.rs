//! Checks, before anything starts, that the API server serves the cardgate
//! CRDs, so a missing install step gives one clear message instead of
//! controllers failing in a loop.

use cardgate_crds::v1alpha1::{AccessPolicy, ApprovalRequest, MaskingRule};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// Why the pre-flight check failed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// A CRD is not installed (or not at the version this operator serves).
    #[error(
        "the custom resource {resource} ({api_version}) is not served by this cluster: install the CRDs first with `kubectl apply -k config/crd` (or the Helm chart), then restart the operator"
    )]
    CrdMissing {
        /// e.g. `accesspolicies.cardgate.dev`.
        resource: String,
        /// e.g. `cardgate.dev/v1alpha1`.
        api_version: String,
    },
    /// The API server refused or could not be reached.
    #[error("cannot check that {resource} is installed: {source}")]
    Api {
        /// e.g. `accesspolicies.cardgate.dev`.
        resource: String,
        /// The client error.
        source: kube::Error,
    },
}

async fn check<K>(client: &Client) -> Result<(), PreflightError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let resource = format!("{}.{}", K::plural(&()), K::group(&()));
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(PreflightError::CrdMissing {
            resource,
            api_version: K::api_version(&()).into_owned(),
        }),
        Err(source) => Err(PreflightError::Api { resource, source }),
    }
}

/// Lists each cardgate resource once (metadata only, one item).
pub async fn check_crds(client: &Client) -> Result<(), PreflightError> {
    check::<AccessPolicy>(client).await?;
    check::<MaskingRule>(client).await?;
    check::<ApprovalRequest>(client).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::mock::{self, Exchange, list};

    #[tokio::test]
    async fn missing_crd_names_the_install_command() {
        let (ctx, server) = mock::context();
        let server = server.run(vec![
            Exchange::get("/apis/cardgate.dev/v1alpha1/accesspolicies?&limit=1")
                .metadata_only()
                .reply(
                    200,
                    list("meta.k8s.io/v1", "PartialObjectMetadataList", vec![]),
                ),
            Exchange::get("/apis/cardgate.dev/v1alpha1/maskingrules?&limit=1")
                .metadata_only()
                .reply_text(404, "404 page not found\n"),
        ]);
        let err = check_crds(&ctx.client).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the custom resource maskingrules.cardgate.dev (cardgate.dev/v1alpha1) is not served by this cluster: install the CRDs first with `kubectl apply -k config/crd` (or the Helm chart), then restart the operator"
        );
        drop(ctx);
        mock::verify(server).await;
    }
}

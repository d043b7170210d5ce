//! The ApprovalRequest webhooks:
//!
//! - `/mutate/approvalrequests` (UPDATE): checks the rules and stamps the new
//!   review with the caller's authenticated username, groups and the time,
//!   replacing whatever the body said;
//! - `/validate/approvalrequests` (CREATE, UPDATE): the rules again, after
//!   every mutating webhook ran, and the stamps must match the caller; on
//!   CREATE, the requester pod must exist, carry the UID given, run as the
//!   creating service account and be governed by the request's policy.
//!
//! Status updates go through the status subresource, which neither webhook
//! receives. The rules are in [`crate::approval::admission`]; this module
//! feeds them the caller, the policy (from the reflector cache) and the pod
//! (one API read per CREATE), and fails closed when either is unknown.

use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::v1alpha1::{AccessPolicy, ApprovalRequest};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionResponse, Operation};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::info;

use super::metrics::WebhookMetrics;
use super::server::{Admission, Admit};
use crate::approval::admission::{
    Caller, Refusal, Stage, check_create, check_update, requester_pod,
};
use cardgate_crds::approval::review::stamp;

/// How long a request waits for the policy cache's first listing.
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// What both ApprovalRequest webhooks need.
pub struct ApprovalContext {
    /// AccessPolicies of all namespaces (approvers, quorum).
    pub policies: Store<AccessPolicy>,
    /// Reads the requester pod on CREATE.
    pub client: Client,
    /// Counters.
    pub metrics: WebhookMetrics,
    /// Clock for stamps and expiry; fixed in tests.
    pub now: fn() -> Timestamp,
}

impl ApprovalContext {
    /// The policy named `name` in `namespace`, once the cache is loaded.
    async fn policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<AccessPolicy>>, String> {
        tokio::time::timeout(CACHE_WAIT, self.policies.wait_until_ready())
            .await
            .map_err(|_| {
                "cardgate: the webhook has not finished loading AccessPolicies yet; retry in a few seconds".to_string()
            })?
            .map_err(|_| "cardgate: the AccessPolicy cache is gone; retry".to_string())?;
        Ok(self.policies.get(&ObjectRef::new(name).within(namespace)))
    }
}

fn deny(response: AdmissionResponse, message: impl Into<String>) -> AdmissionResponse {
    let mut r = response.deny(message.into());
    r.result.code = 403;
    r.result.reason = "Forbidden".into();
    r
}

fn caller(admission: &Admission<ApprovalRequest>) -> (String, Vec<String>) {
    let user = &admission.request.user_info;
    (
        user.username.clone().unwrap_or_default(),
        user.groups.clone().unwrap_or_default(),
    )
}

fn namespace(admission: &Admission<ApprovalRequest>) -> String {
    admission.request.namespace.clone().unwrap_or_default()
}

/// `/mutate/approvalrequests`: stamps the new review.
#[derive(Clone)]
pub struct ReviewStamper(pub Arc<ApprovalContext>);

impl ReviewStamper {
    async fn stamp(
        &self,
        admission: &Admission<ApprovalRequest>,
        response: AdmissionResponse,
    ) -> Result<AdmissionResponse, String> {
        let ctx = &self.0;
        let req = &admission.request;
        let (Operation::Update, Some(old), Some(new)) =
            (&req.operation, &req.old_object, &req.object)
        else {
            return Ok(response);
        };
        let (username, groups) = caller(admission);
        let caller = Caller {
            username: &username,
            groups: &groups,
        };
        let policy = ctx.policy(&namespace(admission), &old.spec.policy).await?;
        let now = (ctx.now)();
        let Some(index) = check_update(old, new, caller, policy.as_deref(), now, Stage::Mutating)
            .map_err(|e: Refusal| e.to_string())?
        else {
            return Ok(response);
        };
        let stamped = stamp(&new.spec.reviews[index], &caller.reviewer(), now);
        let patch: json_patch::Patch = serde_json::from_value(json!([{
            "op": "replace",
            "path": format!("/spec/reviews/{index}"),
            "value": stamped,
        }]))
        .map_err(|e| format!("cardgate: cannot build the stamp: {e}"))?;
        if !req.dry_run {
            info!(
                namespace = %namespace(admission),
                request = %old.name_any(),
                reviewer = %username,
                decision = ?stamped.decision,
                "review stamped"
            );
        }
        response
            .with_patch(patch)
            .map_err(|e| format!("cardgate: cannot encode the stamp: {e}"))
    }
}

impl Admit for ReviewStamper {
    type Object = ApprovalRequest;

    async fn admit(&self, admission: Admission<ApprovalRequest>) -> AdmissionResponse {
        let response = AdmissionResponse::from(&admission.request);
        match self.stamp(&admission, response.clone()).await {
            Ok(r) => r,
            Err(message) => {
                self.0.metrics.denied("mutate-approvalrequests");
                deny(response, message)
            }
        }
    }
}

/// `/validate/approvalrequests`: the rules, after all mutation.
#[derive(Clone)]
pub struct ApprovalValidator(pub Arc<ApprovalContext>);

impl ApprovalValidator {
    async fn check(&self, admission: &Admission<ApprovalRequest>) -> Result<(), String> {
        let ctx = &self.0;
        let req = &admission.request;
        let ns = namespace(admission);
        let (username, groups) = caller(admission);
        let caller = Caller {
            username: &username,
            groups: &groups,
        };
        let now = (ctx.now)();
        match (&req.operation, &req.old_object, &req.object) {
            (Operation::Create, _, Some(new)) => {
                let policy = ctx.policy(&ns, &new.spec.policy).await?;
                check_create(new, &ns, caller, policy.as_deref(), now)
                    .map_err(|e| e.to_string())?;
                let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
                let pod = pods.get_opt(&new.spec.requester.pod).await.map_err(|e| {
                    format!(
                        "cardgate: cannot check the requester pod {ns}/{} ({e}); retry",
                        new.spec.requester.pod
                    )
                })?;
                requester_pod(&new.spec, pod.as_ref())
            }
            (Operation::Update, Some(old), Some(new)) => {
                let policy = ctx.policy(&ns, &old.spec.policy).await?;
                check_update(old, new, caller, policy.as_deref(), now, Stage::Validating)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            (Operation::Create | Operation::Update, _, _) => {
                Err("cardgate: the admission request carries no object".into())
            }
            _ => Ok(()),
        }
    }
}

impl Admit for ApprovalValidator {
    type Object = ApprovalRequest;

    async fn admit(&self, admission: Admission<ApprovalRequest>) -> AdmissionResponse {
        let response = AdmissionResponse::from(&admission.request);
        match self.check(&admission).await {
            Ok(()) => response,
            Err(message) => {
                self.0.metrics.denied("validate-approvalrequests");
                deny(response, message)
            }
        }
    }
}

//! The MaskingRule reconciler: validate the rule (regexes compile within the
//! limits the sidecar uses), report `Ready` or `Invalid` with every problem,
//! and list the AccessPolicies that use it. The AccessPolicy controller
//! watches MaskingRules itself, so a changed rule re-renders every policy
//! that lists it.

use std::sync::Arc;

use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule, MaskingRuleStatus};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::conditions::{self, READY};
use super::{Context, DEGRADED_RETRY, Error, RESYNC, kube_err, object_key};
use crate::metrics::{ControllerName, ReconcileOutcome};
use crate::render::meta::FIELD_MANAGER;

/// Reason of a valid rule's Ready condition.
pub const REASON_VALID: &str = "Valid";
/// Reason of an invalid rule's Ready condition.
pub const REASON_INVALID: &str = "Invalid";

/// Reconciles one MaskingRule (the controller's reconciler).
pub async fn reconcile(rule: Arc<MaskingRule>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile(ControllerName::MaskingRule);
    let result = reconcile_rule(&rule, &ctx).await;
    match result {
        Ok(valid) => {
            timer.finish(if valid {
                ReconcileOutcome::Ready
            } else {
                ReconcileOutcome::Degraded
            });
            ctx.succeeded(&object_key(&*rule));
            Ok(Action::requeue(if valid { RESYNC } else { DEGRADED_RETRY }))
        }
        Err(e) => {
            timer.finish(ReconcileOutcome::Error);
            Err(e)
        }
    }
}

/// Validates, writes status, and returns whether the rule is valid.
async fn reconcile_rule(rule: &MaskingRule, ctx: &Context) -> Result<bool, Error> {
    let ns = rule
        .namespace()
        .ok_or_else(|| Error::NoNamespace(object_key(rule)))?;
    let name = rule.name_any();
    let policies: Api<AccessPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let mut used_by: Vec<String> = policies
        .list(&ListParams::default())
        .await
        .map_err(kube_err(format!("list AccessPolicies in {ns}")))?
        .into_iter()
        .filter(|p| p.spec.masking_rules.contains(&name))
        .map(|p| p.name_any())
        .collect();
    used_by.sort();

    let old = rule.status.clone().unwrap_or_default();
    let generation = rule.meta().generation;
    let (valid, reason, message) = match rule.spec.validate() {
        Ok(()) => (
            true,
            REASON_VALID,
            match used_by.len() {
                0 => "valid; no AccessPolicy uses it yet".to_string(),
                n => format!(
                    "valid; used by {n} AccessPolic{}",
                    if n == 1 { "y" } else { "ies" }
                ),
            },
        ),
        Err(errors) => (
            false,
            REASON_INVALID,
            errors.to_string().trim_end().to_string(),
        ),
    };
    let status = MaskingRuleStatus {
        observed_generation: generation,
        conditions: vec![conditions::condition(
            READY,
            valid,
            reason,
            &message,
            generation,
            &old.conditions,
            (ctx.now)(),
        )],
        used_by,
    };
    let body = json!({
        "apiVersion": MaskingRule::api_version(&()),
        "kind": MaskingRule::kind(&()),
        "status": serde_json::to_value(&status).map_err(|source| Error::Serialize {
            what: "MaskingRule status".into(),
            source,
        })?,
    });
    let api: Api<MaskingRule> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(kube_err(format!("apply status of MaskingRule {ns}/{name}")))?;

    let was = conditions::find(&old.conditions, READY);
    let changed = was.is_none_or(|c| c.reason != reason || (!valid && c.message != message));
    if changed {
        let event = Event {
            type_: if valid {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: reason.into(),
            note: Some(conditions::truncate(&message, 1024)),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &rule.object_ref(&())).await {
            tracing::warn!(rule = %object_key(rule), error = %e, "cannot publish Event");
        }
    }
    Ok(valid)
}

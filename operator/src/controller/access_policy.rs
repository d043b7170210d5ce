//! The AccessPolicy reconciler: read what the policy references, plan
//! (pure, [`crate::render::plan`]), then server-side apply the ConfigMap,
//! NetworkPolicies, Role and RoleBinding, prune what the policy no longer
//! needs, and report status and Events.
//!
//! A policy with problems its owner must fix (a missing Service, an invalid
//! MaskingRule, a rendering that fails `SidecarConfig::validate()`) gets
//! `Degraded` with every problem listed and nothing else is written: pods
//! keep the last good configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cardgate_crds::pod;
use cardgate_crds::v1alpha1::{AccessPolicy, AccessPolicyStatus, GeneratedObject, MaskingRule};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{NamespaceResourceScope, PartialObjectMeta};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::conditions::{self, DEGRADED, NETWORK_POLICIES_APPLIED, READY};
use super::{Context, DEGRADED_RETRY, Error, RESYNC, kube_err, object_key};
use crate::metrics::{ControllerName, ReconcileOutcome};
use crate::render::meta::{self, FIELD_MANAGER, FINALIZER};
use crate::render::observed::{
    ApiServerEndpoint, GovernedPods, Observed, Problem, secret_uses, service_keys,
};
use crate::render::plan::{self, Plan};

/// How a reconcile ended when the API server did its part.
enum Reconciled {
    /// Everything applied.
    Ready,
    /// Problems reported in status; nothing else written.
    Degraded,
    /// A deleted policy was cleaned up (or needed nothing).
    Deleted,
}

/// Reconciles one AccessPolicy (the controller's reconciler).
pub async fn reconcile(policy: Arc<AccessPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile(ControllerName::AccessPolicy);
    let result = reconcile_policy(&policy, &ctx).await;
    timer.finish(match &result {
        Ok(Reconciled::Ready | Reconciled::Deleted) => ReconcileOutcome::Ready,
        Ok(Reconciled::Degraded) => ReconcileOutcome::Degraded,
        Err(_) => ReconcileOutcome::Error,
    });
    let reconciled = result?;
    ctx.succeeded(&object_key(&*policy));
    Ok(match reconciled {
        Reconciled::Ready => Action::requeue(RESYNC),
        Reconciled::Degraded => Action::requeue(DEGRADED_RETRY),
        Reconciled::Deleted => Action::await_change(),
    })
}

async fn reconcile_policy(policy: &AccessPolicy, ctx: &Context) -> Result<Reconciled, Error> {
    let ns = policy
        .namespace()
        .ok_or_else(|| Error::NoNamespace(object_key(policy)))?;
    if policy.meta().deletion_timestamp.is_some() {
        cleanup(policy, ctx).await?;
        return Ok(Reconciled::Deleted);
    }
    let governed = governed_pods(policy, &ns, ctx).await?;
    let spec_problems = plan::check_spec(policy);
    if !spec_problems.is_empty() {
        degrade(policy, ctx, governed, spec_problems).await?;
        return Ok(Reconciled::Degraded);
    }
    let observed = observe(policy, &ns, ctx, governed).await?;
    match plan::plan(policy, &observed, &ctx.render_settings()) {
        Err(problems) => {
            degrade(policy, ctx, observed.governed, problems).await?;
            Ok(Reconciled::Degraded)
        }
        Ok(plan) => {
            apply(policy, &ns, ctx, &plan).await?;
            ready(policy, ctx, observed.governed, &plan).await?;
            Ok(Reconciled::Ready)
        }
    }
}

/// Counts the governed pods and collects their service accounts.
async fn governed_pods(
    policy: &AccessPolicy,
    ns: &str,
    ctx: &Context,
) -> Result<GovernedPods, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let selector = format!("{}={}", pod::LABEL_PROXIED, policy.name_any());
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("list pods {ns} -l {selector}")))?;
    let mut governed = GovernedPods::default();
    for p in list {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase == Some("Running") {
            governed.running += 1;
        }
        if !matches!(phase, Some("Succeeded" | "Failed")) {
            let sa = p
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into());
            governed.service_accounts.insert(sa);
        }
    }
    Ok(governed)
}

/// `GET` that maps 404 to `None`.
async fn get_opt<K>(api: &Api<K>, name: &str, what: &str) -> Result<Option<K>, Error>
where
    K: Clone + DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name)
        .await
        .map_err(kube_err(format!("get {what}")))
}

/// Reads every object the policy references, in a fixed order.
async fn observe(
    policy: &AccessPolicy,
    ns: &str,
    ctx: &Context,
    governed: GovernedPods,
) -> Result<Observed, Error> {
    let client = &ctx.client;
    let rules: Api<MaskingRule> = Api::namespaced(client.clone(), ns);
    let mut masking_rules = Vec::new();
    for name in &policy.spec.masking_rules {
        let rule = get_opt(&rules, name, &format!("MaskingRule {ns}/{name}")).await?;
        masking_rules.push((name.clone(), rule));
    }
    let mut services = BTreeMap::new();
    for (svc_ns, name) in service_keys(policy) {
        let api: Api<Service> = Api::namespaced(client.clone(), &svc_ns);
        let svc = get_opt(&api, &name, &format!("Service {svc_ns}/{name}")).await?;
        services.insert((svc_ns, name), svc);
    }
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut secrets = BTreeMap::new();
    for u in secret_uses(policy, &masking_rules) {
        if secrets.contains_key(&u.name) {
            continue;
        }
        let keys = get_opt(&secrets_api, &u.name, &format!("Secret {ns}/{}", u.name))
            .await?
            .map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_keys()
                    .collect::<BTreeSet<_>>()
            });
        secrets.insert(u.name, keys);
    }
    let mut api_server = Vec::new();
    if policy.spec.egress.as_ref().is_some_and(|e| e.restrict) {
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
            .await
            .map_err(kube_err("list EndpointSlices default/kubernetes"))?;
        for slice in list {
            let ports: Vec<i32> = slice
                .ports
                .unwrap_or_default()
                .iter()
                .filter_map(|p| p.port)
                .collect();
            for e in slice.endpoints.unwrap_or_default() {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for address in &e.addresses {
                    for port in &ports {
                        api_server.push(ApiServerEndpoint {
                            address: address.clone(),
                            port: *port,
                        });
                    }
                }
            }
        }
        api_server.sort();
        api_server.dedup();
    }
    Ok(Observed {
        masking_rules,
        services,
        secrets,
        api_server,
        governed,
    })
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Server-side applies one generated object.
async fn apply_object<K>(ctx: &Context, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Serialize
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(&name, &apply_params(), &Patch::Apply(obj))
        .await
        .map_err(kube_err(format!("apply {} {ns}/{name}", K::kind(&()))))?;
    Ok(())
}

/// Adds or removes the finalizer with a merge patch guarded by the
/// resourceVersion, so a concurrent change is never overwritten.
async fn set_finalizer(policy: &AccessPolicy, ctx: &Context, present: bool) -> Result<(), Error> {
    let ns = policy.namespace().unwrap_or_default();
    let mut finalizers: Vec<String> = policy
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect();
    if present {
        finalizers.push(FINALIZER.to_string());
    }
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": policy.resource_version(),
        }
    });
    let api: Api<AccessPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch(
        &policy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err(format!(
        "{} finalizer on AccessPolicy {ns}/{}",
        if present { "add" } else { "remove" },
        policy.name_any()
    )))?;
    Ok(())
}

fn has_finalizer(policy: &AccessPolicy) -> bool {
    policy.finalizers().iter().any(|f| f == FINALIZER)
}

/// Every NetworkPolicy labelled as generated for `policy`, in any namespace.
async fn labelled_network_policies(
    policy: &AccessPolicy,
    ctx: &Context,
) -> Result<Vec<PartialObjectMeta<NetworkPolicy>>, Error> {
    let api: Api<PartialObjectMeta<NetworkPolicy>> = Api::all(ctx.client.clone());
    let selector = meta::selector(policy);
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err(format!("list NetworkPolicies -l {selector}")))?
        .items)
}

async fn delete_network_policy(ctx: &Context, ns: &str, name: &str) -> Result<(), Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), ns);
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(format!("delete NetworkPolicy {ns}/{name}"))(e)),
    }
}

/// Applies the plan and deletes the NetworkPolicies it no longer contains.
async fn apply(policy: &AccessPolicy, ns: &str, ctx: &Context, plan: &Plan) -> Result<(), Error> {
    let crosses = plan.crosses_namespaces(policy);
    if crosses && !has_finalizer(policy) {
        set_finalizer(policy, ctx, true).await?;
    }
    apply_object(ctx, &plan.config_map).await?;
    for np in &plan.network_policies {
        apply_object(ctx, np).await?;
    }
    apply_object::<Role>(ctx, &plan.role).await?;
    apply_object::<RoleBinding>(ctx, &plan.role_binding).await?;

    let wanted: BTreeSet<(Option<String>, Option<String>)> = plan
        .network_policies
        .iter()
        .map(|np| (np.metadata.namespace.clone(), np.metadata.name.clone()))
        .collect();
    for stale in labelled_network_policies(policy, ctx).await? {
        let key = (
            stale.metadata.namespace.clone(),
            stale.metadata.name.clone(),
        );
        if !wanted.contains(&key) {
            let (sns, sname) = (key.0.unwrap_or_default(), key.1.unwrap_or_default());
            tracing::info!(policy = %format!("{ns}/{}", policy.name_any()), networkpolicy = %format!("{sns}/{sname}"), "deleting a NetworkPolicy the policy no longer needs");
            delete_network_policy(ctx, &sns, &sname).await?;
        }
    }
    if !crosses && has_finalizer(policy) {
        set_finalizer(policy, ctx, false).await?;
    }
    Ok(())
}

/// A deleted policy: objects in its namespace go with it (owner
/// references); the finalizer removes those in other namespaces.
async fn cleanup(policy: &AccessPolicy, ctx: &Context) -> Result<(), Error> {
    if !has_finalizer(policy) {
        return Ok(());
    }
    let own = policy.namespace();
    for np in labelled_network_policies(policy, ctx).await? {
        if np.metadata.namespace != own {
            delete_network_policy(
                ctx,
                np.metadata.namespace.as_deref().unwrap_or_default(),
                np.metadata.name.as_deref().unwrap_or_default(),
            )
            .await?;
        }
    }
    set_finalizer(policy, ctx, false).await
}

/// Server-side applies the status subresource.
async fn patch_status(
    policy: &AccessPolicy,
    ctx: &Context,
    status: &AccessPolicyStatus,
) -> Result<(), Error> {
    let ns = policy.namespace().unwrap_or_default();
    let body = json!({
        "apiVersion": AccessPolicy::api_version(&()),
        "kind": AccessPolicy::kind(&()),
        "status": serde_json::to_value(status).map_err(|source| Error::Serialize {
            what: "AccessPolicy status".into(),
            source,
        })?,
    });
    let api: Api<AccessPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&policy.name_any(), &apply_params(), &Patch::Apply(&body))
        .await
        .map_err(kube_err(format!(
            "apply status of AccessPolicy {ns}/{}",
            policy.name_any()
        )))?;
    Ok(())
}

fn previous(policy: &AccessPolicy) -> AccessPolicyStatus {
    policy.status.clone().unwrap_or_default()
}

/// Publishes an Event about `policy`; a failure is logged, not retried:
/// Events inform, the status is the record.
async fn publish(
    policy: &AccessPolicy,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(conditions::truncate(&note, 1024)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        tracing::warn!(policy = %object_key(policy), reason, error = %e, "cannot publish Event");
    }
}

/// Lists problems one per line.
fn problems_message(problems: &[Problem]) -> String {
    let n = problems.len();
    let mut out = format!("{n} problem{}:", if n == 1 { "" } else { "s" });
    for p in problems {
        out.push_str("\n- ");
        out.push_str(&p.message);
    }
    out
}

async fn degrade(
    policy: &AccessPolicy,
    ctx: &Context,
    governed: GovernedPods,
    problems: Vec<Problem>,
) -> Result<(), Error> {
    let old = previous(policy);
    let now = (ctx.now)();
    let generation = policy.meta().generation;
    let reason = problems
        .first()
        .map(|p| p.reason.as_str())
        .unwrap_or("Unknown");
    let message = problems_message(&problems);
    let np_condition = match conditions::find(&old.conditions, NETWORK_POLICIES_APPLIED) {
        Some(c) => c.clone(),
        None => conditions::condition(
            NETWORK_POLICIES_APPLIED,
            false,
            "Pending",
            "nothing applied yet: the policy is degraded",
            generation,
            &[],
            now,
        ),
    };
    let conditions_list: Vec<Condition> = vec![
        conditions::condition(
            READY,
            false,
            reason,
            &message,
            generation,
            &old.conditions,
            now,
        ),
        np_condition,
        conditions::condition(
            DEGRADED,
            true,
            reason,
            &message,
            generation,
            &old.conditions,
            now,
        ),
    ];
    let status = AccessPolicyStatus {
        observed_generation: generation,
        conditions: conditions_list,
        governed_pods: governed.running,
        config_hash: old.config_hash.clone(),
        generated: old.generated.clone(),
        counters: None,
    };
    patch_status(policy, ctx, &status).await?;
    let unchanged = conditions::find(&old.conditions, DEGRADED)
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == message);
    if !unchanged {
        tracing::warn!(policy = %object_key(policy), reason, problems = problems.len(), "policy degraded");
        publish(
            policy,
            ctx,
            EventType::Warning,
            reason,
            "Reconcile",
            message,
        )
        .await;
    }
    Ok(())
}

async fn ready(
    policy: &AccessPolicy,
    ctx: &Context,
    governed: GovernedPods,
    plan: &Plan,
) -> Result<(), Error> {
    let old = previous(policy);
    let now = (ctx.now)();
    let generation = policy.meta().generation;
    let generated = plan.generated(policy);
    let nps: Vec<String> = plan
        .network_policies
        .iter()
        .map(|np| {
            format!(
                "{}/{}",
                np.metadata.namespace.as_deref().unwrap_or_default(),
                np.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    let mut np_message = if nps.is_empty() {
        "no NetworkPolicies needed: no in-cluster targets and no egress restriction".to_string()
    } else {
        format!("applied {}", nps.join(", "))
    };
    let np_reason = if plan.warnings.is_empty() {
        "Applied"
    } else {
        np_message.push_str(". WARNING:");
        for w in &plan.warnings {
            np_message.push_str("\n- ");
            np_message.push_str(w);
        }
        "AppliedWithWarnings"
    };
    let short_hash = &plan.config_hash[..12.min(plan.config_hash.len())];
    let ready_message = format!(
        "sidecar configuration {short_hash} in ConfigMap {}; {} governed pod{} running",
        pod::config_map_name(&policy.name_any()),
        governed.running,
        if governed.running == 1 { "" } else { "s" }
    );
    let status = AccessPolicyStatus {
        observed_generation: generation,
        conditions: vec![
            conditions::condition(
                READY,
                true,
                "Reconciled",
                &ready_message,
                generation,
                &old.conditions,
                now,
            ),
            conditions::condition(
                NETWORK_POLICIES_APPLIED,
                true,
                np_reason,
                &np_message,
                generation,
                &old.conditions,
                now,
            ),
            conditions::condition(
                DEGRADED,
                false,
                "AsExpected",
                "no problems found",
                generation,
                &old.conditions,
                now,
            ),
        ],
        governed_pods: governed.running,
        config_hash: Some(plan.config_hash.clone()),
        generated: generated.clone(),
        counters: None,
    };
    patch_status(policy, ctx, &status).await?;

    if old.config_hash.as_deref() != Some(plan.config_hash.as_str()) {
        publish(
            policy,
            ctx,
            EventType::Normal,
            "ConfigRendered",
            "Render",
            format!(
                "rendered the sidecar configuration into ConfigMap {} (hash {short_hash}); pods started with another hash run the old configuration until restarted",
                pod::config_map_name(&policy.name_any())
            ),
        )
        .await;
    }
    let kinds = |g: &[GeneratedObject]| -> BTreeSet<(String, Option<String>, String)> {
        g.iter()
            .filter(|o| o.kind == "NetworkPolicy")
            .map(|o| (o.kind.clone(), o.namespace.clone(), o.name.clone()))
            .collect()
    };
    if kinds(&old.generated) != kinds(&generated) {
        publish(
            policy,
            ctx,
            EventType::Normal,
            NETWORK_POLICIES_APPLIED,
            "Apply",
            np_message,
        )
        .await;
    }
    if !conditions::is_true(&old.conditions, READY) {
        tracing::info!(policy = %object_key(policy), hash = short_hash, "policy ready");
        publish(
            policy,
            ctx,
            EventType::Normal,
            READY,
            "Reconcile",
            ready_message,
        )
        .await;
    }
    Ok(())
}

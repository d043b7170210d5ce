//! The pod webhooks: `/mutate/pods` injects the sidecar, `/validate/pods`
//! enforces the rules of governed pods. Inputs come from reflector caches
//! (AccessPolicies, MaskingRules) and one metadata read of the rendered
//! ConfigMap per injection; decisions come from [`crate::inject`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::pod::{ANNOTATION_CONFIG_HASH, LABEL_PROXIED, config_map_name};
use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::core::admission::{AdmissionResponse, Operation};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use super::metrics::WebhookMetrics;
use super::server::{Admission, Admit};
use crate::inject::{
    self, InjectSettings, Selection, inject, is_injected, json_patch_between, opted_out, select,
    validate_pod,
};

/// How long a request waits for the caches' first listing before it is
/// refused (the API server's call times out after 10 s).
const CACHE_WAIT: Duration = Duration::from_secs(5);

/// What both pod webhooks need.
pub struct PodContext {
    /// AccessPolicies of all namespaces.
    pub policies: Store<AccessPolicy>,
    /// MaskingRules of all namespaces.
    pub masking_rules: Store<MaskingRule>,
    /// Reads the rendered ConfigMaps' hash annotation.
    pub client: Client,
    /// How to inject.
    pub settings: InjectSettings,
    /// The operator's namespace, never governed.
    pub operator_namespace: String,
    /// Counters.
    pub metrics: WebhookMetrics,
}

impl PodContext {
    async fn caches_ready(&self) -> Result<(), String> {
        let wait = async {
            self.policies.wait_until_ready().await.ok();
            self.masking_rules.wait_until_ready().await.ok();
        };
        tokio::time::timeout(CACHE_WAIT, wait).await.map_err(|_| {
            "cardgate: the webhook has not finished loading AccessPolicies and MaskingRules yet; retry in a few seconds".to_string()
        })
    }

    fn policies_in(&self, namespace: &str) -> Vec<Arc<AccessPolicy>> {
        self.policies
            .state()
            .into_iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .collect()
    }

    fn masking_rules_in(&self, namespace: &str) -> Vec<MaskingRule> {
        self.masking_rules
            .state()
            .into_iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace))
            .map(|r| (*r).clone())
            .collect()
    }

    /// The rendered configuration's hash, if the ConfigMap exists yet (the
    /// pod then waits for it to appear before the sidecar starts).
    async fn config_hash(&self, namespace: &str, policy: &str) -> Result<Option<String>, String> {
        let name = config_map_name(policy);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let meta = api.get_metadata_opt(&name).await.map_err(|e| {
            format!("cardgate: cannot read ConfigMap {namespace}/{name} with the sidecar configuration ({e}); retry")
        })?;
        Ok(meta.and_then(|m| m.annotations().get(ANNOTATION_CONFIG_HASH).cloned()))
    }
}

/// Namespace of the request (the pod's own may be empty on create).
fn namespace_of(admission: &Admission<Pod>, pod: &Pod) -> String {
    admission
        .request
        .namespace
        .clone()
        .or_else(|| pod.namespace())
        .unwrap_or_default()
}

fn deny(response: AdmissionResponse, message: impl Into<String>) -> AdmissionResponse {
    let mut r = response.deny(message.into());
    r.result.code = 403;
    r.result.reason = "Forbidden".into();
    r
}

/// `/mutate/pods`: injects the sidecar into pods an AccessPolicy selects.
#[derive(Clone)]
pub struct PodInjector(pub Arc<PodContext>);

impl Admit for PodInjector {
    type Object = Pod;

    async fn admit(&self, admission: Admission<Pod>) -> AdmissionResponse {
        let ctx = &self.0;
        let response = AdmissionResponse::from(&admission.request);
        let (Operation::Create, Some(pod)) =
            (&admission.request.operation, &admission.request.object)
        else {
            return response;
        };
        let namespace = namespace_of(&admission, pod);
        if namespace == ctx.operator_namespace || opted_out(pod) || is_injected(pod) {
            return response;
        }
        if let Err(msg) = ctx.caches_ready().await {
            ctx.metrics.denied("mutate-pods");
            return deny(response, msg);
        }
        let policies = ctx.policies_in(&namespace);
        let selection = select(pod.labels(), policies.iter().map(|p| p.as_ref()));
        let policy = match selection {
            Selection::None => return response,
            Selection::One(p) => p,
            other => {
                ctx.metrics.denied("mutate-pods");
                return deny(response, other.problem().unwrap_or_default());
            }
        };
        let policy_name = policy.name_any();
        let hash = match ctx.config_hash(&namespace, &policy_name).await {
            Ok(h) => h,
            Err(msg) => {
                ctx.metrics.denied("mutate-pods");
                return deny(response, msg);
            }
        };
        let rules = ctx.masking_rules_in(&namespace);
        let result = inject(pod, policy, &rules, hash.as_deref(), &ctx.settings)
            .map_err(|e| e.to_string())
            .and_then(|injected| {
                let raw = admission.raw_object.as_ref().ok_or("cardgate: no object")?;
                let patch = json_patch_between(raw, pod, &injected).map_err(|e| e.to_string())?;
                Ok((injected, patch))
            });
        let (injected, patch) = match result {
            Ok(r) => r,
            Err(msg) => {
                ctx.metrics.denied("mutate-pods");
                return deny(response, msg);
            }
        };
        let mut response = match response.clone().with_patch(patch) {
            Ok(r) => r,
            Err(e) => return deny(response, format!("cardgate: cannot encode the patch: {e}")),
        };
        let transparent = injected_transparent_targets(&injected);
        if !transparent.is_empty() {
            response.warnings = Some(vec![format!(
                "cardgate: targets {} use transparent mode; their connection variables are left unchanged",
                transparent.join(", ")
            )]);
        }
        if !admission.request.dry_run {
            ctx.metrics.injections.inc();
            info!(
                namespace,
                pod = %pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default(),
                policy = %policy_name,
                "injected the cardgate sidecar"
            );
        }
        response
    }
}

fn injected_transparent_targets(pod: &Pod) -> Vec<String> {
    pod.annotations()
        .get(inject::ANNOTATION_INJECTED)
        .and_then(|a| serde_json::from_str::<inject::InjectedItems>(a).ok())
        .map(|i| i.transparent_targets)
        .unwrap_or_default()
}

/// `/validate/pods`: rejects governed pods that could get around the sidecar.
#[derive(Clone)]
pub struct PodValidator(pub Arc<PodContext>);

impl PodValidator {
    /// Problems of `pod`, or `Ok` for pods that are not governed.
    async fn problems(&self, namespace: &str, pod: &Pod) -> Result<BTreeSet<String>, String> {
        let ctx = &self.0;
        let label = pod.labels().get(LABEL_PROXIED).cloned();
        if label.is_none() && !is_injected(pod) && opted_out(pod) {
            return Ok(BTreeSet::new());
        }
        ctx.caches_ready().await?;
        let policies = ctx.policies_in(namespace);
        let governing: Vec<&AccessPolicy> = match &label {
            Some(name) => policies
                .iter()
                .filter(|p| p.name_any() == *name)
                .map(|p| p.as_ref())
                .collect(),
            None => match select(pod.labels(), policies.iter().map(|p| p.as_ref())) {
                Selection::None if !is_injected(pod) => return Ok(BTreeSet::new()),
                Selection::None => Vec::new(),
                Selection::One(p) => vec![p],
                Selection::Ambiguous(ps) => ps,
                invalid @ Selection::Invalid { .. } => {
                    return Err(invalid.problem().unwrap_or_default());
                }
            },
        };
        let rules = ctx.masking_rules_in(namespace);
        let mut problems = BTreeSet::new();
        let mut check = |policy: Option<&AccessPolicy>| {
            if let Err(p) = validate_pod(pod, policy, &rules, &ctx.settings) {
                problems.extend(p);
            }
        };
        if governing.is_empty() {
            check(None);
        }
        for policy in governing {
            check(Some(policy));
        }
        Ok(problems)
    }
}

impl Admit for PodValidator {
    type Object = Pod;

    async fn admit(&self, admission: Admission<Pod>) -> AdmissionResponse {
        let ctx = &self.0;
        let response = AdmissionResponse::from(&admission.request);
        let req = &admission.request;
        let (Operation::Create | Operation::Update, Some(pod)) = (&req.operation, &req.object)
        else {
            return response;
        };
        let namespace = namespace_of(&admission, pod);
        if namespace == ctx.operator_namespace {
            return response;
        }
        let mut problems = match self.problems(&namespace, pod).await {
            Ok(p) => p,
            Err(msg) => {
                ctx.metrics.denied("validate-pods");
                return deny(response, msg);
            }
        };
        // On update, only what the update introduces: a pod admitted before a
        // policy selected it must stay manageable (labels, ownerReferences).
        if let (Operation::Update, Some(old)) = (&req.operation, &req.old_object)
            && !problems.is_empty()
        {
            match self.problems(&namespace, old).await {
                Ok(before) => problems.retain(|p| !before.contains(p)),
                Err(msg) => warn!(error = %msg, "cannot evaluate the pod before the update"),
            }
        }
        if problems.is_empty() {
            return response;
        }
        ctx.metrics.denied("validate-pods");
        deny(
            response,
            problems.into_iter().collect::<Vec<_>>().join("\n"),
        )
    }
}

//! Sidecar injection and pod validation as pure functions.
//!
//! The admission webhook only gathers inputs (the pod, the AccessPolicy that
//! selects it, the policy's MaskingRules, the rendered ConfigMap's hash) and
//! turns results into AdmissionResponses; every decision about what a governed
//! pod looks like lives here, without IO, so it can be tested exhaustively.
//!
//! - [`select`]: which AccessPolicy governs a pod;
//! - [`inject()`]: the pod with the cardgate sidecar added;
//! - [`validate_pod`]: what a governed pod may not do;
//! - [`json_patch_between`]: the JSON Patch the webhook returns.

mod agent;
mod interception;
mod patch;
mod select;
mod sidecar;
mod validate;

use std::collections::BTreeMap;

use cardgate_crds::pod::{
    ANNOTATION_CONFIG_HASH, INIT_CONTAINER, LABEL_INJECT, LABEL_PROXIED, SIDECAR_CONTAINER,
};
use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use k8s_openapi::api::core::v1::{Pod, ResourceRequirements, Volume};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

pub use patch::json_patch_between;
pub use select::{Selection, select};
pub use validate::{governing_secrets, validate_pod};

/// Pod annotation listing what the injector changed, so people (and a later
/// operator version) can tell injected parts from the user's own.
pub const ANNOTATION_INJECTED: &str = "cardgate.dev/injected";

/// Prefix of every volume the injector adds; user volumes may not use it.
pub const VOLUME_PREFIX: &str = "cardgate-";

/// How the operator injects sidecars; filled from the operator's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct InjectSettings {
    /// Image of the cardgate sidecar.
    pub image: String,
    /// Pull policy of the sidecar image.
    pub image_pull_policy: String,
    /// Requests and limits of the sidecar container.
    pub resources: ResourceRequirements,
    /// Clusters older than 1.29 have no native sidecars: add the sidecar to
    /// `containers` instead of `initContainers` with `restartPolicy: Always`.
    pub legacy_sidecar: bool,
    /// Size limit of the sidecar's scratch volume (recordings, spooled audit).
    pub state_size_limit: Option<Quantity>,
    /// Lifetime requested for projected service-account tokens; the kubelet
    /// refreshes them before they expire.
    pub token_expiration_seconds: i64,
}

/// Why a pod cannot be injected; the message goes back to whoever created the
/// pod, so it says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// The pod has no spec (never sent by a real API server).
    #[error("cardgate: the pod has no spec")]
    NoSpec,
    /// Label values are at most 63 characters.
    #[error(
        "cardgate: AccessPolicy {policy:?} has a name longer than 63 characters, which cannot be used as the value of label {LABEL_PROXIED}; rename the policy"
    )]
    PolicyNameTooLong {
        /// The policy's name.
        policy: String,
    },
    /// The pod uses a name the injector needs.
    #[error(
        "cardgate: the pod already has a {what} named {name:?}; names starting with {VOLUME_PREFIX:?} and the container names {SIDECAR_CONTAINER:?} and {INIT_CONTAINER:?} are reserved for cardgate, rename it"
    )]
    ReservedName {
        /// "volume" or "container".
        what: &'static str,
        /// The conflicting name.
        name: String,
    },
    /// A container already mounts something where the injector mounts.
    #[error(
        "cardgate: container {container:?} already mounts a volume at {path}, where cardgate mounts the agent's token; move that mount"
    )]
    MountPathInUse {
        /// The container.
        container: String,
        /// The contested path.
        path: String,
    },
    /// A MaskingRule the policy lists does not exist (yet).
    #[error(
        "cardgate: AccessPolicy {policy:?} uses MaskingRule {rule:?}, which does not exist in this namespace; create it or remove it from spec.maskingRules"
    )]
    MissingMaskingRule {
        /// The policy.
        policy: String,
        /// The missing rule.
        rule: String,
    },
    /// A target has no port, so agents cannot be pointed at the sidecar.
    #[error(
        "cardgate: target {target:?} of AccessPolicy {policy:?} has no port; set service.port, external.port or listenPort"
    )]
    TargetWithoutPort {
        /// The policy.
        policy: String,
        /// The target.
        target: String,
    },
    /// The hmac key and a target's credentials would share one directory.
    #[error(
        "cardgate: AccessPolicy {policy:?} has a target named \"hmac\" and a MaskingRule with action hmac; both would use {dir}; rename the target"
    )]
    HmacDirectoryClash {
        /// The policy.
        policy: String,
        /// The shared directory.
        dir: String,
    },
}

/// What the injector changed, recorded in [`ANNOTATION_INJECTED`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InjectedItems {
    /// `initContainers` (native sidecar) or `containers` (legacy clusters).
    pub sidecar_in: String,
    /// Volumes added.
    pub volumes: Vec<String>,
    /// Containers that got the agent token (and connection environment).
    pub agent_containers: Vec<String>,
    /// Environment variables set on the agent containers.
    pub env: Vec<String>,
    /// Volumes removed: the API-server token the ServiceAccount admission
    /// plugin added before the webhook ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed_volumes: Vec<String>,
    /// Targets reached by transparent interception: their connection
    /// environment is not rewritten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transparent_targets: Vec<String>,
}

/// Whether the pod already went through the injector (or was written with a
/// sidecar): such pods are left as they are.
pub fn is_injected(pod: &Pod) -> bool {
    sidecar::find_sidecar(pod).is_some()
}

/// Whether the pod opted out with `cardgate.dev/inject=false`.
pub fn opted_out(pod: &Pod) -> bool {
    pod.labels().get(LABEL_INJECT).map(String::as_str) == Some("false")
}

/// Returns `pod` as the governed pod it must become under `policy`: the
/// cardgate sidecar with its configuration, credentials and tokens; the agent
/// containers with their own token, pointed at the sidecar (explicit mode)
/// or intercepted by the `cardgate-init` container's iptables rules
/// (transparent mode); no API-server token outside the sidecar. `masking_rules` are the
/// MaskingRules of the policy's namespace; `config_hash` is the rendered
/// ConfigMap's hash when it exists. A pod that already has the sidecar is
/// returned unchanged, so re-invocation is a no-op.
pub fn inject(
    pod: &Pod,
    policy: &AccessPolicy,
    masking_rules: &[MaskingRule],
    config_hash: Option<&str>,
    settings: &InjectSettings,
) -> Result<Pod, InjectError> {
    if is_injected(pod) {
        return Ok(pod.clone());
    }
    let policy_name = policy.name_any();
    if policy_name.len() > 63 {
        return Err(InjectError::PolicyNameTooLong {
            policy: policy_name,
        });
    }
    let mut out = pod.clone();
    let spec = out.spec.as_mut().ok_or(InjectError::NoSpec)?;
    check_reserved_names(spec)?;

    let plan = sidecar::SidecarPlan::new(policy, masking_rules, settings)?;
    let env = agent::agent_env(policy)?;

    let removed_volumes = agent::remove_api_token(spec);
    spec.automount_service_account_token = Some(false);

    let agents = agent::inject_agents(spec, &env)?;

    let mut volumes: Vec<Volume> = spec.volumes.take().unwrap_or_default();
    volumes.extend(plan.volumes.iter().cloned());
    volumes.push(agent::agent_token_volume(settings));
    let volume_names = plan
        .volumes
        .iter()
        .map(|v| v.name.clone())
        .chain([agent::AGENT_TOKEN_VOLUME.to_string()])
        .collect();
    spec.volumes = Some(volumes);

    // Transparent targets (`env.transparent_targets`) get no environment;
    // the interception init container runs first instead, so the rules are
    // in place before the sidecar or any agent starts.
    let sidecar_in = if settings.legacy_sidecar {
        spec.containers.push(plan.container(false));
        "containers"
    } else {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, plan.container(true));
        "initContainers"
    };
    if !env.transparent_targets.is_empty() {
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, interception::init_container(settings));
    }

    let items = InjectedItems {
        sidecar_in: sidecar_in.to_string(),
        volumes: volume_names,
        agent_containers: agents,
        env: env.names(),
        removed_volumes,
        transparent_targets: env.transparent_targets.clone(),
    };
    let meta = &mut out.metadata;
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(LABEL_PROXIED.to_string(), policy_name);
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    if let Some(hash) = config_hash {
        annotations.insert(ANNOTATION_CONFIG_HASH.to_string(), hash.to_string());
    }
    annotations.insert(
        ANNOTATION_INJECTED.to_string(),
        serde_json::to_string(&items).expect("plain strings serialize"),
    );
    Ok(out)
}

fn check_reserved_names(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), InjectError> {
    if let Some(v) = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name.starts_with(VOLUME_PREFIX))
    {
        return Err(InjectError::ReservedName {
            what: "volume",
            name: v.name.clone(),
        });
    }
    if let Some(c) = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == INIT_CONTAINER)
    {
        return Err(InjectError::ReservedName {
            what: "container",
            name: c.name.clone(),
        });
    }
    Ok(())
}

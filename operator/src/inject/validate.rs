//! What a governed pod may not do.
//!
//! The sidecar is the agent's only path to cardholder data only while the
//! agent cannot change the pod's network rules, impersonate the sidecar's UID
//! (exempt from interception), look into the sidecar's processes, or read the
//! credentials the sidecar holds. Every rule here closes one of those doors;
//! each message names the field to change.

use std::collections::{BTreeMap, BTreeSet};

use cardgate_crds::pod::{
    AGENT_TOKEN_FILE, COLLECTOR_AUDIENCE, INIT_CONTAINER, LABEL_PROXIED, SIDECAR_CONTAINER,
    SIDECAR_UID, config_map_name,
};
use cardgate_crds::v1alpha1::{AccessPolicy, MaskActionType, MaskingRule};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, EnvVar, EphemeralContainer, Pod, PodSecurityContext, SecurityContext,
    Volume, VolumeMount,
};
use kube::ResourceExt;

use super::agent::AGENT_TOKEN_VOLUME;
use super::interception;
use super::sidecar::{CONFIG_VOLUME, find_sidecar, repository};
use super::{InjectSettings, VOLUME_PREFIX};

/// Capabilities that let a container get around the sidecar, with the reason
/// given to the user.
const FORBIDDEN_CAPABILITIES: [(&str, &str); 3] = [
    (
        "NET_ADMIN",
        "governed agents may not change the pod's network rules",
    ),
    (
        "NET_RAW",
        "governed agents may not open raw sockets that bypass the sidecar",
    ),
    (
        "SYS_ADMIN",
        "governed agents may not administer the pod's namespaces and mounts",
    ),
];

/// Secrets only the sidecar may read: the targets' credentials and the keys
/// of the policy's keyed (hmac) masking.
pub fn governing_secrets(policy: &AccessPolicy, masking_rules: &[MaskingRule]) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = policy
        .spec
        .targets
        .iter()
        .filter_map(|t| t.credentials_secret_ref.as_ref().map(|c| c.name.clone()))
        .collect();
    for rule in masking_rules
        .iter()
        .filter(|r| policy.spec.masking_rules.contains(&r.name_any()))
    {
        if rule.spec.action.kind == MaskActionType::Hmac
            && let Some(key) = &rule.spec.action.hmac_key_secret_ref
        {
            names.insert(key.name.clone());
        }
    }
    names
}

/// Checks a governed pod: one carrying the `cardgate.dev/proxied` label or
/// the sidecar, or selected by `policy`. Returns every problem, each a
/// complete message for the pod's author.
pub fn validate_pod(
    pod: &Pod,
    policy: Option<&AccessPolicy>,
    masking_rules: &[MaskingRule],
    settings: &InjectSettings,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Err(vec!["cardgate: the pod has no spec".into()]);
    };
    let secrets = policy
        .map(|p| governing_secrets(p, masking_rules))
        .unwrap_or_default();
    let volumes: BTreeMap<&str, &Volume> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| (v.name.as_str(), v))
        .collect();
    let sidecar = find_sidecar(pod);

    check_identity(pod, policy, sidecar, settings, &mut problems);

    if spec.host_network == Some(true) {
        problems.push("cardgate: the pod uses hostNetwork; remove spec.hostNetwork — a governed pod needs its own network namespace so its traffic passes through the sidecar".into());
    }
    if spec.host_pid == Some(true) {
        problems.push("cardgate: the pod uses hostPID; remove spec.hostPID — governed agents may not see or signal the node's processes, the sidecar's included".into());
    }
    if spec.share_process_namespace == Some(true) {
        problems.push("cardgate: the pod sets shareProcessNamespace; remove it — agents could read the sidecar's memory and credentials through /proc".into());
    }

    let pod_sc = spec.security_context.as_ref();
    let sidecar_repository = repository(&settings.image);
    // The genuine interception init container is the one container allowed
    // NET_ADMIN and NET_RAW; anything else named like it is an agent.
    let mut genuine_init = |c: &Container| match interception::impostor(c, sidecar_repository) {
        None => true,
        Some(why) => {
            problems.push(format!(
                "cardgate: container {INIT_CONTAINER:?} {why}; remove the container and let the injector add it"
            ));
            false
        }
    };
    let init: Vec<&Container> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name != SIDECAR_CONTAINER)
        .filter(|c| c.name != INIT_CONTAINER || !genuine_init(c))
        .collect();
    for c in spec.containers.iter().map(|c| c.name.as_str()).chain(
        spec.ephemeral_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str()),
    ) {
        if c == INIT_CONTAINER {
            problems.push(format!(
                "cardgate: container {INIT_CONTAINER:?} is not an init container; rename it — the name is reserved for the interception step the injector adds"
            ));
        }
    }
    let agents = init
        .into_iter()
        .chain(
            spec.containers
                .iter()
                .filter(|c| c.name != SIDECAR_CONTAINER),
        )
        .map(View::from)
        .chain(spec.ephemeral_containers.iter().flatten().map(View::from));
    let check = AgentCheck {
        pod_sc,
        volumes: &volumes,
        secrets: &secrets,
        injected: sidecar.is_some(),
    };
    for agent in agents {
        check.container(&agent, &mut problems);
    }

    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The label, the policy and the sidecar must agree, and the sidecar must be
/// the one the injector adds.
fn check_identity(
    pod: &Pod,
    policy: Option<&AccessPolicy>,
    sidecar: Option<&Container>,
    settings: &InjectSettings,
    problems: &mut Vec<String>,
) {
    let label = pod.labels().get(LABEL_PROXIED);
    match (label, sidecar) {
        (Some(value), None) => problems.push(format!(
            "cardgate: the pod carries label {LABEL_PROXIED}={value} but has no {SIDECAR_CONTAINER} container; remove the label — only the cardgate injector sets it, on pods it injects"
        )),
        (Some(value), Some(_)) => {
            if let Some(p) = policy
                && p.name_any() != *value
            {
                problems.push(format!(
                    "cardgate: the pod is governed by AccessPolicy {:?} but carries label {LABEL_PROXIED}={value}; remove the label and the sidecar and let the injector add them",
                    p.name_any()
                ));
            }
            let config = pod
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .find(|v| v.name == CONFIG_VOLUME)
                .and_then(|v| v.config_map.as_ref())
                .map(|c| c.name.as_str());
            let expected = config_map_name(value);
            if config != Some(expected.as_str()) {
                problems.push(format!(
                    "cardgate: the pod carries label {LABEL_PROXIED}={value} but its {SIDECAR_CONTAINER} is not configured from ConfigMap {expected:?}; remove the label and the sidecar and let the injector add them"
                ));
            }
        }
        (None, Some(_)) | (None, None) => {}
    }
    let Some(sidecar) = sidecar else { return };
    let want = repository(&settings.image);
    let image = sidecar.image.as_deref().unwrap_or("");
    if repository(image) != want {
        problems.push(format!(
            "cardgate: container {SIDECAR_CONTAINER:?} runs image {image:?}, which is not the cardgate sidecar ({want}); remove the container and let the injector add it"
        ));
    }
    let sc = sidecar.security_context.as_ref();
    let genuine = sc.and_then(|s| s.run_as_user) == Some(SIDECAR_UID)
        && sc.and_then(|s| s.privileged) != Some(true)
        && sc.and_then(|s| s.allow_privilege_escalation) == Some(false)
        && sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref())
            .is_none_or(Vec::is_empty);
    if !genuine {
        problems.push(format!(
            "cardgate: container {SIDECAR_CONTAINER:?} does not have the security context the injector gives it (UID {SIDECAR_UID}, unprivileged, no added capabilities); remove the container and let the injector add it"
        ));
    }
}

/// The fields the rules read, shared by containers and ephemeral containers.
struct View<'a> {
    name: &'a str,
    security_context: Option<&'a SecurityContext>,
    volume_mounts: &'a [VolumeMount],
    env: &'a [EnvVar],
    env_from: &'a [EnvFromSource],
}

impl<'a> From<&'a Container> for View<'a> {
    fn from(c: &'a Container) -> Self {
        View {
            name: &c.name,
            security_context: c.security_context.as_ref(),
            volume_mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            env: c.env.as_deref().unwrap_or_default(),
            env_from: c.env_from.as_deref().unwrap_or_default(),
        }
    }
}

impl<'a> From<&'a EphemeralContainer> for View<'a> {
    fn from(c: &'a EphemeralContainer) -> Self {
        View {
            name: &c.name,
            security_context: c.security_context.as_ref(),
            volume_mounts: c.volume_mounts.as_deref().unwrap_or_default(),
            env: c.env.as_deref().unwrap_or_default(),
            env_from: c.env_from.as_deref().unwrap_or_default(),
        }
    }
}

struct AgentCheck<'a> {
    pod_sc: Option<&'a PodSecurityContext>,
    volumes: &'a BTreeMap<&'a str, &'a Volume>,
    secrets: &'a BTreeSet<String>,
    injected: bool,
}

impl AgentCheck<'_> {
    fn container(&self, c: &View<'_>, problems: &mut Vec<String>) {
        let name = c.name;
        let sc = c.security_context;
        if sc.and_then(|s| s.privileged) == Some(true) {
            problems.push(format!(
                "cardgate: container {name:?} is privileged; remove securityContext.privileged — governed agents may not change the pod's network rules or reach the sidecar's files"
            ));
        }
        for cap in sc
            .and_then(|s| s.capabilities.as_ref())
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
        {
            let bare = cap.trim().to_ascii_uppercase();
            let bare = bare.strip_prefix("CAP_").unwrap_or(&bare);
            if bare == "ALL" {
                problems.push(format!(
                    "cardgate: container {name:?} adds capability ALL; list only the capabilities it needs, without NET_ADMIN, NET_RAW or SYS_ADMIN — governed agents may not change the pod's network rules"
                ));
            } else if let Some((cap, why)) = FORBIDDEN_CAPABILITIES.iter().find(|(c, _)| *c == bare)
            {
                problems.push(format!(
                    "cardgate: container {name:?} adds capability {cap}; remove it — {why}"
                ));
            }
        }
        match (
            sc.and_then(|s| s.run_as_user),
            self.pod_sc.and_then(|s| s.run_as_user),
        ) {
            (Some(SIDECAR_UID), _) => problems.push(format!(
                "cardgate: container {name:?} runs as UID {SIDECAR_UID}, the cardgate sidecar's; set securityContext.runAsUser to another UID — traffic from UID {SIDECAR_UID} is exempt from interception"
            )),
            (None, Some(SIDECAR_UID)) => problems.push(format!(
                "cardgate: container {name:?} runs as UID {SIDECAR_UID}, the cardgate sidecar's, inherited from the pod's securityContext.runAsUser; set another UID there or on the container — traffic from UID {SIDECAR_UID} is exempt from interception"
            )),
            _ => {}
        }
        for mount in c.volume_mounts {
            self.mount(name, mount, problems);
        }
        for var in c.env {
            if let Some(secret) = var
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .filter(|s| self.secrets.contains(&s.name))
            {
                problems.push(format!(
                    "cardgate: container {name:?} reads Secret {:?} into env {}; remove it — only the cardgate sidecar holds the targets' credentials",
                    secret.name, var.name
                ));
            }
        }
        for from in c.env_from {
            if let Some(secret) = from
                .secret_ref
                .as_ref()
                .filter(|s| self.secrets.contains(&s.name))
            {
                problems.push(format!(
                    "cardgate: container {name:?} loads Secret {:?} with envFrom; remove it — only the cardgate sidecar holds the targets' credentials",
                    secret.name
                ));
            }
        }
    }

    fn mount(&self, container: &str, mount: &VolumeMount, problems: &mut Vec<String>) {
        let Some(volume) = self.volumes.get(mount.name.as_str()) else {
            return;
        };
        let vname = &volume.name;
        if vname.starts_with(VOLUME_PREFIX) && vname != AGENT_TOKEN_VOLUME {
            problems.push(format!(
                "cardgate: container {container:?} mounts volume {vname:?}, which belongs to the cardgate sidecar; remove the mount — only the sidecar holds credentials and API tokens"
            ));
            return;
        }
        let projected = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten());
        let secrets = volume
            .secret
            .iter()
            .filter_map(|s| s.secret_name.as_deref())
            .chain(
                projected
                    .clone()
                    .filter_map(|s| s.secret.as_ref().map(|s| s.name.as_str())),
            );
        for secret in secrets.filter(|s| self.secrets.contains(*s)) {
            problems.push(format!(
                "cardgate: container {container:?} mounts Secret {secret:?} (volume {vname:?}); remove the mount — only the cardgate sidecar holds the targets' credentials"
            ));
        }
        let api_token = projected
            .filter_map(|s| s.service_account_token.as_ref())
            .any(|t| opens_the_api_or_collector(t.audience.as_deref()));
        if self.injected && api_token {
            problems.push(format!(
                "cardgate: container {container:?} mounts a service-account token (volume {vname:?}); remove the mount and keep automountServiceAccountToken: false — governed agents use only the cardgate token at {AGENT_TOKEN_FILE}"
            ));
        }
    }
}

/// Whether a projected token with this audience is accepted by the API
/// server (no audience, or the usual `https://kubernetes.default.svc…`
/// API audience) or by the operator's audit collector. Tokens for other
/// audiences (Vault, cloud workload identity) open neither and stay allowed.
fn opens_the_api_or_collector(audience: Option<&str>) -> bool {
    match audience {
        None => true,
        Some(a) => a == COLLECTOR_AUDIENCE || a.contains("kubernetes.default.svc"),
    }
}

#[cfg(test)]
mod tests {
    use super::opens_the_api_or_collector;

    #[test]
    fn api_and_collector_tokens_are_recognised() {
        assert!(opens_the_api_or_collector(None));
        assert!(opens_the_api_or_collector(Some("cardgate-collector")));
        assert!(opens_the_api_or_collector(Some(
            "https://kubernetes.default.svc.cluster.local"
        )));
        assert!(!opens_the_api_or_collector(Some("cardgate-sidecar")));
        assert!(!opens_the_api_or_collector(Some("vault")));
        assert!(!opens_the_api_or_collector(Some("sts.amazonaws.com")));
    }
}

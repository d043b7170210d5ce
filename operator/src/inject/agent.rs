//! What the agent containers get: their own token for the sidecar, the
//! connection environment that points unmodified clients at the sidecar
//! (explicit mode), and no API-server token.
//!
//! Transparent targets are reached through iptables interception instead of
//! environment variables; [`AgentEnv::transparent_targets`] lists them, and
//! when it is not empty the interception init container (`cardgate-init`)
//! is added.

use cardgate_crds::pod::{AGENT_TOKEN_AUDIENCE, AGENT_TOKEN_FILE, ENV_AGENT_TOKEN_FILE};
use cardgate_crds::v1alpha1::{AccessPolicy, Protocol, Target};
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, Volume, VolumeMount};
use kube::ResourceExt;

use super::sidecar::{dir_of, projected, token_source};
use super::{InjectError, InjectSettings};

/// Volume with the agent's token (audience: the sidecar only).
pub(super) const AGENT_TOKEN_VOLUME: &str = "cardgate-agent-token";
/// Name prefix of the API-server token volume the ServiceAccount admission
/// plugin adds before webhooks run.
pub(super) const KUBE_API_ACCESS_PREFIX: &str = "kube-api-access-";
/// The loopback address the sidecar listens on in explicit mode.
const LOOPBACK: &str = "127.0.0.1";

/// Environment set on every agent container.
pub(super) struct AgentEnv {
    vars: Vec<(String, String)>,
    /// Targets reached by transparent interception (no environment).
    pub transparent_targets: Vec<String>,
}

impl AgentEnv {
    /// Names of the variables, in the order they are set.
    pub fn names(&self) -> Vec<String> {
        self.vars.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// Whether a target is reached by transparent interception.
pub(super) fn is_transparent(policy: &AccessPolicy, target: &Target) -> bool {
    target.transparent.unwrap_or(policy.spec.transparent)
}

/// The agent environment for `policy`: the token file always; for explicit
/// targets `PGHOST`/`PGPORT`/`PGDATABASE` (first postgres target) and one URL
/// per `connectionEnv` name.
pub(super) fn agent_env(policy: &AccessPolicy) -> Result<AgentEnv, InjectError> {
    let mut vars = vec![(
        ENV_AGENT_TOKEN_FILE.to_string(),
        AGENT_TOKEN_FILE.to_string(),
    )];
    let mut transparent_targets = Vec::new();
    let mut pg_set = false;
    for target in &policy.spec.targets {
        if is_transparent(policy, target) {
            transparent_targets.push(target.name.clone());
            continue;
        }
        let port = target
            .listen_port
            .or_else(|| target.port())
            .ok_or_else(|| InjectError::TargetWithoutPort {
                policy: policy.name_any(),
                target: target.name.clone(),
            })?;
        if target.protocol == Protocol::Postgres && !pg_set {
            pg_set = true;
            vars.push(("PGHOST".into(), LOOPBACK.into()));
            vars.push(("PGPORT".into(), port.to_string()));
            if let Some(db) = &target.database {
                vars.push(("PGDATABASE".into(), db.clone()));
            }
        }
        let scheme = match target.protocol {
            Protocol::Postgres => "postgresql",
            Protocol::Http | Protocol::Kubernetes => "http",
        };
        let path = match (&target.database, target.protocol) {
            (Some(db), Protocol::Postgres) => format!("/{db}"),
            _ => String::new(),
        };
        for name in &target.connection_env {
            let url = format!("{scheme}://{LOOPBACK}:{port}{path}");
            match vars.iter_mut().find(|(n, _)| n == name) {
                Some(existing) => existing.1 = url,
                None => vars.push((name.clone(), url)),
            }
        }
    }
    Ok(AgentEnv {
        vars,
        transparent_targets,
    })
}

/// The agent token volume: a projected token only the sidecar accepts.
pub(super) fn agent_token_volume(settings: &InjectSettings) -> Volume {
    projected(
        AGENT_TOKEN_VOLUME,
        vec![token_source(
            Some(AGENT_TOKEN_AUDIENCE),
            AGENT_TOKEN_FILE,
            settings,
        )],
    )
}

/// Whether a volume is the API-server token the ServiceAccount admission
/// plugin adds (`kube-api-access-*`, a projected token for the API server).
pub(super) fn is_api_access_volume(volume: &Volume) -> bool {
    volume.name.starts_with(KUBE_API_ACCESS_PREFIX)
        && volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| {
                s.service_account_token
                    .as_ref()
                    .is_some_and(|t| t.audience.is_none())
            })
}

/// Removes the API-server token volume the ServiceAccount admission plugin
/// added (it runs before webhooks, so `automountServiceAccountToken: false`
/// alone is too late) and every mount of it. Returns the removed volumes.
pub(super) fn remove_api_token(spec: &mut PodSpec) -> Vec<String> {
    let Some(volumes) = spec.volumes.as_mut() else {
        return Vec::new();
    };
    let removed: Vec<String> = volumes
        .iter()
        .filter(|v| is_api_access_volume(v))
        .map(|v| v.name.clone())
        .collect();
    if removed.is_empty() {
        return removed;
    }
    volumes.retain(|v| !removed.contains(&v.name));
    if volumes.is_empty() {
        spec.volumes = None;
    }
    let strip = |mounts: &mut Option<Vec<VolumeMount>>| {
        if let Some(m) = mounts.as_mut() {
            m.retain(|m| !removed.contains(&m.name));
            if m.is_empty() {
                *mounts = None;
            }
        }
    };
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        strip(&mut c.volume_mounts);
    }
    for c in spec.ephemeral_containers.iter_mut().flatten() {
        strip(&mut c.volume_mounts);
    }
    removed
}

/// Gives every init and regular container (all agent code) the agent token
/// and the connection environment. Returns the containers changed.
pub(super) fn inject_agents(
    spec: &mut PodSpec,
    env: &AgentEnv,
) -> Result<Vec<String>, InjectError> {
    let token_dir = dir_of(AGENT_TOKEN_FILE);
    let mut names = Vec::new();
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        inject_agent(c, env, &token_dir)?;
        names.push(c.name.clone());
    }
    Ok(names)
}

fn inject_agent(c: &mut Container, env: &AgentEnv, token_dir: &str) -> Result<(), InjectError> {
    let mounts = c.volume_mounts.get_or_insert_with(Vec::new);
    if mounts
        .iter()
        .any(|m| m.mount_path.trim_end_matches('/') == token_dir)
    {
        return Err(InjectError::MountPathInUse {
            container: c.name.clone(),
            path: token_dir.to_string(),
        });
    }
    mounts.push(VolumeMount {
        name: AGENT_TOKEN_VOLUME.into(),
        mount_path: token_dir.to_string(),
        read_only: Some(true),
        ..Default::default()
    });
    let vars = c.env.get_or_insert_with(Vec::new);
    for (name, value) in &env.vars {
        let var = EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            value_from: None,
        };
        match vars.iter_mut().find(|v| v.name == *name) {
            Some(existing) => *existing = var,
            None => vars.push(var),
        }
    }
    Ok(())
}

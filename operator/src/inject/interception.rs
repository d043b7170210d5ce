//! The init container of transparent mode, `cardgate-init`: it runs
//! `cardgate-sidecar init`, which installs the pod's iptables rules (agent
//! connections to transparent targets go to the sidecar; every other packet
//! from agents to a target's addresses is dropped) and exits before any
//! other container starts.
//!
//! It is the only container of a governed pod with NET_ADMIN and NET_RAW,
//! and it runs as root because iptables needs those capabilities in its
//! *effective* set: Kubernetes grants added capabilities to UID 0 only (it
//! has no ambient capabilities for other UIDs). Everything else is as tight
//! as the sidecar's. Since the validating webhook refuses those capabilities
//! to every other container, it also checks that a container named
//! `cardgate-init` is exactly this one, so nothing can pose as it.

use cardgate_crds::pod::{CONFIG_DIR, CONFIG_FILE, INIT_CONTAINER};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, SeccompProfile, SecurityContext, VolumeMount,
};

use super::InjectSettings;
use super::sidecar::{CONFIG_VOLUME, repository};

/// The only capabilities the init container adds.
const CAPABILITIES: [&str; 2] = ["NET_ADMIN", "NET_RAW"];

/// The arguments of the init container: fixed, so the webhook can tell it
/// apart from anything else.
fn args() -> Vec<String> {
    vec!["init".into(), "--config".into(), CONFIG_FILE.into()]
}

/// The init container, placed before the sidecar in `initContainers`.
pub(super) fn init_container(settings: &InjectSettings) -> Container {
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        args: Some(args()),
        resources: Some(settings.resources.clone()),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                drop: Some(vec!["ALL".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: CONFIG_VOLUME.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// Why a container named `cardgate-init` is not the injector's, or `None`
/// when it is: the sidecar image (any tag), the fixed arguments and no
/// command, no environment, only the configuration mounted read-only, no
/// capabilities beyond NET_ADMIN and NET_RAW, unprivileged, and an ordinary
/// init container that runs to completion.
pub(super) fn impostor(c: &Container, sidecar_repository: &str) -> Option<String> {
    let repository = repository(c.image.as_deref().unwrap_or(""));
    if repository != sidecar_repository {
        return Some(format!(
            "runs image {:?}, which is not the cardgate sidecar ({sidecar_repository})",
            c.image.as_deref().unwrap_or("")
        ));
    }
    if c.command.is_some() || c.args.as_ref() != Some(&args()) {
        return Some(format!(
            "does not run exactly `cardgate-sidecar {}`",
            args().join(" ")
        ));
    }
    if c.env.as_ref().is_some_and(|e| !e.is_empty())
        || c.env_from.as_ref().is_some_and(|e| !e.is_empty())
    {
        return Some("sets environment variables".into());
    }
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    let config_only = mounts.iter().all(|m| {
        m.name == CONFIG_VOLUME && m.mount_path == CONFIG_DIR && m.read_only == Some(true)
    });
    if !config_only || c.volume_devices.as_ref().is_some_and(|d| !d.is_empty()) {
        return Some(format!(
            "mounts more than the configuration (volume {CONFIG_VOLUME:?} at {CONFIG_DIR}, read-only)"
        ));
    }
    if c.restart_policy.is_some() {
        return Some("sets restartPolicy; it must run once and exit".into());
    }
    let sc = c.security_context.as_ref();
    let caps_ok = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.as_ref())
        .into_iter()
        .flatten()
        .all(|cap| {
            let bare = cap.trim().to_ascii_uppercase();
            CAPABILITIES.contains(&bare.strip_prefix("CAP_").unwrap_or(&bare))
        });
    let unprivileged = sc.and_then(|s| s.privileged) != Some(true)
        && sc.and_then(|s| s.allow_privilege_escalation) == Some(false);
    if !caps_ok || !unprivileged {
        return Some(
            "does not have the security context the injector gives it (unprivileged, no privilege escalation, no capabilities but NET_ADMIN and NET_RAW)".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> InjectSettings {
        InjectSettings {
            image: "ghcr.io/cardgate/cardgate-sidecar:0.1.0".into(),
            image_pull_policy: "IfNotPresent".into(),
            resources: Default::default(),
            legacy_sidecar: false,
            state_size_limit: None,
            token_expiration_seconds: 3600,
        }
    }

    const REPO: &str = "ghcr.io/cardgate/cardgate-sidecar";

    #[test]
    fn the_injected_container_is_genuine() {
        assert_eq!(impostor(&init_container(&settings()), REPO), None);
        let mut older = init_container(&settings());
        older.image = Some(format!("{REPO}:0.0.9"));
        assert_eq!(impostor(&older, REPO), None, "the tag is not compared");
    }

    #[test]
    fn every_change_that_could_run_other_code_or_keep_the_capabilities_is_an_impostor() {
        type Change = fn(&mut Container);
        let changes: Vec<(&str, Change)> = vec![
            ("image", |c| {
                c.image = Some("docker.io/attacker/tools:1".into())
            }),
            ("command", |c| c.command = Some(vec!["/bin/sh".into()])),
            ("args", |c| {
                c.args = Some(vec!["init".into(), "--cleanup".into()])
            }),
            ("env", |c| {
                c.env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
                    name: "LD_PRELOAD".into(),
                    value: Some("/x.so".into()),
                    ..Default::default()
                }])
            }),
            ("mounts", |c| {
                c.volume_mounts.as_mut().unwrap().push(VolumeMount {
                    name: "scripts".into(),
                    mount_path: "/scripts".into(),
                    ..Default::default()
                })
            }),
            ("config mount writable", |c| {
                c.volume_mounts.as_mut().unwrap()[0].read_only = None
            }),
            ("restartable", |c| c.restart_policy = Some("Always".into())),
            ("privileged", |c| {
                c.security_context.as_mut().unwrap().privileged = Some(true)
            }),
            ("escalation", |c| {
                c.security_context
                    .as_mut()
                    .unwrap()
                    .allow_privilege_escalation = None
            }),
            ("more capabilities", |c| {
                c.security_context
                    .as_mut()
                    .unwrap()
                    .capabilities
                    .as_mut()
                    .unwrap()
                    .add
                    .as_mut()
                    .unwrap()
                    .push("SYS_ADMIN".into())
            }),
        ];
        for (what, change) in changes {
            let mut c = init_container(&settings());
            change(&mut c);
            assert!(impostor(&c, REPO).is_some(), "{what} was accepted");
        }
    }
}

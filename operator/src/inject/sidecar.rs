//! The sidecar container and the volumes only it mounts.
//!
//! Paths and names come from `cardgate_crds::pod`, the contract with the
//! renderer (which writes a configuration that assumes these mounts) and the
//! sidecar (which reads them).

use std::path::Path;

use cardgate_crds::pod::{
    ADMIN_PORT, API_CA_FILE, API_TOKEN_FILE, COLLECTOR_AUDIENCE, COLLECTOR_TOKEN_FILE, CONFIG_DIR,
    CONFIG_FILE, CONFIG_KEY, CREDENTIALS_DIR, ENV_NODE_NAME, ENV_POD_NAME, ENV_POD_NAMESPACE,
    ENV_POD_SERVICE_ACCOUNT, ENV_POD_UID, SIDECAR_CONTAINER, SIDECAR_UID, STATE_DIR,
    config_map_name,
};
use cardgate_crds::v1alpha1::{AccessPolicy, MaskActionType, MaskingRule, SecretKeyRef};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod,
    Probe, ProjectedVolumeSource, SeccompProfile, SecretProjection, SecretVolumeSource,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::{InjectError, InjectSettings};

/// Volume with the rendered configuration.
pub(super) const CONFIG_VOLUME: &str = "cardgate-config";
/// Volume with the API-server token and the cluster CA.
pub(super) const KUBE_API_VOLUME: &str = "cardgate-kube-api";
/// Volume with the collector token.
pub(super) const COLLECTOR_VOLUME: &str = "cardgate-collector-token";
/// Volume with the hmac key of keyed masking.
pub(super) const HMAC_VOLUME: &str = "cardgate-hmac-key";
/// Scratch volume.
pub(super) const STATE_VOLUME: &str = "cardgate-state";
/// Prefix of the per-target credential volumes.
pub(super) const CREDENTIALS_VOLUME_PREFIX: &str = "cardgate-cred-";
/// Name of the ConfigMap every namespace has with the cluster's CA.
const KUBE_ROOT_CA: &str = "kube-root-ca.crt";

/// The sidecar's mounts, computed once from the policy.
pub(super) struct SidecarPlan {
    /// Volumes to add to the pod (all mounted by the sidecar only).
    pub volumes: Vec<Volume>,
    mounts: Vec<VolumeMount>,
    settings: InjectSettings,
}

impl SidecarPlan {
    pub fn new(
        policy: &AccessPolicy,
        masking_rules: &[MaskingRule],
        settings: &InjectSettings,
    ) -> Result<Self, InjectError> {
        let policy_name = policy.name_any();
        let mut plan = SidecarPlan {
            volumes: Vec::new(),
            mounts: Vec::new(),
            settings: settings.clone(),
        };
        plan.add(
            Volume {
                name: CONFIG_VOLUME.into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: config_map_name(&policy_name),
                    items: Some(vec![KeyToPath {
                        key: CONFIG_KEY.into(),
                        path: file_name(CONFIG_FILE),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
            CONFIG_DIR,
        );
        for target in &policy.spec.targets {
            let mut sources = Vec::new();
            if let Some(creds) = &target.credentials_secret_ref {
                sources.push(secret_source(
                    &creds.name,
                    &[
                        (
                            creds.username_key.as_deref().unwrap_or("username"),
                            "username",
                        ),
                        (
                            creds.password_key.as_deref().unwrap_or("password"),
                            "password",
                        ),
                    ],
                ));
            }
            if let Some(ca) = target.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref()) {
                sources.push(secret_source(&ca.name, &[(ca.key.as_str(), "ca.crt")]));
            }
            if sources.is_empty() {
                continue;
            }
            plan.add(
                projected(&credentials_volume_name(&target.name), sources),
                &format!("{CREDENTIALS_DIR}/{}", target.name),
            );
        }
        if let Some(key) = hmac_key(policy, masking_rules)? {
            if policy.spec.targets.iter().any(|t| t.name == "hmac") {
                return Err(InjectError::HmacDirectoryClash {
                    policy: policy_name,
                    dir: format!("{CREDENTIALS_DIR}/hmac"),
                });
            }
            plan.add(
                Volume {
                    name: HMAC_VOLUME.into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(key.name.clone()),
                        items: Some(vec![KeyToPath {
                            key: key.key.clone(),
                            path: "key".into(),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                &format!("{CREDENTIALS_DIR}/hmac"),
            );
        }
        plan.add(
            projected(
                KUBE_API_VOLUME,
                vec![
                    token_source(None, API_TOKEN_FILE, settings),
                    VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: KUBE_ROOT_CA.into(),
                            items: Some(vec![KeyToPath {
                                key: "ca.crt".into(),
                                path: file_name(API_CA_FILE),
                                ..Default::default()
                            }]),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ],
            ),
            &dir_of(API_TOKEN_FILE),
        );
        plan.add(
            projected(
                COLLECTOR_VOLUME,
                vec![token_source(
                    Some(COLLECTOR_AUDIENCE),
                    COLLECTOR_TOKEN_FILE,
                    settings,
                )],
            ),
            &dir_of(COLLECTOR_TOKEN_FILE),
        );
        plan.volumes.push(Volume {
            name: STATE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: settings.state_size_limit.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
        plan.mounts.push(VolumeMount {
            name: STATE_VOLUME.into(),
            mount_path: STATE_DIR.into(),
            ..Default::default()
        });
        Ok(plan)
    }

    fn add(&mut self, volume: Volume, path: &str) {
        self.mounts.push(VolumeMount {
            name: volume.name.clone(),
            mount_path: path.into(),
            read_only: Some(true),
            ..Default::default()
        });
        self.volumes.push(volume);
    }

    /// The sidecar container; `native` makes it an init container that keeps
    /// running (`restartPolicy: Always`), whose startup probe holds back the
    /// agent containers until the proxy is ready.
    pub fn container(&self, native: bool) -> Container {
        let s = &self.settings;
        let probe = |period, failures| Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".into()),
                port: IntOrString::Int(i32::from(ADMIN_PORT)),
                scheme: Some("HTTP".into()),
                ..Default::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            timeout_seconds: Some(1),
            ..Default::default()
        };
        Container {
            name: SIDECAR_CONTAINER.into(),
            image: Some(s.image.clone()),
            image_pull_policy: Some(s.image_pull_policy.clone()),
            args: Some(vec!["run".into(), "--config".into(), CONFIG_FILE.into()]),
            restart_policy: native.then(|| "Always".into()),
            ports: Some(vec![ContainerPort {
                name: Some("cardgate-admin".into()),
                container_port: i32::from(ADMIN_PORT),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            env: Some(vec![
                field_env(ENV_POD_NAME, "metadata.name"),
                field_env(ENV_POD_NAMESPACE, "metadata.namespace"),
                field_env(ENV_POD_UID, "metadata.uid"),
                field_env(ENV_POD_SERVICE_ACCOUNT, "spec.serviceAccountName"),
                field_env(ENV_NODE_NAME, "spec.nodeName"),
            ]),
            startup_probe: Some(probe(1, 120)),
            readiness_probe: Some(probe(5, 3)),
            resources: Some(s.resources.clone()),
            security_context: Some(sidecar_security_context()),
            volume_mounts: Some(self.mounts.clone()),
            ..Default::default()
        }
    }
}

/// The sidecar's security context: its own UID (exempt from interception),
/// nothing else.
fn sidecar_security_context() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(SIDECAR_UID),
        run_as_group: Some(SIDECAR_UID),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The sidecar container of a pod, wherever it sits (native or legacy).
pub(super) fn find_sidecar(pod: &Pod) -> Option<&Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == SIDECAR_CONTAINER)
}

/// The key the policy's keyed (hmac) masking uses: the first MaskingRule of
/// `spec.maskingRules`, in order, whose action is hmac. The renderer points
/// the configuration's single `hmacKeyFile` at the same key.
pub(super) fn hmac_key<'a>(
    policy: &AccessPolicy,
    masking_rules: &'a [MaskingRule],
) -> Result<Option<&'a SecretKeyRef>, InjectError> {
    for name in &policy.spec.masking_rules {
        let rule = masking_rules
            .iter()
            .find(|r| r.name_any() == *name)
            .ok_or_else(|| InjectError::MissingMaskingRule {
                policy: policy.name_any(),
                rule: name.clone(),
            })?;
        if rule.spec.action.kind == MaskActionType::Hmac
            && let Some(key) = &rule.spec.action.hmac_key_secret_ref
        {
            return Ok(Some(key));
        }
    }
    Ok(None)
}

/// Volume name for a target's credentials: `cardgate-cred-<target>`, or a
/// shortened name with a hash when that would exceed the 63 characters a
/// volume name may have.
pub(super) fn credentials_volume_name(target: &str) -> String {
    let name = format!("{CREDENTIALS_VOLUME_PREFIX}{target}");
    if name.len() <= 63 {
        return name;
    }
    let digest = Sha256::digest(target.as_bytes());
    let hash = hex::encode(&digest[..4]);
    let keep = 63 - CREDENTIALS_VOLUME_PREFIX.len() - hash.len() - 1;
    let head = target[..keep].trim_end_matches('-');
    format!("{CREDENTIALS_VOLUME_PREFIX}{head}-{hash}")
}

fn secret_source(name: &str, items: &[(&str, &str)]) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: name.into(),
            items: Some(
                items
                    .iter()
                    .map(|(key, path)| KeyToPath {
                        key: (*key).into(),
                        path: (*path).into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A projected service-account token source; `audience: None` means the API
/// server's own audience.
pub(super) fn token_source(
    audience: Option<&str>,
    file: &str,
    settings: &InjectSettings,
) -> VolumeProjection {
    VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            audience: audience.map(Into::into),
            expiration_seconds: Some(settings.token_expiration_seconds),
            path: file_name(file),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Last component of one of the contract's file paths.
pub(super) fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(path)
        .to_string()
}

/// Directory of one of the contract's file paths.
pub(super) fn dir_of(path: &str) -> String {
    Path::new(path)
        .parent()
        .and_then(|d| d.to_str())
        .unwrap_or(path)
        .to_string()
}

/// Image name without tag or digest: `registry:5000/cardgate-sidecar:1.2`
/// becomes `registry:5000/cardgate-sidecar`, so a sidecar injected by the
/// previous operator version during an upgrade is still recognised.
pub(super) fn repository(image: &str) -> &str {
    let image = image.split('@').next().unwrap_or(image);
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(colon) => &image[..slash + colon],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_paths_split_into_mount_and_file() {
        assert_eq!(dir_of(API_TOKEN_FILE), "/var/run/cardgate/tokens/kube");
        assert_eq!(file_name(API_TOKEN_FILE), "token");
        assert_eq!(dir_of(API_CA_FILE), dir_of(API_TOKEN_FILE));
        assert_eq!(file_name(API_CA_FILE), "ca.crt");
        assert_eq!(dir_of(CONFIG_FILE), CONFIG_DIR);
        assert_eq!(file_name(CONFIG_FILE), CONFIG_KEY);
    }

    #[test]
    fn long_target_names_give_valid_distinct_volume_names() {
        assert_eq!(
            credentials_volume_name("payments-db"),
            "cardgate-cred-payments-db"
        );
        let a = credentials_volume_name(&format!("{}a", "x".repeat(62)));
        let b = credentials_volume_name(&format!("{}b", "x".repeat(62)));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b);
        assert!(a.starts_with(CREDENTIALS_VOLUME_PREFIX));
        assert!(!a.contains("--"), "{a}");
    }

    #[test]
    fn repository_drops_tag_and_digest_only() {
        assert_eq!(
            repository("ghcr.io/cardgate/sidecar:1.2"),
            "ghcr.io/cardgate/sidecar"
        );
        assert_eq!(
            repository("localhost:5000/sidecar"),
            "localhost:5000/sidecar"
        );
        assert_eq!(
            repository("localhost:5000/sidecar:dev"),
            "localhost:5000/sidecar"
        );
        assert_eq!(
            repository("ghcr.io/cardgate/sidecar:1.2@sha256:abcd"),
            "ghcr.io/cardgate/sidecar"
        );
        assert_eq!(repository("sidecar"), "sidecar");
    }
}

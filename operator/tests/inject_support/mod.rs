//! Shared by the injection and webhook tests: the golden cases, the policies
//! they are injected under, and one pod per validating rule.
#![allow(dead_code)]

use std::path::PathBuf;

use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use cardgate_operator::inject::{InjectSettings, inject};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::api::core::v1::{
    Capabilities, EnvFromSource, EnvVar, EnvVarSource, EphemeralContainer, Pod, PodSecurityContext,
    SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use serde_json::Value;

/// The sidecar image of every test.
pub const SIDECAR_IMAGE: &str = "ghcr.io/cardgate/cardgate-sidecar:0.1.0";

/// Injection settings of the tests (`legacy`: sidecar in `containers`).
pub fn settings(legacy: bool) -> InjectSettings {
    let q = |s: &str| Quantity(s.to_string());
    InjectSettings {
        image: SIDECAR_IMAGE.into(),
        image_pull_policy: "IfNotPresent".into(),
        resources: ResourceRequirements {
            requests: Some([("cpu".into(), q("50m")), ("memory".into(), q("64Mi"))].into()),
            limits: Some([("memory".into(), q("256Mi"))].into()),
            ..Default::default()
        },
        legacy_sidecar: legacy,
        state_size_limit: Some(q("1Gi")),
        token_expiration_seconds: 3600,
    }
}

/// `operator/tests/golden/inject`.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

/// A YAML document as JSON.
pub fn yaml_value(text: &str) -> Value {
    serde_saphyr::from_str(text).expect("valid YAML")
}

/// A pod read from a YAML file under the golden directory, as raw JSON (what
/// the API server would send) and typed.
pub fn read_pod(rel: &str) -> (Value, Pod) {
    let text = std::fs::read_to_string(golden_dir().join(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}"));
    let raw = yaml_value(&text);
    let pod = serde_json::from_value(raw.clone()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    (raw, pod)
}

/// The policies and MaskingRules of `policies.yaml`.
pub struct Catalog {
    pub policies: Vec<AccessPolicy>,
    pub rules: Vec<MaskingRule>,
}

impl Catalog {
    pub fn load() -> Self {
        let text = std::fs::read_to_string(golden_dir().join("policies.yaml")).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("valid YAML");
        let mut c = Catalog {
            policies: Vec::new(),
            rules: Vec::new(),
        };
        for doc in docs {
            match doc["kind"].as_str() {
                Some("AccessPolicy") => c.policies.push(serde_json::from_value(doc).unwrap()),
                Some("MaskingRule") => c.rules.push(serde_json::from_value(doc).unwrap()),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        c
    }

    pub fn policy(&self, name: &str) -> &AccessPolicy {
        self.policies
            .iter()
            .find(|p| p.name_any() == name)
            .unwrap_or_else(|| panic!("no policy {name}"))
    }

    pub fn rules_in(&self, namespace: &str) -> Vec<MaskingRule> {
        self.rules
            .iter()
            .filter(|r| r.namespace().as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
}

/// One golden case: `<name>/pod.yaml` injected under `policy` gives
/// `<name>/expected.yaml`.
pub struct Case {
    pub name: &'static str,
    pub policy: &'static str,
    pub legacy: bool,
    pub config_hash: Option<&'static str>,
}

pub const CONFIG_HASH: &str = "sha256:8f14e45fceea167a5a36dedd4bea2543";

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "langflow-deployment",
            policy: "langflow",
            legacy: false,
            config_hash: Some(CONFIG_HASH),
        },
        Case {
            name: "init-containers",
            policy: "support-agent",
            legacy: false,
            config_hash: None,
        },
        Case {
            name: "already-injected",
            policy: "langflow",
            legacy: false,
            config_hash: Some(CONFIG_HASH),
        },
        Case {
            name: "own-volumes",
            policy: "langflow",
            legacy: false,
            config_hash: Some(CONFIG_HASH),
        },
        Case {
            name: "legacy-transparent",
            policy: "reporting",
            legacy: true,
            config_hash: Some(CONFIG_HASH),
        },
        Case {
            name: "transparent-native",
            policy: "reporting",
            legacy: false,
            config_hash: Some(CONFIG_HASH),
        },
    ]
}

/// The langflow pod as the injector leaves it.
pub fn injected_langflow() -> Pod {
    let catalog = Catalog::load();
    let (_, pod) = read_pod("langflow-deployment/pod.yaml");
    inject(
        &pod,
        catalog.policy("langflow"),
        &catalog.rules_in("agents"),
        Some(CONFIG_HASH),
        &settings(false),
    )
    .expect("injects")
}

/// A pod each validating rule must reject, with a fragment of the message.
pub struct RuleCase {
    pub name: &'static str,
    pub pod: Pod,
    pub expect: &'static str,
}

fn with(pod: &Pod, f: impl FnOnce(&mut Pod)) -> Pod {
    let mut p = pod.clone();
    f(&mut p);
    p
}

fn agent_sc(pod: &mut Pod) -> &mut SecurityContext {
    pod.spec.as_mut().unwrap().containers[0]
        .security_context
        .get_or_insert_with(Default::default)
}

fn add_caps(pod: &mut Pod, caps: &[&str]) {
    agent_sc(pod)
        .capabilities
        .get_or_insert_with(Capabilities::default)
        .add = Some(caps.iter().map(|c| c.to_string()).collect());
}

fn mount_into_agent(pod: &mut Pod, volume: Volume, path: &str) {
    let spec = pod.spec.as_mut().unwrap();
    spec.containers[0]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: volume.name.clone(),
            mount_path: path.into(),
            ..Default::default()
        });
    if !spec.volumes.iter().flatten().any(|v| v.name == volume.name) {
        spec.volumes.get_or_insert_with(Vec::new).push(volume);
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Every validating rule, broken once on the injected langflow pod (or a
/// plain pod for label spoofing).
pub fn rule_cases() -> Vec<RuleCase> {
    let ok = injected_langflow();
    let volume = |name: &str| {
        ok.spec
            .as_ref()
            .unwrap()
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .cloned()
            .unwrap()
    };
    let (_, plain) = read_pod("own-volumes/pod.yaml");
    vec![
        RuleCase {
            name: "privileged",
            pod: with(&ok, |p| agent_sc(p).privileged = Some(true)),
            expect: "cardgate: container \"langflow\" is privileged; remove securityContext.privileged",
        },
        RuleCase {
            name: "net-admin",
            pod: with(&ok, |p| add_caps(p, &["NET_ADMIN"])),
            expect: "cardgate: container \"langflow\" adds capability NET_ADMIN; remove it — governed agents may not change the pod's network rules",
        },
        RuleCase {
            name: "net-raw",
            pod: with(&ok, |p| add_caps(p, &["NET_RAW"])),
            expect: "adds capability NET_RAW; remove it",
        },
        RuleCase {
            name: "sys-admin",
            pod: with(&ok, |p| add_caps(p, &["CAP_SYS_ADMIN"])),
            expect: "adds capability SYS_ADMIN; remove it",
        },
        RuleCase {
            name: "all-capabilities",
            pod: with(&ok, |p| add_caps(p, &["ALL"])),
            expect: "adds capability ALL",
        },
        RuleCase {
            name: "host-network",
            pod: with(&ok, |p| p.spec.as_mut().unwrap().host_network = Some(true)),
            expect: "uses hostNetwork; remove spec.hostNetwork",
        },
        RuleCase {
            name: "host-pid",
            pod: with(&ok, |p| p.spec.as_mut().unwrap().host_pid = Some(true)),
            expect: "uses hostPID; remove spec.hostPID",
        },
        RuleCase {
            name: "share-process-namespace",
            pod: with(&ok, |p| {
                p.spec.as_mut().unwrap().share_process_namespace = Some(true)
            }),
            expect: "sets shareProcessNamespace; remove it",
        },
        RuleCase {
            name: "sidecar-uid",
            pod: with(&ok, |p| agent_sc(p).run_as_user = Some(2102)),
            expect: "container \"langflow\" runs as UID 2102, the cardgate sidecar's; set securityContext.runAsUser",
        },
        RuleCase {
            name: "sidecar-uid-from-pod",
            pod: with(&ok, |p| {
                agent_sc(p).run_as_user = None;
                p.spec
                    .as_mut()
                    .unwrap()
                    .security_context
                    .get_or_insert_with(PodSecurityContext::default)
                    .run_as_user = Some(2102);
            }),
            expect: "inherited from the pod's securityContext.runAsUser",
        },
        RuleCase {
            name: "credentials-secret-volume",
            pod: with(&ok, |p| {
                mount_into_agent(p, secret_volume("db", "agents-db-proxy"), "/db")
            }),
            expect: "mounts Secret \"agents-db-proxy\" (volume \"db\"); remove the mount",
        },
        RuleCase {
            name: "credentials-secret-env",
            pod: with(&ok, |p| {
                p.spec.as_mut().unwrap().containers[0]
                    .env
                    .get_or_insert_with(Vec::new)
                    .push(EnvVar {
                        name: "DB_PASSWORD".into(),
                        value_from: Some(EnvVarSource {
                            secret_key_ref: Some(SecretKeySelector {
                                name: "agents-db-proxy".into(),
                                key: "password".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
            }),
            expect: "reads Secret \"agents-db-proxy\" into env DB_PASSWORD",
        },
        RuleCase {
            name: "credentials-secret-env-from",
            pod: with(&ok, |p| {
                p.spec.as_mut().unwrap().containers[0].env_from = Some(vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "agents-db-proxy".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }])
            }),
            expect: "loads Secret \"agents-db-proxy\" with envFrom",
        },
        RuleCase {
            name: "sidecar-volume",
            pod: with(&ok, |p| {
                mount_into_agent(p, volume("cardgate-cred-agents-db"), "/stolen")
            }),
            expect: "mounts volume \"cardgate-cred-agents-db\", which belongs to the cardgate sidecar",
        },
        RuleCase {
            name: "api-token",
            pod: with(&ok, |p| {
                mount_into_agent(
                    p,
                    volume("cardgate-kube-api"),
                    "/var/run/secrets/kubernetes.io/serviceaccount",
                )
            }),
            expect: "mounts volume \"cardgate-kube-api\", which belongs to the cardgate sidecar",
        },
        RuleCase {
            name: "own-service-account-token",
            pod: with(&ok, |p| {
                let mut v = volume("cardgate-kube-api");
                v.name = "kube-api-access-abcde".into();
                mount_into_agent(p, v, "/var/run/secrets/kubernetes.io/serviceaccount")
            }),
            expect: "mounts a service-account token (volume \"kube-api-access-abcde\")",
        },
        RuleCase {
            name: "ephemeral-container",
            pod: with(&ok, |p| {
                p.spec.as_mut().unwrap().ephemeral_containers = Some(vec![EphemeralContainer {
                    name: "debugger".into(),
                    image: Some("busybox".into()),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "cardgate-cred-agents-db".into(),
                        mount_path: "/creds".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }])
            }),
            expect: "container \"debugger\" mounts volume \"cardgate-cred-agents-db\"",
        },
        RuleCase {
            name: "label-spoofing",
            pod: with(&plain, |p| {
                p.labels_mut()
                    .insert("cardgate.dev/proxied".into(), "langflow".into());
            }),
            expect: "carries label cardgate.dev/proxied=langflow but has no cardgate-sidecar container; remove the label",
        },
        RuleCase {
            name: "label-of-another-policy",
            pod: with(&ok, |p| {
                p.labels_mut()
                    .insert("cardgate.dev/proxied".into(), "payments".into());
            }),
            expect: "is not configured from ConfigMap \"cardgate-payments\"",
        },
        RuleCase {
            name: "fake-sidecar",
            pod: with(&ok, |p| {
                p.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].image =
                    Some("docker.io/attacker/proxy:1.0".into())
            }),
            expect: "runs image \"docker.io/attacker/proxy:1.0\", which is not the cardgate sidecar",
        },
    ]
}

//! Properties of injection over generated pods: idempotent, valid, and the
//! patch reproduces the injected pod.

mod inject_support;

use std::collections::{BTreeMap, BTreeSet};

use cardgate_crds::pod::{INIT_CONTAINER, SIDECAR_CONTAINER};
use cardgate_operator::inject::{inject, json_patch_between, validate_pod};
use inject_support::{Catalog, settings};
use k8s_openapi::api::core::v1::{
    ConfigMapProjection, Container, EmptyDirVolumeSource, EnvVar, Pod, PodSpec,
    ProjectedVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use proptest::prelude::*;
use proptest::sample::subsequence;

const USER_VOLUMES: [&str; 5] = ["data", "config", "tokens", "state", "cache"];
const ENV: [(&str, &str); 5] = [
    ("PGHOST", "payments-db"),
    ("DATABASE_URL", "postgresql://payments-db/payments"),
    ("LANGFLOW_DATABASE_URL", "postgresql://agents-db/langflow"),
    ("WAREHOUSE_URL", "postgresql://warehouse/reports"),
    ("LOG_LEVEL", "debug"),
];
const POLICIES: [(&str, &str); 3] = [
    ("langflow", "agents"),
    ("support-agent", "payments"),
    ("reporting", "analytics"),
];

fn api_access_volume() -> Volume {
    Volume {
        name: "kube-api-access-abcde".into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(420),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        expiration_seconds: Some(3607),
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container() -> impl Strategy<
    Value = (
        Vec<(&'static str, &'static str)>,
        Vec<&'static str>,
        Option<i64>,
    ),
> {
    (
        subsequence(ENV.to_vec(), 0..=ENV.len()),
        subsequence(USER_VOLUMES.to_vec(), 0..=2),
        prop::option::of(prop::sample::select(vec![0i64, 1000, 65532])),
    )
}

prop_compose! {
    fn pods()(
        init in prop::collection::vec(container(), 0..3),
        main in prop::collection::vec(container(), 1..4),
        volumes in subsequence(USER_VOLUMES.to_vec(), 0..=USER_VOLUMES.len()),
        api_access in any::<bool>(),
        extra_label in any::<bool>(),
    ) -> Pod {
        let mut all_volumes: Vec<Volume> = volumes
            .iter()
            .map(|v| Volume {
                name: (*v).into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            })
            .collect();
        if api_access {
            all_volumes.push(api_access_volume());
        }
        let build = |prefix: &str, i: usize, (env, mounts, uid): &(Vec<(&str, &str)>, Vec<&str>, Option<i64>)| {
            let mut vm: Vec<VolumeMount> = mounts
                .iter()
                .filter(|m| volumes.contains(m))
                .enumerate()
                .map(|(j, m)| VolumeMount {
                    name: (*m).into(),
                    mount_path: format!("/mnt/{j}"),
                    ..Default::default()
                })
                .collect();
            if api_access {
                vm.push(VolumeMount {
                    name: "kube-api-access-abcde".into(),
                    mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            Container {
                name: format!("{prefix}-{i}"),
                image: Some("ghcr.io/example/agent:1".into()),
                env: (!env.is_empty()).then(|| {
                    env.iter()
                        .map(|(n, v)| EnvVar { name: (*n).into(), value: Some((*v).into()), ..Default::default() })
                        .collect()
                }),
                volume_mounts: (!vm.is_empty()).then_some(vm),
                security_context: uid.map(|u| SecurityContext { run_as_user: Some(u), ..Default::default() }),
                ..Default::default()
            }
        };
        let mut labels = BTreeMap::from([
            ("app".to_string(), "langflow-backend".to_string()),
            ("app.kubernetes.io/name".to_string(), "support-agent".to_string()),
            ("cardgate.example/agent".to_string(), "reporting".to_string()),
        ]);
        if extra_label {
            labels.insert("team".into(), "payments".into());
        }
        Pod {
            metadata: ObjectMeta {
                generate_name: Some("agent-".into()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: Some(PodSpec {
                init_containers: (!init.is_empty())
                    .then(|| init.iter().enumerate().map(|(i, c)| build("init", i, c)).collect()),
                containers: main.iter().enumerate().map(|(i, c)| build("main", i, c)).collect(),
                volumes: (!all_volumes.is_empty()).then_some(all_volumes),
                ..Default::default()
            }),
            status: None,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn injection_is_idempotent_valid_and_patchable(
        pod in pods(),
        which in 0..POLICIES.len(),
        legacy in any::<bool>(),
        hash in prop::option::of("[a-f0-9]{8}"),
    ) {
        let catalog = Catalog::load();
        let (name, namespace) = POLICIES[which];
        let policy = catalog.policy(name);
        let rules = catalog.rules_in(namespace);
        let settings = settings(legacy);

        let once = inject(&pod, policy, &rules, hash.as_deref(), &settings).unwrap();
        let twice = inject(&once, policy, &rules, hash.as_deref(), &settings).unwrap();
        prop_assert_eq!(&twice, &once);

        prop_assert!(validate_pod(&once, Some(policy), &rules, &settings).is_ok(),
            "{:?}", validate_pod(&once, Some(policy), &rules, &settings));

        let raw = serde_json::to_value(&pod).unwrap();
        let patch = json_patch_between(&raw, &pod, &once).unwrap();
        let mut doc = raw;
        json_patch::patch(&mut doc, &patch.0).unwrap();
        prop_assert_eq!(serde_json::from_value::<Pod>(doc).unwrap(), once.clone());

        let spec = once.spec.as_ref().unwrap();
        let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(&spec.containers).collect();
        prop_assert_eq!(all.iter().filter(|c| c.name == SIDECAR_CONTAINER).count(), 1);
        // Transparent policies get the interception step first, exactly once.
        let transparent = policy
            .spec
            .targets
            .iter()
            .any(|t| t.transparent.unwrap_or(policy.spec.transparent));
        prop_assert_eq!(all.iter().filter(|c| c.name == INIT_CONTAINER).count(), usize::from(transparent));
        if transparent {
            prop_assert_eq!(spec.init_containers.as_ref().unwrap()[0].name.as_str(), INIT_CONTAINER);
        }
        let volume_names: BTreeSet<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
        prop_assert!(!volume_names.iter().any(|v| v.starts_with("kube-api-access-")));
        for c in all.iter().filter(|c| c.name != SIDECAR_CONTAINER && c.name != INIT_CONTAINER) {
            let mounts: Vec<&str> = c.volume_mounts.iter().flatten().map(|m| m.name.as_str()).collect();
            prop_assert_eq!(mounts.iter().filter(|m| **m == "cardgate-agent-token").count(), 1);
            prop_assert!(mounts.iter().all(|m| volume_names.contains(m)), "dangling mount in {:?}", mounts);
            prop_assert!(mounts.iter().all(|m| !m.starts_with("cardgate-") || *m == "cardgate-agent-token"));
        }
        prop_assert_eq!(once.labels().get("cardgate.dev/proxied").map(String::as_str), Some(name));
    }
}

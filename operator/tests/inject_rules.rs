//! The validating rules and the injector's refusals, as pure functions.

mod inject_support;

use cardgate_operator::inject::{InjectError, inject, validate_pod};
use inject_support::{Catalog, injected_langflow, read_pod, rule_cases, settings};
use k8s_openapi::api::core::v1::{Container, Volume, VolumeMount};
use kube::ResourceExt;

#[test]
fn every_rule_rejects_its_pod_with_a_message_that_says_what_to_change() {
    let catalog = Catalog::load();
    let policy = catalog.policy("langflow");
    let rules = catalog.rules_in("agents");
    for case in rule_cases() {
        let problems = validate_pod(&case.pod, Some(policy), &rules, &settings(false))
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", case.name));
        assert!(
            problems.iter().any(|p| p.contains(case.expect)),
            "{}: {problems:#?} does not contain {:?}",
            case.name,
            case.expect
        );
        for p in &problems {
            assert!(p.starts_with("cardgate: "), "{}: {p}", case.name);
        }
    }
}

#[test]
fn the_injected_pod_passes_and_one_broken_rule_gives_one_message() {
    let catalog = Catalog::load();
    let policy = catalog.policy("langflow");
    let rules = catalog.rules_in("agents");
    validate_pod(&injected_langflow(), Some(policy), &rules, &settings(false)).unwrap();
    let net_admin = rule_cases()
        .into_iter()
        .find(|c| c.name == "net-admin")
        .unwrap();
    let problems =
        validate_pod(&net_admin.pod, Some(policy), &rules, &settings(false)).unwrap_err();
    assert_eq!(problems, vec![net_admin.expect.to_string()]);
}

#[test]
fn a_sidecar_from_the_previous_operator_version_is_accepted() {
    let catalog = Catalog::load();
    let mut pod = injected_langflow();
    pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].image =
        Some("ghcr.io/cardgate/cardgate-sidecar:0.0.9".into());
    validate_pod(
        &pod,
        Some(catalog.policy("langflow")),
        &catalog.rules_in("agents"),
        &settings(false),
    )
    .unwrap();
}

#[test]
fn the_hmac_key_counts_as_a_credential() {
    let catalog = Catalog::load();
    let policy = catalog.policy("support-agent");
    let (_, mut pod) = read_pod("init-containers/expected.yaml");
    let spec = pod.spec.as_mut().unwrap();
    spec.volumes.as_mut().unwrap().push(Volume {
        name: "keys".into(),
        secret: Some(k8s_openapi::api::core::v1::SecretVolumeSource {
            secret_name: Some("masking-hmac".into()),
            ..Default::default()
        }),
        ..Default::default()
    });
    spec.containers[0]
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(VolumeMount {
            name: "keys".into(),
            mount_path: "/keys".into(),
            ..Default::default()
        });
    let problems = validate_pod(
        &pod,
        Some(policy),
        &catalog.rules_in("payments"),
        &settings(false),
    )
    .unwrap_err();
    assert!(
        problems[0].contains("mounts Secret \"masking-hmac\""),
        "{problems:?}"
    );
}

fn inject_langflow_variant(f: impl FnOnce(&mut k8s_openapi::api::core::v1::Pod)) -> InjectError {
    let catalog = Catalog::load();
    let (_, mut pod) = read_pod("langflow-deployment/pod.yaml");
    f(&mut pod);
    inject(
        &pod,
        catalog.policy("langflow"),
        &catalog.rules_in("agents"),
        None,
        &settings(false),
    )
    .unwrap_err()
}

#[test]
fn reserved_names_are_refused_with_the_name_to_change() {
    let e = inject_langflow_variant(|p| {
        p.spec
            .as_mut()
            .unwrap()
            .volumes
            .as_mut()
            .unwrap()
            .push(Volume {
                name: "cardgate-config".into(),
                ..Default::default()
            })
    });
    assert_eq!(
        e,
        InjectError::ReservedName {
            what: "volume",
            name: "cardgate-config".into()
        }
    );
    assert!(e.to_string().contains("rename it"), "{e}");
    let e = inject_langflow_variant(|p| {
        p.spec.as_mut().unwrap().containers.push(Container {
            name: "cardgate-init".into(),
            ..Default::default()
        })
    });
    assert!(matches!(
        e,
        InjectError::ReservedName {
            what: "container",
            ..
        }
    ));
}

#[test]
fn a_mount_where_the_agent_token_goes_is_refused() {
    let e = inject_langflow_variant(|p| {
        p.spec.as_mut().unwrap().containers[0]
            .volume_mounts
            .as_mut()
            .unwrap()
            .push(VolumeMount {
                name: "data".into(),
                mount_path: "/var/run/cardgate/agent/".into(),
                ..Default::default()
            })
    });
    assert!(matches!(e, InjectError::MountPathInUse { .. }), "{e}");
}

#[test]
fn policy_problems_are_refused_with_what_to_fix() {
    let catalog = Catalog::load();
    let (_, pod) = read_pod("init-containers/pod.yaml");
    let policy = catalog.policy("support-agent");
    let e = inject(&pod, policy, &[], None, &settings(false)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "cardgate: AccessPolicy \"support-agent\" uses MaskingRule \"card-numbers\", which does not exist in this namespace; create it or remove it from spec.maskingRules"
    );

    let mut clash = policy.clone();
    clash.spec.targets[1].name = "hmac".into();
    let e = inject(
        &pod,
        &clash,
        &catalog.rules_in("payments"),
        None,
        &settings(false),
    )
    .unwrap_err();
    assert!(matches!(e, InjectError::HmacDirectoryClash { .. }), "{e}");

    let mut long = policy.clone();
    long.metadata.name = Some("p".repeat(64));
    let e = inject(
        &pod,
        &long,
        &catalog.rules_in("payments"),
        None,
        &settings(false),
    )
    .unwrap_err();
    assert!(matches!(e, InjectError::PolicyNameTooLong { .. }), "{e}");
}

#[test]
fn opted_out_and_injected_pods_are_recognised() {
    let (_, mut pod) = read_pod("langflow-deployment/pod.yaml");
    assert!(!cardgate_operator::inject::opted_out(&pod));
    pod.labels_mut()
        .insert("cardgate.dev/inject".into(), "false".into());
    assert!(cardgate_operator::inject::opted_out(&pod));
    assert!(cardgate_operator::inject::is_injected(&injected_langflow()));
}

/// The reporting pod injected under its transparent policy (native sidecar),
/// with the interception init container first.
fn injected_transparent() -> k8s_openapi::api::core::v1::Pod {
    let catalog = Catalog::load();
    let (_, pod) = read_pod("transparent-native/pod.yaml");
    inject(
        &pod,
        catalog.policy("reporting"),
        &catalog.rules_in("analytics"),
        None,
        &settings(false),
    )
    .expect("injects")
}

fn validate_transparent(pod: &k8s_openapi::api::core::v1::Pod) -> Result<(), Vec<String>> {
    let catalog = Catalog::load();
    validate_pod(
        pod,
        Some(catalog.policy("reporting")),
        &catalog.rules_in("analytics"),
        &settings(false),
    )
}

fn init_of(pod: &mut k8s_openapi::api::core::v1::Pod) -> &mut Container {
    let init = pod.spec.as_mut().unwrap().init_containers.as_mut().unwrap();
    assert_eq!(init[0].name, "cardgate-init");
    &mut init[0]
}

#[test]
fn the_interception_step_keeps_its_capabilities_and_agents_still_get_none() {
    let ok = injected_transparent();
    validate_transparent(&ok).unwrap();
    // Everything that could undo the rules stays refused to the agent of a
    // transparent pod, although another container of the pod holds
    // NET_ADMIN.
    fn sc(
        p: &mut k8s_openapi::api::core::v1::Pod,
    ) -> &mut k8s_openapi::api::core::v1::SecurityContext {
        p.spec.as_mut().unwrap().containers[0]
            .security_context
            .get_or_insert_with(Default::default)
    }
    fn caps(p: &mut k8s_openapi::api::core::v1::Pod, cap: &str) {
        sc(p).capabilities = Some(k8s_openapi::api::core::v1::Capabilities {
            add: Some(vec![cap.into()]),
            ..Default::default()
        });
    }
    type Change = fn(&mut k8s_openapi::api::core::v1::Pod);
    let cases: Vec<(&str, Change)> = vec![
        ("adds capability NET_ADMIN", |p| caps(p, "NET_ADMIN")),
        ("adds capability NET_RAW", |p| caps(p, "NET_RAW")),
        ("is privileged", |p| sc(p).privileged = Some(true)),
        ("runs as UID 2102", |p| sc(p).run_as_user = Some(2102)),
    ];
    for (expect, change) in cases {
        let mut pod = ok.clone();
        change(&mut pod);
        let problems = validate_transparent(&pod).unwrap_err();
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("cardgate: container \"report\"") && p.contains(expect)),
            "{expect}: {problems:#?}"
        );
    }
}

#[test]
fn nothing_can_pose_as_the_interception_step() {
    let ok = injected_transparent();
    // Another image, another command, or the name on a regular or debug
    // container: refused, and its capabilities are refused as an agent's.
    let mut other_image = ok.clone();
    init_of(&mut other_image).image = Some("docker.io/attacker/nettools:1".into());
    let problems = validate_transparent(&other_image).unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains(
            "container \"cardgate-init\" runs image \"docker.io/attacker/nettools:1\", which is not the cardgate sidecar"
        )),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("container \"cardgate-init\" adds capability NET_ADMIN")),
        "{problems:#?}"
    );

    let mut shell = ok.clone();
    init_of(&mut shell).command = Some(vec!["/bin/sh".into(), "-c".into()]);
    let problems = validate_transparent(&shell).unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains(
            "does not run exactly `cardgate-sidecar init --config /etc/cardgate/config.yaml`"
        )),
        "{problems:#?}"
    );

    let mut cleanup = ok.clone();
    init_of(&mut cleanup).args = Some(vec!["init".into(), "--cleanup".into()]);
    assert!(validate_transparent(&cleanup).is_err());

    let mut regular = ok.clone();
    let init = init_of(&mut regular).clone();
    let spec = regular.spec.as_mut().unwrap();
    spec.init_containers.as_mut().unwrap().remove(0);
    spec.containers.push(init);
    let problems = validate_transparent(&regular).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("container \"cardgate-init\" is not an init container")),
        "{problems:#?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("container \"cardgate-init\" adds capability NET_ADMIN")),
        "{problems:#?}"
    );

    // A genuine-looking step under another name is just an agent with
    // NET_ADMIN.
    let mut renamed = ok.clone();
    let mut copy = init_of(&mut renamed).clone();
    copy.name = "setup".into();
    renamed
        .spec
        .as_mut()
        .unwrap()
        .init_containers
        .as_mut()
        .unwrap()
        .push(copy);
    let problems = validate_transparent(&renamed).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("container \"setup\" adds capability NET_ADMIN")),
        "{problems:#?}"
    );
}

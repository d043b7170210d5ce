//! Golden files of injected pods: realistic pods in, the exact governed pod
//! out. `CARDGATE_UPDATE_GOLDEN=1 cargo test -p cardgate-operator --test
//! inject_golden` rewrites the expected files after an intended change;
//! review the diff like code.

mod inject_support;

use std::process::Command;

use cardgate_crds::pod::{INIT_CONTAINER, LABEL_PROXIED, SIDECAR_CONTAINER};
use cardgate_operator::inject::{
    ANNOTATION_INJECTED, InjectedItems, inject, json_patch_between, validate_pod,
};
use inject_support::{Catalog, cases, golden_dir, read_pod, settings};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

fn updating() -> bool {
    std::env::var_os("CARDGATE_UPDATE_GOLDEN").is_some_and(|v| v == "1")
}

fn injected(case: &inject_support::Case, catalog: &Catalog, pod: &Pod) -> Pod {
    let policy = catalog.policy(case.policy);
    inject(
        pod,
        policy,
        &catalog.rules_in(&policy.namespace().unwrap()),
        case.config_hash,
        &settings(case.legacy),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", case.name))
}

fn to_yaml(pod: &Pod) -> String {
    serde_saphyr::to_string(pod).expect("pods serialize")
}

#[test]
fn injected_pods_match_the_golden_files() {
    let catalog = Catalog::load();
    let mut stale = Vec::new();
    for case in cases() {
        let (_, pod) = read_pod(&format!("{}/pod.yaml", case.name));
        let got = injected(&case, &catalog, &pod);
        let path = golden_dir().join(case.name).join("expected.yaml");
        let want: Option<Pod> = std::fs::read_to_string(&path)
            .ok()
            .map(|t| serde_json::from_value(inject_support::yaml_value(&t)).unwrap());
        if want.as_ref() != Some(&got) {
            if updating() {
                std::fs::write(&path, to_yaml(&got)).unwrap();
            } else {
                stale.push(case.name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "injected pods differ from the golden files for {stale:?}; if intended, rerun with CARDGATE_UPDATE_GOLDEN=1 and review the diff"
    );
}

#[test]
fn the_json_patch_turns_the_submitted_pod_into_the_golden_pod() {
    let catalog = Catalog::load();
    for case in cases() {
        let (raw, pod) = read_pod(&format!("{}/pod.yaml", case.name));
        let (_, golden) = read_pod(&format!("{}/expected.yaml", case.name));
        let got = injected(&case, &catalog, &pod);
        let patch = json_patch_between(&raw, &pod, &got).unwrap();
        let mut doc = raw.clone();
        json_patch::patch(&mut doc, &patch.0).unwrap();
        let patched: Pod = serde_json::from_value(doc).unwrap();
        assert_eq!(patched, golden, "{}", case.name);
        if case.name == "already-injected" {
            assert!(
                patch.0.is_empty(),
                "re-invocation must not patch: {patch:?}"
            );
        }
    }
}

#[test]
fn golden_pods_are_governed_as_intended() {
    let catalog = Catalog::load();
    for case in cases() {
        let (_, pod) = read_pod(&format!("{}/expected.yaml", case.name));
        let policy = catalog.policy(case.policy);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(pod.labels()[LABEL_PROXIED], case.policy, "{}", case.name);
        assert_eq!(spec.automount_service_account_token, Some(false));
        let sidecars: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter(|c| c.name == SIDECAR_CONTAINER)
            .collect();
        assert_eq!(sidecars.len(), 1, "{}", case.name);
        // Transparent pods start with the interception step, then (native
        // mode) the sidecar; nothing else comes before them.
        let items: InjectedItems =
            serde_json::from_str(&pod.annotations()[ANNOTATION_INJECTED]).unwrap();
        let transparent = !items.transparent_targets.is_empty();
        let first: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .take(2)
            .collect();
        let expected_first: Vec<&str> = [
            transparent.then_some(INIT_CONTAINER),
            (!case.legacy).then_some(SIDECAR_CONTAINER),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(
            &first[..expected_first.len().min(first.len())],
            &expected_first[..],
            "{}",
            case.name
        );
        let inits: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter(|c| c.name == INIT_CONTAINER)
            .collect();
        assert_eq!(inits.len(), usize::from(transparent), "{}", case.name);
        if let Some(init) = inits.first() {
            let sc = init.security_context.as_ref().unwrap();
            let caps = sc.capabilities.as_ref().unwrap();
            assert_eq!(
                caps.add.as_deref(),
                Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
            );
            assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
            assert_eq!(
                sc.run_as_user,
                Some(0),
                "iptables needs effective capabilities"
            );
            assert_eq!(sc.privileged, Some(false));
            assert_eq!(
                init.args.as_deref().unwrap().join(" "),
                "init --config /etc/cardgate/config.yaml"
            );
            assert!(init.env.is_none(), "{}", case.name);
        }
        assert_eq!(
            sidecars[0].restart_policy.as_deref(),
            (!case.legacy).then_some("Always")
        );
        // No API-server token reaches an agent container.
        for c in spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .filter(|c| c.name != SIDECAR_CONTAINER && c.name != INIT_CONTAINER)
        {
            for m in c.volume_mounts.iter().flatten() {
                assert!(
                    !m.name.starts_with("kube-api-access-") && m.name != "cardgate-kube-api",
                    "{}: {} mounts {}",
                    case.name,
                    c.name,
                    m.name
                );
            }
            assert!(
                c.env
                    .iter()
                    .flatten()
                    .any(|e| e.name == "CARDGATE_TOKEN_FILE"),
                "{}: {} has no agent token",
                case.name,
                c.name
            );
        }
        assert!(items.volumes.contains(&"cardgate-config".to_string()));
        validate_pod(
            &pod,
            Some(policy),
            &catalog.rules_in(&policy.namespace().unwrap()),
            &settings(case.legacy),
        )
        .unwrap_or_else(|p| panic!("{}: injected pod fails validation: {p:?}", case.name));
    }
}

#[test]
fn reinjecting_a_golden_pod_changes_nothing() {
    let catalog = Catalog::load();
    for case in cases() {
        let (_, golden) = read_pod(&format!("{}/expected.yaml", case.name));
        assert_eq!(injected(&case, &catalog, &golden), golden, "{}", case.name);
    }
}

#[test]
fn golden_pods_pass_kubernetes_validate_strict() {
    let Ok(out) = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
    else {
        eprintln!(
            "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
        );
        return;
    };
    assert!(out.status.success(), "kubernetes-validate --version failed");
    let dir = std::env::temp_dir().join(format!("cardgate-inject-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let catalog = Catalog::load();
    for case in cases() {
        let (_, pod) = read_pod(&format!("{}/pod.yaml", case.name));
        let file = dir.join(format!("{}.yaml", case.name));
        std::fs::write(&file, to_yaml(&injected(&case, &catalog, &pod))).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: kubernetes-validate --strict rejected the injected pod:\n{}{}",
            case.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

//! Rendering tests: golden files for realistic policies (fail on drift;
//! `CARDGATE_UPDATE_GOLDEN=1` rewrites them) and one test per rule of the
//! rendering.

use std::path::PathBuf;

use cardgate_crds::config::{AuditSinkType, SidecarConfig};
use cardgate_crds::pod;
use cardgate_crds::v1alpha1::TlsMode;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde::Serialize;

use super::observed::{Observed, Problem, Reason};
use super::plan::{Plan, plan};
use crate::fixtures::{self, yaml};

/// Environment variable that rewrites the golden files instead of comparing.
const UPDATE: &str = "CARDGATE_UPDATE_GOLDEN";

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file `rel`, or rewrites it.
pub fn golden(rel: &str, actual: &str) {
    let path = golden_dir().join(rel);
    if std::env::var(UPDATE).is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; create it with {UPDATE}=1", path.display()));
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} drifted from the rendering (first difference at line {}):\n--- golden\n{}\n--- rendered\n{}\nIf the change is intended, rerun with {UPDATE}=1 and review the diff.",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end of file>"),
            actual.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

const HEADER: &str = "# Golden file: written by `cargo test -p cardgate-operator render::tests` with CARDGATE_UPDATE_GOLDEN=1.\n";

fn documents<T: Serialize>(objects: &[T]) -> String {
    let mut out = HEADER.to_string();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(o).unwrap());
    }
    out
}

fn ok(policy: &cardgate_crds::v1alpha1::AccessPolicy, observed: &Observed) -> Plan {
    plan(policy, observed, &fixtures::settings()).unwrap_or_else(|p| panic!("{p:#?}"))
}

fn problems(policy: &cardgate_crds::v1alpha1::AccessPolicy, observed: &Observed) -> Vec<Problem> {
    plan(policy, observed, &fixtures::settings()).expect_err("the plan should fail")
}

fn check_golden(case: &str, plan: &Plan) {
    golden(
        &format!("{case}/config.yaml"),
        &format!("{HEADER}{}", plan.config_text),
    );
    golden(
        &format!("{case}/networkpolicies.yaml"),
        &documents(&plan.network_policies),
    );
    let rbac = [
        serde_json::to_value(&plan.role).unwrap(),
        serde_json::to_value(&plan.role_binding).unwrap(),
    ];
    golden(&format!("{case}/rbac.yaml"), &documents(&rbac));
}

/// The rendered text is what the sidecar will load: it must pass the
/// sidecar's own loader (schema and validate) and mean the same config.
fn assert_round_trips(plan: &Plan) -> SidecarConfig {
    let loaded = SidecarConfig::from_text(&plan.config_text, "rendered")
        .unwrap_or_else(|e| panic!("{e}\n{}", plan.config_text));
    loaded.validate().unwrap();
    let again = serde_saphyr::to_string(&loaded).unwrap();
    assert_eq!(again, plan.config_text, "YAML -> config -> YAML is stable");
    use sha2::Digest;
    assert_eq!(
        hex::encode(sha2::Sha256::digest(plan.config_text.as_bytes())),
        plan.config_hash
    );
    loaded
}

#[test]
fn payments_sample_matches_golden_files() {
    let policy = fixtures::payments_policy();
    let plan = ok(&policy, &fixtures::payments_observed());
    check_golden("payments-support-agent", &plan);
    let config = assert_round_trips(&plan);

    let db = config.target("payments-db").unwrap();
    assert_eq!(db.listen.as_deref(), Some("127.0.0.1:5432"));
    assert_eq!(db.upstream.host, "payments-db.payments.svc");
    assert_eq!(db.upstream.addresses, ["10.96.40.12"]);
    assert_eq!(db.tls.mode, TlsMode::Disable);
    let creds = db.credentials.as_ref().unwrap();
    assert_eq!(
        creds.password_file,
        format!("{}/payments-db/password", pod::CREDENTIALS_DIR)
    );
    assert_eq!(
        config
            .approval
            .as_ref()
            .unwrap()
            .store
            .kubernetes
            .as_ref()
            .unwrap()
            .namespace,
        "payments"
    );
    let issuer = &config.identity.issuers[0];
    assert!(issuer.kubernetes);
    assert_eq!(issuer.audiences, [pod::AGENT_TOKEN_AUDIENCE]);
    assert_eq!(
        config.identity.subjects[0].subject.as_deref(),
        Some("system:serviceaccount:payments:support-agent")
    );
    assert_eq!(
        config.audit.recordings_dir.as_deref(),
        Some("/var/run/cardgate/state/recordings")
    );
    assert_eq!(config.audit.sinks[1].kind, AuditSinkType::Collector);
    assert!(config.proxy.transparent_listen.is_none());

    // The database's pods are selected and its *pod* port admitted: the
    // Service's named targetPort, not the Service port.
    let ingress = &plan.network_policies[0];
    let spec = ingress.spec.as_ref().unwrap();
    assert_eq!(
        spec.pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["app.kubernetes.io/component"],
        "primary"
    );
    let rule = &spec.ingress.as_ref().unwrap()[0];
    assert_eq!(
        rule.ports.as_ref().unwrap()[0].port,
        Some(IntOrString::String("tcp-postgresql".into()))
    );
    // Governed pods plus the payments API the sample keeps.
    assert_eq!(rule.from.as_ref().unwrap().len(), 2);
    assert!(ingress.metadata.owner_references.is_some());
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    assert!(!plan.crosses_namespaces(&policy));
}

#[test]
fn cross_namespace_policy_matches_golden_files() {
    let policy = fixtures::fraud_policy();
    let plan = ok(&policy, &fixtures::fraud_observed());
    check_golden("fraud-analyst-cross-namespace", &plan);
    let config = assert_round_trips(&plan);

    let ledger = config.target("ledger").unwrap();
    assert!(ledger.transparent);
    assert_eq!(ledger.upstream.host, "ledger-db.data.svc");
    assert_eq!(
        ledger
            .credentials
            .as_ref()
            .unwrap()
            .username_file
            .as_deref(),
        Some("/var/run/cardgate/credentials/ledger/username")
    );
    let vault = config.target("card-vault").unwrap();
    assert!(!vault.transparent);
    assert_eq!(vault.listen.as_deref(), Some("127.0.0.1:18443"));
    assert_eq!(vault.tls.mode, TlsMode::VerifyFull);
    assert_eq!(
        vault.tls.ca_file.as_deref(),
        Some("/var/run/cardgate/credentials/card-vault/ca.crt")
    );
    assert_eq!(vault.upstream.addresses, ["203.0.113.0/24"]);
    assert_eq!(
        config.proxy.transparent_listen.as_deref(),
        Some("0.0.0.0:15001")
    );
    assert_eq!(
        config.masking.hmac_key_file.as_deref(),
        Some("/var/run/cardgate/credentials/hmac/key")
    );
    assert!(config.audit.recordings_dir.is_none());
    let oidc = config
        .identity
        .issuers
        .iter()
        .find(|i| i.issuer == "https://login.example.com")
        .unwrap();
    assert_eq!(oidc.groups_claim, "roles");
    assert_eq!(oidc.audiences, ["cardgate"]);

    // The ledger's ingress policy lives in `data`, admits agents from the
    // `agents` namespace only, and is labelled (not owned) for cleanup.
    let ingress = &plan.network_policies[0];
    assert_eq!(ingress.metadata.namespace.as_deref(), Some("data"));
    assert_eq!(ingress.name_any(), "cardgate-agents-fraud-analyst-ledger");
    assert!(ingress.metadata.owner_references.is_none());
    let from = &ingress.spec.as_ref().unwrap().ingress.as_ref().unwrap()[0]
        .from
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        from.namespace_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()["kubernetes.io/metadata.name"],
        "agents"
    );
    assert!(plan.crosses_namespaces(&policy));
    // No allowedClients, and an OIDC issuer the egress policy cannot name.
    assert_eq!(plan.warnings.len(), 2, "{:?}", plan.warnings);
    assert!(plan.warnings[0].contains("spec.targets[0].allowedClients is empty"));
    assert!(plan.warnings[1].contains("https://login.example.com"));
}

#[test]
fn generated_network_policies_are_valid_objects() {
    for (policy, observed) in [
        (fixtures::payments_policy(), fixtures::payments_observed()),
        (fixtures::fraud_policy(), fixtures::fraud_observed()),
    ] {
        for np in ok(&policy, &observed).network_policies {
            let v = serde_json::to_value(&np).unwrap();
            assert_eq!(v["apiVersion"], "networking.k8s.io/v1");
            assert_eq!(v["kind"], "NetworkPolicy");
            let back: NetworkPolicy = serde_json::from_value(v).unwrap();
            assert_eq!(back, np);
            let labels = np.labels();
            assert_eq!(labels["app.kubernetes.io/managed-by"], "cardgate-operator");
            assert_eq!(labels["cardgate.dev/policy"], policy.name_any());
        }
    }
}

#[test]
fn missing_service_secret_and_rule_are_all_reported() {
    let policy = fixtures::payments_policy();
    let mut observed = fixtures::payments_observed();
    observed
        .services
        .insert(("payments".into(), "payments-db".into()), None);
    observed
        .secrets
        .insert("payments-db-agent-credentials".into(), None);
    observed.masking_rules[1].1 = None;
    let p = problems(&policy, &observed);
    let reasons: Vec<Reason> = p.iter().map(|p| p.reason).collect();
    assert_eq!(
        reasons,
        [
            Reason::MaskingRuleNotFound,
            Reason::CredentialsSecretNotFound,
            Reason::ServiceNotFound
        ],
        "{p:#?}"
    );
    assert_eq!(
        p[2].message,
        "spec.targets[0].service: Service payments/payments-db not found"
    );
    assert_eq!(
        p[1].message,
        "spec.targets[0].credentialsSecretRef: Secret payments/payments-db-agent-credentials not found"
    );
}

#[test]
fn secret_without_the_named_key_is_reported() {
    let policy = fixtures::fraud_policy();
    let mut observed = fixtures::fraud_observed();
    observed.secrets.insert(
        "ledger-agent".into(),
        Some(["username".to_string(), "password".to_string()].into()),
    );
    let p = problems(&policy, &observed);
    assert_eq!(p.len(), 2);
    assert!(p.iter().all(|p| p.reason == Reason::SecretKeyMissing));
    assert!(p[0].message.contains("has no key \"user\""), "{}", p[0]);
}

#[test]
fn invalid_masking_rule_is_reported_with_each_problem() {
    let policy = fixtures::payments_policy();
    let mut observed = fixtures::payments_observed();
    let rule = observed.masking_rules[0].1.as_mut().unwrap();
    rule.spec
        .detectors
        .push(yaml("{type: regex, pattern: '(unclosed'}"));
    rule.spec.action.replacement = Some("XXXX-1234".into());
    let p = problems(&policy, &observed);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p.iter().all(|p| p.reason == Reason::MaskingRuleInvalid));
    assert!(p[0].message.starts_with(
        "spec.maskingRules: MaskingRule card-numbers: spec.detectors[2].pattern: invalid pattern"
    ));
    assert!(p[1].message.contains("spec.action.replacement"));
}

#[test]
fn service_port_and_selector_problems() {
    let policy = fixtures::payments_policy();
    let mut observed = fixtures::payments_observed();
    let mut svc = fixtures::payments_db_service();
    svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 6432;
    observed
        .services
        .insert(("payments".into(), "payments-db".into()), Some(svc.clone()));
    let p = problems(&policy, &observed);
    assert_eq!(p[0].reason, Reason::ServicePortNotFound);
    assert!(
        p[0].message.ends_with("has no port 5432 (ports: 6432)"),
        "{}",
        p[0]
    );

    svc.spec.as_mut().unwrap().selector = None;
    observed
        .services
        .insert(("payments".into(), "payments-db".into()), Some(svc));
    assert_eq!(
        problems(&policy, &observed)[0].reason,
        Reason::ServiceWithoutSelector
    );
}

#[test]
fn a_rendering_the_sidecar_would_reject_is_degraded_with_every_problem() {
    // Transparent interception of a headless Service has no addresses to
    // redirect: the sidecar's validator refuses that, so the operator does.
    let mut policy = fixtures::payments_policy();
    policy.spec.transparent = true;
    let mut observed = fixtures::payments_observed();
    let mut svc = fixtures::payments_db_service();
    let spec = svc.spec.as_mut().unwrap();
    spec.cluster_ip = Some("None".into());
    spec.cluster_ips = Some(vec!["None".into()]);
    observed
        .services
        .insert(("payments".into(), "payments-db".into()), Some(svc));
    let p = problems(&policy, &observed);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].reason, Reason::ConfigInvalid);
    assert_eq!(
        p[0].message,
        "rendered sidecar configuration: targets[0].upstream.addresses: transparent targets need the addresses connections are redirected from"
    );
}

#[test]
fn hmac_rules_must_share_one_key_and_the_hmac_directory() {
    let mut policy = fixtures::fraud_policy();
    let mut observed = fixtures::fraud_observed();
    let mut other = fixtures::card_tokens_rule();
    other.metadata.name = Some("more-tokens".into());
    other.spec.action.hmac_key_secret_ref.as_mut().unwrap().name = "other-key".into();
    policy.spec.masking_rules.push("more-tokens".into());
    observed
        .masking_rules
        .push(("more-tokens".into(), Some(other)));
    observed
        .secrets
        .insert("other-key".into(), Some(["key".to_string()].into()));
    let p = problems(&policy, &observed);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0].reason, Reason::HmacKeyConflict);

    let mut policy = fixtures::fraud_policy();
    policy.spec.targets[1].name = "hmac".into();
    policy.spec.rules[1].matches.targets = vec!["hmac".into()];
    let p = problems(&policy, &fixtures::fraud_observed());
    assert!(
        p[0].message.contains("reserved for the HMAC masking key"),
        "{p:#?}"
    );
}

#[test]
fn spec_problems_come_before_any_lookup() {
    let mut policy = fixtures::fraud_policy();
    policy.spec.targets[1].tls = None;
    policy.metadata.name = Some("a".repeat(64));
    let p = problems(&policy, &Observed::default());
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p.iter().all(|p| p.reason == Reason::InvalidSpec));
    assert!(p[0].message.starts_with("metadata.name: 64 characters"));
    assert!(
        p[1].message
            .starts_with("spec.targets[1].tls: external targets default to verifyFull")
    );
}

#[test]
fn default_subject_is_the_pods_own_service_account() {
    let mut policy = fixtures::payments_policy();
    policy.spec.subjects.clear();
    let plan = ok(&policy, &fixtures::payments_observed());
    let config = assert_round_trips(&plan);
    assert_eq!(config.identity.subjects.len(), 1);
    assert!(config.identity.subjects[0].pod_service_account);
    assert_eq!(
        config.identity.issuers[0].bearer_token_file.as_deref(),
        Some(pod::API_TOKEN_FILE)
    );
}

#[test]
fn issuer_wide_oidc_subjects_only_stand_alone() {
    let mut policy = fixtures::fraud_policy();
    let oidc = policy.spec.subjects[1].oidc.as_mut().unwrap();
    oidc.group = None;
    let p = problems(&policy, &fixtures::fraud_observed());
    assert!(
        p[0].message
            .starts_with("spec.subjects[1].oidc: names neither subject nor group")
    );

    policy.spec.subjects.remove(0);
    let plan = ok(&policy, &fixtures::fraud_observed());
    let config = assert_round_trips(&plan);
    assert!(
        config.identity.subjects.is_empty(),
        "any token of the issuer"
    );
    assert_eq!(config.identity.issuers.len(), 1);
}

#[test]
fn without_a_collector_records_stay_on_stdout_and_egress_has_no_collector_rule() {
    let policy = fixtures::fraud_policy();
    let mut settings = fixtures::settings();
    let with = plan(&policy, &fixtures::fraud_observed(), &settings).unwrap();
    settings.collector = None;
    settings.collector_ca = None;
    let plan = plan(&policy, &fixtures::fraud_observed(), &settings).unwrap();
    let config = assert_round_trips(&plan);
    assert_eq!(config.audit.sinks.len(), 1);
    assert_eq!(config.audit.sinks[0].kind, AuditSinkType::Stdout);
    assert!(
        !plan
            .config_map
            .data
            .as_ref()
            .unwrap()
            .contains_key("collector-ca.crt")
    );
    let egress_rules = |p: &Plan| {
        let np = p.network_policies.last().unwrap();
        np.spec.as_ref().unwrap().egress.clone().unwrap()
    };
    let collector_rule = |r: &NetworkPolicyEgressRule| {
        r.to.as_ref().is_some_and(|to| {
            to.iter().any(|peer| {
                peer.pod_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|l| l.values().any(|v| v == "cardgate-audit-collector"))
            })
        })
    };
    assert!(egress_rules(&with).iter().any(collector_rule));
    assert!(!egress_rules(&plan).iter().any(collector_rule));
    assert_eq!(egress_rules(&with).len(), egress_rules(&plan).len() + 1);
    assert!(
        !plan.warnings.iter().any(|w| w.contains("collector")),
        "{:?}",
        plan.warnings
    );
}

#[test]
fn config_map_carries_the_hash_and_is_owned_by_the_policy() {
    let policy = fixtures::payments_policy();
    let plan = ok(&policy, &fixtures::payments_observed());
    let cm = &plan.config_map;
    assert_eq!(cm.name_any(), "cardgate-support-agent");
    assert_eq!(
        cm.annotations()[pod::ANNOTATION_CONFIG_HASH],
        plan.config_hash
    );
    assert_eq!(cm.data.as_ref().unwrap()[pod::CONFIG_KEY], plan.config_text);
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "AccessPolicy");
    assert_eq!(owner.uid, "5c3e1f0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b");
    assert_eq!(owner.controller, Some(true));
    // The Role grants exactly what the sidecar needs.
    let rules = plan.role.rules.as_ref().unwrap();
    assert_eq!(rules[0].verbs, ["create", "get", "list", "watch"]);
    assert_eq!(
        rules[1].resources.as_ref().unwrap(),
        &["approvalrequests/status"]
    );
    assert_eq!(rules[1].verbs, ["patch"]);
    let subjects = plan.role_binding.subjects.as_ref().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "support-agent");
}

#[test]
fn egress_without_cidrs_or_api_server_is_a_warning_not_an_opening() {
    let policy = fixtures::fraud_policy();
    let mut observed = fixtures::fraud_observed();
    observed.api_server.clear();
    let mut policy2 = policy.clone();
    policy2.spec.targets[1]
        .external
        .as_mut()
        .unwrap()
        .cidrs
        .clear();
    policy2.spec.transparent = false;
    let plan = ok(&policy2, &observed);
    let egress = plan.network_policies.last().unwrap();
    let rules = egress.spec.as_ref().unwrap().egress.as_ref().unwrap();
    // DNS, ledger, collector: no rule for the vault, none for the API server.
    assert_eq!(rules.len(), 3);
    assert!(
        rules
            .iter()
            .all(|r| r.to.as_ref().is_some_and(|t| !t.is_empty()))
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("external.cidrs is empty"))
    );
    assert!(
        plan.warnings
            .iter()
            .any(|w| w.contains("API server's endpoints are unknown"))
    );
}

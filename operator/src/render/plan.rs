//! Everything the operator writes for one policy, decided in one pure
//! function: the configuration, its ConfigMap, the NetworkPolicies and RBAC,
//! or the complete list of problems that prevent writing any of it.

use std::collections::{BTreeMap, BTreeSet};

use cardgate_crds::pod;
use cardgate_crds::v1alpha1::{AccessPolicy, GeneratedObject, MaskingRule};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;

use super::config::{self, COLLECTOR_CA_KEY, RenderSettings};
use super::meta;
use super::network;
use super::observed::{Observed, Problem, Reason, SecretPurpose, secret_uses};
use super::rbac;
use super::targets;

/// Longest label value; policy names end up in pod labels.
const MAX_LABEL_VALUE: usize = 63;

/// The objects to apply for a policy.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The rendered configuration file.
    pub config_text: String,
    /// SHA-256 (hex) of `config_text`.
    pub config_hash: String,
    /// ConfigMap holding the configuration (and the collector's CA).
    pub config_map: ConfigMap,
    /// Ingress policies, then the egress policy when requested.
    pub network_policies: Vec<NetworkPolicy>,
    /// The sidecars' ApprovalRequest rights.
    pub role: Role,
    /// Binds `role` to the governed pods' service accounts.
    pub role_binding: RoleBinding,
    /// Things that work but need a person's attention (shown in the
    /// NetworkPoliciesApplied condition).
    pub warnings: Vec<String>,
}

impl Plan {
    /// The objects in `status.generated` form, in apply order.
    pub fn generated(&self, policy: &AccessPolicy) -> Vec<GeneratedObject> {
        let own = policy.namespace();
        let entry = |kind: &str, name: Option<&String>, ns: Option<&String>| GeneratedObject {
            kind: kind.to_string(),
            name: name.cloned().unwrap_or_default(),
            namespace: ns.filter(|n| Some(*n) != own.as_ref()).cloned(),
        };
        let mut out = vec![entry(
            "ConfigMap",
            self.config_map.metadata.name.as_ref(),
            None,
        )];
        out.extend(self.network_policies.iter().map(|np| {
            entry(
                "NetworkPolicy",
                np.metadata.name.as_ref(),
                np.metadata.namespace.as_ref(),
            )
        }));
        out.push(entry("Role", self.role.metadata.name.as_ref(), None));
        out.push(entry(
            "RoleBinding",
            self.role_binding.metadata.name.as_ref(),
            None,
        ));
        out
    }

    /// Whether some NetworkPolicy lives outside the policy's namespace, where
    /// only the finalizer can clean it up.
    pub fn crosses_namespaces(&self, policy: &AccessPolicy) -> bool {
        let own = policy.namespace();
        self.network_policies
            .iter()
            .any(|np| np.metadata.namespace != own)
    }
}

/// Problems visible in the policy alone, before anything is fetched:
/// `AccessPolicySpec::validate()` plus what the operator itself needs.
pub fn check_spec(policy: &AccessPolicy) -> Vec<Problem> {
    let mut problems: Vec<Problem> = match policy.spec.validate() {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .iter()
            .map(|e| Problem::new(Reason::InvalidSpec, e.to_string()))
            .collect(),
    };
    let name = policy.name_any();
    if name.len() > MAX_LABEL_VALUE {
        problems.push(Problem::new(
            Reason::InvalidSpec,
            format!(
                "metadata.name: {} characters; governed pods are labelled {}=<policy name>, and label values hold at most {MAX_LABEL_VALUE}",
                name.len(),
                pod::LABEL_PROXIED
            ),
        ));
    }
    for (i, t) in policy.spec.targets.iter().enumerate() {
        if t.external.is_some() && t.tls.is_none() {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!("spec.targets[{i}].tls: external targets default to verifyFull, which needs tls.caSecretRef (the CA that signed the server's certificate); set it, or choose tls.mode explicitly"),
            ));
        }
    }
    problems
}

/// Problems with the fetched MaskingRules and Secrets.
fn check_references(policy: &AccessPolicy, observed: &Observed) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (name, rule) in &observed.masking_rules {
        match rule {
            None => problems.push(Problem::new(
                Reason::MaskingRuleNotFound,
                format!(
                    "spec.maskingRules: MaskingRule {}/{name} not found",
                    policy.namespace().unwrap_or_default()
                ),
            )),
            Some(r) => {
                if let Err(errors) = r.spec.validate() {
                    for e in errors.iter() {
                        problems.push(Problem::new(
                            Reason::MaskingRuleInvalid,
                            format!("spec.maskingRules: MaskingRule {name}: {e}"),
                        ));
                    }
                }
            }
        }
    }
    let mut reported = BTreeSet::new();
    for u in secret_uses(policy, &observed.masking_rules) {
        match observed.secrets.get(&u.name) {
            Some(Some(keys)) if keys.contains(&u.key) => {}
            Some(Some(keys)) => problems.push(Problem::new(
                Reason::SecretKeyMissing,
                format!(
                    "{}: Secret {} has no key {:?} (keys: {})",
                    u.field,
                    u.name,
                    u.key,
                    keys.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
            _ if !reported.insert((u.field.clone(), u.name.clone())) => {}
            _ => problems.push(Problem::new(
                match u.purpose {
                    SecretPurpose::Credentials => Reason::CredentialsSecretNotFound,
                    SecretPurpose::CaBundle => Reason::CaSecretNotFound,
                    SecretPurpose::HmacKey => Reason::HmacKeySecretNotFound,
                },
                format!(
                    "{}: Secret {}/{} not found",
                    u.field,
                    policy.namespace().unwrap_or_default(),
                    u.name
                ),
            )),
        }
    }
    problems
}

/// Decides everything the operator applies for `policy`, or why it cannot.
/// Every problem is listed, so one round of fixes is enough.
pub fn plan(
    policy: &AccessPolicy,
    observed: &Observed,
    settings: &RenderSettings,
) -> Result<Plan, Vec<Problem>> {
    let mut problems = check_spec(policy);
    if !problems.is_empty() {
        return Err(problems);
    }
    problems.extend(check_references(policy, observed));
    let resolved = targets::resolve(policy, observed).unwrap_or_else(|p| {
        problems.extend(p);
        Vec::new()
    });
    if !problems.is_empty() {
        return Err(problems);
    }
    let rules: Vec<(String, &MaskingRule)> = observed
        .masking_rules
        .iter()
        .filter_map(|(n, r)| r.as_ref().map(|r| (n.clone(), r)))
        .collect();
    let config = config::render(policy, &resolved, &rules, settings)?;
    if let Err(errors) = config.validate() {
        return Err(errors
            .iter()
            .map(|e| {
                Problem::new(
                    Reason::ConfigInvalid,
                    format!("rendered sidecar configuration: {e}"),
                )
            })
            .collect());
    }
    let (config_text, config_hash) = config::to_text(&config).map_err(|p| vec![p])?;

    let ns = policy.namespace().unwrap_or_default();
    let mut cm_meta = meta::object_meta(policy, pod::config_map_name(&policy.name_any()), &ns);
    cm_meta.annotations = Some(BTreeMap::from([(
        pod::ANNOTATION_CONFIG_HASH.to_string(),
        config_hash.clone(),
    )]));
    let mut data = BTreeMap::from([(pod::CONFIG_KEY.to_string(), config_text.clone())]);
    if let (Some(_), Some(ca)) = (&settings.collector, &settings.collector_ca) {
        data.insert(COLLECTOR_CA_KEY.to_string(), ca.clone());
    }
    let config_map = ConfigMap {
        metadata: cm_meta,
        data: Some(data),
        ..ConfigMap::default()
    };

    let mut warnings = network::allowed_clients_warnings(&resolved);
    let mut network_policies = network::ingress_policies(policy, &resolved);
    if policy.spec.egress.as_ref().is_some_and(|e| e.restrict) {
        let (np, w) = network::egress_policy(policy, &resolved, &observed.api_server, settings);
        network_policies.push(np);
        warnings.extend(w);
    }
    Ok(Plan {
        config_text,
        config_hash,
        config_map,
        network_policies,
        role: rbac::sidecar_role(policy),
        role_binding: rbac::sidecar_role_binding(policy, &observed.governed.service_accounts),
        warnings,
    })
}

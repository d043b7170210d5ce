//! What the reconciler read from the cluster for one policy, and what can be
//! wrong with it.
//!
//! Rendering is a pure function of the policy and these observations, so
//! every decision is tested without an API server.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cardgate_crds::v1alpha1::{AccessPolicy, MaskActionType, MaskingRule};
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

/// Why a policy cannot be rendered; the `Degraded` condition's reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The spec fails `AccessPolicySpec::validate()` or an operator check.
    InvalidSpec,
    /// A MaskingRule named in `spec.maskingRules` does not exist.
    MaskingRuleNotFound,
    /// A MaskingRule named in `spec.maskingRules` fails validation.
    MaskingRuleInvalid,
    /// A target's Service does not exist.
    ServiceNotFound,
    /// A target's Service has no port with the target's number.
    ServicePortNotFound,
    /// A target's Service selects no pods by label, so no NetworkPolicy can
    /// protect them.
    ServiceWithoutSelector,
    /// A target's `credentialsSecretRef` names a missing Secret.
    CredentialsSecretNotFound,
    /// A target's `tls.caSecretRef` names a missing Secret.
    CaSecretNotFound,
    /// A MaskingRule's `hmacKeySecretRef` names a missing Secret.
    HmacKeySecretNotFound,
    /// A referenced Secret lacks the key the sidecar needs.
    SecretKeyMissing,
    /// The policy's MaskingRules name different HMAC keys; a sidecar holds one.
    HmacKeyConflict,
    /// The rendered configuration fails `SidecarConfig::validate()`.
    ConfigInvalid,
}

impl Reason {
    /// The condition reason (CamelCase, as the API conventions ask).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidSpec => "InvalidSpec",
            Self::MaskingRuleNotFound => "MaskingRuleNotFound",
            Self::MaskingRuleInvalid => "MaskingRuleInvalid",
            Self::ServiceNotFound => "ServiceNotFound",
            Self::ServicePortNotFound => "ServicePortNotFound",
            Self::ServiceWithoutSelector => "ServiceWithoutSelector",
            Self::CredentialsSecretNotFound => "CredentialsSecretNotFound",
            Self::CaSecretNotFound => "CaSecretNotFound",
            Self::HmacKeySecretNotFound => "HmacKeySecretNotFound",
            Self::SecretKeyMissing => "SecretKeyMissing",
            Self::HmacKeyConflict => "HmacKeyConflict",
            Self::ConfigInvalid => "ConfigInvalid",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason a policy cannot be rendered, with the field to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Machine-readable reason.
    pub reason: Reason,
    /// What is wrong, starting with the path of the field to change.
    pub message: String,
}

impl Problem {
    /// A problem with `reason` and `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A Service, identified the way targets name it.
pub type ServiceKey = (String, String);

/// Running pods of a policy and the service accounts its pods use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GovernedPods {
    /// Pods in phase Running; reported as `status.governedPods`.
    pub running: i32,
    /// Service accounts of the pods that have not terminated; their sidecars
    /// get the ApprovalRequest Role.
    pub service_accounts: BTreeSet<String>,
}

/// An address the API server answers on, as pods reach it after the
/// `kubernetes` Service is translated (egress NetworkPolicies see these).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiServerEndpoint {
    /// IP address.
    pub address: String,
    /// TCP port.
    pub port: i32,
}

/// Everything the reconciler fetched for one policy.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The MaskingRules of `spec.maskingRules`, in that order; `None` when
    /// missing.
    pub masking_rules: Vec<(String, Option<MaskingRule>)>,
    /// The targets' Services; `None` when missing.
    pub services: BTreeMap<ServiceKey, Option<Service>>,
    /// Key names of each referenced Secret; `None` when the Secret is missing.
    /// Values are never kept.
    pub secrets: BTreeMap<String, Option<BTreeSet<String>>>,
    /// API server endpoints (read only when the egress policy is generated).
    pub api_server: Vec<ApiServerEndpoint>,
    /// The pods this policy governs.
    pub governed: GovernedPods,
}

/// What a referenced Secret is used for; picks the reason when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPurpose {
    /// Upstream user name and password of a target.
    Credentials,
    /// CA bundle for a target's TLS.
    CaBundle,
    /// Key for `hmac` masking.
    HmacKey,
}

/// One key of one Secret that the sidecar will mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretUse {
    /// Secret name (policy namespace).
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
    /// What it is for.
    pub purpose: SecretPurpose,
    /// Field that references it, for messages.
    pub field: String,
}

/// Every Secret key the policy (and its MaskingRules) reference, in spec
/// order, so the reconciler can fetch each Secret once.
pub fn secret_uses(
    policy: &AccessPolicy,
    rules: &[(String, Option<MaskingRule>)],
) -> Vec<SecretUse> {
    let mut uses = Vec::new();
    for (i, t) in policy.spec.targets.iter().enumerate() {
        if let Some(c) = &t.credentials_secret_ref {
            for key in [
                c.username_key.as_deref().unwrap_or("username"),
                c.password_key.as_deref().unwrap_or("password"),
            ] {
                uses.push(SecretUse {
                    name: c.name.clone(),
                    key: key.to_string(),
                    purpose: SecretPurpose::Credentials,
                    field: format!("spec.targets[{i}].credentialsSecretRef"),
                });
            }
        }
        if let Some(r) = t.tls.as_ref().and_then(|tls| tls.ca_secret_ref.as_ref()) {
            uses.push(SecretUse {
                name: r.name.clone(),
                key: r.key.clone(),
                purpose: SecretPurpose::CaBundle,
                field: format!("spec.targets[{i}].tls.caSecretRef"),
            });
        }
    }
    for (name, rule) in rules {
        let Some(rule) = rule else { continue };
        let action = &rule.spec.action;
        if action.kind == MaskActionType::Hmac
            && let Some(r) = &action.hmac_key_secret_ref
        {
            uses.push(SecretUse {
                name: r.name.clone(),
                key: r.key.clone(),
                purpose: SecretPurpose::HmacKey,
                field: format!("MaskingRule {name}: spec.action.hmacKeySecretRef"),
            });
        }
    }
    uses
}

/// The Services the policy's targets name, `(namespace, name)`, in order and
/// without repeats.
pub fn service_keys(policy: &AccessPolicy) -> Vec<ServiceKey> {
    let ns = policy.namespace().unwrap_or_default();
    let mut keys: Vec<ServiceKey> = Vec::new();
    for t in &policy.spec.targets {
        if let Some(s) = &t.service {
            let key = (
                s.namespace.clone().unwrap_or_else(|| ns.clone()),
                s.name.clone(),
            );
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

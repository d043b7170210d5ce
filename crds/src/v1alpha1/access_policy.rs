//! AccessPolicy: which agent pods are governed, what they may reach and do.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ApprovalSettings, Limits, PolicyRule, Protocol, RuleAction};
use crate::validation::{Problems, ValidationErrors, index, is_dns_label, join};

/// Governs agent pods: the operator injects the cardgate sidecar into the pods
/// `agentSelector` picks, renders this policy into the sidecar's
/// configuration, and generates NetworkPolicies so the targets are reachable
/// only through the sidecar. The sidecar then authenticates each agent, checks
/// every statement against `rules`, masks card data and audits everything.
#[derive(CustomResource, Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "cardgate.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    plural = "accesspolicies",
    shortname = "ap",
    category = "cardgate",
    namespaced,
    status = "AccessPolicyStatus",
    doc = "AccessPolicy governs agent pods: which pods get the cardgate sidecar, which services they may reach through it, and what they may do there.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Targets",
        type_ = "string",
        json_path = ".spec.targets[*].name"
    ),
    printcolumn(
        name = "Agents",
        type_ = "integer",
        json_path = ".status.governedPods",
        description = "Running pods governed by this policy"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.rules) || self.rules.all(r, r.action != 'requireApproval') || has(self.approval)").message("rules with action requireApproval need spec.approval (who approves, quorum, timeout)"))]
pub struct AccessPolicySpec {
    /// Selects the agent pods in this namespace that get the sidecar and are
    /// governed by this policy. A pod may be selected by one policy only.
    pub agent_selector: LabelSelector,
    /// Who may connect through the sidecar. Each agent presents a token (JWT)
    /// in place of a password; it must match one subject. Empty means the
    /// service account of each governed pod, and nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The cardholder-data services the agents reach through the sidecar.
    /// A list-map keyed by name, so the API server itself refuses two
    /// targets with one name.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one target is required"))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub targets: Vec<Target>,
    /// Ordered rules; the first rule that matches a statement decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// What happens to statements no rule matches. Defaults to deny.
    #[serde(default)]
    pub default_action: RuleAction,
    /// Bulk-export guards applied to every statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Approvers and timing for rules with action requireApproval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalSettings>,
    /// Names of MaskingRules (same namespace) applied on top of the built-in
    /// card-number and sensitive-authentication-data masking, which is always on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masking_rules: Vec<String>,
    /// Egress restrictions for the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressSettings>,
    /// Redirect agent connections to the targets' own addresses into the
    /// sidecar with iptables, so unmodified clients need no settings. Can be
    /// overridden per target.
    #[serde(default)]
    pub transparent: bool,
    /// Audit settings for the governed pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditSettings>,
}

/// An identity allowed to connect: exactly one of serviceAccount or oidc.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.serviceAccount) != has(self.oidc)").message("a subject needs exactly one of serviceAccount or oidc"))]
pub struct Subject {
    /// A Kubernetes service account; agents present its projected token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountSubject>,
    /// Tokens from an OpenID Connect issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcSubject>,
}

/// A Kubernetes service account.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountSubject {
    /// Service account name.
    pub name: String,
    /// Namespace; defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Tokens from an OpenID Connect issuer, optionally narrowed to one subject or
/// group.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcSubject {
    /// Issuer URL (`iss` claim); its discovery document gives the keys.
    pub issuer: String,
    /// Expected audience (`aud` claim); defaults to `cardgate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Exact subject (`sub` claim); absent means any subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Required group, read from `groupsClaim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Claim holding the groups; defaults to `groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups_claim: Option<String>,
}

/// A cardholder-data service agents reach through the sidecar.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.service) != has(self.external)").message("a target needs exactly one of service or external"))]
#[x_kube(validation = Rule::new("(has(self.protocol) && self.protocol != 'postgres') || has(self.credentialsSecretRef)").message("postgres targets need credentialsSecretRef: the sidecar, not the agent, holds the database credential"))]
pub struct Target {
    /// Name used in rules, audit records and metrics (a DNS label).
    pub name: String,
    /// Wire protocol: postgres, http or kubernetes.
    #[serde(default)]
    pub protocol: Protocol,
    /// An in-cluster Service; NetworkPolicies are generated for its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceTarget>,
    /// A service outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalTarget>,
    /// Loopback port the sidecar listens on for this target (explicit mode);
    /// defaults to the target's own port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("listenPort must be a TCP port (1-65535)"))]
    pub listen_port: Option<i32>,
    /// Database to connect to upstream; defaults to the one the agent names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// TLS from the sidecar to the target. Defaults to verifyFull for
    /// external targets and disable for in-cluster Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Secret with the upstream credential (`username`, `password` keys); it
    /// is mounted into the sidecar container only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<CredentialsRef>,
    /// Clients other than governed agents that must keep direct access to an
    /// in-cluster target, e.g. the application that owns the database. The
    /// generated NetworkPolicy admits only these and the governed pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_clients: Vec<AllowedClient>,
    /// Environment variables set on agent containers to a connection URL
    /// pointing at the sidecar (explicit mode), e.g. DATABASE_URL.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connection_env: Vec<String>,
    /// Overrides spec.transparent for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<bool>,
}

/// An in-cluster Service.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceTarget {
    /// Service name.
    pub name: String,
    /// Namespace; defaults to the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Service port.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be a TCP port (1-65535)"))]
    pub port: i32,
}

/// A service outside the cluster.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExternalTarget {
    /// DNS name or IP address.
    pub host: String,
    /// TCP port.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("port must be a TCP port (1-65535)"))]
    pub port: i32,
    /// Address ranges the host resolves into; used for egress NetworkPolicies
    /// and transparent interception.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<String>,
}

/// How the sidecar verifies the target: `disable` (plain TCP), `require`
/// (encrypted, certificate not checked) or `verifyFull` (encrypted, chain and
/// host name checked against the CA).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TlsMode {
    Disable,
    Require,
    VerifyFull,
}

/// TLS from the sidecar to a target.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.mode != 'verifyFull' || has(self.caSecretRef)").message("tls.mode verifyFull needs caSecretRef"))]
pub struct UpstreamTls {
    /// disable, require or verifyFull.
    pub mode: TlsMode,
    /// Secret key holding the PEM CA bundle that signed the target's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<super::common::SecretKeyRef>,
    /// Host name expected in the certificate; defaults to the target host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Secret holding the upstream credential.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsRef {
    /// Secret name (same namespace).
    pub name: String,
    /// Key of the user name; defaults to `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_key: Option<String>,
    /// Key of the password; defaults to `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_key: Option<String>,
}

/// Pods allowed to reach an in-cluster target directly.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("has(self.podSelector) || has(self.namespaceSelector)").message("an allowed client needs podSelector, namespaceSelector or both"))]
pub struct AllowedClient {
    /// Pods (in the namespace chosen by namespaceSelector, else the target's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces whose pods are admitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Egress restrictions for agent pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressSettings {
    /// Generate an egress NetworkPolicy for the agent pods that allows only
    /// DNS, the targets, the audit collector (when one is configured) and the
    /// API server.
    #[serde(default)]
    pub restrict: bool,
}

/// Audit settings for governed pods.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSettings {
    /// Keep a replayable recording of each session (masked, with timings).
    #[serde(default = "yes")]
    pub record_sessions: bool,
}

fn yes() -> bool {
    true
}

/// Observed state of an AccessPolicy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicyStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, NetworkPoliciesApplied and Degraded, following the Kubernetes
    /// API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Running pods governed by this policy.
    #[serde(default)]
    pub governed_pods: i32,
    /// Hash of the rendered sidecar configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// Objects the operator generated for this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generated: Vec<GeneratedObject>,
    /// Totals reported by the governed sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<PolicyCounters>,
}

/// An object the operator generated and owns.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedObject {
    /// Kind, e.g. NetworkPolicy.
    pub kind: String,
    /// Object name.
    pub name: String,
    /// Namespace, when not the policy's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Totals reported by the governed sidecars.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyCounters {
    /// Sessions opened.
    pub sessions: i64,
    /// Statements allowed.
    pub statements_allowed: i64,
    /// Statements denied.
    pub statements_denied: i64,
    /// Statements run after approval.
    pub statements_approved: i64,
    /// Values masked in results and errors.
    pub masked_values: i64,
}

impl AccessPolicySpec {
    /// Checks what the schema and CEL rules cannot: unique names and ports,
    /// rule references, patterns, approval settings. Used by the operator
    /// before rendering and by tests of the samples.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        let mut names = BTreeSet::new();
        let mut ports = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let path = index("spec.targets", i);
            if !is_dns_label(&t.name) {
                p.push(
                    join(&path, "name"),
                    format!(
                        "{:?} is not a DNS label (lower case letters, digits, '-')",
                        t.name
                    ),
                );
            }
            if !names.insert(t.name.as_str()) {
                p.push(
                    join(&path, "name"),
                    format!("duplicate target name {:?}", t.name),
                );
            }
            match (&t.service, &t.external) {
                (Some(_), Some(_)) | (None, None) => {
                    p.push(path.clone(), "needs exactly one of service or external")
                }
                _ => {}
            }
            if t.protocol == Protocol::Postgres && t.credentials_secret_ref.is_none() {
                p.push(
                    join(&path, "credentialsSecretRef"),
                    "required for postgres targets: the sidecar holds the database credential",
                );
            }
            let port = t.listen_port.or_else(|| t.port());
            if let Some(port) = port
                && !ports.insert(port)
            {
                p.push(
                    join(&path, "listenPort"),
                    format!(
                        "port {port} is already used by another target; set a distinct listenPort"
                    ),
                );
            }
            if let Some(ext) = &t.external {
                for (j, c) in ext.cidrs.iter().enumerate() {
                    if crate::config::parse_cidr(c).is_none() {
                        p.push(
                            index(&join(&path, "external.cidrs"), j),
                            format!("{c:?} is not an address range like 10.0.0.0/24"),
                        );
                    }
                }
            }
        }
        let target_names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let mut rule_names = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let path = index("spec.rules", i);
            r.validate(&path, &target_names, &mut p);
            if let Some(n) = &r.name
                && !rule_names.insert(n.as_str())
            {
                p.push(join(&path, "name"), format!("duplicate rule name {n:?}"));
            }
        }
        let needs_approval = self
            .rules
            .iter()
            .any(|r| r.action == RuleAction::RequireApproval)
            || self.default_action == RuleAction::RequireApproval;
        match &self.approval {
            Some(a) => a.validate("spec.approval", &mut p),
            None if needs_approval => p.push(
                "spec.approval",
                "rules with action requireApproval need spec.approval (who approves, quorum, timeout)",
            ),
            None => {}
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if s.service_account.is_some() == s.oidc.is_some() {
                p.push(
                    index("spec.subjects", i),
                    "needs exactly one of serviceAccount or oidc",
                );
            }
            if let Some(o) = &s.oidc
                && !o.issuer.starts_with("https://")
            {
                p.push(
                    join(&index("spec.subjects", i), "oidc.issuer"),
                    "issuer must be an https:// URL",
                );
            }
        }
        p.finish()
    }
}

impl Target {
    /// The target's own port (Service or external port).
    pub fn port(&self) -> Option<i32> {
        self.service
            .as_ref()
            .map(|s| s.port)
            .or_else(|| self.external.as_ref().map(|e| e.port))
    }
}

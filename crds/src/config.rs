//! The sidecar configuration file: rendered by the operator from an
//! AccessPolicy and its MaskingRules, or written by hand for standalone mode.
//!
//! [`SidecarConfig::from_text`] reports every problem at once with its path:
//! the document is first checked against the JSON schema derived from these
//! types (so unknown fields, wrong types and unknown enum values all show up
//! together), then by [`SidecarConfig::validate`] for what a schema cannot
//! express (references, patterns, regexes, port clashes). The operator calls
//! the same `validate()` before it writes a ConfigMap.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::v1alpha1::{
    ApprovalSettings, DetectorType, Limits, MaskActionType, MaskingRuleSpec, PolicyRule, Protocol,
    RuleAction, TlsMode,
};
use crate::validation::{FieldError, Problems, ValidationErrors, index, is_dns_label, join};

/// `apiVersion` of the configuration file.
pub const API_VERSION: &str = "cardgate.dev/v1alpha1";
/// `kind` of the configuration file.
pub const KIND: &str = "SidecarConfig";
/// PostgreSQL's own cap on the startup packet; not configurable.
pub const MAX_STARTUP_PACKET: u32 = 10_000;

/// Everything the sidecar needs to run one policy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SidecarConfig {
    /// Always `cardgate.dev/v1alpha1`.
    pub api_version: String,
    /// Always `SidecarConfig`.
    pub kind: String,
    /// The AccessPolicy this configuration was rendered from; named in
    /// denials and audit records.
    pub policy: PolicyName,
    /// How agents prove who they are.
    pub identity: IdentityConfig,
    /// Services reached through the sidecar.
    pub targets: Vec<TargetConfig>,
    /// Ordered rules; the first that matches decides.
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    /// What happens when no rule matches; deny unless set.
    #[serde(default)]
    pub default_action: RuleAction,
    /// Bulk-export guards per statement.
    #[serde(default)]
    pub limits: Limits,
    /// Approvals for rules with action requireApproval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalConfig>,
    /// Masking on top of the built-in card-number and SAD masking.
    #[serde(default)]
    pub masking: MaskingConfig,
    /// Where audit records and session recordings go.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Protocol limits and client-side TLS.
    #[serde(default)]
    pub proxy: ProxySettings,
    /// The admin endpoint (metrics, health).
    #[serde(default)]
    pub admin: AdminConfig,
}

/// Namespace and name of the governing AccessPolicy.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyName {
    /// Namespace (absent in standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for PolicyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Token validation settings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityConfig {
    /// Trusted token issuers.
    pub issuers: Vec<IssuerConfig>,
    /// Who may connect; empty means anyone with a valid token from an issuer.
    #[serde(default)]
    pub subjects: Vec<SubjectMatch>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds (at most 300).
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u32,
}

fn default_leeway() -> u32 {
    30
}

/// Signature algorithms a token may use. Symmetric (HS*) algorithms and
/// `none` cannot be expressed, so a public key can never be used as an HMAC
/// secret.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
    ]
}
fn default_sub() -> String {
    "sub".into()
}
fn default_groups() -> String {
    "groups".into()
}

/// A trusted token issuer and where its keys come from: `jwksFile` (a static
/// JWKS, for standalone use), `jwksUrl`, or OIDC discovery from `issuer`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry one of them.
    pub audiences: Vec<String>,
    /// Path of a JWKS document (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<String>,
    /// JWKS URL; when neither this nor jwksFile is set, OIDC discovery finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// PEM CA bundle for HTTPS to the issuer (e.g. the cluster CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Bearer token for discovery and JWKS requests (the API server requires one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<String>,
    /// Claim holding the subject.
    #[serde(default = "default_sub")]
    pub subject_claim: String,
    /// Claim holding the groups.
    #[serde(default = "default_groups")]
    pub groups_claim: String,
    /// Accepted signature algorithms.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Tokens are Kubernetes service-account tokens: the subject becomes
    /// `system:serviceaccount:NAMESPACE:NAME`.
    #[serde(default)]
    pub kubernetes: bool,
}

/// One allowed identity; every field given must match.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubjectMatch {
    /// Issuer the token must come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Exact subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Group the token must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The subject must be the service account of the sidecar's own pod.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pod_service_account: bool,
}

/// A service reached through the sidecar.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetConfig {
    /// Name used in rules and records.
    pub name: String,
    /// postgres, http or kubernetes.
    #[serde(default)]
    pub protocol: Protocol,
    /// Address the sidecar listens on for this target (explicit mode), e.g.
    /// `127.0.0.1:15432`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Where the real service is.
    pub upstream: Upstream,
    /// Database to use upstream; defaults to the one the client names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// TLS toward the service.
    #[serde(default)]
    pub tls: UpstreamTlsConfig,
    /// The credential the sidecar (never the agent) uses upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsConfig>,
    /// Accept connections redirected to this target's addresses by iptables.
    #[serde(default)]
    pub transparent: bool,
}

/// Location of the real service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Addresses or CIDRs that belong to this target; transparent mode picks
    /// the target of a redirected connection by its original destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
}

/// TLS from the sidecar to the service.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// disable, require or verifyFull.
    pub mode: TlsMode,
    /// PEM CA bundle (verifyFull).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// Expected certificate name; defaults to the upstream host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        Self {
            mode: TlsMode::Disable,
            ca_file: None,
            server_name: None,
        }
    }
}

/// Files holding the upstream credential (a mounted Secret).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialsConfig {
    /// User name, when not read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<String>,
    /// File holding the password.
    pub password_file: String,
}

/// Approval settings plus where requests are stored.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalConfig {
    /// Approvers, quorum, timeout, mode, grant TTL.
    pub settings: ApprovalSettings,
    /// Where ApprovalRequests live.
    pub store: ApprovalStore,
}

/// Where ApprovalRequests live: exactly one of `kubernetes` or `directory`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApprovalStore {
    /// ApprovalRequest objects in this namespace, through the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesStore>,
    /// A local directory (standalone mode); `cardgate-sidecar approvals`
    /// reviews requests there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
}

/// ApprovalRequests through the Kubernetes API.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesStore {
    /// Namespace of the requests (the policy's).
    pub namespace: String,
}

/// Masking rules and the key for keyed tokens.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaskingConfig {
    /// Rules applied on top of the built-in masking, in order.
    #[serde(default)]
    pub rules: Vec<NamedMaskingRule>,
    /// File with the HMAC key (at least 32 bytes) for `hmac` actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key_file: Option<String>,
}

/// A MaskingRule's spec under its name, as the CR has it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedMaskingRule {
    /// The MaskingRule's name.
    pub name: String,
    /// The MaskingRule's spec.
    pub spec: MaskingRuleSpec,
}

/// Audit sinks and session recordings.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// Where records go; every record goes to every sink.
    pub sinks: Vec<AuditSink>,
    /// Directory for per-session recordings; absent disables recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recordings_dir: Option<String>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sinks: vec![AuditSink {
                kind: AuditSinkType::Stdout,
                path: None,
                fsync: FsyncPolicy::default(),
                url: None,
                ca_file: None,
                token_file: None,
            }],
            recordings_dir: None,
        }
    }
}

/// Kind of audit sink: `stdout` (JSON lines for the cluster's log pipeline),
/// `file` (an append-only file), `collector` (an audit collector over HTTPS).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuditSinkType {
    Stdout,
    File,
    Collector,
}

/// When a file sink calls fsync: `always` (before the statement is answered:
/// no acknowledged record is ever lost), `batch` (at most every 100 ms), or
/// `never` (left to the OS).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    #[default]
    Always,
    Batch,
    Never,
}

/// One audit sink.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditSink {
    /// stdout, file or collector.
    #[serde(rename = "type")]
    pub kind: AuditSinkType,
    /// file: path of the log; an existing chain is continued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// file: fsync policy.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// collector: URL of the audit collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// collector: CA bundle for its certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// collector: file with the token presented to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// Protocol limits and TLS toward clients.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySettings {
    /// Largest protocol message accepted from a client or server, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u32,
    /// Statements whose classification is cached (exact text, LRU).
    #[serde(default = "default_cache")]
    pub classification_cache: u32,
    /// Most concurrent client connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Seconds to wait for the upstream to accept a connection.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_seconds: u32,
    /// Address for connections redirected by iptables (transparent mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent_listen: Option<String>,
    /// Certificate for TLS toward clients; without it SSLRequest is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_tls: Option<ClientTls>,
}

fn default_max_message() -> u32 {
    16 << 20
}
fn default_cache() -> u32 {
    4096
}
fn default_max_connections() -> u32 {
    512
}
fn default_connect_timeout() -> u32 {
    10
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            max_message_bytes: default_max_message(),
            classification_cache: default_cache(),
            max_connections: default_max_connections(),
            connect_timeout_seconds: default_connect_timeout(),
            transparent_listen: None,
            client_tls: None,
        }
    }
}

/// Server certificate for TLS toward clients.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// PEM certificate chain.
    pub cert_file: String,
    /// PEM private key.
    pub key_file: String,
}

/// The admin endpoint: `/metrics`, `/healthz`, `/readyz`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address.
    #[serde(default = "default_admin")]
    pub listen: String,
}

fn default_admin() -> String {
    "127.0.0.1:9102".into()
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin(),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not YAML or JSON.
    #[error("{path}: not valid YAML or JSON: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// Parser message with line and column.
        message: String,
    },
    /// The document parsed but has problems; all of them are listed.
    #[error("{path}: {errors}")]
    Invalid {
        /// The file.
        path: String,
        /// Every problem, with its path.
        errors: ValidationErrors,
    },
}

impl SidecarConfig {
    /// Reads and fully validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with_digest(path).map(|(config, _)| config)
    }

    /// [`SidecarConfig::load`], with the SHA-256 of the very bytes parsed:
    /// one read, so the digest a `config.loaded` record names is always of
    /// the configuration that runs, even if the file is replaced meanwhile.
    pub fn load_with_digest(path: &Path) -> Result<(Self, [u8; 32]), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_text(&text, &path.display().to_string())?;
        if let Some(base) = path.parent() {
            config.resolve_paths(base);
        }
        Ok((config, Sha256::digest(text.as_bytes()).into()))
    }

    /// Makes every relative file path in the configuration relative to
    /// `base` (the directory of the configuration file), so a configuration
    /// and its keys can live side by side wherever they are copied.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut String| {
            if !p.is_empty() && Path::new(p.as_str()).is_relative() {
                *p = base.join(p.as_str()).display().to_string();
            }
        };
        let fix_opt = |p: &mut Option<String>| {
            if let Some(p) = p {
                fix(p);
            }
        };
        for iss in &mut self.identity.issuers {
            fix_opt(&mut iss.jwks_file);
            fix_opt(&mut iss.ca_file);
            fix_opt(&mut iss.bearer_token_file);
        }
        for t in &mut self.targets {
            fix_opt(&mut t.tls.ca_file);
            if let Some(c) = &mut t.credentials {
                fix_opt(&mut c.username_file);
                fix(&mut c.password_file);
            }
        }
        if let Some(a) = &mut self.approval {
            fix_opt(&mut a.store.directory);
        }
        fix_opt(&mut self.masking.hmac_key_file);
        for sink in &mut self.audit.sinks {
            fix_opt(&mut sink.path);
            fix_opt(&mut sink.ca_file);
            fix_opt(&mut sink.token_file);
        }
        fix_opt(&mut self.audit.recordings_dir);
        if let Some(tls) = &mut self.proxy.client_tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
        }
    }

    /// Parses YAML or JSON text and validates it; `origin` names the text in
    /// errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let mut doc: Value = serde_saphyr::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |errors| ConfigError::Invalid {
            path: origin.to_string(),
            errors,
        };
        prune_nulls(&mut doc);
        schema_check(&doc).map_err(invalid)?;
        let config: SidecarConfig = serde_json::from_value(doc).map_err(|e| {
            invalid(ValidationErrors(vec![FieldError {
                path: String::new(),
                message: e.to_string(),
            }]))
        })?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Checks everything the schema cannot; shared by the operator (before it
    /// renders a ConfigMap) and the sidecar (when it loads one).
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        if self.api_version != API_VERSION {
            p.push("apiVersion", format!("must be {API_VERSION:?}"));
        }
        if self.kind != KIND {
            p.push("kind", format!("must be {KIND:?}"));
        }
        if self.policy.name.is_empty() {
            p.push("policy.name", "must not be empty");
        }
        self.validate_identity(&mut p);
        self.validate_targets(&mut p);
        let names: Vec<&str> = self.targets.iter().map(|t| t.name.as_str()).collect();
        let mut rule_names = BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let path = index("rules", i);
            r.validate(&path, &names, &mut p);
            if let Some(n) = &r.name
                && !rule_names.insert(n.as_str())
            {
                p.push(join(&path, "name"), format!("duplicate rule name {n:?}"));
            }
        }
        let needs_approval = self.default_action == RuleAction::RequireApproval
            || self
                .rules
                .iter()
                .any(|r| r.action == RuleAction::RequireApproval);
        match &self.approval {
            Some(a) => {
                a.settings.validate("approval.settings", &mut p);
                match (&a.store.kubernetes, &a.store.directory) {
                    (Some(_), None) | (None, Some(_)) => {}
                    _ => p.push(
                        "approval.store",
                        "needs exactly one of kubernetes or directory",
                    ),
                }
            }
            None if needs_approval => p.push(
                "approval",
                "rules with action requireApproval need approval settings and a store",
            ),
            None => {}
        }
        if let Some(n) = self.limits.max_rows
            && n < 1
        {
            p.push("limits.maxRows", "must be at least 1");
        }
        if let Some(n) = self.limits.max_bytes
            && n < 1
        {
            p.push("limits.maxBytes", "must be at least 1");
        }
        self.validate_masking(&mut p);
        self.validate_audit(&mut p);
        let px = &self.proxy;
        if !(1024..=(1 << 30)).contains(&px.max_message_bytes) {
            p.push(
                "proxy.maxMessageBytes",
                "must be between 1024 and 1073741824 (PostgreSQL's own limit)",
            );
        }
        if px.max_connections == 0 {
            p.push("proxy.maxConnections", "must be at least 1");
        }
        if px.connect_timeout_seconds == 0 {
            p.push("proxy.connectTimeoutSeconds", "must be at least 1");
        }
        if let Some(l) = &px.transparent_listen
            && l.parse::<SocketAddr>().is_err()
        {
            p.push(
                "proxy.transparentListen",
                format!("{l:?} is not an address like 0.0.0.0:15001"),
            );
        }
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            p.push(
                "admin.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9102",
                    self.admin.listen
                ),
            );
        }
        p.finish()
    }

    fn validate_identity(&self, p: &mut Problems) {
        let id = &self.identity;
        if id.issuers.is_empty() {
            p.push(
                "identity.issuers",
                "at least one issuer is required: agents authenticate with its tokens",
            );
        }
        if id.leeway_seconds > 300 {
            p.push("identity.leewaySeconds", "at most 300 seconds");
        }
        for (i, iss) in id.issuers.iter().enumerate() {
            let path = index("identity.issuers", i);
            if iss.issuer.is_empty() {
                p.push(join(&path, "issuer"), "must not be empty");
            }
            if iss.audiences.is_empty() || iss.audiences.iter().any(String::is_empty) {
                p.push(
                    join(&path, "audiences"),
                    "at least one non-empty audience is required, so tokens minted for other services are refused",
                );
            }
            if iss.algorithms.is_empty() {
                p.push(
                    join(&path, "algorithms"),
                    "at least one algorithm is required",
                );
            }
            if iss.jwks_file.is_some() && iss.jwks_url.is_some() {
                p.push(path.clone(), "set jwksFile or jwksUrl, not both");
            }
            if iss.jwks_file.is_none() {
                let url = iss.jwks_url.as_deref().unwrap_or(&iss.issuer);
                if !url.starts_with("https://") {
                    p.push(
                        join(
                            &path,
                            if iss.jwks_url.is_some() { "jwksUrl" } else { "issuer" },
                        ),
                        format!("keys are fetched over HTTPS only; {url:?} is not an https:// URL (use jwksFile for a local key set)"),
                    );
                }
            }
        }
        for (i, s) in id.subjects.iter().enumerate() {
            if s.subject.is_none() && s.group.is_none() && !s.pod_service_account {
                p.push(
                    index("identity.subjects", i),
                    "needs subject, group or podServiceAccount; an empty match would admit everyone",
                );
            }
        }
    }

    fn validate_targets(&self, p: &mut Problems) {
        if self.targets.is_empty() {
            p.push("targets", "at least one target is required");
        }
        let mut names = BTreeSet::new();
        let mut listens = BTreeSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let path = index("targets", i);
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
            match &t.listen {
                Some(l) => match l.parse::<SocketAddr>() {
                    Ok(addr) if !listens.insert(addr) => p.push(
                        join(&path, "listen"),
                        format!("{addr} is already used by another target"),
                    ),
                    Ok(_) => {}
                    Err(_) => p.push(
                        join(&path, "listen"),
                        format!("{l:?} is not an address like 127.0.0.1:15432"),
                    ),
                },
                None if !t.transparent => p.push(
                    join(&path, "listen"),
                    "required unless the target is transparent",
                ),
                None => {}
            }
            if t.transparent && t.upstream.addresses.is_empty() {
                p.push(
                    join(&path, "upstream.addresses"),
                    "transparent targets need the addresses connections are redirected from",
                );
            }
            if t.transparent && self.proxy.transparent_listen.is_none() {
                p.push(
                    "proxy.transparentListen",
                    format!("target {:?} is transparent, so an address for redirected connections is required", t.name),
                );
            }
            if t.upstream.host.is_empty() {
                p.push(join(&path, "upstream.host"), "must not be empty");
            }
            if t.upstream.port == 0 {
                p.push(join(&path, "upstream.port"), "must be a TCP port (1-65535)");
            }
            for (j, a) in t.upstream.addresses.iter().enumerate() {
                if parse_cidr(a).is_none() {
                    p.push(
                        index(&join(&path, "upstream.addresses"), j),
                        format!("{a:?} is not an address or range like 10.0.0.7 or 10.0.0.0/24"),
                    );
                }
            }
            if t.tls.mode == TlsMode::VerifyFull && t.tls.ca_file.is_none() {
                p.push(
                    join(&path, "tls.caFile"),
                    "verifyFull needs the CA bundle that signed the server certificate",
                );
            }
            match (&t.credentials, t.protocol) {
                (None, Protocol::Postgres) => p.push(
                    join(&path, "credentials"),
                    "postgres targets need the credential the sidecar uses upstream",
                ),
                (Some(c), _) => {
                    if c.username.is_some() == c.username_file.is_some() {
                        p.push(
                            join(&path, "credentials"),
                            "set exactly one of username or usernameFile",
                        );
                    }
                    if c.password_file.is_empty() {
                        p.push(join(&path, "credentials.passwordFile"), "must not be empty");
                    }
                }
                (None, _) => {}
            }
        }
    }

    fn validate_masking(&self, p: &mut Problems) {
        let mut names = BTreeSet::new();
        let mut pan_actions = BTreeSet::new();
        for (i, r) in self.masking.rules.iter().enumerate() {
            let path = index("masking.rules", i);
            if !names.insert(r.name.as_str()) {
                p.push(
                    join(&path, "name"),
                    format!("duplicate masking rule {:?}", r.name),
                );
            }
            r.spec.validate_at(&join(&path, "spec"), p);
            if r.spec.action.kind == MaskActionType::Hmac && self.masking.hmac_key_file.is_none() {
                p.push(
                    "masking.hmacKeyFile",
                    format!(
                        "masking rule {:?} uses hmac, which needs a key file",
                        r.name
                    ),
                );
            }
            if r.spec.detectors.iter().any(|d| d.kind == DetectorType::Pan) {
                pan_actions.insert(format!("{:?}", r.spec.action.kind).to_lowercase());
            }
        }
        if pan_actions.len() > 1 {
            p.push(
                "masking.rules",
                format!(
                    "card numbers must be shown one way per deployment, but rules use {}; a truncated PAN next to a token or hash of the same PAN weakens both (PCI DSS 3.5.1.1)",
                    pan_actions.into_iter().collect::<Vec<_>>().join(" and ")
                ),
            );
        }
    }

    fn validate_audit(&self, p: &mut Problems) {
        if self.audit.sinks.is_empty() {
            p.push(
                "audit.sinks",
                "at least one sink is required: cardgate never runs without an audit trail",
            );
        }
        for (i, s) in self.audit.sinks.iter().enumerate() {
            let path = index("audit.sinks", i);
            match s.kind {
                AuditSinkType::File if s.path.is_none() => {
                    p.push(join(&path, "path"), "a file sink needs path")
                }
                AuditSinkType::Collector if s.url.is_none() => {
                    p.push(join(&path, "url"), "a collector sink needs url")
                }
                _ => {}
            }
        }
    }

    /// The target with this name.
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }
}

/// Parses `10.0.0.0/24`, `fd00::/64` or a bare address (a /32 or /128).
pub fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Removes `key: null` entries, which mean "absent" to serde but would
/// otherwise fail the schema's type checks.
fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(prune_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// The JSON schema of the configuration file, derived from the types.
/// Optional fields accept absence only: nulls are pruned before checking.
pub fn json_schema() -> Value {
    let mut schema = schemars::schema_for!(SidecarConfig).to_value();
    strip_null_alternatives(&mut schema);
    schema
}

/// Rewrites `anyOf: [S, {type: null}]` to `S` and `type: [T, "null"]` to `T`,
/// so errors inside optional objects point at the offending field instead of
/// "not valid under any of the schemas".
fn strip_null_alternatives(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            let non_null = match map.get("anyOf") {
                Some(Value::Array(alts)) if alts.len() == 2 => {
                    let is_null = |a: &Value| a.get("type").is_some_and(|t| t == "null");
                    match (is_null(&alts[0]), is_null(&alts[1])) {
                        (false, true) => Some(alts[0].clone()),
                        (true, false) => Some(alts[1].clone()),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some(Value::Object(inner)) = non_null {
                map.remove("anyOf");
                for (k, val) in inner {
                    map.entry(k).or_insert(val);
                }
            }
            map.values_mut().for_each(strip_null_alternatives);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null_alternatives),
        _ => {}
    }
}

/// Checks the document against [`json_schema`], collecting every error.
fn schema_check(doc: &Value) -> Result<(), ValidationErrors> {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        jsonschema::options()
            .should_validate_formats(false)
            .build(&json_schema())
            .expect("the schema derived from SidecarConfig is valid")
    });
    let mut errors: Vec<FieldError> = validator
        .iter_errors(doc)
        .map(|e| FieldError {
            path: crate::validation::pointer_to_path(e.instance_path().as_str()),
            message: schema_message(&e),
        })
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort_by(|a, b| a.path.cmp(&b.path));
    errors.dedup();
    Err(ValidationErrors(errors))
}

/// `classes` → `class`, `methods` → `method`; enum errors name one value.
fn singular(field: &str) -> &str {
    if let Some(base) = field.strip_suffix("es")
        && base.ends_with("ss")
    {
        return base;
    }
    field.strip_suffix('s').unwrap_or(field)
}

/// Rewords the schema validator's messages in the terms users write.
fn schema_message(e: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::ValidationErrorKind as K;
    match e.kind() {
        K::Enum { options } => {
            let allowed: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|o| o.as_str().unwrap_or_default().to_string())
                        .collect()
                })
                .unwrap_or_default();
            let field = e
                .instance_path()
                .as_str()
                .rsplit('/')
                .find(|s| !s.bytes().all(|b| b.is_ascii_digit()))
                .unwrap_or("value");
            let what = singular(field);
            format!(
                "unknown {what} {}; expected one of {}",
                e.instance(),
                allowed.join(", ")
            )
        }
        K::AdditionalProperties { unexpected } => format!(
            "unknown field{} {}",
            if unexpected.len() == 1 { "" } else { "s" },
            unexpected
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        K::Required { property } => format!("missing required field {property}"),
        _ => e.to_string(),
    }
}

//! Types shared by the custom resources and the sidecar configuration file.
//!
//! Rules, limits and approval settings are written by users in an AccessPolicy
//! and read by the sidecar from its rendered configuration; sharing the types
//! keeps one vocabulary (and one validator) for both.

use std::fmt;

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::glob::NamePattern;
use crate::validation::{Problems, index, join};

/// What a statement does, as decided by parsing it with PostgreSQL's grammar.
///
/// One of: `metadata` (what drivers and ORMs read to set themselves up: type
/// and namespace catalogs, `version()`, `current_schema()`, harmless
/// settings; allowed when no rule matches, and deniable by a rule), `read`
/// (SELECT and other reads), `write` (INSERT, UPDATE, DELETE,
/// MERGE, TRUNCATE, COPY FROM STDIN…), `ddl` (CREATE/ALTER/DROP of ordinary
/// objects), `dangerous` (side effects outside the data: file and program
/// access, roles and grants, extensions, functions, DO blocks, bulk export),
/// `control` (transactions, harmless session settings, SHOW), `unparseable`
/// (anything PostgreSQL's parser rejects; never allowed outright).
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum StatementClass {
    Control,
    Metadata,
    Read,
    Write,
    Ddl,
    Dangerous,
    Unparseable,
}

impl StatementClass {
    /// Every class, least restrictive first; a string of several statements is
    /// decided by its most restrictive part (the maximum in this order).
    pub const ALL: [StatementClass; 7] = [
        Self::Control,
        Self::Metadata,
        Self::Read,
        Self::Write,
        Self::Ddl,
        Self::Dangerous,
        Self::Unparseable,
    ];

    /// The lower-case name used in configuration, messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Metadata => "metadata",
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Dangerous => "dangerous",
            Self::Unparseable => "unparseable",
        }
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a statement a rule matches: `allow`, `deny`, or
/// `requireApproval` (held until approvers decide; see `spec.approval`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub enum RuleAction {
    Allow,
    #[default]
    Deny,
    RequireApproval,
}

impl RuleAction {
    /// The name used in configuration, messages and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::RequireApproval => "requireApproval",
        }
    }
}

impl fmt::Display for RuleAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Wire protocol of a target: `postgres`, `http`, or `kubernetes` (an API
/// server reached over HTTPS).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Postgres,
    Http,
    Kubernetes,
}

/// HTTP request methods a rule can match.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

/// One policy rule. Rules are evaluated in order and the first that matches
/// decides; when none matches, `defaultAction` applies.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyRule {
    /// Short name shown in denials, approval requests and audit records
    /// (lower case letters, digits and '-'). Without a name the rule is
    /// referred to by its position, e.g. "rule 3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What happens to a matching statement: allow, deny or requireApproval.
    pub action: RuleAction,
    /// Conditions a statement must meet for this rule to apply; every listed
    /// condition must hold, and an empty match applies to every statement.
    #[serde(rename = "match", default)]
    pub matches: RuleMatch,
    /// Free text for the people who read the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl PolicyRule {
    /// How the rule is named to users: its name, or its 1-based position.
    pub fn display_name(&self, position: usize) -> String {
        match &self.name {
            Some(name) => format!("rule {position} ({name})"),
            None => format!("rule {position}"),
        }
    }

    /// Checks names and patterns; `targets` are the target names a rule may
    /// refer to.
    pub fn validate(&self, path: &str, targets: &[&str], problems: &mut Problems) {
        if let Some(name) = &self.name
            && !crate::validation::is_dns_label(name)
        {
            problems.push(
                join(path, "name"),
                format!(
                    "{name:?} is not a valid name (lower case letters, digits and '-', at most 63)"
                ),
            );
        }
        let m = &self.matches;
        let mpath = join(path, "match");
        for (i, t) in m.targets.iter().enumerate() {
            if !targets.contains(&t.as_str()) {
                problems.push(
                    index(&join(&mpath, "targets"), i),
                    format!("unknown target {t:?} (targets: {})", targets.join(", ")),
                );
            }
        }
        for (i, t) in m.tables.iter().enumerate() {
            if let Err(e) = NamePattern::parse(t, 2) {
                problems.push(index(&join(&mpath, "tables"), i), e);
            }
        }
        for (i, p) in m.paths.iter().enumerate() {
            if !p.starts_with('/') {
                problems.push(
                    index(&join(&mpath, "paths"), i),
                    format!("path pattern {p:?} must start with '/'"),
                );
            }
        }
        if self.action == RuleAction::Allow && m.classes.contains(&StatementClass::Unparseable) {
            problems.push(
                join(&mpath, "classes"),
                "statements that do not parse can never be allowed; use deny or requireApproval",
            );
        }
    }
}

/// Conditions of a rule. Lists are alternatives (a statement of class `read`
/// matches `classes: [read, write]`); separate fields must all hold.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleMatch {
    /// Names of the targets this rule applies to; empty means every target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Statement classes this rule applies to; empty means every class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<StatementClass>,
    /// Relation patterns (`schema.table`, `table`, `*` and `?` wildcards).
    /// For `allow` every relation the statement touches must match one pattern;
    /// for `deny` and `requireApproval` one matching relation is enough. So an
    /// allow rule never lets a statement reach an unlisted table, and a deny
    /// rule cannot be dodged by joining an unlisted one. Empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<String>,
    /// HTTP methods (http and kubernetes targets); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<HttpMethod>,
    /// HTTP path patterns (`/v1/charges/*`; http and kubernetes targets);
    /// empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
}

/// Bulk-export guards applied to every statement.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Most rows one statement may return; the statement is stopped with an
    /// error past this and the session stays usable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxRows must be at least 1"))]
    pub max_rows: Option<i64>,
    /// Most bytes of row data one statement may return.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxBytes must be at least 1"))]
    pub max_bytes: Option<i64>,
}

/// How a statement that needs approval is handled while approvers decide:
/// `wait` holds the statement and the client until the decision (or the
/// timeout); `deferred` answers at once with an error naming the request, and
/// once approved the same statement may be re-run for `grantTtl`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    #[default]
    Wait,
    Deferred,
}

/// Who may approve, how many must agree, and how long decisions hold.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.quorum >= 1").message("quorum must be at least 1"))]
#[x_kube(validation = Rule::new("(has(self.approvers.users) ? size(self.approvers.users) : 0) + (has(self.approvers.groups) ? size(self.approvers.groups) : 0) > 0").message("approval.approvers needs at least one user or group"))]
pub struct ApprovalSettings {
    /// Users and groups (as the API server authenticates them) who may review.
    pub approvers: Approvers,
    /// Number of approvals needed; one denial always decides.
    #[serde(default = "default_quorum")]
    pub quorum: i32,
    /// How long a request stays open before it expires.
    #[serde(default = "default_timeout")]
    pub timeout: kube::core::Duration,
    /// wait (hold the statement) or deferred (answer now, run once approved).
    #[serde(default)]
    pub mode: ApprovalMode,
    /// deferred mode: how long an approval lets the same statement run again.
    #[serde(default = "default_grant_ttl")]
    pub grant_ttl: kube::core::Duration,
    /// deferred mode: how many times an approval may be used.
    #[serde(default = "default_max_uses")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxUses must be at least 1"))]
    pub max_uses: i32,
    /// How long decided requests are kept before the operator deletes them
    /// (an audit record of the final state is written first).
    #[serde(default = "default_retention")]
    pub retention: kube::core::Duration,
    /// Where to announce new requests (Slack-compatible incoming webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
}

fn default_quorum() -> i32 {
    1
}
fn default_max_uses() -> i32 {
    1
}
fn default_timeout() -> kube::core::Duration {
    "15m".parse().expect("valid duration")
}
fn default_grant_ttl() -> kube::core::Duration {
    "1h".parse().expect("valid duration")
}
fn default_retention() -> kube::core::Duration {
    "168h".parse().expect("valid duration")
}

impl ApprovalSettings {
    /// Checks what the schema cannot: durations are positive.
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (field, d) in [
            ("timeout", &self.timeout),
            ("grantTtl", &self.grant_ttl),
            ("retention", &self.retention),
        ] {
            if d.is_negative() || std::time::Duration::from(*d).is_zero() {
                problems.push(join(path, field), "must be a positive duration, e.g. 15m");
            }
        }
        if self.quorum < 1 {
            problems.push(join(path, "quorum"), "must be at least 1");
        }
        if self.max_uses < 1 {
            problems.push(join(path, "maxUses"), "must be at least 1");
        }
        if self.approvers.users.is_empty() && self.approvers.groups.is_empty() {
            problems.push(
                join(path, "approvers"),
                "needs at least one user or group, or nobody could ever approve",
            );
        }
        if let Some(n) = &self.notify
            && !(n.url.starts_with("https://") || n.url.starts_with("http://"))
        {
            problems.push(join(path, "notify.url"), "must be an http(s) URL");
        }
    }
}

/// Reviewers, matched against the username and groups the Kubernetes API
/// server authenticated.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approvers {
    /// Usernames, e.g. `alice@example.com`.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names, e.g. `payments-oncall`.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// A webhook told about every new request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notify {
    /// Incoming-webhook URL that accepts Slack-compatible JSON.
    pub url: String,
}

/// A key in a Secret of the same namespace.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret's data.
    pub key: String,
}

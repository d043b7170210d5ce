//! ApprovalRequest: one risky statement waiting for a recorded human decision.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{ApprovalMode, StatementClass};

/// Most reviews one request can hold; bounds the cost of the CEL rules.
pub const MAX_REVIEWS: usize = 32;
/// Longest reviewer username a review can record. The CEL rules compare
/// reviews with each other, and the API server refuses a CRD whose rules it
/// estimates above the cost budget; every string and list they walk is
/// bounded for that. A reviewer beyond these bounds cannot review (the
/// server refuses the update: fail closed).
pub const MAX_REVIEWER_LEN: usize = 512;
/// Longest reason a review can give.
pub const MAX_REASON_LEN: usize = 1024;
/// Most groups a review can record.
pub const MAX_REVIEWER_GROUPS: usize = 256;
/// Longest group name a review can record.
pub const MAX_GROUP_LEN: usize = 256;
/// Longest statement preview shown by `kubectl get approvalrequests`.
pub const PREVIEW_LEN: usize = 60;

/// A statement that an AccessPolicy rule holds for approval, bound to the exact
/// statement, requester and target. The sidecar creates it; approvers append a
/// review (`kubectl cardgate approve NAME`, or a JSON patch adding to
/// `spec.reviews`); the admission webhook stamps each review with the
/// reviewer's authenticated identity and the time; the operator sets the
/// phase. Nothing but new reviews can change, and nothing once decided.
#[derive(CustomResource, Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "cardgate.dev",
    version = "v1alpha1",
    kind = "ApprovalRequest",
    plural = "approvalrequests",
    shortname = "ar",
    category = "cardgate",
    namespaced,
    status = "ApprovalRequestStatus",
    doc = "ApprovalRequest is one risky statement waiting for a recorded human decision.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Requester",
        type_ = "string",
        json_path = ".spec.requester.subject"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.target"),
    printcolumn(
        name = "Statement",
        type_ = "string",
        json_path = ".spec.statement.preview"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.requester == oldSelf.requester && self.policy == oldSelf.policy && self.rule == oldSelf.rule && self.target == oldSelf.target && self.statement == oldSelf.statement && self.mode == oldSelf.mode && self.quorum == oldSelf.quorum && self.expiresAt == oldSelf.expiresAt && self.grantTtl == oldSelf.grantTtl && self.maxUses == oldSelf.maxUses").message("only reviews can be added to an ApprovalRequest; everything else is fixed when it is created"))]
#[x_kube(validation = Rule::new("!has(oldSelf.reviews) || (has(self.reviews) && size(self.reviews) >= size(oldSelf.reviews) && oldSelf.reviews.all(r, self.reviews.indexOf(r) == oldSelf.reviews.indexOf(r)))").message("reviews can only be appended; existing reviews cannot be edited, reordered or removed"))]
#[x_kube(validation = Rule::new("!has(oldSelf.reviews) || !(oldSelf.reviews.exists(r, r.decision == 'Denied') || oldSelf.reviews.filter(r, r.decision == 'Approved').size() >= oldSelf.quorum) || self == oldSelf").message("the request is already decided; nothing can change"))]
pub struct ApprovalRequestSpec {
    /// Who asked: the authenticated agent and the pod it runs in.
    pub requester: Requester,
    /// Name of the AccessPolicy (same namespace) whose rule holds the statement.
    pub policy: String,
    /// The rule that matched, e.g. "rule 3 (writes-need-approval)".
    pub rule: String,
    /// Name of the target the statement is for.
    pub target: String,
    /// The statement, masked, with the fingerprint it is bound to.
    pub statement: StatementRef,
    /// wait (the agent is held) or deferred (the agent retries once approved).
    pub mode: ApprovalMode,
    /// Approvals needed; one denial decides.
    #[x_kube(validation = Rule::new("self >= 1").message("quorum must be at least 1"))]
    pub quorum: i32,
    /// When the request expires if undecided.
    pub expires_at: Time,
    /// deferred mode: how long the approval lets the statement run.
    pub grant_ttl: kube::core::Duration,
    /// deferred mode: how many runs the approval allows.
    #[x_kube(validation = Rule::new("self >= 1").message("maxUses must be at least 1"))]
    pub max_uses: i32,
    /// Decisions, in the order given. Add one with `kubectl cardgate approve`
    /// or `deny`; reviewer and time are stamped by the admission webhook.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(r, !has(r.reviewer) || self.filter(x, has(x.reviewer) && x.reviewer == r.reviewer).size() == 1)").message("each reviewer can review a request once"))]
    pub reviews: Vec<Review>,
}

/// The authenticated agent and the pod it runs in.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Requester {
    /// Subject from the agent's token (service accounts as
    /// `system:serviceaccount:NAMESPACE:NAME`).
    pub subject: String,
    /// Token issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Groups from the agent's token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Username of the pod's service account, the identity that created this
    /// request (`system:serviceaccount:NAMESPACE:NAME`).
    pub service_account: String,
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub pod_uid: String,
    /// Node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The held statement.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementRef {
    /// Full statement text, masked like everything cardgate writes.
    pub text: String,
    /// First characters of the masked text, for `kubectl get`.
    #[schemars(length(max = 64))]
    pub preview: String,
    /// SHA-256 (hex) of the exact statement, target and requester; an approval
    /// covers that statement only.
    pub fingerprint: String,
    /// Class the statement was parsed as.
    pub class: StatementClass,
}

/// A reviewer's decision: `Approved` or `Denied`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Denied,
}

/// One reviewer's decision.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.decision != 'Denied' || (has(self.reason) && size(self.reason) > 0)").message("a denial needs a reason"))]
pub struct Review {
    /// Approved or Denied.
    pub decision: Decision,
    /// Why; required for a denial. At most 1024 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
    /// Authenticated username of the reviewer (stamped by the webhook; any
    /// value in the request body is replaced). At most 512 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub reviewer: Option<String>,
    /// Reviewer's groups (stamped by the webhook): at most 256, of at most
    /// 256 characters each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 256)))]
    pub groups: Vec<String>,
    /// When the review was given (stamped by the webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// Lifecycle of a request: `Pending`, then `Approved`, `Denied` or `Expired`;
/// an approved request becomes `Consumed` when used up, and a request whose
/// agent disconnected or cancelled before a decision is `Withdrawn`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    #[default]
    Pending,
    Approved,
    Denied,
    Expired,
    Consumed,
    Withdrawn,
}

impl Phase {
    /// Whether no further review can change the outcome.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }

    /// The phase as the API spells it (`status.phase`, `kubectl get`); the
    /// one spelling used in messages, Events and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Approved => "Approved",
            Self::Denied => "Denied",
            Self::Expired => "Expired",
            Self::Consumed => "Consumed",
            Self::Withdrawn => "Withdrawn",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Observed state of an ApprovalRequest.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalRequestStatus {
    /// Pending, Approved, Denied, Expired, Consumed or Withdrawn.
    #[serde(default)]
    pub phase: Phase,
    /// Decided, following the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the decision was reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Time>,
    /// Reviewers whose decisions made the outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decided_by: Vec<String>,
    /// Human-readable explanation of the phase (e.g. the denial reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Times the approved statement ran (reported by the sidecar).
    #[serde(default)]
    pub uses: i32,
    /// deferred mode: when the approval stops covering the statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_expires_at: Option<Time>,
    /// When the agent withdrew the request (reported by the sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<Time>,
}

impl ApprovalRequestSpec {
    /// The decision the reviews reach, if any: the first denial decides,
    /// otherwise `quorum` approvals do.
    pub fn decision(&self) -> Option<Decision> {
        if self.reviews.iter().any(|r| r.decision == Decision::Denied) {
            return Some(Decision::Denied);
        }
        let approvals = self
            .reviews
            .iter()
            .filter(|r| r.decision == Decision::Approved)
            .count();
        (approvals >= usize::try_from(self.quorum.max(1)).unwrap_or(1))
            .then_some(Decision::Approved)
    }
}

/// The preview shown in `kubectl get`: the first characters of the masked
/// statement on one line.
pub fn preview(masked: &str) -> String {
    let one_line: String = masked.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= PREVIEW_LEN {
        return one_line;
    }
    let mut out: String = one_line.chars().take(PREVIEW_LEN - 1).collect();
    out.push('…');
    out
}

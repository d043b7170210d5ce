//! The rules the ApprovalRequest admission webhooks enforce, without IO.
//!
//! CREATE: only the service account of a governed pod creates a request,
//! only for itself, with no reviews and a near expiry. UPDATE: the only
//! change is one appended review, by an approver of the policy who is not
//! the requester, while the request is still open; the review's reviewer,
//! groups and time come from the admission request's authentication
//! ([`stamp`]), never from the body. CEL rules on the CRD back the static
//! parts; these checks add what needs the caller's identity, the policy and
//! the clock, with messages that name the person and the rule.

use std::time::Duration;

use cardgate_crds::v1alpha1::{
    AccessPolicy, ApprovalRequest, ApprovalRequestSpec, Decision, Review,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::lifecycle::{add, show};

/// Furthest a new request may expire: beyond this a forgotten request
/// would linger as an open door.
pub const MAX_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Longest review reason accepted.
pub const MAX_REASON: usize = 1024;
/// How far a stamped time may lie from the validating webhook's clock (the
/// mutating webhook stamped it moments before, maybe on another replica).
pub const STAMP_SKEW: Duration = Duration::from_secs(60);
/// Prefix of Kubernetes service-account usernames.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The caller as the API server authenticated it (`request.userInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Username.
    pub username: &'a str,
    /// Groups.
    pub groups: &'a [String],
}

/// Which webhook is checking: the mutating one stamps new reviews after
/// these checks; the validating one also requires the stamps to be there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before stamping.
    Mutating,
    /// After stamping: the stamps must match the caller.
    Validating,
}

/// Why a request is refused. The text is what the user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// CREATE by a person or a controller.
    #[error(
        "cardgate: ApprovalRequests are created by the cardgate sidecar with its pod's service account; {user} is not a service account"
    )]
    NotAServiceAccount {
        /// Caller.
        user: String,
    },
    /// CREATE for somebody else.
    #[error(
        "cardgate: {user} may only create ApprovalRequests for itself, not for spec.requester.serviceAccount {claimed}"
    )]
    NotForItself {
        /// Caller.
        user: String,
        /// What the body claimed.
        claimed: String,
    },
    /// CREATE by a service account of another namespace.
    #[error("cardgate: {user} belongs to another namespace than {namespace}")]
    OtherNamespace {
        /// Caller.
        user: String,
        /// Namespace of the request.
        namespace: String,
    },
    /// CREATE with reviews.
    #[error(
        "cardgate: a new ApprovalRequest cannot carry reviews; approvers add them once it exists"
    )]
    ReviewsOnCreate,
    /// CREATE already expired.
    #[error("cardgate: spec.expiresAt {at} is not in the future")]
    ExpiresInPast {
        /// The expiry.
        at: String,
    },
    /// CREATE expiring too late.
    #[error("cardgate: spec.expiresAt {at} is more than 24h ahead; requests must be decided soon")]
    ExpiresTooLate {
        /// The expiry.
        at: String,
    },
    /// A card number where cardgate writes text.
    #[error(
        "cardgate: {field} holds what looks like an unmasked card number; cardgate never stores card numbers"
    )]
    CardNumber {
        /// Where.
        field: String,
    },
    /// The named policy is missing.
    #[error("cardgate: AccessPolicy {namespace}/{policy} (spec.policy) does not exist")]
    NoPolicy {
        /// Namespace.
        namespace: String,
        /// Policy name.
        policy: String,
    },
    /// The policy names no approvers.
    #[error(
        "cardgate: AccessPolicy {namespace}/{policy} has no spec.approval, so nobody may approve its requests"
    )]
    NoApproval {
        /// Namespace.
        namespace: String,
        /// Policy name.
        policy: String,
    },
    /// CREATE asking for fewer approvals than the policy requires.
    #[error(
        "cardgate: spec.quorum {quorum} is below the quorum {required} of AccessPolicy {policy}"
    )]
    QuorumTooLow {
        /// Requested.
        quorum: i32,
        /// The policy's.
        required: i32,
        /// Policy name.
        policy: String,
    },
    /// UPDATE of a fixed field.
    #[error("cardgate: only reviews can be added to an ApprovalRequest; {field} cannot change")]
    SpecChanged {
        /// The field.
        field: &'static str,
    },
    /// UPDATE editing or removing a review.
    #[error("cardgate: review {index} cannot be edited or removed; reviews can only be appended")]
    ReviewChanged {
        /// Index in spec.reviews.
        index: usize,
    },
    /// UPDATE adding several reviews.
    #[error("cardgate: add one review at a time ({count} were added)")]
    OneAtATime {
        /// How many.
        count: usize,
    },
    /// UPDATE of a decided request.
    #[error("cardgate: {name} is already {outcome}; nothing can change")]
    Decided {
        /// Request name.
        name: String,
        /// What decided it.
        outcome: String,
    },
    /// UPDATE after the expiry.
    #[error("cardgate: {name} expired at {at}; it can no longer be reviewed")]
    Expired {
        /// Request name.
        name: String,
        /// The expiry.
        at: String,
    },
    /// UPDATE after the requester withdrew.
    #[error("cardgate: {name} was withdrawn by the requester; it can no longer be reviewed")]
    Withdrawn {
        /// Request name.
        name: String,
    },
    /// The requester reviewing.
    #[error("cardgate: {user} cannot {verb} their own request")]
    SelfReview {
        /// Caller.
        user: String,
        /// approve or deny.
        verb: &'static str,
    },
    /// Somebody outside the approver set.
    #[error(
        "cardgate: {user} is not an approver of AccessPolicy {policy} (approvers: {approvers})"
    )]
    NotAnApprover {
        /// Caller.
        user: String,
        /// Policy name.
        policy: String,
        /// Who is.
        approvers: String,
    },
    /// A second review by the same person.
    #[error("cardgate: {user} has already reviewed {name}")]
    AlreadyReviewed {
        /// Caller.
        user: String,
        /// Request name.
        name: String,
    },
    /// A denial without reason.
    #[error("cardgate: a denial needs a reason (kubectl cardgate deny NAME --reason …)")]
    ReasonRequired,
    /// An overlong reason.
    #[error("cardgate: the reason is longer than {MAX_REASON} characters")]
    ReasonTooLong,
    /// The validating webhook found a review the mutating one did not stamp.
    #[error(
        "cardgate: review {index} does not carry the reviewer, groups and time of the authenticated caller; is MutatingWebhookConfiguration cardgate-approvalrequests installed?"
    )]
    NotStamped {
        /// Index in spec.reviews.
        index: usize,
    },
}

/// Checks a CREATE (the pod lookup is the caller's job: see
/// [`requester_pod`]).
pub fn check_create(
    request: &ApprovalRequest,
    namespace: &str,
    caller: Caller<'_>,
    policy: Option<&AccessPolicy>,
    now: Timestamp,
) -> Result<(), Refusal> {
    let spec = &request.spec;
    let user = caller.username;
    let Some(rest) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX) else {
        return Err(Refusal::NotAServiceAccount { user: user.into() });
    };
    if spec.requester.service_account != user {
        return Err(Refusal::NotForItself {
            user: user.into(),
            claimed: spec.requester.service_account.clone(),
        });
    }
    if rest.split_once(':').map(|(ns, _)| ns) != Some(namespace) {
        return Err(Refusal::OtherNamespace {
            user: user.into(),
            namespace: namespace.into(),
        });
    }
    if !spec.reviews.is_empty() {
        return Err(Refusal::ReviewsOnCreate);
    }
    let expires = spec.expires_at.0;
    if expires <= now {
        return Err(Refusal::ExpiresInPast { at: show(expires) });
    }
    if expires > add(now, MAX_EXPIRY) {
        return Err(Refusal::ExpiresTooLate { at: show(expires) });
    }
    for (field, text) in [
        ("spec.statement.text", &spec.statement.text),
        ("spec.statement.preview", &spec.statement.preview),
    ] {
        if looks_like_card_number(text) {
            return Err(Refusal::CardNumber {
                field: field.into(),
            });
        }
    }
    let approval = approval_settings(spec, namespace, policy)?;
    if spec.quorum < approval.quorum {
        return Err(Refusal::QuorumTooLow {
            quorum: spec.quorum,
            required: approval.quorum,
            policy: spec.policy.clone(),
        });
    }
    Ok(())
}

/// What a pod must look like for its service account to create `spec`:
/// the named pod with that UID, running as that service account and
/// governed by the request's policy. `pod` is what the API returned for
/// `spec.requester.pod` in the request's namespace.
pub fn requester_pod(
    spec: &ApprovalRequestSpec,
    pod: Option<&k8s_openapi::api::core::v1::Pod>,
) -> Result<(), String> {
    let r = &spec.requester;
    let Some(pod) = pod else {
        return Err(format!(
            "cardgate: pod {} (spec.requester.pod) does not exist",
            r.pod
        ));
    };
    if pod.metadata.uid.as_deref() != Some(r.pod_uid.as_str()) {
        return Err(format!(
            "cardgate: pod {} has another UID than spec.requester.podUid {}",
            r.pod, r.pod_uid
        ));
    }
    let sa = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .unwrap_or("default");
    let ns = pod.namespace().unwrap_or_default();
    if r.service_account != format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{sa}") {
        return Err(format!(
            "cardgate: pod {} runs as service account {sa}, not as {}",
            r.pod, r.service_account
        ));
    }
    let governed = pod.labels().get(cardgate_crds::pod::LABEL_PROXIED);
    if governed != Some(&spec.policy) {
        return Err(format!(
            "cardgate: pod {} is not governed by AccessPolicy {} (label {}={})",
            r.pod,
            spec.policy,
            cardgate_crds::pod::LABEL_PROXIED,
            governed.map_or("<none>", String::as_str)
        ));
    }
    Ok(())
}

fn approval_settings<'a>(
    spec: &ApprovalRequestSpec,
    namespace: &str,
    policy: Option<&'a AccessPolicy>,
) -> Result<&'a cardgate_crds::v1alpha1::ApprovalSettings, Refusal> {
    let Some(policy) = policy else {
        return Err(Refusal::NoPolicy {
            namespace: namespace.into(),
            policy: spec.policy.clone(),
        });
    };
    policy
        .spec
        .approval
        .as_ref()
        .ok_or_else(|| Refusal::NoApproval {
            namespace: namespace.into(),
            policy: spec.policy.clone(),
        })
}

/// The fields that never change after CREATE, named as users write them.
fn fixed_fields(a: &ApprovalRequestSpec, b: &ApprovalRequestSpec) -> Option<&'static str> {
    [
        ("spec.requester", a.requester == b.requester),
        ("spec.policy", a.policy == b.policy),
        ("spec.rule", a.rule == b.rule),
        ("spec.target", a.target == b.target),
        ("spec.statement", a.statement == b.statement),
        ("spec.mode", a.mode == b.mode),
        ("spec.quorum", a.quorum == b.quorum),
        ("spec.expiresAt", a.expires_at == b.expires_at),
        ("spec.grantTtl", a.grant_ttl == b.grant_ttl),
        ("spec.maxUses", a.max_uses == b.max_uses),
    ]
    .into_iter()
    .find(|(_, same)| !same)
    .map(|(field, _)| field)
}

/// Checks an UPDATE of the main resource and returns the index of the new
/// review, if there is one (None: a metadata-only change, allowed).
pub fn check_update(
    old: &ApprovalRequest,
    new: &ApprovalRequest,
    caller: Caller<'_>,
    policy: Option<&AccessPolicy>,
    now: Timestamp,
    stage: Stage,
) -> Result<Option<usize>, Refusal> {
    let (before, after) = (&old.spec, &new.spec);
    if let Some(field) = fixed_fields(before, after) {
        return Err(Refusal::SpecChanged { field });
    }
    if let Some(index) =
        (0..before.reviews.len()).find(|&i| after.reviews.get(i) != Some(&before.reviews[i]))
    {
        return Err(Refusal::ReviewChanged { index });
    }
    let index = before.reviews.len();
    match after.reviews.len() - index {
        0 => return Ok(None),
        1 => {}
        count => return Err(Refusal::OneAtATime { count }),
    }
    let name = old.name_any();
    if let Some(outcome) = closed(old) {
        return Err(Refusal::Decided { name, outcome });
    }
    if old
        .status
        .as_ref()
        .is_some_and(|s| s.withdrawn_at.is_some())
    {
        return Err(Refusal::Withdrawn { name });
    }
    if now >= before.expires_at.0 {
        return Err(Refusal::Expired {
            name,
            at: show(before.expires_at.0),
        });
    }
    let review = &after.reviews[index];
    let user = caller.username;
    if user == before.requester.subject || user == before.requester.service_account {
        return Err(Refusal::SelfReview {
            user: user.into(),
            verb: match review.decision {
                Decision::Approved => "approve",
                Decision::Denied => "deny",
            },
        });
    }
    let namespace = old.namespace().unwrap_or_default();
    let approval = approval_settings(before, &namespace, policy)?;
    let approvers = &approval.approvers;
    let is_approver = approvers.users.iter().any(|u| u == user)
        || approvers.groups.iter().any(|g| caller.groups.contains(g));
    if !is_approver {
        return Err(Refusal::NotAnApprover {
            user: user.into(),
            policy: before.policy.clone(),
            approvers: describe_approvers(&approvers.users, &approvers.groups),
        });
    }
    if before
        .reviews
        .iter()
        .any(|r| r.reviewer.as_deref() == Some(user))
    {
        return Err(Refusal::AlreadyReviewed {
            user: user.into(),
            name,
        });
    }
    let reason = review.reason.as_deref().unwrap_or_default();
    if review.decision == Decision::Denied && reason.trim().is_empty() {
        return Err(Refusal::ReasonRequired);
    }
    if reason.chars().count() > MAX_REASON {
        return Err(Refusal::ReasonTooLong);
    }
    if looks_like_card_number(reason) {
        return Err(Refusal::CardNumber {
            field: format!("spec.reviews[{index}].reason"),
        });
    }
    if stage == Stage::Validating && !stamped_by(review, caller, now) {
        return Err(Refusal::NotStamped { index });
    }
    Ok(Some(index))
}

/// Why `request` can no longer change, if it is decided: by its phase, or
/// by its reviews even if the controller has not caught up.
fn closed(request: &ApprovalRequest) -> Option<String> {
    let phase = request.status.as_ref().map(|s| s.phase);
    if let Some(phase) = phase.filter(|p| p.is_final()) {
        return Some(format!("{phase:?}"));
    }
    request.spec.decision().map(|d| match d {
        Decision::Approved => "Approved".to_string(),
        Decision::Denied => "Denied".to_string(),
    })
}

fn describe_approvers(users: &[String], groups: &[String]) -> String {
    let mut parts = Vec::new();
    if !users.is_empty() {
        parts.push(format!("users {}", users.join(", ")));
    }
    if !groups.is_empty() {
        parts.push(format!("groups {}", groups.join(", ")));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

/// `review` with the caller's identity and `now`, whatever the body said.
pub fn stamp(review: &Review, caller: Caller<'_>, now: Timestamp) -> Review {
    Review {
        decision: review.decision,
        reason: review.reason.clone(),
        reviewer: Some(caller.username.to_string()),
        groups: caller.groups.to_vec(),
        time: Some(Time(now)),
    }
}

/// Whether `review` carries the caller's identity and a time near `now`.
fn stamped_by(review: &Review, caller: Caller<'_>, now: Timestamp) -> bool {
    let skew = jiff::SignedDuration::try_from(STAMP_SKEW).unwrap_or_default();
    review.reviewer.as_deref() == Some(caller.username)
        && review.groups == caller.groups
        && review
            .time
            .as_ref()
            .is_some_and(|t| now.duration_since(t.0).abs() <= skew)
}

/// Whether `text` holds a card-number-shaped digit run: 13 to 19 digits,
/// optionally grouped by single spaces or dashes, passing the Luhn check.
/// Reasons and statement texts with one are refused rather than stored.
pub fn looks_like_card_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    let mut i = 0;
    while i <= bytes.len() {
        let b = bytes.get(i).copied();
        match b {
            Some(d @ b'0'..=b'9') => digits.push(d - b'0'),
            Some(b' ' | b'-')
                if !digits.is_empty() && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {}
            _ => {
                if (13..=19).contains(&digits.len()) && luhn(&digits) {
                    return true;
                }
                digits.clear();
            }
        }
        i += 1;
    }
    false
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_spotted_in_any_common_grouping() {
        for text in [
            "4111111111111111",
            "refund 4111 1111 1111 1111 please",
            "card 4111-1111-1111-1111.",
            "378282246310005",
        ] {
            assert!(looks_like_card_number(text), "{text}");
        }
        for text in [
            "4111111111111112",
            "order 4711",
            "ticket OPS-12345 approved",
            "41111111111111111111111",
            "4111  1111 1111 1111",
            "",
        ] {
            assert!(!looks_like_card_number(text), "{text}");
        }
    }
}

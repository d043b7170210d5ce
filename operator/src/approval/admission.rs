//! The rules the ApprovalRequest admission webhooks enforce, without IO.
//!
//! CREATE: only the service account of a governed pod creates a request,
//! only for itself, with no reviews and a near expiry. UPDATE: the only
//! change is one appended review, by an approver of the policy who is not
//! the requester, while the request is still open; the review's reviewer,
//! groups and time come from the admission request's authentication
//! ([`cardgate_crds::approval::review::stamp`]), never from the body. CEL rules on the CRD back the static
//! parts; these checks add what needs the caller's identity, the policy and
//! the clock, with messages that name the person and the rule.
//!
//! The review rules themselves are [`check_review`] in `cardgate-crds`,
//! which the sidecar's directory store applies too; this module adds what
//! only an UPDATE through the API server has: fixed fields, append-only
//! reviews, the policy lookup and the stamp.

use std::time::Duration;

use cardgate_crds::approval::review::{
    ReviewRefusal, Reviewer, SERVICE_ACCOUNT_PREFIX, check_review, looks_like_card_number,
};
use cardgate_crds::v1alpha1::{AccessPolicy, ApprovalRequest, ApprovalRequestSpec, Review};
use jiff::Timestamp;
use kube::ResourceExt;

use super::lifecycle::{add, show};

/// Furthest a new request may expire: beyond this a forgotten request
/// would linger as an open door.
pub const MAX_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How far a stamped time may lie from the validating webhook's clock (the
/// mutating webhook stamped it moments before, maybe on another replica).
pub const STAMP_SKEW: Duration = Duration::from_secs(60);

/// The caller as the API server authenticated it (`request.userInfo`).
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Username.
    pub username: &'a str,
    /// Groups.
    pub groups: &'a [String],
}

impl Caller<'_> {
    /// The caller as the review rules see a reviewer.
    pub fn reviewer(self) -> Reviewer {
        Reviewer {
            name: self.username.to_string(),
            groups: self.groups.to_vec(),
        }
    }
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
    /// A review the shared review rules refuse.
    #[error(transparent)]
    Review(#[from] ReviewRefusal),
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
    let namespace = old.namespace().unwrap_or_default();
    let approval = approval_settings(before, &namespace, policy)?;
    let review = &after.reviews[index];
    check_review(old, &approval.approvers, &caller.reviewer(), review, now)?;
    if stage == Stage::Validating && !stamped_by(review, caller, now) {
        return Err(Refusal::NotStamped { index });
    }
    Ok(Some(index))
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

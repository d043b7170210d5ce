//! Whether a review may be added to a request, as one pure function used by
//! every place that admits reviews: the operator's admission webhook (the
//! reviewer authenticated by the API server) and the sidecar's directory
//! store (the reviewer named by the local CLI). Keeping one copy keeps the
//! cluster and standalone modes from drifting apart on a security rule.
//!
//! The checks, in the order a refusal is reported:
//! 1. a reviewer is named;
//! 2. the request is still open: no final phase, no decision reached by its
//!    reviews (even before the operator caught up), not withdrawn, not past
//!    `expiresAt`;
//! 3. the reviewer is not the requester (its subject or its pod's service
//!    account), and not a service account at all: approvals are a human
//!    control, and service accounts are what agents run as;
//! 4. the reviewer is an approver (a listed user, or in a listed group);
//! 5. one review per reviewer;
//! 6. a denial has a reason; a reason is at most [`MAX_REASON`] characters
//!    and holds no card number ([`looks_like_card_number`]);
//! 7. at most [`MAX_REVIEWS`] reviews.

use std::fmt;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::show;
use crate::v1alpha1::{ApprovalRequest, Approvers, Decision, MAX_REVIEWS, Phase, Review};

/// Longest review reason accepted, in characters.
pub const MAX_REASON: usize = 1024;
/// Prefix of Kubernetes service-account usernames.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// Who is reviewing: in a cluster as the API server authenticated them, in
/// a directory as the local CLI names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewer {
    /// Username.
    pub name: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// Why a review is refused. The text is what the reviewer sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewRefusal {
    /// No reviewer name was given.
    #[error("cardgate: no reviewer name; say who you are with --as NAME")]
    NoReviewer,
    /// The request is decided (by its phase or by its reviews).
    #[error("cardgate: {name} is already {phase}; nothing can change")]
    Decided {
        /// Request name.
        name: String,
        /// What decided it.
        phase: Phase,
    },
    /// The requester gave up waiting.
    #[error("cardgate: {name} was withdrawn by the requester; it can no longer be reviewed")]
    Withdrawn {
        /// Request name.
        name: String,
    },
    /// Past `expiresAt`, even if no phase says so yet.
    #[error("cardgate: {name} expired at {at}; it can no longer be reviewed")]
    Expired {
        /// Request name.
        name: String,
        /// The expiry.
        at: String,
    },
    /// The requester reviewing its own request.
    #[error("cardgate: {reviewer} cannot {} their own request", verb(*decision))]
    SelfReview {
        /// Reviewer.
        reviewer: String,
        /// What they tried.
        decision: Decision,
    },
    /// A workload identity reviewing.
    #[error(
        "cardgate: {reviewer} is a service account; approvals are given by people, not workloads"
    )]
    ServiceAccount {
        /// Reviewer.
        reviewer: String,
    },
    /// Somebody outside the approver set.
    #[error(
        "cardgate: {reviewer} is not an approver of AccessPolicy {policy} (approvers: {approvers})"
    )]
    NotAnApprover {
        /// Reviewer.
        reviewer: String,
        /// Policy name.
        policy: String,
        /// Who is.
        approvers: ApproverList,
    },
    /// A second review by the same reviewer.
    #[error("cardgate: {reviewer} has already reviewed {name}")]
    AlreadyReviewed {
        /// Reviewer.
        reviewer: String,
        /// Request name.
        name: String,
    },
    /// A denial without a reason.
    #[error("cardgate: a denial needs a reason (deny NAME --reason …)")]
    ReasonRequired,
    /// An overlong reason.
    #[error("cardgate: the reason is longer than {MAX_REASON} characters")]
    ReasonTooLong,
    /// A card number in the reason.
    #[error(
        "cardgate: spec.reviews[{index}].reason holds what looks like an unmasked card number; cardgate never stores card numbers"
    )]
    CardNumber {
        /// Index the review would have.
        index: usize,
    },
    /// The request holds [`MAX_REVIEWS`] reviews already.
    #[error("cardgate: {name} already holds {MAX_REVIEWS} reviews")]
    TooManyReviews {
        /// Request name.
        name: String,
    },
}

fn verb(decision: Decision) -> &'static str {
    match decision {
        Decision::Approved => "approve",
        Decision::Denied => "deny",
    }
}

/// The approvers as refusals name them: `users a, b; groups g` or `none`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApproverList(pub Approvers);

impl fmt::Display for ApproverList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Approvers { users, groups } = &self.0;
        let mut parts = Vec::new();
        if !users.is_empty() {
            parts.push(format!("users {}", users.join(", ")));
        }
        if !groups.is_empty() {
            parts.push(format!("groups {}", groups.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// Checks `review` (only its decision and reason are read) as the next one
/// on `request`, given by `reviewer` at `now`. See the module documentation
/// for the rules.
pub fn check_review(
    request: &ApprovalRequest,
    approvers: &Approvers,
    reviewer: &Reviewer,
    review: &Review,
    now: Timestamp,
) -> Result<(), ReviewRefusal> {
    let name = reviewer.name.trim();
    if name.is_empty() {
        return Err(ReviewRefusal::NoReviewer);
    }
    check_open(request, now)?;
    check_identity(request, approvers, reviewer, review.decision)?;
    check_reason(request, review)?;
    let spec = &request.spec;
    if spec.reviews.len() >= MAX_REVIEWS {
        return Err(ReviewRefusal::TooManyReviews {
            name: request_name(request),
        });
    }
    Ok(())
}

fn request_name(request: &ApprovalRequest) -> String {
    request.metadata.name.clone().unwrap_or_default()
}

/// The request still takes reviews: no final phase, no decision by its
/// reviews (stamped or not: stricter than the phase), not withdrawn, not
/// past `expiresAt`.
fn check_open(request: &ApprovalRequest, now: Timestamp) -> Result<(), ReviewRefusal> {
    let name = request_name(request);
    let status = request.status.as_ref();
    let decided = status
        .map(|s| s.phase)
        .filter(|p| p.is_final())
        .or_else(|| {
            request.spec.decision().map(|d| match d {
                Decision::Approved => Phase::Approved,
                Decision::Denied => Phase::Denied,
            })
        });
    if let Some(phase) = decided {
        return Err(ReviewRefusal::Decided { name, phase });
    }
    if status.is_some_and(|s| s.withdrawn_at.is_some()) {
        return Err(ReviewRefusal::Withdrawn { name });
    }
    let expires = request.spec.expires_at.0;
    if now >= expires {
        return Err(ReviewRefusal::Expired {
            name,
            at: show(expires),
        });
    }
    Ok(())
}

/// Not the requester, not a service account, an approver, and no review yet.
fn check_identity(
    request: &ApprovalRequest,
    approvers: &Approvers,
    reviewer: &Reviewer,
    decision: Decision,
) -> Result<(), ReviewRefusal> {
    let spec = &request.spec;
    let name = reviewer.name.trim();
    let requester = &spec.requester;
    if name == requester.subject
        || (!requester.service_account.is_empty() && name == requester.service_account)
    {
        return Err(ReviewRefusal::SelfReview {
            reviewer: name.into(),
            decision,
        });
    }
    if name.starts_with(SERVICE_ACCOUNT_PREFIX) {
        return Err(ReviewRefusal::ServiceAccount {
            reviewer: name.into(),
        });
    }
    let listed = approvers.users.iter().any(|u| u == name)
        || approvers.groups.iter().any(|g| reviewer.groups.contains(g));
    if !listed {
        return Err(ReviewRefusal::NotAnApprover {
            reviewer: name.into(),
            policy: spec.policy.clone(),
            approvers: ApproverList(approvers.clone()),
        });
    }
    if spec
        .reviews
        .iter()
        .any(|r| r.reviewer.as_deref() == Some(name))
    {
        return Err(ReviewRefusal::AlreadyReviewed {
            reviewer: name.into(),
            name: request_name(request),
        });
    }
    Ok(())
}

/// A denial has a reason; a reason is bounded and holds no card number.
fn check_reason(request: &ApprovalRequest, review: &Review) -> Result<(), ReviewRefusal> {
    let reason = review.reason.as_deref().unwrap_or_default();
    if review.decision == Decision::Denied && reason.trim().is_empty() {
        return Err(ReviewRefusal::ReasonRequired);
    }
    if reason.chars().count() > MAX_REASON {
        return Err(ReviewRefusal::ReasonTooLong);
    }
    if looks_like_card_number(reason) {
        return Err(ReviewRefusal::CardNumber {
            index: request.spec.reviews.len(),
        });
    }
    Ok(())
}

/// `review` with the reviewer's identity and `now`, whatever it said
/// before: what counts is who the caller is, never what the body claims.
pub fn stamp(review: &Review, reviewer: &Reviewer, now: Timestamp) -> Review {
    Review {
        decision: review.decision,
        reason: review.reason.clone(),
        reviewer: Some(reviewer.name.trim().to_string()),
        groups: reviewer.groups.clone(),
        time: Some(Time(now)),
    }
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
    use crate::v1alpha1::ApprovalRequestStatus;

    const NOW: &str = "2026-11-22T10:05:00Z";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn request() -> ApprovalRequest {
        serde_saphyr::from_str(
            r#"
apiVersion: cardgate.dev/v1alpha1
kind: ApprovalRequest
metadata: {name: support-agent-7f3c9a2e-qwer, namespace: payments}
spec:
  requester: {subject: agent-7, serviceAccount: "system:serviceaccount:payments:support-agent", pod: p, podUid: u}
  policy: support-agent
  rule: rule 3 (writes-need-approval)
  target: payments-db
  statement: {text: UPDATE t SET a = 1, preview: UPDATE t SET a = 1, fingerprint: "7f3c9a2e", class: write}
  mode: wait
  quorum: 2
  expiresAt: "2026-11-22T10:15:00Z"
  grantTtl: 1h
  maxUses: 1
"#,
        )
        .expect("fixture YAML")
    }

    fn approvers() -> Approvers {
        Approvers {
            users: vec!["alice".into(), "bob".into()],
            groups: vec!["oncall".into()],
        }
    }

    fn who(name: &str) -> Reviewer {
        Reviewer {
            name: name.into(),
            groups: vec![],
        }
    }

    fn body(decision: Decision, reason: Option<&str>) -> Review {
        Review {
            decision,
            reason: reason.map(Into::into),
            reviewer: None,
            groups: vec![],
            time: None,
        }
    }

    fn check(req: &ApprovalRequest, reviewer: &Reviewer, review: &Review) -> Result<(), String> {
        check_review(req, &approvers(), reviewer, review, ts(NOW)).map_err(|e| e.to_string())
    }

    fn approve() -> Review {
        body(Decision::Approved, None)
    }

    /// `req` with an approval by `name` appended as the webhook stamps it.
    fn reviewed(mut req: ApprovalRequest, name: &str) -> ApprovalRequest {
        let review = stamp(&approve(), &who(name), ts(NOW));
        req.spec.reviews.push(review);
        req
    }

    #[test]
    fn an_approver_by_name_or_group_may_review_once() {
        let req = request();
        assert_eq!(check(&req, &who("alice"), &approve()), Ok(()));
        let carol = Reviewer {
            name: "carol".into(),
            groups: vec!["dev".into(), "oncall".into()],
        };
        assert_eq!(check(&req, &carol, &approve()), Ok(()));
        let req = reviewed(req, "alice");
        assert_eq!(
            check(&req, &who("alice"), &approve()),
            Err("cardgate: alice has already reviewed support-agent-7f3c9a2e-qwer".into())
        );
        assert_eq!(check(&req, &who("bob"), &approve()), Ok(()));
    }

    #[test]
    fn the_requester_cannot_review_by_subject_or_service_account() {
        let req = request();
        let mut approvers = approvers();
        approvers.users.push("agent-7".into());
        approvers
            .users
            .push("system:serviceaccount:payments:support-agent".into());
        for (me, decision, verb) in [
            ("agent-7", Decision::Approved, "approve"),
            (
                "system:serviceaccount:payments:support-agent",
                Decision::Denied,
                "deny",
            ),
            (" agent-7 ", Decision::Approved, "approve"),
        ] {
            let err = check_review(
                &req,
                &approvers,
                &who(me),
                &body(decision, Some("mine")),
                ts(NOW),
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("cardgate: {} cannot {verb} their own request", me.trim())
            );
        }
    }

    #[test]
    fn no_service_account_reviews_even_when_listed_or_the_requester_has_none() {
        let mut req = request();
        req.spec.requester.service_account = String::new();
        let mut approvers = approvers();
        approvers
            .users
            .push("system:serviceaccount:payments:batch".into());
        let batch = Reviewer {
            name: "system:serviceaccount:payments:batch".into(),
            groups: vec!["oncall".into()],
        };
        let err = check_review(&req, &approvers, &batch, &approve(), ts(NOW)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cardgate: system:serviceaccount:payments:batch is a service account; approvals are given by people, not workloads"
        );
    }

    #[test]
    fn strangers_are_refused_with_the_approver_list() {
        let req = request();
        assert_eq!(
            check(&req, &who("mallory"), &approve()),
            Err("cardgate: mallory is not an approver of AccessPolicy support-agent (approvers: users alice, bob; groups oncall)".into())
        );
        let err = check_review(
            &req,
            &Approvers::default(),
            &who("alice"),
            &approve(),
            ts(NOW),
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "cardgate: alice is not an approver of AccessPolicy support-agent (approvers: none)"
        );
        assert_eq!(
            check(&req, &who("  "), &approve()),
            Err("cardgate: no reviewer name; say who you are with --as NAME".into())
        );
    }

    #[test]
    fn reasons_are_required_for_denials_bounded_and_free_of_card_numbers() {
        let req = reviewed(request(), "bob");
        let alice = who("alice");
        for reason in [None, Some("  ")] {
            assert_eq!(
                check(&req, &alice, &body(Decision::Denied, reason)),
                Err("cardgate: a denial needs a reason (deny NAME --reason …)".into())
            );
        }
        let longest = "é".repeat(MAX_REASON);
        assert_eq!(
            check(&req, &alice, &body(Decision::Denied, Some(&longest))),
            Ok(())
        );
        let over = "x".repeat(MAX_REASON + 1);
        assert_eq!(
            check(&req, &alice, &body(Decision::Approved, Some(&over))),
            Err("cardgate: the reason is longer than 1024 characters".into())
        );
        assert_eq!(
            check(&req, &alice, &body(Decision::Approved, Some("refund 4111-1111-1111-1111"))),
            Err("cardgate: spec.reviews[1].reason holds what looks like an unmasked card number; cardgate never stores card numbers".into())
        );
    }

    #[test]
    fn decided_requests_take_no_review_even_before_the_phase_says_so() {
        let base = request();
        let mut by_status = base.clone();
        by_status.status = Some(ApprovalRequestStatus {
            phase: Phase::Expired,
            ..Default::default()
        });
        assert_eq!(
            check(&by_status, &who("alice"), &approve()),
            Err(
                "cardgate: support-agent-7f3c9a2e-qwer is already Expired; nothing can change"
                    .into()
            )
        );
        let mut denied = base.clone();
        denied.spec.reviews.push(stamp(
            &body(Decision::Denied, Some("no")),
            &who("bob"),
            ts(NOW),
        ));
        assert_eq!(
            check(&denied, &who("alice"), &approve()),
            Err(
                "cardgate: support-agent-7f3c9a2e-qwer is already Denied; nothing can change"
                    .into()
            )
        );
        let mut withdrawn = base.clone();
        withdrawn.status = Some(ApprovalRequestStatus {
            withdrawn_at: Some(Time(ts(NOW))),
            ..Default::default()
        });
        assert_eq!(
            check(&withdrawn, &who("alice"), &approve()),
            Err("cardgate: support-agent-7f3c9a2e-qwer was withdrawn by the requester; it can no longer be reviewed".into())
        );
        let late = check_review(
            &base,
            &approvers(),
            &who("alice"),
            &approve(),
            ts("2026-11-22T10:15:00Z"),
        );
        assert_eq!(
            late.unwrap_err().to_string(),
            "cardgate: support-agent-7f3c9a2e-qwer expired at 2026-11-22T10:15:00Z; it can no longer be reviewed"
        );
    }

    #[test]
    fn a_request_holds_at_most_max_reviews() {
        let mut req = request();
        req.spec.quorum = i32::try_from(MAX_REVIEWS).unwrap() + 1;
        for i in 0..MAX_REVIEWS {
            req = reviewed(req, &format!("user-{i}"));
        }
        assert_eq!(
            check(&req, &who("alice"), &approve()),
            Err("cardgate: support-agent-7f3c9a2e-qwer already holds 32 reviews".into())
        );
    }

    #[test]
    fn the_stamp_is_the_reviewers_whatever_the_body_says() {
        let forged = Review {
            decision: Decision::Approved,
            reason: Some("ok".into()),
            reviewer: Some("bob".into()),
            groups: vec!["admins".into()],
            time: Some(Time(ts("2020-01-01T00:00:00Z"))),
        };
        let carol = Reviewer {
            name: "carol".into(),
            groups: vec!["oncall".into()],
        };
        let stamped = stamp(&forged, &carol, ts(NOW));
        assert_eq!(stamped.reviewer.as_deref(), Some("carol"));
        assert_eq!(stamped.groups, ["oncall"]);
        assert_eq!(stamped.time, Some(Time(ts(NOW))));
        assert_eq!(stamped.reason.as_deref(), Some("ok"));
    }

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

//! The rules of an approval, as pure functions of a request and the clock.
//!
//! In Kubernetes the admission webhook and the operator enforce these; a
//! local directory has neither, so the local store and its CLI apply them
//! here, and the tests check them without any IO:
//!
//! - [`settle`]: the phase a request is in now (Pending → Approved / Denied
//!   / Expired / Withdrawn; Approved → Consumed), with who decided and when;
//! - [`admit_review`]: whether a reviewer may add a review, and the review
//!   as recorded (reviewer, groups and time from the caller, never the file);
//! - [`resolution`], [`check_use`] and [`live_grant`]: what a settled
//!   request means for the waiting agent and for a run it allows.

use std::fmt;

use cardgate_crds::v1alpha1::{
    ApprovalMode, ApprovalRequest, ApprovalRequestSpec, ApprovalRequestStatus, Approvers, Decision,
    MAX_REVIEWS, Phase, Review,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::error::mask;
use super::{Grant, Resolution};

/// The status a request has at `now`. Reviews decide before expiry (the
/// store refuses reviews once expired, so any review present came in time);
/// a withdrawal counts only while Pending; an approval is Consumed once
/// `uses` reaches `maxUses`. Final phases never change.
pub fn settle(
    spec: &ApprovalRequestSpec,
    status: &ApprovalRequestStatus,
    now: Timestamp,
) -> ApprovalRequestStatus {
    let mut next = status.clone();
    if next.phase == Phase::Pending {
        decide(spec, &mut next, now);
    }
    if next.phase == Phase::Approved && next.uses >= spec.max_uses {
        next.phase = Phase::Consumed;
        next.message = Some(format!(
            "used {} of {} times",
            next.uses,
            spec.max_uses.max(1)
        ));
    }
    next
}

fn decide(spec: &ApprovalRequestSpec, next: &mut ApprovalRequestStatus, now: Timestamp) {
    if let Some(at) = &next.withdrawn_at {
        next.phase = Phase::Withdrawn;
        next.decided_at = Some(at.clone());
        next.message = Some("withdrawn: the agent disconnected or cancelled".into());
        return;
    }
    match spec.decision() {
        Some(Decision::Denied) => {
            let Some(denial) = spec.reviews.iter().find(|r| r.decision == Decision::Denied) else {
                return;
            };
            let who = reviewer_name(denial);
            next.phase = Phase::Denied;
            next.decided_at = Some(denial.time.clone().unwrap_or(Time(now)));
            next.decided_by = vec![who.clone()];
            next.message = Some(format!(
                "denied by {who}: {}",
                denial.reason.as_deref().unwrap_or("")
            ));
        }
        Some(Decision::Approved) => {
            let approvals: Vec<&Review> = spec
                .reviews
                .iter()
                .filter(|r| r.decision == Decision::Approved)
                .collect();
            let quorum = usize::try_from(spec.quorum.max(1)).unwrap_or(1);
            let deciding = approvals.get(quorum - 1).copied();
            let at = deciding.and_then(|r| r.time.as_ref()).map_or(now, |t| t.0);
            let by: Vec<String> = approvals.iter().map(|r| reviewer_name(r)).collect();
            next.phase = Phase::Approved;
            next.decided_at = Some(Time(at));
            next.message = Some(format!("approved by {}", by.join(", ")));
            next.decided_by = by;
            next.grant_expires_at = Some(Time(grant_end(at, spec)));
        }
        None if now >= spec.expires_at.0 => {
            next.phase = Phase::Expired;
            next.decided_at = Some(spec.expires_at.clone());
            next.message = Some(format!(
                "no decision before {}",
                spec.expires_at.0.strftime("%Y-%m-%dT%H:%M:%SZ")
            ));
        }
        None => {}
    }
}

/// When an approval given at `at` stops covering the statement; a TTL too
/// large to add means no grant at all (fail closed).
fn grant_end(at: Timestamp, spec: &ApprovalRequestSpec) -> Timestamp {
    SignedDuration::try_from(std::time::Duration::from(spec.grant_ttl))
        .ok()
        .and_then(|ttl| at.checked_add(ttl).ok())
        .unwrap_or(at)
}

fn reviewer_name(r: &Review) -> String {
    r.reviewer.clone().unwrap_or_else(|| "unknown".into())
}

/// Who is reviewing, as the caller vouches for them (the local CLI: `--as`
/// and `--group`, trusted because only the directory's owner can write it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reviewer {
    /// Username.
    pub name: String,
    /// Groups claimed.
    pub groups: Vec<String>,
}

/// Why a review was refused. `Display` is the message shown to the reviewer.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// No reviewer name was given.
    NoReviewer,
    /// The request is already decided (or expired, withdrawn, consumed).
    Decided(Phase),
    /// The reviewer is the requester or the requester's service account.
    SelfReview {
        reviewer: String,
        decision: Decision,
    },
    /// The reviewer is neither a listed user nor in a listed group.
    NotApprover {
        reviewer: String,
        approvers: Approvers,
    },
    /// Each reviewer reviews a request once.
    AlreadyReviewed(String),
    /// A denial without a reason.
    ReasonRequired,
    /// The request holds [`MAX_REVIEWS`] reviews already.
    TooManyReviews,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoReviewer => {
                f.write_str("cardgate: no reviewer name; say who you are with --as NAME")
            }
            Refusal::Decided(phase) => write!(
                f,
                "cardgate: the request is already {}; nothing can change",
                phase_name(*phase)
            ),
            Refusal::SelfReview { reviewer, decision } => write!(
                f,
                "cardgate: {reviewer} cannot {} their own request",
                match decision {
                    Decision::Approved => "approve",
                    Decision::Denied => "deny",
                }
            ),
            Refusal::NotApprover {
                reviewer,
                approvers,
            } => write!(
                f,
                "cardgate: {reviewer} is not an approver (users: {}; groups: {})",
                list(&approvers.users),
                list(&approvers.groups)
            ),
            Refusal::AlreadyReviewed(r) => {
                write!(f, "cardgate: {r} has already reviewed this request")
            }
            Refusal::ReasonRequired => f.write_str("cardgate: a denial needs a reason (--reason)"),
            Refusal::TooManyReviews => write!(
                f,
                "cardgate: the request already holds {MAX_REVIEWS} reviews"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The lower-case word for a phase in messages.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Pending => "pending",
        Phase::Approved => "approved",
        Phase::Denied => "denied",
        Phase::Expired => "expired",
        Phase::Consumed => "consumed",
        Phase::Withdrawn => "withdrawn",
    }
}

/// Checks a new review against the request as settled at `now` and returns
/// the review to append: the reviewer, groups and time come from the
/// arguments, the reason is masked. Self-review covers the requester's
/// subject and its pod's service account.
pub fn admit_review(
    spec: &ApprovalRequestSpec,
    status: &ApprovalRequestStatus,
    approvers: &Approvers,
    reviewer: &Reviewer,
    decision: Decision,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<Review, Refusal> {
    let name = reviewer.name.trim();
    if name.is_empty() {
        return Err(Refusal::NoReviewer);
    }
    let phase = settle(spec, status, now).phase;
    if phase.is_final() {
        return Err(Refusal::Decided(phase));
    }
    let requester = &spec.requester;
    if name == requester.subject
        || (!requester.service_account.is_empty() && name == requester.service_account)
    {
        return Err(Refusal::SelfReview {
            reviewer: name.into(),
            decision,
        });
    }
    let listed = approvers.users.iter().any(|u| u == name)
        || reviewer.groups.iter().any(|g| approvers.groups.contains(g));
    if !listed {
        return Err(Refusal::NotApprover {
            reviewer: name.into(),
            approvers: approvers.clone(),
        });
    }
    if spec
        .reviews
        .iter()
        .any(|r| r.reviewer.as_deref() == Some(name))
    {
        return Err(Refusal::AlreadyReviewed(name.into()));
    }
    let reason = reason.map(str::trim).filter(|r| !r.is_empty()).map(mask);
    if decision == Decision::Denied && reason.is_none() {
        return Err(Refusal::ReasonRequired);
    }
    if spec.reviews.len() >= MAX_REVIEWS {
        return Err(Refusal::TooManyReviews);
    }
    Ok(Review {
        decision,
        reason,
        reviewer: Some(name.into()),
        groups: reviewer.groups.clone(),
        time: Some(Time(now)),
    })
}

/// What a request means for the waiting agent: `None` while Pending.
/// Consumed was approved first, so it resolves as Approved.
pub fn resolution(req: &ApprovalRequest) -> Option<Resolution> {
    let name = req.metadata.name.clone().unwrap_or_default();
    let status = req.status.clone().unwrap_or_default();
    match status.phase {
        Phase::Pending => None,
        Phase::Approved | Phase::Consumed => {
            let reviewers = if status.decided_by.is_empty() {
                req.spec
                    .reviews
                    .iter()
                    .filter(|r| r.decision == Decision::Approved)
                    .map(reviewer_name)
                    .collect()
            } else {
                status.decided_by
            };
            Some(Resolution::Approved { name, reviewers })
        }
        Phase::Denied => {
            let denial = req
                .spec
                .reviews
                .iter()
                .find(|r| r.decision == Decision::Denied);
            let reviewer = denial
                .and_then(|r| r.reviewer.clone())
                .or_else(|| status.decided_by.first().cloned())
                .unwrap_or_else(|| "unknown".into());
            let reason = denial
                .and_then(|r| r.reason.clone())
                .or(status.message)
                .unwrap_or_default();
            Some(Resolution::Denied {
                name,
                reviewer,
                reason: mask(&reason),
            })
        }
        Phase::Expired => Some(Resolution::Expired { name }),
        Phase::Withdrawn => Some(Resolution::Withdrawn { name }),
    }
}

/// How many runs an approval still allows at `now`, or why it allows none
/// (the text the agent sees): it must be Approved, within its grant
/// (`grantExpiresAt`; in deferred mode none set means no grant, fail
/// closed) and have uses left.
pub fn check_use(req: &ApprovalRequest, now: Timestamp) -> Result<i32, String> {
    let name = req.metadata.name.as_deref().unwrap_or_default();
    let status = req.status.clone().unwrap_or_default();
    let used_up = || {
        format!(
            "approval {name} is used up ({} of {} runs)",
            status.uses, req.spec.max_uses
        )
    };
    match status.phase {
        Phase::Approved => {}
        Phase::Consumed => return Err(used_up()),
        phase => return Err(format!("approval request {name} is {}", phase_name(phase))),
    }
    // A wait-mode approval is for the held statement, which runs right
    // away: the operator gives it no grant end, only deferred mode needs one.
    match (&status.grant_expires_at, req.spec.mode) {
        (Some(until), _) if now >= until.0 => {
            return Err(format!(
                "approval {name} expired at {}",
                until.0.strftime("%Y-%m-%dT%H:%M:%SZ")
            ));
        }
        (Some(_), _) | (None, ApprovalMode::Wait) => {}
        (None, ApprovalMode::Deferred) => {
            return Err(format!("approval {name} has no grant expiry"));
        }
    }
    match req.spec.max_uses.saturating_sub(status.uses) {
        left if left > 0 => Ok(left),
        _ => Err(used_up()),
    }
}

/// The live grant for `fingerprint` among `requests` that ends first, so
/// the grant closest to running out is used first.
pub fn earliest_grant<'a>(
    requests: impl IntoIterator<Item = &'a ApprovalRequest>,
    fingerprint: &str,
    now: Timestamp,
) -> Option<Grant> {
    requests
        .into_iter()
        .filter(|r| r.spec.statement.fingerprint == fingerprint)
        .filter_map(|r| {
            let until = r.status.as_ref()?.grant_expires_at.as_ref()?.0;
            Some((until, live_grant(r, now)?))
        })
        .min_by_key(|(until, _)| *until)
        .map(|(_, grant)| grant)
}

/// The deferred-mode grant a request gives at `now`, if any: a wait-mode
/// approval covers only the statement that was held.
pub fn live_grant(req: &ApprovalRequest, now: Timestamp) -> Option<Grant> {
    if req.spec.mode != ApprovalMode::Deferred {
        return None;
    }
    let uses_left = check_use(req, now).ok()?;
    Some(Grant {
        name: req.metadata.name.clone().unwrap_or_default(),
        uses_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cardgate_crds::v1alpha1::{Requester, StatementClass, StatementRef};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn spec(quorum: i32) -> ApprovalRequestSpec {
        ApprovalRequestSpec {
            requester: Requester {
                subject: "agent-7".into(),
                service_account: "system:serviceaccount:payments:agent".into(),
                pod: "agent-7f".into(),
                pod_uid: "uid-1".into(),
                ..Requester::default()
            },
            policy: "payments".into(),
            rule: "rule 2 (writes)".into(),
            target: "db".into(),
            statement: StatementRef {
                text: "UPDATE t SET a = 1".into(),
                preview: "UPDATE t SET a = 1".into(),
                fingerprint: "0".repeat(64),
                class: StatementClass::Write,
            },
            mode: ApprovalMode::Deferred,
            quorum,
            expires_at: Time(t(600)),
            grant_ttl: "1h".parse().unwrap(),
            max_uses: 2,
            reviews: vec![],
        }
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

    fn review(
        spec: &mut ApprovalRequestSpec,
        name: &str,
        d: Decision,
        reason: Option<&str>,
        at: i64,
    ) {
        let r = admit_review(
            spec,
            &ApprovalRequestStatus::default(),
            &approvers(),
            &who(name),
            d,
            reason,
            t(at),
        )
        .unwrap();
        spec.reviews.push(r);
    }

    #[test]
    fn pending_until_quorum_then_approved_with_grant() {
        let mut s = spec(2);
        review(&mut s, "alice", Decision::Approved, None, 10);
        let st = settle(&s, &ApprovalRequestStatus::default(), t(11));
        assert_eq!(st.phase, Phase::Pending);
        review(&mut s, "bob", Decision::Approved, Some("ok"), 20);
        let st = settle(&s, &ApprovalRequestStatus::default(), t(21));
        assert_eq!(st.phase, Phase::Approved);
        assert_eq!(st.decided_by, ["alice", "bob"]);
        assert_eq!(st.decided_at, Some(Time(t(20))));
        assert_eq!(st.grant_expires_at, Some(Time(t(20 + 3600))));
        // a decision reached before expiry stands after it
        assert_eq!(settle(&s, &st, t(10_000)).phase, Phase::Approved);
    }

    #[test]
    fn first_denial_decides_even_with_approvals() {
        let mut s = spec(1);
        review(&mut s, "alice", Decision::Denied, Some("no ticket"), 5);
        let st = settle(&s, &ApprovalRequestStatus::default(), t(6));
        assert_eq!(st.phase, Phase::Denied);
        assert_eq!(st.decided_by, ["alice"]);
        assert_eq!(st.message.as_deref(), Some("denied by alice: no ticket"));
        let mut s2 = spec(2);
        review(&mut s2, "alice", Decision::Approved, None, 5);
        review(&mut s2, "bob", Decision::Denied, Some("wrong table"), 6);
        assert_eq!(
            settle(&s2, &ApprovalRequestStatus::default(), t(7)).phase,
            Phase::Denied
        );
    }

    #[test]
    fn expires_at_expires_at_and_not_before() {
        let s = spec(1);
        let st = ApprovalRequestStatus::default();
        assert_eq!(settle(&s, &st, t(599)).phase, Phase::Pending);
        let expired = settle(&s, &st, t(600));
        assert_eq!(expired.phase, Phase::Expired);
        assert_eq!(expired.decided_at, Some(Time(t(600))));
        // final: a later approval cannot be admitted
        let err = admit_review(
            &s,
            &expired,
            &approvers(),
            &who("alice"),
            Decision::Approved,
            None,
            t(601),
        )
        .unwrap_err();
        assert_eq!(err, Refusal::Decided(Phase::Expired));
        // nor one given after expiry to a stale Pending status
        let err = admit_review(
            &s,
            &st,
            &approvers(),
            &who("alice"),
            Decision::Approved,
            None,
            t(600),
        )
        .unwrap_err();
        assert_eq!(err, Refusal::Decided(Phase::Expired));
    }

    #[test]
    fn withdrawal_counts_only_while_pending() {
        let s = spec(1);
        let st = ApprovalRequestStatus {
            withdrawn_at: Some(Time(t(3))),
            ..Default::default()
        };
        assert_eq!(settle(&s, &st, t(4)).phase, Phase::Withdrawn);
        let mut approved = spec(1);
        review(&mut approved, "alice", Decision::Approved, None, 1);
        let st = settle(&approved, &ApprovalRequestStatus::default(), t(2));
        let late = ApprovalRequestStatus {
            withdrawn_at: Some(Time(t(3))),
            ..st
        };
        assert_eq!(settle(&approved, &late, t(4)).phase, Phase::Approved);
    }

    #[test]
    fn consumed_when_uses_reach_max_uses() {
        let mut s = spec(1);
        review(&mut s, "alice", Decision::Approved, None, 1);
        let mut st = settle(&s, &ApprovalRequestStatus::default(), t(2));
        st.uses = 1;
        assert_eq!(settle(&s, &st, t(3)).phase, Phase::Approved);
        st.uses = 2;
        let consumed = settle(&s, &st, t(3));
        assert_eq!(consumed.phase, Phase::Consumed);
        assert_eq!(consumed.message.as_deref(), Some("used 2 of 2 times"));
    }

    #[test]
    fn self_review_is_refused_for_subject_and_service_account() {
        let s = spec(1);
        let st = ApprovalRequestStatus::default();
        for me in ["agent-7", "system:serviceaccount:payments:agent"] {
            let mut a = approvers();
            a.users.push(me.into());
            let err =
                admit_review(&s, &st, &a, &who(me), Decision::Approved, None, t(1)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("cardgate: {me} cannot approve their own request")
            );
        }
    }

    #[test]
    fn approver_by_user_or_claimed_group_only() {
        let s = spec(1);
        let st = ApprovalRequestStatus::default();
        let err = admit_review(
            &s,
            &st,
            &approvers(),
            &who("mallory"),
            Decision::Approved,
            None,
            t(1),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cardgate: mallory is not an approver (users: alice, bob; groups: oncall)"
        );
        let carol = Reviewer {
            name: "carol".into(),
            groups: vec!["dev".into(), "oncall".into()],
        };
        let r = admit_review(
            &s,
            &st,
            &approvers(),
            &carol,
            Decision::Approved,
            None,
            t(1),
        )
        .unwrap();
        assert_eq!(r.reviewer.as_deref(), Some("carol"));
        assert_eq!(r.groups, ["dev", "oncall"]);
        assert_eq!(r.time, Some(Time(t(1))));
    }

    #[test]
    fn one_review_per_reviewer_and_denials_need_a_reason() {
        let mut s = spec(2);
        review(&mut s, "alice", Decision::Approved, None, 1);
        let st = ApprovalRequestStatus::default();
        let err = admit_review(
            &s,
            &st,
            &approvers(),
            &who("alice"),
            Decision::Approved,
            None,
            t(2),
        )
        .unwrap_err();
        assert_eq!(err, Refusal::AlreadyReviewed("alice".into()));
        let err = admit_review(
            &s,
            &st,
            &approvers(),
            &who("bob"),
            Decision::Denied,
            Some("  "),
            t(2),
        )
        .unwrap_err();
        assert_eq!(err, Refusal::ReasonRequired);
        let err = admit_review(
            &s,
            &st,
            &approvers(),
            &who(" "),
            Decision::Approved,
            None,
            t(2),
        )
        .unwrap_err();
        assert_eq!(err, Refusal::NoReviewer);
    }

    #[test]
    fn reasons_are_masked() {
        let s = spec(1);
        let r = admit_review(
            &s,
            &ApprovalRequestStatus::default(),
            &approvers(),
            &who("alice"),
            Decision::Denied,
            Some("card 4111 1111 1111 1111 is not ours"),
            t(1),
        )
        .unwrap();
        let reason = r.reason.unwrap();
        assert!(!reason.contains("4111 1111 1111 1111"), "{reason}");
        assert!(reason.contains("1111"), "{reason}");
    }

    fn object(s: ApprovalRequestSpec, now: Timestamp) -> ApprovalRequest {
        let status = settle(&s, &ApprovalRequestStatus::default(), now);
        let mut o = ApprovalRequest::new("payments-00000000-abcd", s);
        o.status = Some(status);
        o
    }

    #[test]
    fn resolutions_name_reviewers_and_reasons() {
        let mut s = spec(1);
        review(&mut s, "bob", Decision::Denied, Some("not today"), 1);
        assert_eq!(
            resolution(&object(s, t(2))),
            Some(Resolution::Denied {
                name: "payments-00000000-abcd".into(),
                reviewer: "bob".into(),
                reason: "not today".into()
            })
        );
        assert_eq!(resolution(&object(spec(1), t(2))), None);
        assert_eq!(
            resolution(&object(spec(1), t(700))),
            Some(Resolution::Expired {
                name: "payments-00000000-abcd".into()
            })
        );
    }

    #[test]
    fn live_grant_needs_deferred_approved_unexpired_with_uses_left() {
        let mut s = spec(1);
        review(&mut s, "alice", Decision::Approved, None, 1);
        let mut o = object(s.clone(), t(2));
        assert_eq!(
            live_grant(&o, t(2)),
            Some(Grant {
                name: "payments-00000000-abcd".into(),
                uses_left: 2
            })
        );
        assert_eq!(live_grant(&o, t(1 + 3600)), None);
        assert_eq!(
            check_use(&o, t(1 + 3600)),
            Err("approval payments-00000000-abcd expired at 2027-01-15T09:00:01Z".into())
        );
        o.status.as_mut().unwrap().uses = 2;
        assert_eq!(live_grant(&o, t(2)), None);
        assert_eq!(
            check_use(&o, t(2)),
            Err("approval payments-00000000-abcd is used up (2 of 2 runs)".into())
        );
        let mut waiting = s;
        waiting.mode = ApprovalMode::Wait;
        let waiting = object(waiting, t(2));
        assert_eq!(live_grant(&waiting, t(2)), None);
        assert_eq!(check_use(&waiting, t(2)), Ok(2));
        assert_eq!(
            check_use(&object(spec(1), t(2)), t(2)),
            Err("approval request payments-00000000-abcd is pending".into())
        );
    }
}

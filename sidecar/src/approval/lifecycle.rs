//! What a settled request means for the sidecar, as pure functions of a
//! request and the clock: [`resolution`] for the waiting agent,
//! [`check_use`], [`live_grant`] and [`earliest_grant`] for a run it allows.
//!
//! The approval rules themselves (the phase, and whether a review may be
//! added) are in `cardgate_crds::approval`, shared with the operator: the
//! Kubernetes store derives the phase with them, and the directory store,
//! which has neither webhook nor operator, applies all of them itself.

use cardgate_crds::approval::show;
use cardgate_crds::v1alpha1::{ApprovalMode, ApprovalRequest, Decision, Phase, Review};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::error::mask;
use super::{Grant, Resolution};

fn reviewer_name(r: &Review) -> String {
    r.reviewer.clone().unwrap_or_else(|| "unknown".into())
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
    let expired_at = |until: &Time| format!("approval {name} expired at {}", show(until.0));
    match (status.phase, &status.grant_expires_at) {
        (Phase::Approved, _) => {}
        (Phase::Consumed, _) => return Err(used_up()),
        // An approval whose grant ended.
        (Phase::Expired, Some(until)) => return Err(expired_at(until)),
        (phase, _) => return Err(format!("approval request {name} is {phase}")),
    }
    // A wait-mode approval is for the held statement, which runs right
    // away: the operator gives it no grant end, only deferred mode needs one.
    match (&status.grant_expires_at, req.spec.mode) {
        (Some(until), _) if now >= until.0 => return Err(expired_at(until)),
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
    use cardgate_crds::approval::derive_status;
    use cardgate_crds::approval::review::{Reviewer, stamp};
    use cardgate_crds::v1alpha1::{
        ApprovalRequestSpec, ApprovalRequestStatus, Requester, StatementClass, StatementRef,
    };

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

    fn review(
        spec: &mut ApprovalRequestSpec,
        name: &str,
        d: Decision,
        reason: Option<&str>,
        at: i64,
    ) {
        let body = Review {
            decision: d,
            reason: reason.map(Into::into),
            reviewer: None,
            groups: vec![],
            time: None,
        };
        let who = Reviewer {
            name: name.into(),
            groups: vec![],
        };
        spec.reviews.push(stamp(&body, &who, t(at)));
    }

    fn object(s: ApprovalRequestSpec, now: Timestamp) -> ApprovalRequest {
        let status = derive_status(&s, ApprovalRequestStatus::default(), now);
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
        // derived after the grant ended: Expired, and still says when
        let ended = object(s.clone(), t(1 + 3600));
        assert_eq!(ended.status.as_ref().unwrap().phase, Phase::Expired);
        assert_eq!(
            check_use(&ended, t(2)),
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
            Err("approval request payments-00000000-abcd is Pending".into())
        );
    }
}

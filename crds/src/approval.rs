//! The phase of an ApprovalRequest as a pure function of its spec, what the
//! sidecar reported (uses, withdrawal) and the clock. The operator writes
//! it to the status; sidecars using the Kubernetes store derive it again
//! instead of trusting the status, which any holder of the agents' service
//! account may patch.
//!
//! The phase is derived afresh on every reconcile rather than stepped from
//! the stored one, so a status written by anyone else is corrected on the
//! next pass, and time-driven changes (expiry, end of a grant) need nothing
//! but a requeue at the time [`Evaluation::next_change`] names.
//!
//! Only reviews stamped by the admission webhook (reviewer and time set, the
//! time before the request expired) count: a review that reached the object
//! without the webhook can never approve anything.
//!
//! Whether a review may be added at all is [`review::check_review`]. These
//! are the only copies of the approval rules: the operator's webhook and
//! controller, the sidecar's Kubernetes store and its directory store all
//! call them.

pub mod review;

use std::time::Duration;

use crate::v1alpha1::{
    ApprovalMode, ApprovalRequestSpec, ApprovalRequestStatus, Decision, Phase, Review,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What the sidecar reported in the status subresource.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reported {
    /// Times the approved statement ran.
    pub uses: i32,
    /// When the agent gave up waiting (disconnect or cancel).
    pub withdrawn_at: Option<Timestamp>,
}

impl Reported {
    /// What the sidecar reported, as a stored status holds it.
    pub fn from_status(status: Option<&ApprovalRequestStatus>) -> Reported {
        Reported {
            uses: status.map_or(0, |s| s.uses),
            withdrawn_at: status.and_then(|s| s.withdrawn_at.as_ref()).map(|t| t.0),
        }
    }
}

/// The phase and the status fields that explain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Current phase.
    pub phase: Phase,
    /// When the request left Pending.
    pub decided_at: Option<Timestamp>,
    /// Reviewers whose decisions made the outcome.
    pub decided_by: Vec<String>,
    /// One line for `kubectl describe` and the sidecar's error to the agent.
    pub message: String,
    /// deferred mode: end of the grant.
    pub grant_expires_at: Option<Timestamp>,
    /// When the phase changes next by the clock alone (expiry, end of the
    /// grant); reconcile again then.
    pub next_change: Option<Timestamp>,
    /// Counted (stamped, timely) approvals.
    pub approvals: usize,
}

/// Reviews that count: stamped by the webhook before the expiry.
pub fn counted_reviews(
    spec: &ApprovalRequestSpec,
) -> impl Iterator<Item = (&Review, &str, Timestamp)> {
    let expires = spec.expires_at.0;
    spec.reviews.iter().filter_map(move |r| {
        let reviewer = r.reviewer.as_deref()?;
        let time = r.time.as_ref()?.0;
        (time <= expires).then_some((r, reviewer, time))
    })
}

/// `t + d`, saturating at the end of time instead of failing.
pub fn add(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// When an approval given at `at` stops covering the statement; a TTL too
/// large to add means a grant that ends as it starts (fail closed), never
/// one that runs to the end of time.
fn grant_end(at: Timestamp, ttl: Duration) -> Timestamp {
    SignedDuration::try_from(ttl)
        .ok()
        .and_then(|d| at.checked_add(d).ok())
        .unwrap_or(at)
}

/// RFC 3339 in UTC, seconds precision: the form `kubectl` shows.
pub fn show(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Derives the phase. See the module documentation for the rules.
pub fn evaluate(spec: &ApprovalRequestSpec, reported: Reported, now: Timestamp) -> Evaluation {
    let quorum = usize::try_from(spec.quorum.max(1)).unwrap_or(1);
    let mut approvers: Vec<String> = Vec::new();
    let mut decision: Option<(Decision, Timestamp, String)> = None;
    for (review, reviewer, time) in counted_reviews(spec) {
        match review.decision {
            Decision::Denied => {
                let reason = review.reason.as_deref().unwrap_or_default();
                decision = Some((
                    Decision::Denied,
                    time,
                    format!("denied by {reviewer}: {reason}"),
                ));
                approvers = vec![reviewer.to_string()];
                break;
            }
            Decision::Approved => {
                approvers.push(reviewer.to_string());
                if approvers.len() >= quorum {
                    decision = Some((
                        Decision::Approved,
                        time,
                        format!("approved by {}", approvers.join(", ")),
                    ));
                    break;
                }
            }
        }
    }
    let approvals = match &decision {
        Some((Decision::Denied, ..)) => 0,
        _ => approvers.len(),
    };
    let base = Evaluation {
        phase: Phase::Pending,
        decided_at: None,
        decided_by: Vec::new(),
        message: String::new(),
        grant_expires_at: None,
        next_change: None,
        approvals,
    };

    // A withdrawal counts if it came before the decision (or there is none).
    let withdrawn = reported
        .withdrawn_at
        .filter(|w| *w <= spec.expires_at.0 && decision.as_ref().is_none_or(|(_, at, _)| w < at));
    if let Some(at) = withdrawn {
        return Evaluation {
            phase: Phase::Withdrawn,
            decided_at: Some(at),
            message: format!(
                "withdrawn by the requester at {} (the client disconnected or cancelled)",
                show(at)
            ),
            ..base
        };
    }

    match decision {
        Some((Decision::Denied, at, message)) => Evaluation {
            phase: Phase::Denied,
            decided_at: Some(at),
            decided_by: approvers,
            message,
            ..base
        },
        Some((Decision::Approved, at, message)) => {
            let grant_expires_at =
                (spec.mode == ApprovalMode::Deferred).then(|| grant_end(at, spec.grant_ttl.into()));
            let max_uses = spec.max_uses.max(1);
            let used = format!("used {} of {max_uses} times", reported.uses.max(0));
            let evaluation = Evaluation {
                decided_at: Some(at),
                decided_by: approvers,
                grant_expires_at,
                ..base
            };
            if reported.uses >= max_uses {
                Evaluation {
                    phase: Phase::Consumed,
                    message: format!("{message}; {used}"),
                    ..evaluation
                }
            } else if let Some(end) = grant_expires_at.filter(|end| now >= *end) {
                Evaluation {
                    phase: Phase::Expired,
                    message: format!("{message}; the grant ended at {} ({used})", show(end)),
                    ..evaluation
                }
            } else {
                Evaluation {
                    phase: Phase::Approved,
                    message: match grant_expires_at {
                        Some(end) => format!(
                            "{message}; the statement may run until {} ({used})",
                            show(end)
                        ),
                        None => message,
                    },
                    next_change: grant_expires_at,
                    ..evaluation
                }
            }
        }
        None if now >= spec.expires_at.0 => Evaluation {
            phase: Phase::Expired,
            decided_at: Some(spec.expires_at.0),
            message: format!(
                "expired at {} without a decision ({approvals} of {quorum} approvals)",
                show(spec.expires_at.0)
            ),
            ..base
        },
        None => Evaluation {
            message: format!(
                "waiting for {} more approval{} ({approvals} of {quorum}{}); expires at {}",
                quorum - approvals,
                if quorum - approvals == 1 { "" } else { "s" },
                if approvers.is_empty() {
                    String::new()
                } else {
                    format!(": {}", approvers.join(", "))
                },
                show(spec.expires_at.0)
            ),
            next_change: Some(spec.expires_at.0),
            ..base
        },
    }
}

/// When a request in `phase` may be deleted, `retention` after it settled:
/// after the decision, and never while a grant still runs. None while
/// Pending. The operator and the standalone sidecar both prune by it.
pub fn retain_until(
    phase: Phase,
    decided_at: Option<Timestamp>,
    grant_expires_at: Option<Timestamp>,
    retention: Duration,
) -> Option<Timestamp> {
    if phase == Phase::Pending {
        return None;
    }
    let settled = match (decided_at, grant_expires_at) {
        (Some(d), Some(g)) => d.max(g),
        (Some(d), None) => d,
        (None, g) => g?,
    };
    Some(add(settled, retention))
}

/// `status` with its phase and the fields that explain it derived afresh by
/// [`evaluate`]: only what sidecars report (uses, withdrawal) and the
/// operator's bookkeeping (conditions, observed generation) are kept, so a
/// phase written by anyone else never approves anything.
pub fn derive_status(
    spec: &ApprovalRequestSpec,
    mut status: ApprovalRequestStatus,
    now: Timestamp,
) -> ApprovalRequestStatus {
    let eval = evaluate(spec, Reported::from_status(Some(&status)), now);
    status.phase = eval.phase;
    status.decided_at = eval.decided_at.map(Time);
    status.decided_by = eval.decided_by;
    status.message = Some(eval.message).filter(|m| !m.is_empty());
    status.grant_expires_at = eval.grant_expires_at.map(Time);
    status
}

impl Evaluation {
    /// When the evaluated request may be deleted (see [`retain_until`]).
    pub fn retain_until(&self, retention: Duration) -> Option<Timestamp> {
        retain_until(
            self.phase,
            self.decided_at,
            self.grant_expires_at,
            retention,
        )
    }
}

#[cfg(test)]
mod tests {
    use crate::v1alpha1::ApprovalRequest;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn spec(quorum: i32, mode: &str) -> ApprovalRequestSpec {
        let ar: ApprovalRequest = serde_saphyr::from_str(&format!(
            r#"
apiVersion: cardgate.dev/v1alpha1
kind: ApprovalRequest
metadata: {{name: support-agent-7f3c9a2e-qwer, namespace: payments}}
spec:
  requester: {{subject: agent, serviceAccount: "system:serviceaccount:payments:support-agent", pod: p, podUid: u}}
  policy: support-agent
  rule: rule 3 (writes-need-approval)
  target: payments-db
  statement: {{text: UPDATE t SET a = 1, preview: UPDATE t SET a = 1, fingerprint: "7f3c9a2e", class: write}}
  mode: {mode}
  quorum: {quorum}
  expiresAt: "2026-11-22T10:15:00Z"
  grantTtl: 1h
  maxUses: 2
"#
        ))
        .expect("fixture YAML");
        ar.spec
    }

    fn review(decision: Decision, who: &str, at: &str) -> Review {
        Review {
            decision,
            reason: (decision == Decision::Denied).then(|| "not during the freeze".into()),
            reviewer: Some(who.into()),
            groups: vec!["payments-oncall".into()],
            time: Some(Time(ts(at))),
        }
    }

    const NOW: &str = "2026-11-22T10:05:00Z";

    #[test]
    fn quorum_of_two_needs_two_approvals() {
        let mut s = spec(2, "wait");
        s.reviews
            .push(review(Decision::Approved, "alice", "2026-11-22T10:01:00Z"));
        let e = evaluate(&s, Reported::default(), ts(NOW));
        assert_eq!(e.phase, Phase::Pending);
        assert_eq!(e.approvals, 1);
        assert_eq!(e.next_change, Some(ts("2026-11-22T10:15:00Z")));
        assert_eq!(
            e.message,
            "waiting for 1 more approval (1 of 2: alice); expires at 2026-11-22T10:15:00Z"
        );
        s.reviews
            .push(review(Decision::Approved, "carol", "2026-11-22T10:02:00Z"));
        let e = evaluate(&s, Reported::default(), ts(NOW));
        assert_eq!(e.phase, Phase::Approved);
        assert_eq!(e.decided_at, Some(ts("2026-11-22T10:02:00Z")));
        assert_eq!(e.decided_by, ["alice", "carol"]);
        assert_eq!(e.message, "approved by alice, carol");
        assert_eq!(e.next_change, None);
        assert_eq!(e.grant_expires_at, None);
    }

    #[test]
    fn the_first_denial_decides() {
        let mut s = spec(2, "wait");
        s.reviews
            .push(review(Decision::Approved, "alice", "2026-11-22T10:01:00Z"));
        s.reviews
            .push(review(Decision::Denied, "bob", "2026-11-22T10:03:00Z"));
        let e = evaluate(&s, Reported::default(), ts(NOW));
        assert_eq!(e.phase, Phase::Denied);
        assert_eq!(e.decided_by, ["bob"]);
        assert_eq!(e.message, "denied by bob: not during the freeze");
        assert_eq!(e.decided_at, Some(ts("2026-11-22T10:03:00Z")));
    }

    #[test]
    fn unstamped_or_late_reviews_do_not_count() {
        let mut s = spec(1, "wait");
        let mut forged = review(Decision::Approved, "alice", "2026-11-22T10:01:00Z");
        forged.reviewer = None;
        s.reviews.push(forged);
        s.reviews
            .push(review(Decision::Approved, "carol", "2026-11-22T10:16:00Z"));
        let e = evaluate(&s, Reported::default(), ts(NOW));
        assert_eq!(e.phase, Phase::Pending);
        let e = evaluate(&s, Reported::default(), ts("2026-11-22T10:20:00Z"));
        assert_eq!(e.phase, Phase::Expired);
    }

    #[test]
    fn undecided_requests_expire_exactly_at_expires_at() {
        let s = spec(1, "wait");
        let before = evaluate(&s, Reported::default(), ts("2026-11-22T10:14:59.999Z"));
        assert_eq!(before.phase, Phase::Pending);
        let at = evaluate(&s, Reported::default(), ts("2026-11-22T10:15:00Z"));
        assert_eq!(at.phase, Phase::Expired);
        assert_eq!(at.decided_at, Some(ts("2026-11-22T10:15:00Z")));
        assert_eq!(
            at.message,
            "expired at 2026-11-22T10:15:00Z without a decision (0 of 1 approvals)"
        );
        assert_eq!(at.next_change, None);
    }

    #[test]
    fn deferred_grants_run_out_by_uses_or_time() {
        let mut s = spec(1, "deferred");
        s.reviews
            .push(review(Decision::Approved, "alice", "2026-11-22T10:01:00Z"));
        let end = ts("2026-11-22T11:01:00Z");
        let e = evaluate(&s, Reported::default(), ts(NOW));
        assert_eq!(e.phase, Phase::Approved);
        assert_eq!(e.grant_expires_at, Some(end));
        assert_eq!(e.next_change, Some(end));
        let once = Reported {
            uses: 1,
            withdrawn_at: None,
        };
        assert_eq!(evaluate(&s, once, ts(NOW)).phase, Phase::Approved);
        let used_up = evaluate(
            &s,
            Reported {
                uses: 2,
                withdrawn_at: None,
            },
            ts(NOW),
        );
        assert_eq!(used_up.phase, Phase::Consumed);
        assert_eq!(used_up.message, "approved by alice; used 2 of 2 times");
        let late = evaluate(&s, once, end);
        assert_eq!(late.phase, Phase::Expired);
        assert_eq!(
            late.message,
            "approved by alice; the grant ended at 2026-11-22T11:01:00Z (used 1 of 2 times)"
        );
    }

    #[test]
    fn withdrawal_before_a_decision_wins_and_after_it_is_ignored() {
        let mut s = spec(1, "wait");
        let early = Reported {
            uses: 0,
            withdrawn_at: Some(ts("2026-11-22T10:02:00Z")),
        };
        let e = evaluate(&s, early, ts(NOW));
        assert_eq!(e.phase, Phase::Withdrawn);
        assert_eq!(e.decided_at, Some(ts("2026-11-22T10:02:00Z")));
        s.reviews
            .push(review(Decision::Approved, "alice", "2026-11-22T10:01:00Z"));
        assert_eq!(evaluate(&s, early, ts(NOW)).phase, Phase::Approved);
        s.reviews[0].time = Some(Time(ts("2026-11-22T10:03:00Z")));
        assert_eq!(evaluate(&s, early, ts(NOW)).phase, Phase::Withdrawn);
    }

    #[test]
    fn a_grant_too_long_to_add_ends_as_it_starts() {
        let mut s = spec(1, "deferred");
        s.grant_ttl = "100000000h".parse().unwrap();
        s.reviews
            .push(review(Decision::Approved, "alice", "2026-11-22T10:01:00Z"));
        let e = evaluate(&s, Reported::default(), ts(NOW));
        assert_eq!(e.grant_expires_at, Some(ts("2026-11-22T10:01:00Z")));
        assert_eq!(e.phase, Phase::Expired);
    }

    #[test]
    fn a_derived_status_keeps_only_what_sidecars_report() {
        let s = spec(1, "wait");
        let forged = ApprovalRequestStatus {
            phase: Phase::Approved,
            decided_by: vec!["mallory".into()],
            uses: 1,
            withdrawn_at: Some(Time(ts("2026-11-22T10:02:00Z"))),
            observed_generation: Some(3),
            ..Default::default()
        };
        let derived = derive_status(&s, forged, ts(NOW));
        assert_eq!(derived.phase, Phase::Withdrawn);
        assert!(derived.decided_by.is_empty());
        assert_eq!(derived.uses, 1);
        assert_eq!(derived.observed_generation, Some(3));
        assert_eq!(derived.decided_at, Some(Time(ts("2026-11-22T10:02:00Z"))));
    }

    #[test]
    fn retention_starts_when_the_request_settled() {
        let week = Duration::from_secs(7 * 24 * 3600);
        let s = spec(1, "wait");
        assert_eq!(
            evaluate(&s, Reported::default(), ts(NOW)).retain_until(week),
            None
        );
        let expired = evaluate(&s, Reported::default(), ts("2026-11-23T00:00:00Z"));
        assert_eq!(expired.retain_until(week), Some(ts("2026-11-29T10:15:00Z")));
        let mut d = spec(1, "deferred");
        d.reviews
            .push(review(Decision::Approved, "alice", "2026-11-22T10:01:00Z"));
        let approved = evaluate(&d, Reported::default(), ts(NOW));
        assert_eq!(
            approved.retain_until(Duration::from_secs(60)),
            Some(ts("2026-11-22T11:02:00Z"))
        );
    }
}

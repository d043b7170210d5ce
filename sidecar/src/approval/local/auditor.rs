//! The audit trail of requests in a local directory.
//!
//! In Kubernetes the operator records each review, the final decision and
//! the deletion after retention. A directory has no operator, so the
//! sidecar that owns it does: it follows the directory and writes
//! `approval.review` for each new review (the reviewer as the actor), one
//! outcome record each time the phase settles (`approval.decided`,
//! `approval.expired`, `approval.withdrawn`), and deletes a request
//! `retention` after it settled, writing its final state first. What has
//! been written is kept in the request's [`ANNOTATION`], so a restart
//! neither skips nor repeats records (a crash between writing a record and
//! the annotation repeats it: records are at least once).

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::approval;
use cardgate_crds::audit::{
    Actor, ApprovalDetails, AuditRecord, EventKind, Origin, Outcome, Resource,
};
use cardgate_crds::v1alpha1::{ApprovalRequest, Decision, Phase};
use jiff::Timestamp;
use kube::ResourceExt;
use tokio::sync::broadcast::error::RecvError;

use super::LocalStore;
use crate::approval::StoreError;
use crate::approval::error::mask;
use crate::audit::AuditLog;

/// Annotation holding what has been audited: `reviews=N,phase=PHASE`.
pub const ANNOTATION: &str = "cardgate.dev/audited";
/// Longest time between two looks at the directory without a change; the
/// next expiry or end of retention comes sooner when it is due sooner.
const SWEEP: Duration = Duration::from_secs(60);

/// What has been audited of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audited {
    /// Reviews recorded, from the first.
    pub reviews: usize,
    /// The last phase an outcome record was written for.
    pub phase: Option<Phase>,
}

impl Audited {
    /// Reads the annotation; a missing or unreadable one means nothing yet.
    pub fn of(obj: &ApprovalRequest) -> Audited {
        let mut audited = Audited::default();
        let Some(value) = obj.annotations().get(ANNOTATION) else {
            return audited;
        };
        for part in value.split(',') {
            match part.split_once('=') {
                Some(("reviews", n)) => audited.reviews = n.parse().unwrap_or(0),
                Some(("phase", p)) => {
                    audited.phase = serde_json::from_value(serde_json::Value::from(p)).ok();
                }
                _ => {}
            }
        }
        audited
    }

    fn render(&self) -> String {
        match self.phase {
            Some(p) => format!("reviews={},phase={p:?}", self.reviews),
            None => format!("reviews={}", self.reviews),
        }
    }
}

/// What the trail still lacks for one request, and whether it may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Due {
    /// Reviews to record.
    pub reviews: Range<usize>,
    /// Whether the current (final) phase needs its outcome record.
    pub outcome: bool,
    /// Whether retention has ended: write the final state, then delete.
    pub delete: bool,
}

impl Due {
    fn nothing(&self) -> bool {
        self.reviews.is_empty() && !self.outcome && !self.delete
    }
}

/// What to write about `obj` (settled to `now`) given what was written.
pub fn due(obj: &ApprovalRequest, audited: &Audited, retention: Duration, now: Timestamp) -> Due {
    let status = obj.status.clone().unwrap_or_default();
    let total = obj.spec.reviews.len();
    let delete = retain_until(obj, retention).is_some_and(|until| now >= until);
    Due {
        reviews: audited.reviews.min(total)..total,
        outcome: status.phase != Phase::Pending && audited.phase != Some(status.phase),
        delete,
    }
}

/// When a settled request may be deleted: the operator's rule
/// ([`approval::retain_until`]) applied to the request's status.
pub fn retain_until(obj: &ApprovalRequest, retention: Duration) -> Option<Timestamp> {
    let status = obj.status.as_ref()?;
    approval::retain_until(
        status.phase,
        status.decided_at.as_ref().map(|t| t.0),
        status.grant_expires_at.as_ref().map(|t| t.0),
        retention,
    )
}

/// Builds the records with the sidecar's own origin and policy label.
pub struct Records<'a> {
    /// The sidecar's origin (pod or host).
    pub origin: &'a Origin,
    /// `namespace/name` of the policy.
    pub policy: &'a str,
}

impl Records<'_> {
    fn base(&self, obj: &ApprovalRequest, event: EventKind, outcome: Outcome) -> AuditRecord {
        let mut rec = AuditRecord::new(event, outcome, self.origin.clone());
        rec.policy = Some(self.policy.to_string());
        rec.resource = Some(Resource {
            target: Some(obj.spec.target.clone()),
            object: Some(format!("ApprovalRequest/{}", obj.name_any())),
            ..Resource::default()
        });
        rec.approval = Some(ApprovalDetails {
            name: obj.name_any(),
            fingerprint: Some(obj.spec.statement.fingerprint.clone()),
            ..ApprovalDetails::default()
        });
        rec
    }

    /// `approval.review`, the reviewer as the actor.
    pub fn review(&self, obj: &ApprovalRequest, index: usize) -> AuditRecord {
        let review = &obj.spec.reviews[index];
        let mut rec = self.base(obj, EventKind::ApprovalReview, Outcome::Success);
        let reviewer = review.reviewer.clone().unwrap_or_default();
        rec.actor = Some(Actor {
            subject: reviewer.clone(),
            issuer: None,
            groups: review.groups.clone(),
        });
        if let Some(a) = rec.approval.as_mut() {
            a.decision = Some(format!("{:?}", review.decision));
            a.reviewer = Some(reviewer.clone());
            a.reason.clone_from(&review.reason);
        }
        let verb = match review.decision {
            Decision::Approved => "approved",
            Decision::Denied => "denied",
        };
        let at = review
            .time
            .as_ref()
            .map(|t| format!(" at {}", t.0.strftime("%Y-%m-%dT%H:%M:%SZ")))
            .unwrap_or_default();
        rec.message = Some(format!(
            "{reviewer} {verb} request {} ({} of {}){at}",
            obj.name_any(),
            obj.spec.statement.text,
            obj.spec.rule
        ));
        scrub(rec)
    }

    /// The outcome of the current phase; with `note`, the final state
    /// before deletion.
    pub fn outcome(&self, obj: &ApprovalRequest, note: Option<&str>) -> AuditRecord {
        let status = obj.status.clone().unwrap_or_default();
        let (event, outcome) = EventKind::approval_outcome(status.phase);
        let mut rec = self.base(obj, event, outcome);
        let requester = &obj.spec.requester;
        let decider = status.decided_by.last().cloned();
        rec.actor = Some(match (&decider, status.phase) {
            (Some(who), Phase::Approved | Phase::Denied) => Actor {
                subject: who.clone(),
                issuer: None,
                groups: obj
                    .spec
                    .reviews
                    .iter()
                    .find(|r| r.reviewer.as_ref() == Some(who))
                    .map(|r| r.groups.clone())
                    .unwrap_or_default(),
            },
            _ => Actor {
                subject: requester.subject.clone(),
                issuer: requester.issuer.clone(),
                groups: requester.groups.clone(),
            },
        });
        if let Some(a) = rec.approval.as_mut() {
            a.decision = Some(status.phase.to_string());
            a.reviewer = decider;
        }
        let summary = status.message.unwrap_or_default();
        rec.message = Some(match note {
            Some(note) => format!(
                "{note}: request {} {}: {summary}; {} review(s)",
                obj.name_any(),
                status.phase,
                obj.spec.reviews.len()
            ),
            None => format!("request {} {}: {summary}", obj.name_any(), status.phase),
        });
        scrub(rec)
    }
}

/// Masks card data in what came from the request file: the file can be
/// edited by hand, so its text is not trusted to be masked already.
fn scrub(mut rec: AuditRecord) -> AuditRecord {
    let (reason, reviewer) = match rec.approval.as_mut() {
        Some(a) => (a.reason.as_mut(), a.reviewer.as_mut()),
        None => (None, None),
    };
    for text in [
        rec.message.as_mut(),
        rec.actor.as_mut().map(|a| &mut a.subject),
        reason,
        reviewer,
    ]
    .into_iter()
    .flatten()
    {
        *text = mask(text);
    }
    rec
}

/// Follows the store until `stop`: a pass at start, on every change of the
/// directory, when a request expires or its retention ends, and at least
/// every [`SWEEP`].
pub async fn run(
    store: LocalStore,
    audit: Arc<AuditLog>,
    policy: String,
    retention: Duration,
    stop: impl Future<Output = ()>,
) {
    let mut changes = store.changes.subscribe();
    let mut stop = std::pin::pin!(stop);
    loop {
        let wait = match pass(&store, &audit, &policy, retention).await {
            Ok(Some(next)) => Duration::try_from(next.duration_since(Timestamp::now()))
                .unwrap_or(Duration::ZERO)
                .min(SWEEP),
            Ok(None) => SWEEP,
            Err(e) => {
                tracing::warn!(error = %e, "approval audit pass failed; retrying");
                SWEEP
            }
        };
        // A deadline just passed: look again right after it.
        let sweep = tokio::time::sleep(wait + Duration::from_millis(10));
        tokio::select! {
            change = changes.recv() => if matches!(change, Err(RecvError::Closed)) {
                return;
            },
            () = sweep => {}
            () = &mut stop => return,
        }
    }
}

/// One look at every request: records what is due, then deletes what
/// retention lets go; returns when the next expiry or end of retention is
/// due. Stops at the first record the trail refuses (it is unhealthy):
/// nothing is marked written that was not.
pub async fn pass(
    store: &LocalStore,
    audit: &AuditLog,
    policy: &str,
    retention: Duration,
) -> Result<Option<Timestamp>, StoreError> {
    let now = Timestamp::now();
    let (requests, _) = store.blocking(move |dir| dir.list(now)).await?;
    let records = Records {
        origin: audit.origin(),
        policy,
    };
    let mut next: Option<Timestamp> = None;
    for obj in requests {
        let audited = Audited::of(&obj);
        let due = due(&obj, &audited, retention, now);
        let deadline = match obj.status.as_ref().map(|s| s.phase) {
            Some(Phase::Pending) | None => Some(obj.spec.expires_at.0),
            Some(_) => retain_until(&obj, retention),
        };
        if let Some(at) = deadline.filter(|at| *at > now) {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if due.nothing() {
            continue;
        }
        let refused = |e| StoreError::unavailable(format!("audit trail refused a record: {e}"));
        for index in due.reviews.clone() {
            audit.record(records.review(&obj, index)).map_err(refused)?;
        }
        if due.outcome {
            audit.record(records.outcome(&obj, None)).map_err(refused)?;
        }
        let name = obj.name_any();
        let version = obj.resource_version();
        if due.delete {
            let note = format!(
                "retention of {} ended; deleting the request",
                kube::core::Duration::from(retention)
            );
            audit
                .record(records.outcome(&obj, Some(&note)))
                .map_err(refused)?;
            store
                .blocking(move |dir| dir.remove(&name, version.as_deref()))
                .await?;
            continue;
        }
        let done = Audited {
            reviews: obj.spec.reviews.len(),
            phase: obj
                .status
                .as_ref()
                .map(|s| s.phase)
                .filter(|p| *p != Phase::Pending),
        }
        .render();
        store
            .blocking(move |dir| {
                dir.update(&name, now, |o| {
                    o.annotations_mut().insert(ANNOTATION.to_string(), done);
                    Ok::<_, StoreError>(())
                })
                .map(drop)
            })
            .await?;
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use cardgate_crds::v1alpha1::{ApprovalRequestStatus, Review};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn request(phase: Phase, reviews: usize) -> ApprovalRequest {
        let mut obj: ApprovalRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "cardgate.dev/v1alpha1",
            "kind": "ApprovalRequest",
            "metadata": {"name": "demo-0badcafe-abcd", "resourceVersion": "3"},
            "spec": {
                "requester": {"subject": "agent-7", "serviceAccount": "", "pod": "", "podUid": ""},
                "policy": "demo",
                "rule": "rule 3 (writes-need-approval)",
                "target": "payments-db",
                "statement": {"text": "UPDATE orders SET status = 'refunded' WHERE id = 42", "preview": "UPDATE orders", "fingerprint": "0badcafe", "class": "write"},
                "mode": "wait",
                "quorum": 2,
                "expiresAt": "2026-12-01T10:15:00Z",
                "grantTtl": "1h",
                "maxUses": 1,
                "reviews": []
            }
        }))
        .unwrap();
        for i in 0..reviews {
            obj.spec.reviews.push(Review {
                decision: Decision::Approved,
                reason: Some(format!("ticket {i}")),
                reviewer: Some(format!("reviewer-{i}")),
                groups: vec!["payments-oncall".into()],
                time: Some(Time(t("2026-12-01T10:01:00Z"))),
            });
        }
        obj.status = Some(ApprovalRequestStatus {
            phase,
            decided_at: (phase != Phase::Pending).then(|| Time(t("2026-12-01T10:02:00Z"))),
            decided_by: (0..reviews).map(|i| format!("reviewer-{i}")).collect(),
            message: Some("approved by reviewer-0, reviewer-1".into()),
            ..ApprovalRequestStatus::default()
        });
        obj
    }

    const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

    #[test]
    fn new_reviews_and_a_new_phase_are_due_once() {
        let now = t("2026-12-01T10:05:00Z");
        let pending = request(Phase::Pending, 1);
        let d = due(&pending, &Audited::default(), WEEK, now);
        assert_eq!((d.reviews, d.outcome, d.delete), (0..1, false, false));

        let approved = request(Phase::Approved, 2);
        let after_first = Audited {
            reviews: 1,
            phase: None,
        };
        let d = due(&approved, &after_first, WEEK, now);
        assert_eq!((d.reviews, d.outcome, d.delete), (1..2, true, false));

        let all = Audited {
            reviews: 2,
            phase: Some(Phase::Approved),
        };
        assert!(due(&approved, &all, WEEK, now).nothing());
        // Approved, then used up: the new phase gets its own record.
        let consumed = request(Phase::Consumed, 2);
        assert!(due(&consumed, &all, WEEK, now).outcome);
    }

    #[test]
    fn the_annotation_round_trips_and_garbage_means_nothing_written() {
        let mut obj = request(Phase::Approved, 2);
        let audited = Audited {
            reviews: 2,
            phase: Some(Phase::Approved),
        };
        obj.annotations_mut()
            .insert(ANNOTATION.into(), audited.render());
        assert_eq!(Audited::of(&obj), audited);
        obj.annotations_mut()
            .insert(ANNOTATION.into(), "nonsense".into());
        assert_eq!(Audited::of(&obj), Audited::default());
    }

    #[test]
    fn retention_starts_when_the_request_settled_and_outlasts_its_grant() {
        let pending = request(Phase::Pending, 0);
        assert_eq!(retain_until(&pending, WEEK), None);
        let mut approved = request(Phase::Approved, 2);
        assert_eq!(
            retain_until(&approved, WEEK),
            Some(t("2026-12-08T10:02:00Z"))
        );
        approved.status.as_mut().unwrap().grant_expires_at = Some(Time(t("2026-12-01T11:02:00Z")));
        assert_eq!(
            retain_until(&approved, WEEK),
            Some(t("2026-12-08T11:02:00Z"))
        );
        let all = Audited {
            reviews: 2,
            phase: Some(Phase::Approved),
        };
        assert!(!due(&approved, &all, WEEK, t("2026-12-08T11:01:59Z")).delete);
        assert!(due(&approved, &all, WEEK, t("2026-12-08T11:02:00Z")).delete);
    }

    #[test]
    fn card_numbers_written_into_the_file_by_hand_are_masked() {
        let origin = Origin::default();
        let records = Records {
            origin: &origin,
            policy: "p",
        };
        let mut obj = request(Phase::Approved, 1);
        obj.spec.reviews[0].reason = Some("refund card 4111111111111111".into());
        obj.spec.statement.text = "UPDATE cards SET pan = '5555555555554444'".into();
        let line = serde_json::to_string(&records.review(&obj, 0)).unwrap();
        assert!(
            !line.contains("4111111111111111") && !line.contains("5555555555554444"),
            "{line}"
        );
        assert!(line.contains("411111******1111"), "{line}");
        let line = serde_json::to_string(&records.outcome(&obj, Some("deleting"))).unwrap();
        assert!(!line.contains("5555555555554444"), "{line}");
    }

    #[test]
    fn records_name_the_reviewer_the_request_and_the_final_state() {
        let origin = Origin {
            component: "sidecar".into(),
            host: Some("vm".into()),
            ..Origin::default()
        };
        let records = Records {
            origin: &origin,
            policy: "standalone-demo",
        };
        let obj = request(Phase::Approved, 2);
        let review = records.review(&obj, 1);
        assert_eq!(review.event, EventKind::ApprovalReview);
        assert_eq!(review.actor.as_ref().unwrap().subject, "reviewer-1");
        assert_eq!(review.actor.as_ref().unwrap().groups, ["payments-oncall"]);
        let details = review.approval.as_ref().unwrap();
        assert_eq!(details.name, "demo-0badcafe-abcd");
        assert_eq!(details.reason.as_deref(), Some("ticket 1"));
        assert!(
            review
                .message
                .as_deref()
                .unwrap()
                .starts_with("reviewer-1 approved request demo-0badcafe-abcd (UPDATE orders"),
            "{:?}",
            review.message
        );

        let outcome = records.outcome(&obj, None);
        assert_eq!(outcome.event, EventKind::ApprovalDecided);
        assert_eq!(outcome.outcome, Outcome::Success);
        assert_eq!(outcome.actor.as_ref().unwrap().subject, "reviewer-1");
        let gone = records.outcome(&obj, Some("retention of 168h ended; deleting the request"));
        let message = gone.message.unwrap();
        assert!(
            message.starts_with(
                "retention of 168h ended; deleting the request: request demo-0badcafe-abcd Approved"
            ) && message.ends_with("2 review(s)"),
            "{message}"
        );

        let expired = request(Phase::Expired, 0);
        let rec = records.outcome(&expired, None);
        assert_eq!(rec.event, EventKind::ApprovalExpired);
        assert_eq!(
            rec.actor.unwrap().subject,
            "agent-7",
            "nobody decided: the requester"
        );
    }
}

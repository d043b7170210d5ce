//! The ApprovalRequest reconciler: derives the phase
//! ([`crate::approval::lifecycle`]), writes it to status, tells people
//! (Events, the policy's chat webhook), keeps the audit trail, and deletes
//! decided requests once the policy's retention has passed.
//!
//! Each pass, in this order:
//! 1. audit records for reviews not recorded yet and for a new phase — an
//!    unwritable record fails the pass, which is retried before anything
//!    else happens;
//! 2. retention: the final state (with every review) is audited, then the
//!    request is deleted;
//! 3. the announcement of a new request starts in the background;
//! 4. status, with field manager `cardgate-operator`: never `uses` or
//!    `withdrawnAt`, which the sidecar owns (`cardgate-sidecar`);
//! 5. Events, visible in `kubectl describe`;
//! 6. a requeue at the next time-driven change (expiry, end of a grant,
//!    end of retention).
//!
//! Which reviews were recorded follows from `status.observedGeneration`: the
//! admission webhook admits exactly one appended review per spec change,
//! and each spec change bumps `metadata.generation`, so a status that
//! observed generation `g` has recorded the first `g - 1` reviews.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardgate_crds::audit::{Actor, ApprovalDetails, AuditRecord, EventKind, Outcome, Resource};
use cardgate_crds::v1alpha1::{AccessPolicy, ApprovalRequest, Decision, Phase};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource as _, ResourceExt};
use serde_json::{Map, Value, json};

use super::conditions::{self, condition_with};
use super::{Context, Error, kube_err, object_key};
use crate::approval::lifecycle::{Evaluation, Reported, evaluate, show};
use crate::approval::notify::{Notifier, approve_command, host_of, payload};
use crate::metrics::{ControllerName, ReconcileOutcome};
use crate::render::meta::FIELD_MANAGER;

/// Retention of decided requests when the policy is gone.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(168 * 3600);
/// Condition: the request has its final decision (True) or waits (False).
pub const DECIDED: &str = "Decided";
/// Condition: the policy's chat webhook was told about the request.
pub const NOTIFIED: &str = "Notified";
/// How often a request whose announcement is in flight is looked at again.
pub const ANNOUNCEMENT_POLL: Duration = Duration::from_secs(2);

/// What happened to an announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivery {
    Sending { host: String },
    Delivered { host: String, attempts: u32 },
    Failed(String),
}

/// Announcements of new requests, in flight or finished, by request UID.
/// While one is in flight its request is reconciled every
/// [`ANNOUNCEMENT_POLL`], so the outcome reaches the status soon after.
pub struct Announcements {
    notifier: Notifier,
    states: Arc<Mutex<HashMap<String, Delivery>>>,
}

impl Announcements {
    /// Announcements sent with `notifier`.
    pub fn new(notifier: Notifier) -> Self {
        Self {
            notifier,
            states: Arc::default(),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, Delivery>> {
        self.states.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self, uid: &str) -> Option<Delivery> {
        self.states().get(uid).cloned()
    }

    fn forget(&self, uid: &str) {
        self.states().remove(uid);
    }

    /// Starts announcing `request` to `url` in the background.
    fn start(&self, request: &ApprovalRequest, uid: &str, url: String) -> Delivery {
        let host = host_of(&url);
        let sending = Delivery::Sending { host: host.clone() };
        self.states().insert(uid.to_string(), sending.clone());
        let (notifier, states) = (self.notifier.clone(), self.states.clone());
        let (body, uid) = (payload(request), uid.to_string());
        tokio::spawn(async move {
            let outcome = match notifier.send(&url, &body).await {
                Ok(attempts) => Delivery::Delivered { host, attempts },
                Err(e) => Delivery::Failed(e.to_string()),
            };
            states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, outcome);
        });
        sending
    }
}

/// Reconciles one ApprovalRequest (the controller's reconciler).
pub async fn reconcile(request: Arc<ApprovalRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile(ControllerName::ApprovalRequest);
    match reconcile_request(&request, &ctx).await {
        Ok(action) => {
            timer.finish(ReconcileOutcome::Ready);
            ctx.succeeded(&object_key(&*request));
            Ok(action)
        }
        Err(e) => {
            timer.finish(ReconcileOutcome::Error);
            Err(e)
        }
    }
}

/// How many of the request's reviews earlier passes recorded.
fn reviews_recorded(request: &ApprovalRequest) -> usize {
    let observed = request
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(1);
    usize::try_from(observed - 1)
        .unwrap_or(0)
        .min(request.spec.reviews.len())
}

/// One reconcile pass over a request: what it is now and what changed
/// since the last pass. The steps below run in the order of the module
/// documentation.
struct Pass<'a> {
    request: &'a ApprovalRequest,
    ctx: &'a Context,
    ns: String,
    name: String,
    uid: String,
    now: Timestamp,
    eval: Evaluation,
    /// No earlier pass wrote a status.
    first: bool,
    /// The phase left Pending (or moved on) since the last pass.
    changed: bool,
    /// Reviews no earlier pass recorded.
    new_reviews: std::ops::Range<usize>,
}

async fn reconcile_request(request: &ApprovalRequest, ctx: &Context) -> Result<Action, Error> {
    let ns = request
        .namespace()
        .ok_or_else(|| Error::NoNamespace(object_key(request)))?;
    if request.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let spec = &request.spec;
    let policies: Api<AccessPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let policy = policies
        .get_opt(&spec.policy)
        .await
        .map_err(kube_err(format!("get AccessPolicy {ns}/{}", spec.policy)))?;
    let approval = policy.as_ref().and_then(|p| p.spec.approval.as_ref());
    let retention: Duration = approval.map_or(DEFAULT_RETENTION, |a| a.retention.into());
    let url = approval
        .and_then(|a| a.notify.as_ref())
        .map(|n| n.url.clone());

    let pass = Pass::new(request, ctx, ns);
    pass.audit_changes()?;
    let retained = pass.eval.retain_until(retention);
    if let Some(until) = retained.filter(|until| pass.now >= *until) {
        pass.delete_after_retention(retention, until).await?;
        return Ok(Action::await_change());
    }
    let delivery = pass.announce(url);
    pass.apply_status(delivery.as_ref()).await?;
    pass.publish_events(delivery.as_ref()).await;
    Ok(pass.next_action(retained, delivery.as_ref()))
}

impl<'a> Pass<'a> {
    fn new(request: &'a ApprovalRequest, ctx: &'a Context, ns: String) -> Self {
        let now = (ctx.now)();
        let old = request.status.as_ref();
        let first = old.is_none_or(|s| s.observed_generation.is_none());
        let eval = evaluate(&request.spec, Reported::from_status(old), now);
        let previous = match old {
            Some(s) if !first => s.phase,
            _ => Phase::Pending,
        };
        Pass {
            request,
            ctx,
            name: request.name_any(),
            uid: request.uid().unwrap_or_default(),
            ns,
            now,
            first,
            changed: eval.phase != previous && eval.phase != Phase::Pending,
            new_reviews: reviews_recorded(request)..request.spec.reviews.len(),
            eval,
        }
    }

    fn records(&self) -> Records<'_> {
        Records {
            request: self.request,
            ns: &self.ns,
            name: &self.name,
        }
    }

    fn old_conditions(&self) -> &'a [Condition] {
        self.request.status.as_ref().map_or(&[], |s| &s.conditions)
    }

    /// Step 1: The audit trail first: nothing is announced that is not recorded.
    fn audit_changes(&self) -> Result<(), Error> {
        let (ctx, records) = (self.ctx, self.records());
        for index in self.new_reviews.clone() {
            ctx.audit
                .write(records.review(ctx, index))
                .map_err(Error::Audit)?;
        }
        if self.changed {
            ctx.audit
                .write(records.outcome(ctx, &self.eval, None))
                .map_err(Error::Audit)?;
        }
        Ok(())
    }

    /// Step 2: Retention: the final state is audited, then the request deleted.
    async fn delete_after_retention(
        &self,
        retention: Duration,
        until: Timestamp,
    ) -> Result<(), Error> {
        let (ctx, eval, ns, name) = (self.ctx, &self.eval, &self.ns, &self.name);
        let note = format!(
            "retention of {} after {} ended; deleting the request",
            humantime(retention),
            show(eval.decided_at.or(eval.grant_expires_at).unwrap_or(until)),
        );
        ctx.audit
            .write(self.records().outcome(ctx, eval, Some(&note)))
            .map_err(Error::Audit)?;
        let api: Api<ApprovalRequest> = Api::namespaced(ctx.client.clone(), ns);
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => tracing::info!(namespace = ns, name, "deleted after retention"),
            // Already gone, or replaced by a new request of the same name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(kube_err(format!("delete ApprovalRequest {ns}/{name}"))(e)),
        }
        ctx.approvals.forget(&self.uid);
        Ok(())
    }

    /// Step 3: The announcement of a new request, started in the background (or
    /// started again when a restart cut it short), and how it goes.
    fn announce(&self, url: Option<String>) -> Option<Delivery> {
        let was_notified = conditions::find(self.old_conditions(), NOTIFIED);
        match (self.ctx.approvals.state(&self.uid), url) {
            (Some(d), _) => Some(d),
            (None, Some(url))
                if self.eval.phase == Phase::Pending
                    && (self.first || was_notified.is_some_and(|c| c.status == "Unknown")) =>
            {
                Some(self.ctx.approvals.start(self.request, &self.uid, url))
            }
            (None, _) => None,
        }
    }

    /// Step 4: The status the controller owns, by server-side apply.
    async fn apply_status(&self, delivery: Option<&Delivery>) -> Result<(), Error> {
        let generation = self.request.meta().generation;
        let body = json!({
            "apiVersion": ApprovalRequest::api_version(&()),
            "kind": ApprovalRequest::kind(&()),
            "status": status_body(&self.eval, self.conditions(delivery, generation), generation)?,
        });
        let (ns, name) = (&self.ns, &self.name);
        let api: Api<ApprovalRequest> = Api::namespaced(self.ctx.client.clone(), ns);
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(kube_err(format!(
            "apply status of ApprovalRequest {ns}/{name}"
        )))?;
        if matches!(
            delivery,
            Some(Delivery::Delivered { .. } | Delivery::Failed(_))
        ) {
            // The outcome is in the status now.
            self.ctx.approvals.forget(&self.uid);
        }
        Ok(())
    }

    /// Decided, and Notified while an announcement is or was under way.
    fn conditions(&self, delivery: Option<&Delivery>, generation: Option<i64>) -> Vec<Condition> {
        let (eval, old, now) = (&self.eval, self.old_conditions(), self.now);
        let decided = eval.phase != Phase::Pending;
        let mut status_conditions = vec![condition_with(
            DECIDED,
            if decided { "True" } else { "False" },
            eval.phase.as_str(),
            &eval.message,
            generation,
            old,
            now,
        )];
        let notified = match delivery {
            Some(Delivery::Sending { host }) => {
                Some(("Unknown", "Sending", format!("announcing to {host}")))
            }
            Some(Delivery::Delivered { host, attempts }) => Some((
                "True",
                "Delivered",
                format!("announced to {host} (attempt {attempts})"),
            )),
            Some(Delivery::Failed(message)) => Some(("False", "Failed", message.clone())),
            None => None,
        };
        match notified {
            Some((status, reason, message)) => status_conditions.push(condition_with(
                NOTIFIED, status, reason, &message, generation, old, now,
            )),
            None => status_conditions.extend(conditions::find(old, NOTIFIED).cloned()),
        }
        status_conditions
    }

    /// Step 5: Events, visible in `kubectl describe`; a failure to publish one
    /// is logged, never fatal.
    async fn publish_events(&self, delivery: Option<&Delivery>) {
        let reference = self.request.object_ref(&());
        for e in self.events(delivery) {
            if let Err(err) = self.ctx.recorder.publish(&e, &reference).await {
                tracing::warn!(request = %object_key(self.request), error = %err, "cannot publish Event");
            }
        }
    }

    fn events(&self, delivery: Option<&Delivery>) -> Vec<Event> {
        let (request, eval) = (self.request, &self.eval);
        let spec = &request.spec;
        let mut events = Vec::new();
        if self.first {
            events.push(event(
                EventType::Normal,
                "Created",
                "Create",
                format!(
                    "{} asks to run {:?} on {} ({}); approve with: {}",
                    spec.requester.subject,
                    spec.statement.preview,
                    spec.target,
                    spec.rule,
                    approve_command(request)
                ),
            ));
        }
        let records = self.records();
        for index in self.new_reviews.clone() {
            events.push(event(
                EventType::Normal,
                "Reviewed",
                "Review",
                records.review_summary(index),
            ));
        }
        if self.changed {
            let warning = matches!(eval.phase, Phase::Denied | Phase::Expired);
            events.push(event(
                if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                eval.phase.as_str(),
                "Decide",
                eval.message.clone(),
            ));
        }
        if let Some(Delivery::Failed(message)) = delivery {
            events.push(event(
                EventType::Warning,
                "NotificationFailed",
                "Notify",
                message.clone(),
            ));
        }
        events
    }

    /// Step 6: The next time-driven change (expiry, end of a grant, end of
    /// retention), or soon while an announcement is in flight.
    fn next_action(&self, retained: Option<Timestamp>, delivery: Option<&Delivery>) -> Action {
        let next = [self.eval.next_change, retained]
            .into_iter()
            .flatten()
            .min()
            .map(|t| {
                Duration::try_from(t.duration_since(self.now))
                    .unwrap_or_default()
                    .max(Duration::from_millis(1))
            });
        let next = match delivery {
            Some(Delivery::Sending { .. }) => {
                Some(next.map_or(ANNOUNCEMENT_POLL, |n| n.min(ANNOUNCEMENT_POLL)))
            }
            _ => next,
        };
        next.map_or_else(Action::await_change, Action::requeue)
    }
}

fn event(type_: EventType, reason: &str, action: &str, note: String) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(conditions::truncate(&note, 1024)),
        action: action.into(),
        secondary: None,
    }
}

/// The status the controller owns; `uses` and `withdrawnAt` are left out,
/// so server-side apply leaves the sidecar's values alone.
fn status_body(
    eval: &Evaluation,
    conditions: Vec<Condition>,
    generation: Option<i64>,
) -> Result<Value, Error> {
    let mut status = Map::new();
    status.insert("phase".into(), to_value(&eval.phase)?);
    status.insert("conditions".into(), to_value(&conditions)?);
    if let Some(g) = generation {
        status.insert("observedGeneration".into(), json!(g));
    }
    if let Some(t) = eval.decided_at {
        status.insert("decidedAt".into(), to_value(&Time(t))?);
    }
    if !eval.decided_by.is_empty() {
        status.insert("decidedBy".into(), json!(eval.decided_by));
    }
    status.insert("message".into(), json!(eval.message));
    if let Some(t) = eval.grant_expires_at {
        status.insert("grantExpiresAt".into(), to_value(&Time(t))?);
    }
    Ok(Value::Object(status))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, Error> {
    serde_json::to_value(v).map_err(|source| Error::Serialize {
        what: "ApprovalRequest status".into(),
        source,
    })
}

/// `1h30m`-style rendering of a retention.
fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Builds the audit records of one request.
struct Records<'a> {
    request: &'a ApprovalRequest,
    ns: &'a str,
    name: &'a str,
}

impl Records<'_> {
    fn base(&self, ctx: &Context, event: EventKind, outcome: Outcome) -> AuditRecord {
        let spec = &self.request.spec;
        let mut record = ctx.audit.record(event, outcome);
        record.resource = Some(Resource {
            target: Some(spec.target.clone()),
            object: Some(format!("ApprovalRequest/{}/{}", self.ns, self.name)),
            ..Resource::default()
        });
        record.policy = Some(format!("{}/{}", self.ns, spec.policy));
        record.approval = Some(ApprovalDetails {
            name: self.name.to_string(),
            fingerprint: Some(spec.statement.fingerprint.clone()),
            ..ApprovalDetails::default()
        });
        record
    }

    /// Approvals among the first `upto + 1` reviews that count.
    fn approvals_up_to(&self, upto: usize) -> usize {
        self.request.spec.reviews[..=upto]
            .iter()
            .filter(|r| {
                r.decision == Decision::Approved && r.reviewer.is_some() && r.time.is_some()
            })
            .count()
    }

    /// One line about review `index`, for its Event and audit message.
    fn review_summary(&self, index: usize) -> String {
        let spec = &self.request.spec;
        let review = &spec.reviews[index];
        let Some(reviewer) = review.reviewer.as_deref() else {
            return format!(
                "review {index} carries no authenticated reviewer (the admission webhook did not stamp it) and does not count"
            );
        };
        let reason = review
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        match review.decision {
            Decision::Approved => format!(
                "{reviewer} approved ({} of {} approvals){reason}",
                self.approvals_up_to(index),
                spec.quorum
            ),
            Decision::Denied => format!("{reviewer} denied{reason}"),
        }
    }

    /// `approval.review` with the authenticated reviewer as the actor.
    fn review(&self, ctx: &Context, index: usize) -> AuditRecord {
        let review = &self.request.spec.reviews[index];
        let stamped = review.reviewer.is_some() && review.time.is_some();
        let mut record = self.base(
            ctx,
            EventKind::ApprovalReview,
            if stamped {
                Outcome::Success
            } else {
                Outcome::Failure
            },
        );
        record.actor = review.reviewer.as_ref().map(|r| Actor {
            subject: r.clone(),
            issuer: None,
            groups: review.groups.clone(),
        });
        if let Some(a) = record.approval.as_mut() {
            a.decision = Some(format!("{:?}", review.decision));
            a.reviewer.clone_from(&review.reviewer);
            a.reason.clone_from(&review.reason);
        }
        let at = review
            .time
            .as_ref()
            .map(|t| format!(" at {}", show(t.0)))
            .unwrap_or_default();
        record.message = Some(format!("{}{at}", self.review_summary(index)));
        record
    }

    /// The outcome: `approval.decided` (Approved, Denied, Consumed),
    /// `approval.expired` or `approval.withdrawn`. With `retention`, the
    /// final state before deletion, listing every review.
    fn outcome(&self, ctx: &Context, eval: &Evaluation, retention: Option<&str>) -> AuditRecord {
        let spec = &self.request.spec;
        let (event, outcome) = EventKind::approval_outcome(eval.phase);
        let mut record = self.base(ctx, event, outcome);
        // The actor: whoever made the outcome — the last deciding reviewer,
        // or the requester for a withdrawal or use.
        let decider = eval.decided_by.last().and_then(|who| {
            spec.reviews
                .iter()
                .find(|r| r.reviewer.as_deref() == Some(who.as_str()))
        });
        record.actor = match eval.phase {
            Phase::Withdrawn | Phase::Consumed => Some(Actor {
                subject: spec.requester.subject.clone(),
                issuer: spec.requester.issuer.clone(),
                groups: spec.requester.groups.clone(),
            }),
            Phase::Approved | Phase::Denied => decider.map(|r| Actor {
                subject: r.reviewer.clone().unwrap_or_default(),
                issuer: None,
                groups: r.groups.clone(),
            }),
            Phase::Expired | Phase::Pending => None,
        };
        if let Some(a) = record.approval.as_mut() {
            a.decision = Some(eval.phase.to_string());
            a.reviewer = decider.and_then(|r| r.reviewer.clone());
            a.reason = decider.and_then(|r| r.reason.clone());
        }
        let mut message = eval.message.clone();
        if let Some(note) = retention {
            let reviews: Vec<String> = spec
                .reviews
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    format!(
                        "{}. {:?} by {}{}{}{}",
                        i + 1,
                        r.decision,
                        r.reviewer.as_deref().unwrap_or("<unstamped>"),
                        if r.groups.is_empty() {
                            String::new()
                        } else {
                            format!(" (groups {})", r.groups.join(", "))
                        },
                        r.time
                            .as_ref()
                            .map(|t| format!(" at {}", show(t.0)))
                            .unwrap_or_default(),
                        r.reason
                            .as_deref()
                            .map(|x| format!(": {x}"))
                            .unwrap_or_default(),
                    )
                })
                .collect();
            let uses = self.request.status.as_ref().map_or(0, |s| s.uses);
            message = format!(
                "{note}. Final state: {}: {message}; uses {uses} of {}. Reviews: {}",
                eval.phase,
                spec.max_uses,
                if reviews.is_empty() {
                    "none".into()
                } else {
                    reviews.join("; ")
                }
            );
        }
        record.message = Some(message);
        record
    }
}

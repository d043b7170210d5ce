//! The sidecar's [`Guard`]: identity, policy, approvals, masking, audit,
//! metrics and recordings, put together once for every protocol.
//!
//! Every decision fails closed: an unhealthy audit trail, a statement that
//! does not parse, a policy that cannot be evaluated all deny, with a clear
//! message to the agent and (where the trail can still take it) a record.

use std::sync::Arc;

use cardgate_crds::audit::{
    Actor, AuditRecord, EventKind, Origin, Outcome as AuditOutcome, Resource, StatementDetails,
};
use cardgate_crds::config::PolicyName;
use cardgate_crds::v1alpha1::{RuleAction, StatementClass};

use crate::admin::{Metrics, SessionGuard};
use crate::approval::{NewRequest, Resolution, Store, keyed_fingerprint};
use crate::audit::AuditLog;
use crate::identity::{Authenticator, Identity, claimed_identity};
use crate::masking::Masker;
use crate::policy::{Classification, Classifier, Policy, RuleDecision, SqlSession};
use crate::recording::{Recorder, Recordings, SessionInfo};

use super::seam::{
    Access, ClientInfo, Completion, Guard, Held, Protocol, Resolved, RowLimits, SessionSummary,
    Verdict,
};

/// Longest statement text kept in an audit record; longer text is cut and
/// marked, so one huge batch cannot bloat the trail.
const MAX_AUDIT_TEXT: usize = 16 * 1024;

/// The engines every target's gate shares: built once per configuration.
pub struct Engine {
    /// Policy name for messages and records.
    pub policy: PolicyName,
    /// `namespace/name` for records.
    pub policy_label: String,
    /// Statement classification (cached).
    pub classifier: Arc<Classifier>,
    /// Compiled rules.
    pub rules: Arc<Policy>,
    /// Masking engine.
    pub masker: Arc<Masker>,
    /// Token validation.
    pub auth: Arc<Authenticator>,
    /// The audit trail.
    pub audit: Arc<AuditLog>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Session recordings, when configured.
    pub recordings: Option<Recordings>,
    /// Row and byte limits.
    pub limits: RowLimits,
    /// Approvals, when the configuration has an approval store.
    pub approvals: Option<Approvals>,
}

/// Where held statements wait, and the policy's approval settings.
pub struct Approvals {
    /// The ApprovalRequest store.
    pub store: Store,
    /// Approvers, quorum, mode, timeouts.
    pub settings: cardgate_crds::v1alpha1::ApprovalSettings,
    /// Key of the statement fingerprints (a keyed hash: an unkeyed hash next
    /// to a masked statement would give the card number away).
    pub fingerprint_key: Vec<u8>,
    /// The pod, for the requester fields.
    pub pod: crate::identity::PodIdentity,
    /// How approvers approve, for the agent's notice (`kubectl cardgate
    /// approve` or `cardgate-sidecar approvals approve`).
    pub approve_command: String,
}

/// The guard of one target.
pub struct Gate {
    shared: Arc<Engine>,
    target: String,
}

impl Gate {
    /// The gate for `target`.
    pub fn new(shared: Arc<Engine>, target: String) -> Self {
        Self { shared, target }
    }

    fn record(&self, rec: AuditRecord) {
        if let Err(e) = self.shared.audit.record(rec) {
            // The trail is unhealthy: statements are refused until it
            // recovers (see `decide`); the writer reports the outage.
            tracing::warn!(error = %e, "audit record refused");
        }
    }

    fn base(&self, event: EventKind, outcome: AuditOutcome, origin: &Origin) -> AuditRecord {
        let mut rec = AuditRecord::new(event, outcome, origin.clone());
        rec.policy = Some(self.shared.policy_label.clone());
        rec
    }

    fn client_origin(&self, client: &ClientInfo) -> Origin {
        self.shared
            .audit
            .session_origin(&client.session_id, Some(client.addr.to_string()))
    }

    fn resource(&self, database: &str) -> Resource {
        Resource {
            target: Some(self.target.clone()),
            database: Some(database.to_string()),
            ..Resource::default()
        }
    }

    fn masked(&self, text: &str) -> String {
        let masked = self.shared.masker.mask_str(text);
        if masked.len() <= MAX_AUDIT_TEXT {
            return masked.into_owned();
        }
        let mut cut = MAX_AUDIT_TEXT;
        while !masked.is_char_boundary(cut) {
            cut -= 1;
        }
        // Cutting could split a card number and leave a shorter, undetected
        // run of its digits: mask the cut text again.
        let head = self.shared.masker.mask_str(&masked[..cut]).into_owned();
        format!("{head}… [{} bytes cut]", masked.len() - cut)
    }
}

/// An authenticated session.
pub struct Session {
    identity: Arc<Identity>,
    origin: Arc<Origin>,
    database: String,
    sql: SqlSession,
    _active: SessionGuard,
}

/// A decided statement on its way to the server.
#[derive(Clone)]
pub struct Statement {
    identity: Arc<Identity>,
    origin: Arc<Origin>,
    database: String,
    text: String,
    class: StatementClass,
    rule: String,
    reads: Vec<String>,
    writes: Vec<String>,
    protocol: Protocol,
    approval: Option<String>,
}

/// A statement a `requireApproval` rule held.
pub struct Hold {
    statement: Statement,
    fingerprint: String,
}

/// A statement waiting for approvers.
pub struct Waiting {
    name: String,
    statement: Statement,
}

impl Guard for Gate {
    type Session = Session;
    type Statement = Statement;
    type Hold = Hold;
    type Waiting = Waiting;

    async fn authenticate(&self, token: &str, client: &ClientInfo) -> Result<Session, String> {
        let origin = self.client_origin(client);
        match self.shared.auth.authenticate(token).await {
            Ok(identity) => {
                let mut rec = self.base(EventKind::AuthSuccess, AuditOutcome::Success, &origin);
                rec.actor = Some(identity.actor());
                rec.resource = Some(self.resource(&client.database));
                self.record(rec);
                Ok(Session {
                    identity: Arc::new(identity),
                    origin: Arc::new(origin),
                    database: client.database.clone(),
                    sql: SqlSession::new(),
                    _active: self.shared.metrics.session(),
                })
            }
            Err(e) => {
                self.shared.metrics.auth_failure(e.kind());
                let mut rec = self.base(EventKind::AuthFailure, AuditOutcome::Failure, &origin);
                // Who the token claims to be (unverified), so failed
                // attempts can be attributed; never the token itself.
                rec.actor = Some(match claimed_identity(token) {
                    Some(c) => Actor {
                        subject: self.masked(&format!(
                            "{} (claimed)",
                            c.subject.as_deref().unwrap_or("no subject")
                        )),
                        issuer: c.issuer.as_deref().map(|i| self.masked(i)),
                        groups: Vec::new(),
                    },
                    None => Actor {
                        subject: self.masked(&format!(
                            "{} (user name given, no valid token)",
                            client.user
                        )),
                        ..Actor::default()
                    },
                });
                rec.resource = Some(self.resource(&client.database));
                rec.message = Some(format!("authentication failed: {e}"));
                self.record(rec);
                Err(e.to_string())
            }
        }
    }

    fn refused(&self, client: &ClientInfo, reason: &str) {
        let origin = self.client_origin(client);
        let mut rec = self.base(EventKind::ConnectionRefused, AuditOutcome::Failure, &origin);
        if !client.user.is_empty() {
            rec.actor = Some(Actor {
                subject: self.masked(&format!(
                    "{} (user name given, not authenticated)",
                    client.user
                )),
                ..Actor::default()
            });
        }
        // The client's target, not this gate's: a redirected connection to an
        // address no target claims is reported through some target's gate.
        rec.resource = Some(Resource {
            target: (!client.target.is_empty()).then(|| client.target.clone()),
            ..self.resource(&client.database)
        });
        rec.message = Some(self.masked(reason));
        self.record(rec);
    }

    fn session_started(&self, s: &Session) {
        let mut rec = self.base(EventKind::SessionStart, AuditOutcome::Success, &s.origin);
        rec.actor = Some(s.identity.actor());
        rec.resource = Some(self.resource(&s.database));
        self.record(rec);
    }

    fn greeting(&self, s: &Session) -> Option<String> {
        let groups = if s.identity.groups.is_empty() {
            String::new()
        } else {
            format!(" (groups: {})", s.identity.groups.join(", "))
        };
        Some(format!(
            "cardgate: authenticated as {}{groups}, token issued by {}; AccessPolicy {} governs this session and it is audited",
            s.identity.subject, s.identity.issuer, self.shared.policy
        ))
    }

    fn decide(&self, s: &mut Session, access: Access<'_>) -> Verdict<Statement, Hold> {
        let Access::Sql {
            text: sql,
            protocol,
            prepare_as,
        } = access;
        let judged = self.judge_sql(s, sql, protocol);
        let (action, rule, message) = self.ruling(judged.decision.as_ref());
        self.shared.metrics.statement(judged.class, action).inc();
        let statement = Statement {
            identity: Arc::clone(&s.identity),
            origin: Arc::clone(&s.origin),
            database: s.database.clone(),
            text: self.masked(sql),
            class: judged.class,
            rule,
            reads: judged.reads,
            writes: judged.writes,
            protocol,
            approval: None,
        };
        let verdict = self.verdict(s, sql, statement, action, message);
        // The server creates a statement the verdict lets through; `EXECUTE
        // name` is then decided by its text.
        if !matches!(verdict, Verdict::Deny(_))
            && let (Some(name), Some(c)) = (prepare_as, judged.classification)
        {
            s.sql.protocol_prepared(name, c);
        }
        verdict
    }

    fn statement_closed(&self, s: &mut Session, name: &str) {
        s.sql.protocol_closed(name);
    }

    async fn hold(&self, hold: Hold) -> Held<Statement, Waiting> {
        let Some(a) = &self.shared.approvals else {
            return Held::Now(self.refuse_held(
                hold.statement,
                None,
                "cardgate: no approval store is configured".into(),
            ));
        };
        let Hold {
            statement,
            fingerprint,
        } = hold;
        let deferred = a.settings.mode == cardgate_crds::v1alpha1::ApprovalMode::Deferred;
        let statement = if deferred {
            match self.use_grant(a, statement, &fingerprint).await {
                Ok(resolved) => return Held::Now(resolved),
                Err(statement) => statement,
            }
        } else {
            statement
        };
        let name = match self.request_approval(a, &statement, fingerprint).await {
            Ok(name) => name,
            Err(message) => return Held::Now(self.refuse_held(statement, None, message)),
        };
        let how = a.approve_command.replace("NAME", &name);
        if deferred {
            let message = format!(
                "cardgate: {} of AccessPolicy {} needs approval: request {name} was created; once it is approved ({how}), run the same statement again within {}",
                statement.rule, self.shared.policy, a.settings.grant_ttl
            );
            return Held::Now(self.refuse_held(statement, Some(name), message));
        }
        Held::Waiting {
            notice: format!(
                "cardgate: statement held for approval by {} of AccessPolicy {}: request {name}; approve with `{how}`; waiting up to {}",
                statement.rule, self.shared.policy, a.settings.timeout
            ),
            waiting: Waiting { name, statement },
        }
    }

    async fn await_decision(&self, w: &Waiting) -> Resolved<Statement> {
        let Some(a) = &self.shared.approvals else {
            return Resolved::Deny("cardgate: no approval store is configured".into());
        };
        let mut statement = w.statement.clone();
        let message = match a.store.wait(&w.name).await {
            Ok(Resolution::Approved { name, .. }) => match a.store.record_use(&name).await {
                Ok(()) => {
                    statement.approval = Some(name);
                    return Resolved::Allow(statement);
                }
                Err(e) => format!("cardgate: {e}"),
            },
            Ok(Resolution::Denied {
                name,
                reviewer,
                reason,
            }) => {
                format!("cardgate: approval request {name} was denied by {reviewer}: {reason}")
            }
            Ok(Resolution::Expired { name }) => {
                format!("cardgate: approval request {name} expired without a decision")
            }
            Ok(Resolution::Withdrawn { name }) => {
                format!("cardgate: approval request {name} was withdrawn")
            }
            Err(e) => format!("cardgate: {e}"),
        };
        self.refuse_held(statement, Some(w.name.clone()), message)
    }

    async fn withdraw(&self, w: Waiting, reason: &str) {
        if let Some(a) = &self.shared.approvals
            && let Err(e) = a.store.withdraw(&w.name).await
        {
            tracing::warn!(request = %w.name, error = %e, "could not withdraw an approval request");
        }
        let mut rec = self.statement_record(
            &w.statement,
            RuleAction::RequireApproval,
            AuditOutcome::Failure,
        );
        rec.event = EventKind::ApprovalWithdrawn;
        rec.approval = Some(cardgate_crds::audit::ApprovalDetails {
            name: w.name.clone(),
            decision: Some("Withdrawn".into()),
            reason: Some(reason.to_string()),
            ..Default::default()
        });
        rec.message = Some(format!("approval request {} withdrawn: {reason}", w.name));
        self.record(rec);
    }

    fn completed(&self, st: &Statement, outcome: &Completion) {
        let metrics = &self.shared.metrics;
        metrics.observe_overhead(outcome.overhead);
        metrics.masked_values.inc_by(outcome.masked);
        let ok = outcome.sqlstate.is_none() && !outcome.skipped;
        let mut rec = self.statement_record(
            st,
            RuleAction::Allow,
            if ok {
                AuditOutcome::Success
            } else {
                AuditOutcome::Failure
            },
        );
        if let Some(d) = rec.statement.as_mut() {
            d.rows = Some(outcome.rows);
            d.bytes = Some(outcome.bytes);
            d.duration_us = Some(outcome.duration.as_micros() as u64);
            d.masked_values = Some(outcome.masked);
            d.sqlstate = outcome.sqlstate.clone();
        }
        rec.message = if outcome.skipped {
            Some("not run: an earlier message of the same batch failed".into())
        } else {
            outcome.error.as_deref().map(|e| self.masked(e))
        };
        self.record(rec);
    }

    fn session_ended(&self, s: Session, summary: &SessionSummary) {
        let outcome = if summary.error.is_some() {
            AuditOutcome::Failure
        } else {
            AuditOutcome::Success
        };
        let mut rec = self.base(EventKind::SessionEnd, outcome, &s.origin);
        rec.actor = Some(s.identity.actor());
        rec.resource = Some(self.resource(&s.database));
        rec.message = Some(match &summary.error {
            Some(e) => self.masked(&format!(
                "{} statements decided ({} denied) in {} ms; ended: {e}",
                summary.statements,
                summary.denied,
                summary.duration.as_millis()
            )),
            None => format!(
                "{} statements decided ({} denied) in {} ms",
                summary.statements,
                summary.denied,
                summary.duration.as_millis()
            ),
        });
        self.record(rec);
    }

    fn mask_text(&self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        self.shared.masker.mask_to(input, out)
    }

    fn limits(&self) -> RowLimits {
        self.shared.limits
    }

    fn policy_name(&self) -> &str {
        &self.shared.policy_label
    }
}

/// A SQL statement as the policy sees it.
struct JudgedSql {
    class: StatementClass,
    reads: Vec<String>,
    writes: Vec<String>,
    /// The rules' decision; `None` for a FunctionCall, never allowed.
    decision: Option<RuleDecision>,
    /// The statement's own classification, for a Parse that names it.
    classification: Option<Arc<Classification>>,
}

impl Gate {
    /// Classifies a statement in the session's state and applies the rules.
    fn judge_sql(&self, s: &mut Session, sql: &str, protocol: Protocol) -> JudgedSql {
        if protocol == Protocol::FunctionCall {
            return JudgedSql {
                class: StatementClass::Dangerous,
                reads: Vec::new(),
                writes: Vec::new(),
                decision: None,
                classification: None,
            };
        }
        let raw = self.shared.classifier.classify(sql);
        let c = s.sql.effective(Arc::clone(&raw));
        let d = self.shared.rules.decide(&self.target, &c);
        JudgedSql {
            class: c.class,
            reads: c.reads.clone(),
            writes: c.writes.clone(),
            decision: Some(d),
            classification: Some(raw),
        }
    }

    /// The action, the rule that decided it and the message for a refusal;
    /// an unhealthy audit trail refuses everything.
    fn ruling(&self, decision: Option<&RuleDecision>) -> (RuleAction, String, String) {
        let shared = &self.shared;
        match (decision, shared.audit.healthy()) {
            (_, false) => (
                RuleAction::Deny,
                "auditUnavailable".to_string(),
                "cardgate: the audit trail is unavailable; statements are refused until it recovers".to_string(),
            ),
            (None, true) => (
                RuleAction::Deny,
                "functionCall".to_string(),
                "cardgate: FunctionCall messages call functions by OID around SQL and are not allowed".to_string(),
            ),
            (Some(d), true) => match d.action {
                RuleAction::Allow => (RuleAction::Allow, d.label.clone(), String::new()),
                RuleAction::Deny => (RuleAction::Deny, d.label.clone(), d.denial_message(&shared.policy)),
                RuleAction::RequireApproval => (
                    RuleAction::RequireApproval,
                    d.label.clone(),
                    format!(
                        "cardgate: held by AccessPolicy {} {} ({}): this statement needs approval, and no approval store is configured",
                        shared.policy, d.label, d.class
                    ),
                ),
            },
        }
    }

    /// Allows, holds for approval, or refuses (and records the refusal).
    fn verdict(
        &self,
        s: &mut Session,
        sql: &str,
        statement: Statement,
        action: RuleAction,
        message: String,
    ) -> Verdict<Statement, Hold> {
        if action == RuleAction::Allow {
            return Verdict::Allow(statement);
        }
        if action == RuleAction::RequireApproval
            && let Some(a) = &self.shared.approvals
        {
            let fingerprint =
                keyed_fingerprint(&a.fingerprint_key, sql, &self.target, &s.identity.subject);
            return Verdict::Hold(Hold {
                statement,
                fingerprint,
            });
        }
        s.sql.undo_last();
        let mut rec = self.statement_record(&statement, action, AuditOutcome::Failure);
        rec.message = Some(message.clone());
        self.record(rec);
        Verdict::Deny(message)
    }
}

impl Gate {
    /// The masking engine, for a protocol's own masking of structured
    /// results (PostgreSQL's column rules).
    pub(crate) fn masker(&self) -> &Arc<Masker> {
        &self.shared.masker
    }

    /// Starts the session's recording, when recordings are on.
    pub(crate) fn start_recording(&self, s: &Session) -> Option<Recorder> {
        let recordings = self.shared.recordings.as_ref()?;
        let info = SessionInfo {
            session: s.origin.session.as_deref().unwrap_or_default(),
            subject: &s.identity.subject,
            target: &self.target,
            database: Some(&s.database),
            client: s.origin.client.as_deref(),
        };
        recordings
            .start(&info)
            .inspect_err(|e| tracing::warn!(error = %e, "session recording unavailable"))
            .ok()
    }

    fn statement_record(
        &self,
        st: &Statement,
        decision: RuleAction,
        outcome: AuditOutcome,
    ) -> AuditRecord {
        let mut rec = self.base(EventKind::Statement, outcome, &st.origin);
        rec.actor = Some(st.identity.actor());
        rec.resource = Some(Resource {
            target: Some(self.target.clone()),
            database: Some(st.database.clone()),
            reads: st.reads.clone(),
            writes: st.writes.clone(),
            object: None,
        });
        rec.statement = Some(StatementDetails {
            text: st.text.clone(),
            class: st.class,
            decision,
            rule: st.rule.clone(),
            protocol: Some(st.protocol.as_str().to_string()),
            rows: None,
            bytes: None,
            duration_us: None,
            masked_values: None,
            sqlstate: None,
            approval: st.approval.clone(),
        });
        rec
    }

    /// Refuses a held statement and records why.
    fn refuse_held(
        &self,
        statement: Statement,
        request: Option<String>,
        message: String,
    ) -> Resolved<Statement> {
        let mut rec = self.statement_record(
            &statement,
            RuleAction::RequireApproval,
            AuditOutcome::Failure,
        );
        if let Some(d) = rec.statement.as_mut() {
            d.approval = request;
        }
        rec.message = Some(self.masked(&message));
        self.record(rec);
        Resolved::Deny(message)
    }

    /// Deferred mode: a live grant for the same statement allows it (one
    /// use); `Err` hands the statement back when there is none.
    async fn use_grant(
        &self,
        a: &Approvals,
        mut statement: Statement,
        fingerprint: &str,
    ) -> Result<Resolved<Statement>, Statement> {
        match a.store.find_grant(fingerprint).await {
            Ok(Some(grant)) => Ok(match a.store.record_use(&grant.name).await {
                Ok(()) => {
                    statement.approval = Some(grant.name);
                    Resolved::Allow(statement)
                }
                Err(e) => self.refuse_held(statement, Some(grant.name), format!("cardgate: {e}")),
            }),
            Ok(None) => Err(statement),
            Err(e) => Ok(self.refuse_held(statement, None, format!("cardgate: {e}"))),
        }
    }

    /// Creates the ApprovalRequest and records it; returns its name, or the
    /// refusal message when the store cannot take it.
    async fn request_approval(
        &self,
        a: &Approvals,
        statement: &Statement,
        fingerprint: String,
    ) -> Result<String, String> {
        let request = self.new_request(a, statement, fingerprint.clone());
        let name = a
            .store
            .create(&request)
            .await
            .map_err(|e| format!("cardgate: {e}"))?;
        let mut rec = self.statement_record(
            statement,
            RuleAction::RequireApproval,
            AuditOutcome::Success,
        );
        rec.event = EventKind::ApprovalCreated;
        rec.approval = Some(cardgate_crds::audit::ApprovalDetails {
            name: name.clone(),
            fingerprint: Some(fingerprint),
            ..Default::default()
        });
        self.record(rec);
        Ok(name)
    }

    fn new_request(&self, a: &Approvals, st: &Statement, fingerprint: String) -> NewRequest {
        let pod = &a.pod;
        NewRequest {
            policy: self.shared.policy.name.clone(),
            policy_namespace: self.shared.policy.namespace.clone(),
            rule: st.rule.clone(),
            target: self.target.clone(),
            statement_masked: st.text.clone(),
            fingerprint,
            class: st.class,
            requester: cardgate_crds::v1alpha1::Requester {
                subject: st.identity.subject.clone(),
                issuer: Some(st.identity.issuer.clone()),
                groups: st.identity.groups.clone(),
                service_account: pod.service_account_subject().unwrap_or_default(),
                pod: pod.pod.clone().unwrap_or_default(),
                pod_uid: pod.pod_uid.clone().unwrap_or_default(),
                node: pod.node.clone(),
            },
            mode: a.settings.mode,
            quorum: a.settings.quorum,
            timeout: a.settings.timeout.into(),
            grant_ttl: a.settings.grant_ttl.into(),
            max_uses: match a.settings.mode {
                cardgate_crds::v1alpha1::ApprovalMode::Wait => 1,
                cardgate_crds::v1alpha1::ApprovalMode::Deferred => a.settings.max_uses,
            },
        }
    }
}

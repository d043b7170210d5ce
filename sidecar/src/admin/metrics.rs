//! The sidecar's Prometheus metrics.
//!
//! Every handle the data path touches is created up front and held in
//! [`Metrics`], so counting a statement is an array index and an atomic add:
//! no label strings are built, hashed or looked up per statement. Labels only
//! ever carry names from fixed sets (statement class, decision, sink type,
//! failure reason): never statement text, values, subjects or addresses.

use std::time::Duration;

use cardgate_crds::v1alpha1::{RuleAction, StatementClass};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Bucket bounds (seconds) of the per-statement overhead histogram: 10 µs to
/// 100 ms in 1-2-5 steps, where a proxy's added latency lives.
pub const OVERHEAD_BUCKETS: [f64; 13] = [
    0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_2, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
    0.1,
];

const DECISIONS: [RuleAction; 3] = [
    RuleAction::Allow,
    RuleAction::Deny,
    RuleAction::RequireApproval,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatementLabels {
    class: &'static str,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: &'static str,
}

/// The audit trail's own metrics, handed to the audit writer so that sink
/// failures show up on `/metrics` (PCI DSS 10.7.2: failures of audit logging
/// must be detected and alerted on).
#[derive(Clone, Debug, Default)]
pub struct AuditMetrics {
    records: Counter,
    refused: Counter,
    failures: Family<SinkLabels, Counter>,
    healthy: Gauge,
}

impl AuditMetrics {
    /// Counts records sealed and handed to every sink.
    pub(crate) fn written(&self, n: u64) {
        self.records.inc_by(n);
    }

    /// Counts a record refused because the trail was unhealthy or backlogged
    /// (the event it describes was denied or failed).
    pub(crate) fn refused(&self) {
        self.refused.inc();
    }

    /// Counts a sink failure; `sink` is the sink type (`file`, `stdout`,
    /// `collector`) or `queue` for a backlog.
    pub(crate) fn failure(&self, sink: &'static str) {
        self.failures.get_or_create(&SinkLabels { sink }).inc();
    }

    /// Sets the health gauge (1 healthy, 0 failing).
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }
}

/// Typed handles on every metric the sidecar exports, plus the registry that
/// renders them for `/metrics`. Shared via `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Client sessions open now.
    pub sessions_active: Gauge,
    /// Client sessions since start (`cardgate_sessions_total`).
    pub sessions: Counter,
    /// Values masked in responses, errors and audit text.
    pub masked_values: Counter,
    /// Time the sidecar adds to a statement (parse, decide, mask, audit), in
    /// seconds; upstream execution time is excluded.
    pub statement_overhead: Histogram,
    /// Session recordings that failed and stopped (disk full, permissions).
    pub recording_failures: Counter,
    statements: [[Counter; DECISIONS.len()]; StatementClass::ALL.len()],
    auth_failures: Family<ReasonLabels, Counter>,
    upstream_errors: Family<ReasonLabels, Counter>,
    audit: AuditMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric under the `cardgate_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cardgate");
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Client sessions open now",
            sessions_active.clone(),
        );
        let sessions = Counter::default();
        registry.register("sessions", "Client sessions since start", sessions.clone());

        let statement_family = Family::<StatementLabels, Counter>::default();
        registry.register(
            "statements",
            "Statements decided, by class and decision",
            statement_family.clone(),
        );
        let statements = StatementClass::ALL.map(|class| {
            DECISIONS.map(|decision| {
                statement_family
                    .get_or_create(&StatementLabels {
                        class: class.as_str(),
                        decision: decision.as_str(),
                    })
                    .clone()
            })
        });

        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Failed authentications, by reason",
            auth_failures.clone(),
        );
        let masked_values = Counter::default();
        registry.register(
            "masked_values",
            "Values masked in responses, errors and audit text",
            masked_values.clone(),
        );
        let upstream_errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Errors talking to upstream services, by reason",
            upstream_errors.clone(),
        );
        let statement_overhead = Histogram::new(OVERHEAD_BUCKETS);
        registry.register_with_unit(
            "statement_overhead",
            "Time the sidecar adds to a statement",
            Unit::Seconds,
            statement_overhead.clone(),
        );
        let recording_failures = Counter::default();
        registry.register(
            "recording_failures",
            "Session recordings that failed and stopped",
            recording_failures.clone(),
        );

        let audit = AuditMetrics::default();
        registry.register(
            "audit_records",
            "Audit records sealed into the chain and handed to every sink (a failing sink holds them until it recovers)",
            audit.records.clone(),
        );
        registry.register(
            "audit_refused",
            "Audit records refused because the trail was failing; the events they describe were denied",
            audit.refused.clone(),
        );
        registry.register(
            "audit_failures",
            "Audit sink failures, by sink type",
            audit.failures.clone(),
        );
        registry.register(
            "audit_healthy",
            "1 while every audit sink accepts records, 0 while statements are refused",
            audit.healthy.clone(),
        );
        audit.set_healthy(true);

        Self {
            registry,
            sessions_active,
            sessions,
            masked_values,
            statement_overhead,
            recording_failures,
            statements,
            auth_failures,
            upstream_errors,
            audit,
        }
    }

    /// The counter of statements of `class` that got `decision`.
    pub fn statement(&self, class: StatementClass, decision: RuleAction) -> &Counter {
        let c = StatementClass::ALL
            .iter()
            .position(|&x| x == class)
            .expect("ALL lists every class");
        let d = DECISIONS
            .iter()
            .position(|&x| x == decision)
            .expect("DECISIONS lists every action");
        &self.statements[c][d]
    }

    /// Counts a failed authentication. `reason` is a fixed word from the
    /// identity module (`expired`, `audience`, `unknown_key`, …), never
    /// anything the client sent.
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Counts an upstream error; `reason` is a fixed word (`connect`, `tls`,
    /// `auth`, `io`, `protocol`).
    pub fn upstream_error(&self, reason: &'static str) {
        self.upstream_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// Records the time the sidecar added to one statement.
    pub fn observe_overhead(&self, added: Duration) {
        self.statement_overhead.observe(added.as_secs_f64());
    }

    /// Opens a session: counts it and keeps it in the active gauge until the
    /// guard is dropped, however the session ends.
    pub fn session(&self) -> SessionGuard {
        self.sessions.inc();
        self.sessions_active.inc();
        SessionGuard {
            active: self.sessions_active.clone(),
        }
    }

    /// Handles for the audit writer.
    pub fn audit(&self) -> AuditMetrics {
        self.audit.clone()
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Keeps a session in `cardgate_sessions_active` while it lives.
#[derive(Debug)]
pub struct SessionGuard {
    active: Gauge,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.active.dec();
    }
}

/// Media type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn statement_handles_count_under_their_labels() {
        let m = Metrics::new();
        m.statement(StatementClass::Ddl, RuleAction::Deny).inc();
        m.statement(StatementClass::Ddl, RuleAction::Deny).inc();
        m.statement(StatementClass::Read, RuleAction::Allow).inc();
        let text = m.encode();
        assert_eq!(
            line(
                &text,
                r#"cardgate_statements_total{class="ddl",decision="deny"}"#
            ),
            Some(r#"cardgate_statements_total{class="ddl",decision="deny"} 2"#)
        );
        assert_eq!(
            line(
                &text,
                r#"cardgate_statements_total{class="read",decision="allow"}"#
            ),
            Some(r#"cardgate_statements_total{class="read",decision="allow"} 1"#)
        );
    }

    #[test]
    fn session_guard_keeps_the_active_gauge_honest() {
        let m = Metrics::new();
        let a = m.session();
        let b = m.session();
        assert_eq!(m.sessions_active.get(), 2);
        drop(a);
        assert_eq!(m.sessions_active.get(), 1);
        drop(b);
        assert_eq!(m.sessions_active.get(), 0);
        assert_eq!(m.sessions.get(), 2);
    }

    #[test]
    fn overhead_histogram_uses_microsecond_buckets() {
        let m = Metrics::new();
        m.observe_overhead(Duration::from_micros(15));
        let text = m.encode();
        assert!(
            text.contains(r#"cardgate_statement_overhead_seconds_bucket{le="1e-5"} 0"#)
                || text.contains(r#"cardgate_statement_overhead_seconds_bucket{le="0.00001"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("cardgate_statement_overhead_seconds_count 1"),
            "{text}"
        );
    }
}

//! Prometheus metrics of the operator, served on `/metrics`.
//!
//! One registry for the whole process: the controllers record reconciles,
//! durations and errors; the admission webhooks count injections and denials
//! through [`Metrics::webhook`]. Label values come from closed sets (enums and
//! error reasons), never from user data.

use std::sync::atomic::AtomicI64;
use std::time::Instant;

use crate::webhook::WebhookMetrics;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which controller a reconcile belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControllerName {
    /// The AccessPolicy controller.
    AccessPolicy,
    /// The MaskingRule controller.
    MaskingRule,
    /// The ApprovalRequest controller.
    ApprovalRequest,
}

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconcileOutcome {
    /// Everything applied.
    Ready,
    /// The object has problems its owner must fix (see its conditions).
    Degraded,
    /// The API server refused or failed; retried with backoff.
    Error,
}

/// Lower-case label values for the enums above.
macro_rules! label_values {
    ($ty:ty { $($variant:ident => $value:literal),+ $(,)? }) => {
        impl $ty {
            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values!(ControllerName {
    AccessPolicy => "accesspolicy",
    MaskingRule => "maskingrule",
    ApprovalRequest => "approvalrequest",
});
label_values!(ReconcileOutcome { Ready => "ready", Degraded => "degraded", Error => "error" });

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReconcileLabels {
    controller: ControllerName,
    outcome: ReconcileOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ControllerLabels {
    controller: ControllerName,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ErrorLabels {
    controller: ControllerName,
    reason: String,
}

fn duration_histogram() -> Histogram {
    // 5 ms to ~20 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// The operator's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    /// Counters of the admission webhooks (injections, denials).
    pub webhook: WebhookMetrics,
    leader: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered under `cardgate_operator_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cardgate_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let durations: Family<ControllerLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(duration_histogram);
        let errors = Family::<ErrorLabels, Counter>::default();
        let leader = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "reconciles",
            "Reconciles finished, by controller and outcome",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            durations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and error reason",
            errors.clone(),
        );
        let webhook = WebhookMetrics::register(&mut registry);
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            leader.clone(),
        );
        Self {
            registry,
            reconciles,
            durations,
            errors,
            webhook,
            leader,
        }
    }

    /// Starts timing a reconcile; call [`ReconcileTimer::finish`] with the
    /// outcome.
    pub fn reconcile(&self, controller: ControllerName) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile by its error reason.
    pub fn reconcile_error(&self, controller: ControllerName, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller,
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Measures one reconcile.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: ControllerName,
    start: Instant,
}

impl ReconcileTimer<'_> {
    /// Records the duration and outcome.
    pub fn finish(self, outcome: ReconcileOutcome) {
        let m = self.metrics;
        m.durations
            .get_or_create(&ControllerLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
        m.reconciles
            .get_or_create(&ReconcileLabels {
                controller: self.controller,
                outcome,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.reconcile(ControllerName::AccessPolicy)
            .finish(ReconcileOutcome::Degraded);
        m.reconcile_error(ControllerName::MaskingRule, "Conflict");
        m.webhook.injections.inc();
        m.set_leader(true);
        let text = m.encode();
        for line in [
            "cardgate_operator_reconciles_total{controller=\"accesspolicy\",outcome=\"degraded\"} 1",
            "cardgate_operator_reconcile_errors_total{controller=\"maskingrule\",reason=\"Conflict\"} 1",
            "cardgate_operator_webhook_injections_total 1",
            "cardgate_operator_leader 1",
            "cardgate_operator_reconcile_duration_seconds_count{controller=\"accesspolicy\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}

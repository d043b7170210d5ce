//! Counters of the admission webhooks, registered in the operator's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label of the denial counter: which webhook refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// `mutate-pods`, `validate-pods`, …
    pub webhook: String,
}

/// Counters the webhooks update; cheap to clone (shared handles).
#[derive(Clone, Debug, Default)]
pub struct WebhookMetrics {
    /// Pods injected with the sidecar (dry runs not counted).
    pub injections: Counter,
    /// Admission requests refused, by webhook.
    pub denials: Family<WebhookLabel, Counter>,
}

impl WebhookMetrics {
    /// Creates the counters and registers them as
    /// `webhook_injections_total` and `webhook_denials_total` (under the
    /// operator's `cardgate_operator_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "webhook_injections",
            "Pods injected with the cardgate sidecar",
            m.injections.clone(),
        );
        registry.register(
            "webhook_denials",
            "Admission requests refused by a cardgate webhook",
            m.denials.clone(),
        );
        m
    }

    /// Counts one refusal by `webhook`.
    pub fn denied(&self, webhook: &str) {
        self.denials
            .get_or_create(&WebhookLabel {
                webhook: webhook.to_string(),
            })
            .inc();
    }
}

//! Command-line flags of `cardgate-operator`; each can also be set from the
//! environment (the Deployment sets the pod's name and namespace that way).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::render::config::RenderSettings;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for the cluster's log pipeline.
    Json,
    /// Human-readable lines, for running on a laptop.
    Text,
}

/// Flags of the operator binary.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "cardgate-operator",
    version,
    about = "Reconciles cardgate AccessPolicies and MaskingRules into governed agent pods"
)]
pub struct Settings {
    /// Admission webhook and sidecar injection settings.
    #[command(flatten)]
    pub webhook: crate::webhook::WebhookSettings,

    /// Address of the metrics and health server (`/metrics`, `/healthz`,
    /// `/readyz`).
    #[arg(long, env = "CARDGATE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Namespace the operator runs in (its Lease, collector and TLS Secret
    /// live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "cardgate-system")]
    pub namespace: String,

    /// This replica's name: the leader-election identity and the Events'
    /// reporting instance.
    #[arg(long, env = "POD_NAME", default_value = "cardgate-operator")]
    pub pod_name: String,

    /// Run the controllers only on the replica holding the Lease. Turn off
    /// only when a single replica runs (e.g. on a laptop).
    #[arg(long, env = "CARDGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// Name of the leader-election Lease in `--namespace`.
    #[arg(long, env = "CARDGATE_LEASE_NAME", default_value = "cardgate-operator")]
    pub lease_name: String,

    /// Seconds a leader's Lease stays valid without renewal; a new leader
    /// takes over at most this long after the old one vanishes.
    #[arg(long, env = "CARDGATE_LEASE_DURATION", default_value_t = 15, value_parser = clap::value_parser!(u64).range(5..=300))]
    pub lease_duration: u64,

    /// Issuer (`iss`) of the cluster's service-account tokens; see
    /// `kubectl get --raw /.well-known/openid-configuration`.
    #[arg(
        long,
        env = "CARDGATE_CLUSTER_ISSUER",
        default_value = "https://kubernetes.default.svc.cluster.local"
    )]
    pub cluster_issuer: String,

    /// Where sidecars fetch the service-account signing keys: the API
    /// server's own JWKS, reachable from every pod whatever the issuer URL.
    #[arg(
        long,
        env = "CARDGATE_CLUSTER_JWKS_URL",
        default_value = "https://kubernetes.default.svc/openid/v1/jwks"
    )]
    pub cluster_jwks_url: String,

    /// URL sidecars send audit records to; defaults to the operator's
    /// collector, `https://cardgate-operator.<namespace>.svc:8443/v1/audit`.
    #[arg(long, env = "CARDGATE_COLLECTOR_URL")]
    pub collector_url: Option<String>,

    /// Port the collector listens on in the operator pods (the egress
    /// NetworkPolicy allows it).
    #[arg(long, env = "CARDGATE_COLLECTOR_PORT", default_value_t = 8443)]
    pub collector_port: u16,

    /// PEM CA bundle that signed the collector's certificate, copied into
    /// every rendered ConfigMap. Without it (and until the operator's own
    /// TLS bootstrap publishes one) sidecars audit to stdout only.
    #[arg(long, env = "CARDGATE_COLLECTOR_CA_FILE")]
    pub collector_ca_file: Option<PathBuf>,

    /// Labels of the operator's pods (`k=v,k=v`), for the egress
    /// NetworkPolicy's collector rule.
    #[arg(long, env = "CARDGATE_OPERATOR_POD_LABELS", default_value = "app.kubernetes.io/name=cardgate-operator", value_parser = parse_labels)]
    pub operator_pod_labels: BTreeMap<String, String>,

    /// Namespace of the cluster DNS pods (egress NetworkPolicy).
    #[arg(long, env = "CARDGATE_DNS_NAMESPACE", default_value = "kube-system")]
    pub dns_namespace: String,

    /// Labels of the cluster DNS pods (`k=v,k=v`; egress NetworkPolicy).
    #[arg(long, env = "CARDGATE_DNS_POD_LABELS", default_value = "k8s-app=kube-dns", value_parser = parse_labels)]
    pub dns_pod_labels: BTreeMap<String, String>,

    /// Log format.
    #[arg(long, env = "CARDGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `info,cardgate_operator=debug`; RUST_LOG
    /// works too.
    #[arg(long, env = "CARDGATE_LOG", default_value = "info")]
    pub log: String,

    /// Seconds to finish in-flight work after SIGTERM before exiting.
    #[arg(long, env = "CARDGATE_SHUTDOWN_TIMEOUT", default_value_t = 25)]
    pub shutdown_timeout: u64,
}

/// Parses `k=v,k2=v2` into labels.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        if k.is_empty() {
            return Err(format!("{pair:?} has an empty key"));
        }
        out.insert(k.to_string(), v.to_string());
    }
    if out.is_empty() {
        return Err("at least one key=value label is required".into());
    }
    Ok(out)
}

impl Settings {
    /// The collector URL, defaulted from the namespace.
    pub fn collector_url(&self) -> String {
        self.collector_url.clone().unwrap_or_else(|| {
            format!(
                "https://cardgate-operator.{}.svc:{}/v1/audit",
                self.namespace, self.collector_port
            )
        })
    }

    /// Lease validity.
    pub fn lease_duration(&self) -> Duration {
        Duration::from_secs(self.lease_duration)
    }

    /// The rendering settings, with the collector CA as currently known.
    pub fn render_settings(&self, collector_ca: Option<String>) -> RenderSettings {
        RenderSettings {
            cluster_issuer: self.cluster_issuer.clone(),
            cluster_jwks_url: self.cluster_jwks_url.clone(),
            collector_url: self.collector_url(),
            collector_ca,
            operator_namespace: self.namespace.clone(),
            operator_pod_labels: self.operator_pod_labels.clone(),
            collector_port: self.collector_port,
            dns_namespace: self.dns_namespace.clone(),
            dns_pod_labels: self.dns_pod_labels.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_reject_garbage() {
        assert_eq!(
            parse_labels("a=b, c=d").unwrap(),
            BTreeMap::from([("a".into(), "b".into()), ("c".into(), "d".into())])
        );
        assert!(parse_labels("a").unwrap_err().contains("not key=value"));
        assert!(parse_labels("=b").unwrap_err().contains("empty key"));
        assert!(parse_labels("").is_err());
    }

    #[test]
    fn defaults_name_the_collector_service_in_the_operator_namespace() {
        let s = Settings::try_parse_from(["cardgate-operator", "--namespace", "cg"]).unwrap();
        assert_eq!(
            s.collector_url(),
            "https://cardgate-operator.cg.svc:8443/v1/audit"
        );
        assert!(s.leader_election);
        let s =
            Settings::try_parse_from(["cardgate-operator", "--leader-election", "false"]).unwrap();
        assert!(!s.leader_election);
        assert!(Settings::try_parse_from(["cardgate-operator", "--lease-duration", "1"]).is_err());
    }
}

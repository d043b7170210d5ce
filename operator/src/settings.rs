//! Command-line flags of `cardgate-operator`; each can also be set from the
//! environment (the Deployment sets the pod's name and namespace that way).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::render::config::{Collector, RenderSettings};

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

    /// Namespace the operator runs in (its Lease and TLS Secret live
    /// there).
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

    /// URL of an audit collector that sidecars ship records to besides
    /// stdout (the contract is in docs/operations.md). The operator does
    /// not serve one itself; without this, sidecars audit to stdout only.
    #[arg(long, env = "CARDGATE_COLLECTOR_URL", requires = "collector_ca_file")]
    pub collector_url: Option<String>,

    /// PEM CA bundle that signed the collector's certificate, copied into
    /// every rendered ConfigMap; read again when the file changes (a
    /// mounted Secret that cert-manager rotates).
    #[arg(long, env = "CARDGATE_COLLECTOR_CA_FILE", requires = "collector_url")]
    pub collector_ca_file: Option<PathBuf>,

    /// Namespace of the collector's pods, for the egress NetworkPolicy's
    /// collector rule; defaults to the operator's namespace.
    #[arg(long, env = "CARDGATE_COLLECTOR_NAMESPACE")]
    pub collector_namespace: Option<String>,

    /// Labels of the collector's pods (`k=v,k=v`), for the egress
    /// NetworkPolicy's collector rule.
    #[arg(long, env = "CARDGATE_COLLECTOR_POD_LABELS", default_value = "app.kubernetes.io/name=cardgate-audit-collector", value_parser = parse_labels)]
    pub collector_pod_labels: BTreeMap<String, String>,

    /// Port the collector's pods listen on, for the egress NetworkPolicy's
    /// collector rule.
    #[arg(long, env = "CARDGATE_COLLECTOR_PORT", default_value_t = 8443)]
    pub collector_port: u16,

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
    /// The audit collector, when one is configured.
    pub fn collector(&self) -> Option<Collector> {
        self.collector_url.as_ref().map(|url| Collector {
            url: url.clone(),
            namespace: self
                .collector_namespace
                .clone()
                .unwrap_or_else(|| self.namespace.clone()),
            pod_labels: self.collector_pod_labels.clone(),
            port: self.collector_port,
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
            collector: self.collector(),
            collector_ca,
            operator_namespace: self.namespace.clone(),
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
    fn a_collector_needs_its_url_and_ca_and_lives_in_the_operator_namespace_by_default() {
        let s = Settings::try_parse_from(["cardgate-operator", "--namespace", "cg"]).unwrap();
        assert_eq!(
            s.collector(),
            None,
            "stdout only unless a collector is named"
        );
        for half in [
            ["--collector-url", "https://c.cg.svc:8443"],
            ["--collector-ca-file", "/ca.crt"],
        ] {
            let args = ["cardgate-operator"].into_iter().chain(half);
            assert!(Settings::try_parse_from(args).is_err(), "{half:?} alone");
        }
        let s = Settings::try_parse_from([
            "cardgate-operator",
            "--namespace",
            "cg",
            "--collector-url",
            "https://c.cg.svc:8443",
            "--collector-ca-file",
            "/ca.crt",
        ])
        .unwrap();
        let c = s.collector().unwrap();
        assert_eq!(
            (c.url.as_str(), c.namespace.as_str(), c.port),
            ("https://c.cg.svc:8443", "cg", 8443)
        );
        assert!(s.leader_election);
        let s =
            Settings::try_parse_from(["cardgate-operator", "--leader-election", "false"]).unwrap();
        assert!(!s.leader_election);
        assert!(Settings::try_parse_from(["cardgate-operator", "--lease-duration", "1"]).is_err());
    }
}

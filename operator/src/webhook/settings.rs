//! Command-line settings of the admission webhooks and of injection.
//!
//! Every flag starts with `--webhook-`, `--sidecar-` or `--legacy-sidecar`
//! so the struct can be flattened into the operator's command line next to
//! the controllers' flags without clashes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::inject::InjectSettings;
use crate::tls::service_dns_names;

/// Sidecar image used unless `--sidecar-image` says otherwise: the release
/// that matches this operator.
pub const DEFAULT_SIDECAR_IMAGE: &str = concat!(
    "ghcr.io/cardgate/cardgate-sidecar:",
    env!("CARGO_PKG_VERSION")
);

/// Lifetime of the projected tokens the injector mounts (the kubelet renews
/// them at 80%).
const TOKEN_EXPIRATION_SECONDS: i64 = 3600;

/// Where the webhook's serving certificate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CertMode {
    /// The operator issues a CA and serving certificate, keeps them in a
    /// Secret and patches the webhook configurations' caBundle.
    SelfManaged,
    /// cert-manager issues the certificate (mounted at --webhook-cert-dir)
    /// and its cainjector fills caBundle.
    CertManager,
}

/// Settings of the admission webhooks (flatten into the operator's CLI).
#[derive(Args, Clone, Debug)]
pub struct WebhookSettings {
    /// Address the HTTPS admission server listens on.
    #[arg(long = "webhook-bind-address", default_value = "0.0.0.0:9443")]
    pub bind_address: SocketAddr,
    /// Name of the Service in front of the webhook (its DNS names go into the
    /// serving certificate).
    #[arg(long = "webhook-service-name", default_value = "cardgate-operator")]
    pub service_name: String,
    /// Namespace of that Service: the operator's own namespace, which the
    /// webhooks never apply to.
    #[arg(long = "webhook-service-namespace", default_value = "cardgate-system")]
    pub service_namespace: String,
    /// Who issues the serving certificate.
    #[arg(long = "webhook-cert-mode", value_enum, default_value_t = CertMode::SelfManaged)]
    pub cert_mode: CertMode,
    /// Secret (in the operator's namespace) holding the self-managed CA and
    /// serving certificate, shared by all replicas.
    #[arg(long = "webhook-cert-secret", default_value = "cardgate-webhook-tls")]
    pub cert_secret: String,
    /// Directory with tls.crt and tls.key (cert-manager mode).
    #[arg(
        long = "webhook-cert-dir",
        default_value = "/var/run/cardgate/webhook-tls"
    )]
    pub cert_dir: PathBuf,
    /// MutatingWebhookConfigurations whose caBundle the operator maintains.
    #[arg(
        long = "webhook-mutating-configs",
        value_delimiter = ',',
        default_value = "cardgate-pod-injector,cardgate-approvalrequests"
    )]
    pub mutating_configs: Vec<String>,
    /// ValidatingWebhookConfigurations whose caBundle the operator maintains.
    #[arg(
        long = "webhook-validating-configs",
        value_delimiter = ',',
        default_value = "cardgate-pod-validator,cardgate-approvalrequests"
    )]
    pub validating_configs: Vec<String>,
    /// Image of the injected cardgate sidecar.
    #[arg(long = "sidecar-image", env = "CARDGATE_SIDECAR_IMAGE", default_value = DEFAULT_SIDECAR_IMAGE)]
    pub sidecar_image: String,
    /// Pull policy of the sidecar image.
    #[arg(
        long = "sidecar-image-pull-policy",
        default_value = "IfNotPresent",
        value_parser = ["Always", "IfNotPresent", "Never"]
    )]
    pub sidecar_image_pull_policy: String,
    /// CPU request of the sidecar.
    #[arg(long = "sidecar-cpu-request", default_value = "50m", value_parser = parse_quantity)]
    pub sidecar_cpu_request: Quantity,
    /// Memory request of the sidecar.
    #[arg(long = "sidecar-memory-request", default_value = "64Mi", value_parser = parse_quantity)]
    pub sidecar_memory_request: Quantity,
    /// CPU limit of the sidecar; none by default, since throttling the proxy
    /// slows every statement.
    #[arg(long = "sidecar-cpu-limit", value_parser = parse_quantity)]
    pub sidecar_cpu_limit: Option<Quantity>,
    /// Memory limit of the sidecar.
    #[arg(long = "sidecar-memory-limit", default_value = "256Mi", value_parser = parse_quantity)]
    pub sidecar_memory_limit: Quantity,
    /// Size limit of the sidecar's scratch volume (recordings, spooled audit).
    #[arg(long = "sidecar-state-size-limit", default_value = "1Gi", value_parser = parse_quantity)]
    pub sidecar_state_size_limit: Quantity,
    /// Inject the sidecar as a regular container, for clusters older than
    /// 1.29 (no native sidecars: the agent may start before the proxy).
    #[arg(long = "legacy-sidecar")]
    pub legacy_sidecar: bool,
}

impl WebhookSettings {
    /// What the injector needs from these settings.
    pub fn inject_settings(&self) -> InjectSettings {
        let mut limits =
            BTreeMap::from([("memory".to_string(), self.sidecar_memory_limit.clone())]);
        if let Some(cpu) = &self.sidecar_cpu_limit {
            limits.insert("cpu".to_string(), cpu.clone());
        }
        InjectSettings {
            image: self.sidecar_image.clone(),
            image_pull_policy: self.sidecar_image_pull_policy.clone(),
            resources: ResourceRequirements {
                requests: Some(BTreeMap::from([
                    ("cpu".to_string(), self.sidecar_cpu_request.clone()),
                    ("memory".to_string(), self.sidecar_memory_request.clone()),
                ])),
                limits: Some(limits),
                ..Default::default()
            },
            legacy_sidecar: self.legacy_sidecar,
            state_size_limit: Some(self.sidecar_state_size_limit.clone()),
            token_expiration_seconds: TOKEN_EXPIRATION_SECONDS,
        }
    }

    /// DNS names of the webhook Service.
    pub fn dns_names(&self) -> Vec<String> {
        service_dns_names(&self.service_name, &self.service_namespace)
    }
}

/// Accepts Kubernetes quantities (`50m`, `64Mi`, `1.5`, `1e3`), so a typo
/// fails at start-up instead of in every pod the webhook injects.
fn parse_quantity(s: &str) -> Result<Quantity, String> {
    const SUFFIXES: [&str; 15] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
    ];
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let number = SUFFIXES
        .iter()
        .find_map(|suf| body.strip_suffix(suf))
        .or_else(|| {
            let e = body.find(['e', 'E'])?;
            let exp = &body[e + 1..];
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| &body[..e])
        })
        .unwrap_or(body);
    let mut parts = number.splitn(2, '.');
    let int = parts.next().unwrap_or("");
    let frac = parts.next();
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    let valid = digits(int)
        && frac.is_none_or(digits)
        && !(int.is_empty() && frac.is_none_or(str::is_empty));
    if valid {
        Ok(Quantity(s.to_string()))
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes quantity (e.g. 50m, 64Mi, 1Gi)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        webhook: WebhookSettings,
    }

    #[test]
    fn defaults_describe_a_standard_install() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        let s = cli.webhook;
        assert_eq!(s.bind_address.port(), 9443);
        assert_eq!(s.cert_mode, CertMode::SelfManaged);
        assert_eq!(
            s.mutating_configs,
            ["cardgate-pod-injector", "cardgate-approvalrequests"]
        );
        assert_eq!(
            s.validating_configs,
            ["cardgate-pod-validator", "cardgate-approvalrequests"]
        );
        assert_eq!(s.dns_names()[0], "cardgate-operator.cardgate-system.svc");
        let inject = s.inject_settings();
        assert!(!inject.legacy_sidecar);
        let limits = inject.resources.limits.unwrap();
        assert!(!limits.contains_key("cpu"));
        assert_eq!(limits["memory"].0, "256Mi");
    }

    #[test]
    fn flags_override_and_bad_quantities_are_refused() {
        let cli = Cli::try_parse_from([
            "op",
            "--legacy-sidecar",
            "--webhook-cert-mode",
            "cert-manager",
            "--sidecar-cpu-limit",
            "500m",
            "--webhook-validating-configs",
            "cardgate-pod-validator,cardgate-approval-validator",
        ])
        .unwrap();
        assert!(cli.webhook.legacy_sidecar);
        assert_eq!(cli.webhook.cert_mode, CertMode::CertManager);
        assert_eq!(cli.webhook.validating_configs.len(), 2);
        assert_eq!(
            cli.webhook.inject_settings().resources.limits.unwrap()["cpu"].0,
            "500m"
        );
        for bad in ["lots", "64MB", "", ".", "1e"] {
            let r = Cli::try_parse_from(["op", "--sidecar-memory-limit", bad]);
            assert!(r.is_err(), "{bad:?} accepted");
        }
        for good in ["1", "0.5", "1.5Gi", "100m", "1e3", "+2k"] {
            assert!(parse_quantity(good).is_ok(), "{good:?} refused");
        }
    }
}

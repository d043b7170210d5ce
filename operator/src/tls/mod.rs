//! TLS for the admission webhooks.
//!
//! The API server calls the webhooks over HTTPS and trusts only the CA in the
//! configurations' `caBundle`. Two sources of certificates:
//!
//! - self-managed (default): the operator creates a CA and a serving
//!   certificate, shares them between replicas through one Secret
//!   ([`store`]), keeps the configurations' `caBundle` current
//!   ([`ca_bundle`]) and renews well before expiry ([`rotation`]);
//! - cert-manager: the certificate is mounted from a cert-manager
//!   Certificate's Secret and cainjector fills `caBundle`; the operator only
//!   reloads the files when they change.
//!
//! Either way the server takes its certificate from a [`CertResolver`], so a
//! renewed certificate is served without a restart.

pub mod ca_bundle;
pub mod certs;
mod resolver;
pub mod rotation;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tracing::{error, info};

pub use ca_bundle::CaBundleTargets;
pub use certs::WebhookCerts;
pub use resolver::CertResolver;
pub use store::SecretStore;

/// Why certificates could not be issued, stored or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A certificate or key is unusable.
    #[error("invalid webhook certificate: {0}")]
    Invalid(String),
    /// Mounted certificate files could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Other replicas kept changing the Secret.
    #[error("Secret {0} kept changing under concurrent updates; will retry")]
    Contended(String),
}

/// Self-managed certificates: the shared Secret plus the configurations to
/// keep pointed at its CA.
#[derive(Clone)]
pub struct SelfManaged {
    /// The shared Secret.
    pub store: SecretStore,
    /// The webhook configurations.
    pub targets: CaBundleTargets,
}

impl SelfManaged {
    /// One round: make sure valid certificates exist, that the API server
    /// trusts their CA, then serve them. The order matters: a replica serves a
    /// certificate only after `caBundle` names its CA.
    pub async fn tick(&self, resolver: &CertResolver, now: Timestamp) -> Result<(), TlsError> {
        let certs = self.store.ensure(now).await?;
        if let Err(e) = self.targets.ensure(&certs.ca_bundle(now)).await {
            error!(error = %e, "cannot update the webhook configurations' caBundle");
        }
        if resolver.install(certs.certified_key()?) {
            info!("serving a new webhook certificate");
        }
        Ok(())
    }

    /// Repeats [`Self::tick`] every `interval` (picking up certificates other
    /// replicas renewed) until `shutdown`; errors are logged and retried.
    pub async fn run(
        self,
        resolver: Arc<CertResolver>,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(e) = self.tick(&resolver, Timestamp::now()).await {
                error!(error = %e, "webhook certificate renewal failed; retrying");
            }
        }
    }
}

/// Certificates mounted from a Secret cert-manager maintains.
#[derive(Clone, Debug)]
pub struct MountedCerts {
    /// Directory with `tls.crt` and `tls.key`.
    pub dir: PathBuf,
}

impl MountedCerts {
    /// Loads the files into `resolver` if they changed; returns whether they did.
    pub fn load(&self, resolver: &CertResolver) -> Result<bool, TlsError> {
        let read = |name: &str| {
            let path = self.dir.join(name);
            std::fs::read(&path).map_err(|source| TlsError::Io { path, source })
        };
        let key = certs::certified_key(&read("tls.crt")?, &read("tls.key")?)?;
        Ok(resolver.install(key))
    }

    /// Re-reads the files every `interval` until `shutdown` (the kubelet
    /// swaps them atomically when cert-manager renews the Secret).
    pub async fn run(
        self,
        resolver: Arc<CertResolver>,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.load(&resolver) {
                Ok(true) => {
                    info!(dir = %self.dir.display(), "serving a renewed webhook certificate")
                }
                Ok(false) => {}
                Err(e) => {
                    error!(error = %e, "cannot reload the webhook certificate; serving the previous one")
                }
            }
        }
    }
}

/// DNS names the API server may use for the webhook Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
    ]
}

//! The admission webhooks of the operator, served over HTTPS on every
//! replica (no leader election: the API server may call any of them).
//!
//! - `/mutate/pods`: injects the sidecar ([`pods::PodInjector`]);
//! - `/validate/pods`: rules for governed pods ([`pods::PodValidator`]);
//! - `/mutate/approvalrequests`: stamps reviews with the reviewer's
//!   authenticated identity ([`approvals::ReviewStamper`]);
//! - `/validate/approvalrequests`: the rules of ApprovalRequests
//!   ([`approvals::ApprovalValidator`]).
//!
//! [`serve`] ties it together: certificates first ([`crate::tls`]), then the
//! caches, then the listener; `ready` turns true only once requests can be
//! answered correctly.

pub mod approvals;
pub mod metrics;
pub mod pods;
pub mod server;
mod settings;

use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use futures::StreamExt;
use jiff::Timestamp;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use metrics::WebhookMetrics;
pub use settings::{CertMode, DEFAULT_SIDECAR_IMAGE, WebhookSettings};

use crate::tls::{CaBundleTargets, CertResolver, MountedCerts, SecretStore, SelfManaged, TlsError};
use approvals::{ApprovalContext, ApprovalValidator, ReviewStamper};
use pods::{PodContext, PodInjector, PodValidator};

/// Path of the injecting webhook (referenced by `cardgate-pod-injector`).
pub const MUTATE_PODS_PATH: &str = "/mutate/pods";
/// Path of the pod rules (referenced by `cardgate-pod-validator`).
pub const VALIDATE_PODS_PATH: &str = "/validate/pods";
/// Path of the review stamping (MutatingWebhookConfiguration
/// `cardgate-approvalrequests`).
pub const MUTATE_APPROVALS_PATH: &str = "/mutate/approvalrequests";
/// Path of the ApprovalRequest rules (ValidatingWebhookConfiguration
/// `cardgate-approvalrequests`).
pub const VALIDATE_APPROVALS_PATH: &str = "/validate/approvalrequests";

/// How often self-managed certificates are checked (renewal by another
/// replica, caBundle emptied by a re-apply of the configurations).
const RENEW_INTERVAL: Duration = Duration::from_secs(60);
/// How often mounted (cert-manager) certificate files are re-read.
const RELOAD_INTERVAL: Duration = Duration::from_secs(10);
/// Longest pause between start-up attempts to obtain a certificate.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the webhook server stopped.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// Runs the admission webhooks until `shutdown` completes: obtains the
/// serving certificate (retrying until it succeeds), loads AccessPolicies and
/// MaskingRules into caches, then serves. `ready` is set once requests can be
/// answered and cleared when shutdown begins; wire it into `/readyz` so the
/// Service routes the API server only to replicas that can answer.
pub async fn serve(
    settings: WebhookSettings,
    client: Client,
    metrics: WebhookMetrics,
    ready: watch::Sender<bool>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WebhookError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            rx.wait_for(|s| *s).await.ok();
        }
    };

    let resolver = CertResolver::new();
    match settings.cert_mode {
        CertMode::SelfManaged => {
            let manager = SelfManaged {
                store: SecretStore {
                    api: Api::namespaced(client.clone(), &settings.service_namespace),
                    name: settings.cert_secret.clone(),
                    dns_names: settings.dns_names(),
                    lifetimes: Default::default(),
                },
                targets: CaBundleTargets {
                    client: client.clone(),
                    mutating: settings.mutating_configs.clone(),
                    validating: settings.validating_configs.clone(),
                },
            };
            let first = retry(stopped(), || manager.tick(&resolver, Timestamp::now()));
            if !first.await {
                return Ok(());
            }
            tokio::spawn(manager.run(resolver.clone(), RENEW_INTERVAL, stopped()));
        }
        CertMode::CertManager => {
            let mounted = MountedCerts {
                dir: settings.cert_dir.clone(),
            };
            let first = retry(stopped(), || async { mounted.load(&resolver).map(|_| ()) });
            if !first.await {
                return Ok(());
            }
            tokio::spawn(mounted.run(resolver.clone(), RELOAD_INTERVAL, stopped()));
        }
    }

    let (policies, policy_writer) = reflector::store::<AccessPolicy>();
    let (masking_rules, rule_writer) = reflector::store::<MaskingRule>();
    tokio::spawn(reflect(Api::all(client.clone()), policy_writer, stopped()));
    tokio::spawn(reflect(Api::all(client.clone()), rule_writer, stopped()));
    let caches = async {
        policies.wait_until_ready().await.ok();
        masking_rules.wait_until_ready().await.ok();
    };
    tokio::select! {
        _ = stopped() => return Ok(()),
        _ = caches => {}
    }

    let approvals = Arc::new(ApprovalContext {
        policies: policies.clone(),
        client: client.clone(),
        metrics: metrics.clone(),
        now: Timestamp::now,
    });
    let context = Arc::new(PodContext {
        policies,
        masking_rules,
        client,
        settings: settings.inject_settings(),
        operator_namespace: settings.service_namespace.clone(),
        metrics,
    });
    let router = server::Router::new()
        .admit(MUTATE_PODS_PATH, PodInjector(context.clone()))
        .admit(VALIDATE_PODS_PATH, PodValidator(context))
        .admit(MUTATE_APPROVALS_PATH, ReviewStamper(approvals.clone()))
        .admit(VALIDATE_APPROVALS_PATH, ApprovalValidator(approvals));
    let addr = settings.bind_address;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    info!(%addr, "admission webhooks listening");
    ready.send_replace(true);
    let stop = stopped();
    server::run(listener, resolver, Arc::new(router), async move {
        stop.await;
        ready.send_replace(false);
    })
    .await;
    Ok(())
}

/// Runs `attempt` until it succeeds (true) or `stop` completes (false),
/// backing off between failures.
async fn retry<F, Fut>(stop: impl Future<Output = ()>, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), TlsError>>,
{
    let mut stop = std::pin::pin!(stop);
    let mut backoff = Duration::from_secs(1);
    loop {
        match attempt().await {
            Ok(()) => return true,
            Err(e) => warn!(error = %e, retry_in = ?backoff, "no webhook certificate yet"),
        }
        tokio::select! {
            _ = &mut stop => return false,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Keeps `writer`'s cache in sync with the cluster until `stop`.
async fn reflect<K>(api: Api<K>, writer: Writer<K>, stop: impl Future<Output = ()>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer);
    let mut stream = std::pin::pin!(stream);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            item = stream.next() => match item {
                None => return,
                Some(Err(e)) => warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying"),
                Some(Ok(_)) => {}
            },
        }
    }
}

//! Leader election: the controllers run on the one replica holding a
//! `coordination.k8s.io` Lease, while every replica serves HTTP (webhooks,
//! metrics). A replica that loses the Lease stops its controllers, lets
//! running reconciles finish, and campaigns again; on shutdown it releases
//! the Lease so another replica takes over at once instead of after the
//! Lease expires.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Where the Lease lives and who campaigns.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
}

/// Wait before retrying when the Lease cannot be read or created.
const RETRY: Duration = Duration::from_secs(5);
/// Longest wait for the Lease to be released at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `work` whenever this replica leads, until `shutdown`. `work` gets a
/// token that fires when leadership ends; it must return soon after.
pub async fn run_while_leading<F, Fut>(
    client: Client,
    lease: LeaseSettings,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    mut work: F,
) where
    F: FnMut(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let seconds = lease.duration.as_secs().max(2);
    // Renew a third of the way before expiry.
    let grace = (seconds / 3).max(1);
    loop {
        let built = tokio::select! {
            () = shutdown.cancelled() => return,
            built = LeaseManagerBuilder::new(client.clone(), &lease.name)
                .with_namespace(&lease.namespace)
                .with_identity(&lease.identity)
                .with_duration(seconds)
                .with_grace(grace)
                .with_field_manager(format!("cardgate-operator-lease-{}", lease.identity))
                .build() => built,
        };
        let manager = match built {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, lease = %format!("{}/{}", lease.namespace, lease.name), "cannot use the leader Lease; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        let (mut leading, handle) = manager.watch().await;
        'campaign: loop {
            while !*leading.borrow_and_update() {
                tokio::select! {
                    () = shutdown.cancelled() => {
                        release(leading, handle).await;
                        return;
                    }
                    changed = leading.changed() => if changed.is_err() {
                        break 'campaign;
                    },
                }
            }
            tracing::info!(identity = %lease.identity, "acquired the leader Lease; starting controllers");
            metrics.set_leader(true);
            let stop = shutdown.child_token();
            let task = tokio::spawn(work(stop.clone()));
            let closed = loop {
                tokio::select! {
                    () = shutdown.cancelled() => break false,
                    changed = leading.changed() => match changed {
                        Ok(()) if *leading.borrow() => continue,
                        Ok(()) => break false,
                        Err(_) => break true,
                    },
                }
            };
            stop.cancel();
            if let Err(e) = task.await {
                tracing::error!(error = %e, "controllers ended abnormally");
            }
            metrics.set_leader(false);
            if shutdown.is_cancelled() {
                release(leading, handle).await;
                return;
            }
            tracing::warn!(identity = %lease.identity, "lost the leader Lease; controllers stopped, campaigning again");
            if closed {
                break 'campaign;
            }
        }
        // The Lease manager's task ended (API errors); start over.
        if let Ok(Err(e)) = handle.await {
            tracing::error!(error = %e, "leader election stopped");
        }
    }
}

/// Closes the channel, which makes the manager release the Lease and end.
async fn release<T>(
    leading: tokio::sync::watch::Receiver<bool>,
    handle: tokio::task::JoinHandle<Result<T, kube_lease_manager::LeaseManagerError>>,
) {
    drop(leading);
    match tokio::time::timeout(RELEASE_TIMEOUT, handle).await {
        Ok(Ok(Ok(_))) => tracing::info!("released the leader Lease"),
        Ok(Ok(Err(e))) => {
            tracing::warn!(error = %e, "cannot release the leader Lease; it expires on its own")
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "the Lease task failed"),
        Err(_) => tracing::warn!("releasing the leader Lease timed out; it expires on its own"),
    }
}

/// Runs `work` until `shutdown` without a Lease (single replica).
pub async fn run_unelected<Fut>(
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    work: impl FnOnce(CancellationToken) -> Fut,
) where
    Fut: Future<Output = ()>,
{
    metrics.set_leader(true);
    work(shutdown).await;
    metrics.set_leader(false);
}

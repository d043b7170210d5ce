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
        // The Lease manager's task ended (API errors); start over after a
        // pause, so a persistent error does not turn into a busy loop.
        if let Ok(Err(e)) = handle.await {
            tracing::error!(error = %e, "leader election stopped; retrying");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY) => {}
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http::{Method, Request, Response, StatusCode};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use kube::client::Body;
    use serde_json::{Value, json};
    use tower_test::mock;

    use super::*;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/cardgate-system/leases";

    /// Merges a patch into the stored object; `null` removes a field.
    fn merge(target: &mut Value, patch: &Value) {
        match (target, patch) {
            (Value::Object(t), Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    /// A stateful Lease endpoint: GET, POST and PATCH (apply or strategic
    /// merge) on one Lease, like the API server's for this object.
    fn lease_server(initial: Option<Value>) -> (Client, Arc<Mutex<Option<Value>>>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let store = Arc::new(Mutex::new(initial));
        let state = store.clone();
        tokio::spawn(async move {
            let mut version = 1;
            while let Some((req, send)) = handle.next_request().await {
                let (method, path) = (req.method().clone(), req.uri().path().to_string());
                let body = req.into_body().collect_bytes().await.unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mut lease = state.lock().unwrap();
                version += 1;
                let (status, answer) = match (method, path.as_str()) {
                    (Method::GET, p) if p == format!("{LEASE}/cardgate-operator") => {
                        match &*lease {
                            Some(l) => (StatusCode::OK, l.clone()),
                            None => (
                                StatusCode::NOT_FOUND,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                                   "message": "leases.coordination.k8s.io \"cardgate-operator\" not found"}),
                            ),
                        }
                    }
                    (Method::POST, LEASE) => {
                        let mut created = body;
                        created["metadata"]["namespace"] = "cardgate-system".into();
                        created["metadata"]["resourceVersion"] = version.to_string().into();
                        *lease = Some(created.clone());
                        (StatusCode::CREATED, created)
                    }
                    (Method::PATCH, p) if p == format!("{LEASE}/cardgate-operator") => {
                        let stored = lease.as_mut().expect("patch of an existing Lease");
                        merge(&mut stored["spec"], &body["spec"]);
                        stored["metadata"]["resourceVersion"] = version.to_string().into();
                        (StatusCode::OK, stored.clone())
                    }
                    (m, p) => panic!("unexpected {m} {p}"),
                };
                send.send_response(
                    Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), store)
    }

    fn settings() -> LeaseSettings {
        LeaseSettings {
            namespace: "cardgate-system".into(),
            name: "cardgate-operator".into(),
            identity: "cardgate-operator-0".into(),
            duration: Duration::from_secs(15),
        }
    }

    /// Work that records when it runs and stops on its token.
    fn work(
        started: Arc<AtomicBool>,
        stopped: Arc<AtomicBool>,
    ) -> impl FnMut(CancellationToken) -> futures::future::BoxFuture<'static, ()> {
        move |stop: CancellationToken| {
            let (started, stopped) = (started.clone(), stopped.clone());
            Box::pin(async move {
                started.store(true, Ordering::SeqCst);
                stop.cancelled().await;
                stopped.store(true, Ordering::SeqCst);
            })
        }
    }

    #[tokio::test]
    async fn leads_runs_the_work_and_releases_the_lease_at_shutdown() {
        let (client, store) = lease_server(None);
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let (started, stopped) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let task = tokio::spawn(run_while_leading(
            client,
            settings(),
            metrics.clone(),
            shutdown.clone(),
            work(started.clone(), stopped.clone()),
        ));
        tokio::time::timeout(Duration::from_secs(10), async {
            while !started.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the free Lease is acquired and the work starts");
        assert!(metrics.encode().contains("cardgate_operator_leader 1"));
        let holder = store.lock().unwrap().as_ref().unwrap()["spec"]["holderIdentity"].clone();
        assert_eq!(holder, "cardgate-operator-0");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(stopped.load(Ordering::SeqCst), "the work was told to stop");
        assert!(metrics.encode().contains("cardgate_operator_leader 0"));
        let lease = store.lock().unwrap().clone().unwrap();
        assert!(
            lease["spec"].get("holderIdentity").is_none(),
            "released: {lease}"
        );
    }

    #[tokio::test]
    async fn a_lease_held_by_another_replica_keeps_the_work_stopped() {
        let renewed = serde_json::to_value(MicroTime(jiff::Timestamp::now())).unwrap();
        let (client, _store) = lease_server(Some(json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "cardgate-operator", "namespace": "cardgate-system", "resourceVersion": "1"},
            "spec": {"holderIdentity": "cardgate-operator-1", "leaseDurationSeconds": 15,
                     "acquireTime": renewed, "renewTime": renewed, "leaseTransitions": 3}
        })));
        let shutdown = CancellationToken::new();
        let (started, stopped) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let task = tokio::spawn(run_while_leading(
            client,
            settings(),
            Arc::new(Metrics::new()),
            shutdown.clone(),
            work(started.clone(), stopped),
        ));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!started.load(Ordering::SeqCst), "ran without the Lease");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}

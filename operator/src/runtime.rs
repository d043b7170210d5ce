//! The operator process: a set of named tasks sharing one shutdown token.
//!
//! - every replica: the metrics/health server (and the admission webhook
//!   server, added next to it);
//! - the Lease holder only: the controllers ([`crate::leader`]).
//!
//! SIGTERM (or SIGINT) first marks the replica unready, so Services stop
//! sending it traffic, then cancels the token; every task finishes its
//! in-flight work and the process exits once all have ended or the shutdown
//! timeout passes. A task that ends on its own (an error) shuts the others
//! down too: a replica never runs half its duties.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use cardgate_crds::audit::{EventKind, Outcome};
use kube::Client;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::collector_ca;
use crate::controller::{self, Context};
use crate::health::{self, Readiness};
use crate::leader::{self, LeaseSettings};
use crate::metrics::Metrics;
use crate::preflight;
use crate::settings::Settings;

/// How long an unready replica keeps serving before it stops, so endpoint
/// removal reaches every node first.
const DRAIN: Duration = Duration::from_secs(5);

/// Named long-running tasks that stop together.
pub struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    shutdown: CancellationToken,
}

impl Tasks {
    /// An empty set stopped by `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            shutdown,
        }
    }

    /// Starts `task`; it must return soon after the shutdown token fires.
    pub fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.set.spawn(async move { (name, task.await) });
    }

    /// Waits until shutdown is requested or a task ends, then stops the rest
    /// (aborting what is still running after `timeout`). Returns the first
    /// task error.
    pub async fn join(mut self, timeout: Duration) -> anyhow::Result<()> {
        let mut first_error = None;
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            Some(joined) = self.set.join_next() => {
                let err = match joined {
                    Ok((name, Ok(()))) => anyhow::anyhow!("task {name} ended unexpectedly"),
                    Ok((name, Err(e))) => e.context(format!("task {name} failed")),
                    Err(e) => anyhow::anyhow!("a task panicked: {e}"),
                };
                tracing::error!(error = format!("{err:#}"), "stopping the operator");
                first_error = Some(err);
                self.shutdown.cancel();
            }
        }
        let drain = async {
            while let Some(joined) = self.set.join_next().await {
                match joined {
                    Ok((name, Ok(()))) => tracing::info!(task = name, "stopped"),
                    Ok((name, Err(e))) => {
                        tracing::error!(
                            task = name,
                            error = format!("{e:#}"),
                            "stopped with an error"
                        );
                        first_error.get_or_insert(e.context(format!("task {name} failed")));
                    }
                    Err(e) => tracing::error!(error = %e, "a task panicked"),
                }
            }
        };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!(
                seconds = timeout.as_secs(),
                "tasks did not stop in time; aborting them"
            );
            self.set.abort_all();
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Marks the replica unready on SIGTERM/SIGINT, then cancels `shutdown`
/// after the drain delay.
async fn on_signal(
    shutdown: CancellationToken,
    terminating: health::ReadyFlag,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        () = shutdown.cancelled() => return Ok(()),
    }
    terminating.set(false);
    tokio::select! {
        () = tokio::time::sleep(DRAIN) => {}
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    Ok(())
}

/// Runs the operator until SIGTERM or a fatal error.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::default();
    let terminating = readiness.register("not-terminating");
    terminating.set(true);
    let crds = readiness.register("crds");

    let mut tasks = Tasks::new(shutdown.clone());
    tasks.spawn("signals", on_signal(shutdown.clone(), terminating));
    let listener = TcpListener::bind(settings.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on --metrics-addr {}", settings.metrics_addr))?;
    let addr = listener.local_addr().context("metrics listener address")?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    {
        let (metrics, readiness, shutdown) = (metrics.clone(), readiness.clone(), shutdown.clone());
        tasks.spawn("metrics server", async move {
            health::serve(listener, metrics, readiness, shutdown)
                .await
                .context("metrics server")
        });
    }

    let client = Client::try_default().await.context(
        "cannot configure the Kubernetes client (in-cluster service account or KUBECONFIG)",
    )?;
    if let Err(e) = preflight::check_crds(&client).await {
        shutdown.cancel();
        let _ = tasks.join(Duration::from_secs(2)).await;
        return Err(e.into());
    }
    crds.set(true);
    tracing::info!("the cardgate CRDs are installed");

    // The collector's CA, followed while we run so a rotation re-renders
    // every policy.
    let ca = match &settings.collector_ca_file {
        Some(path) => Some(collector_ca::read(path)?),
        None => None,
    };
    let (collector_ca_tx, collector_ca_rx) = watch::channel(ca);
    if let Some(path) = settings.collector_ca_file.clone() {
        let stop = shutdown.clone();
        tasks.spawn("collector CA", async move {
            collector_ca::follow(path, collector_ca::RELOAD_EVERY, collector_ca_tx, stop).await;
            Ok(())
        });
    }
    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        &settings.pod_name,
        settings.render_settings(None),
        collector_ca_rx,
    ));
    let audit = ctx.audit.clone();
    let mut start = audit.record(EventKind::AuditStart, Outcome::Success);
    start.message = Some(format!(
        "cardgate-operator {} started its audit trail",
        env!("CARGO_PKG_VERSION")
    ));
    audit
        .write(start)
        .context("cannot write the audit trail to stdout")?;
    let work = move |stop: CancellationToken| controller::run(ctx.clone(), stop);
    if settings.leader_election {
        let lease = LeaseSettings {
            namespace: settings.namespace.clone(),
            name: settings.lease_name.clone(),
            identity: settings.pod_name.clone(),
            duration: settings.lease_duration(),
        };
        let (client, metrics, shutdown) = (client.clone(), metrics.clone(), shutdown.clone());
        tasks.spawn("controllers", async move {
            leader::run_while_leading(client, lease, metrics, shutdown, work).await;
            Ok(())
        });
    } else {
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        tasks.spawn("controllers", async move {
            leader::run_unelected(metrics, shutdown, work).await;
            Ok(())
        });
    }

    // Admission webhooks: every replica serves them, leader or not.
    {
        let flag = readiness.register("webhook");
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let stop = shutdown.clone();
        tasks.spawn("webhook readiness", async move {
            loop {
                flag.set(*ready_rx.borrow_and_update());
                tokio::select! {
                    changed = ready_rx.changed() => if changed.is_err() { return Ok(()) },
                    () = stop.cancelled() => return Ok(()),
                }
            }
        });
        let (client, webhook_metrics, stop) =
            (client.clone(), metrics.webhook.clone(), shutdown.clone());
        let webhook_settings = settings.webhook.clone();
        tasks.spawn("webhook server", async move {
            crate::webhook::serve(
                webhook_settings,
                client,
                webhook_metrics,
                ready_tx,
                async move { stop.cancelled().await },
            )
            .await
            .context("admission webhook server")
        });
    }
    let result = tasks
        .join(Duration::from_secs(settings.shutdown_timeout))
        .await;
    if let Err(e) = audit.write(audit.record(EventKind::AuditStop, Outcome::Success)) {
        tracing::error!(error = %e, "cannot close the audit trail");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_stops_the_others_and_is_reported() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        let s = shutdown.clone();
        tasks.spawn("server", async move {
            s.cancelled().await;
            Ok(())
        });
        tasks.spawn("broken", async { Err(anyhow::anyhow!("port in use")) });
        let err = tasks.join(Duration::from_secs(5)).await.unwrap_err();
        assert!(
            format!("{err:#}").contains("task broken failed: port in use"),
            "{err:#}"
        );
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn shutdown_waits_for_tasks_then_aborts_stragglers() {
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::new(shutdown.clone());
        tasks.spawn("stubborn", async {
            std::future::pending::<()>().await;
            Ok(())
        });
        shutdown.cancel();
        let started = tokio::time::Instant::now();
        tasks.join(Duration::from_millis(50)).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

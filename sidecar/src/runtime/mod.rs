//! `cardgate-sidecar run`: loads the configuration, opens the audit trail,
//! builds the shared parts (identity, policy, masking, metrics), serves every
//! target and the admin endpoint, and shuts down cleanly on SIGTERM.
//!
//! A configuration that does not load stops the sidecar with every problem
//! listed (there is no audit trail yet to record it in); the pod stays
//! unready and the agent has no path to the data — failing closed.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cardgate_crds::audit::{AuditRecord, EventKind, Outcome as AuditOutcome};
use cardgate_crds::config::{ApprovalConfig, SidecarConfig};
use cardgate_crds::v1alpha1::Protocol as TargetProtocol;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::admin::{AdminServer, Metrics, Readiness};
use crate::audit::{AuditLog, AuditOptions};
use crate::gate::RowLimits;
use crate::gate::{self, Gate};
use crate::identity::{Authenticator, PodIdentity};
use crate::intercept::Cidr;
use crate::masking::Masker;
use crate::policy::{Classifier, Policy};
use crate::postgres::cancel::CancelRegistry;
use crate::postgres::server::TargetProxy;
use crate::postgres::transparent;
use crate::postgres::upstream::UpstreamSettings;
use crate::recording::{RecordingLimits, Recordings};

/// How long running sessions may finish after SIGTERM before the audit
/// trail is closed.
const DRAIN: Duration = Duration::from_secs(20);

/// A started sidecar; [`Sidecar::shutdown`] stops it.
pub struct Sidecar {
    /// Address of the admin endpoint.
    pub admin: SocketAddr,
    /// Listen address of each target (explicit mode), by target name.
    pub listeners: Vec<(String, SocketAddr)>,
    stop: watch::Sender<bool>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    audit: Arc<AuditLog>,
    admin_server: AdminServer,
    connections: Arc<Semaphore>,
    max_connections: u32,
}

/// Loads `path` and starts everything; returns once listening.
pub async fn start(path: &Path) -> anyhow::Result<Sidecar> {
    let (config, digest) =
        SidecarConfig::load_with_digest(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    start_with(config, path, &digest).await
}

/// The start-up in order: the audit trail first (nothing runs unrecorded),
/// then the parts every target shares, the approval auditor, the targets,
/// and the admin endpoint last, whose readiness opens the pod to traffic.
async fn start_with(config: SidecarConfig, path: &Path, digest: &[u8]) -> anyhow::Result<Sidecar> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pod = PodIdentity::from_env();
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let listeners_ready = readiness.flag("listeners");

    let audit = open_audit(&config, &pod, &metrics, &readiness).await?;
    record_config_loaded(&audit, &config, digest)?;
    let shared = shared_parts(&config, path, &pod, &audit, &metrics).await?;

    let (stop, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut servers: Vec<_> = spawn_approval_auditor(&shared, &stopped)
        .into_iter()
        .collect();
    let connections = Arc::new(Semaphore::new(config.proxy.max_connections as usize));
    let targets = serve_targets(&config, &shared, &connections, &stopped).await?;
    servers.extend(targets.servers);
    servers.extend(serve_transparent(&config, targets.transparent, &stopped)?);

    let admin_addr: SocketAddr = config.admin.listen.parse().context("admin.listen")?;
    let admin_server = AdminServer::bind(admin_addr, Arc::clone(&metrics), readiness.clone())
        .await
        .with_context(|| format!("cannot listen on admin.listen {admin_addr}"))?;
    listeners_ready.set(true);
    Ok(Sidecar {
        admin: admin_server.local_addr(),
        listeners: targets.listeners,
        stop,
        servers,
        audit,
        admin_server,
        connections,
        max_connections: config.proxy.max_connections,
    })
}

/// Opens the audit trail and makes its health part of readiness.
async fn open_audit(
    config: &SidecarConfig,
    pod: &PodIdentity,
    metrics: &Metrics,
    readiness: &Readiness,
) -> anyhow::Result<Arc<AuditLog>> {
    let audit = AuditLog::open_with(
        &config.audit,
        pod.origin(),
        AuditOptions {
            metrics: metrics.audit(),
            ..AuditOptions::default()
        },
    )
    .await
    .context("cannot open the audit trail")?;
    let audit = Arc::new(audit);
    {
        let audit = Arc::clone(&audit);
        readiness.probe("audit", move || audit.healthy());
    }
    Ok(audit)
}

/// The first record: which configuration (by digest) now runs.
fn record_config_loaded(
    audit: &AuditLog,
    config: &SidecarConfig,
    digest: &[u8],
) -> anyhow::Result<()> {
    let mut loaded = AuditRecord::new(
        EventKind::ConfigLoaded,
        AuditOutcome::Success,
        audit.origin().clone(),
    );
    loaded.policy = Some(config.policy.to_string());
    loaded.message = Some(format!(
        "configuration sha256:{} loaded: {} targets, {} rules, default {}",
        hex::encode(digest),
        config.targets.len(),
        config.rules.len(),
        config.default_action
    ));
    audit
        .record(loaded)
        .context("audit trail refused the first record")
}

/// What every target's gate shares: identity, policy, masking, recordings
/// and approvals, built once.
async fn shared_parts(
    config: &SidecarConfig,
    path: &Path,
    pod: &PodIdentity,
    audit: &Arc<AuditLog>,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<gate::Engine>> {
    let hmac_key = match &config.masking.hmac_key_file {
        Some(f) => Some(crate::masking::cli::read_hmac_key(Path::new(f))?),
        None => None,
    };
    let masker = Arc::new(Masker::from_config(&config.masking, hmac_key.as_deref())?);
    let auth = Arc::new(Authenticator::new(&config.identity, pod).await?);
    for (issuer, e) in auth.warm_up().await {
        tracing::warn!(%issuer, error = %e, "issuer keys not loaded yet; its tokens are refused until they are");
    }
    let recordings = Recordings::from_config(&config.audit, RecordingLimits::default())?
        .map(|r| r.with_failure_counter(metrics.recording_failures.clone()));
    let approvals = match &config.approval {
        Some(a) => Some(approvals(a, hmac_key.as_deref(), pod, path).await?),
        None => None,
    };
    Ok(Arc::new(gate::Engine {
        policy: config.policy.clone(),
        policy_label: config.policy.to_string(),
        classifier: Arc::new(Classifier::new(config.proxy.classification_cache as usize)),
        rules: Arc::new(Policy::from_config(config)),
        masker,
        auth,
        audit: Arc::clone(audit),
        metrics: Arc::clone(metrics),
        recordings,
        limits: RowLimits {
            max_rows: config.limits.max_rows.and_then(|n| u64::try_from(n).ok()),
            max_bytes: config.limits.max_bytes.and_then(|n| u64::try_from(n).ok()),
        },
        approvals,
    }))
}

/// The approval store and what the gate needs to use it.
async fn approvals(
    a: &ApprovalConfig,
    hmac_key: Option<&[u8]>,
    pod: &PodIdentity,
    path: &Path,
) -> anyhow::Result<gate::Approvals> {
    Ok(gate::Approvals {
        store: crate::approval::Store::from_config(a)
            .await
            .context("cannot open the approval store")?,
        settings: a.settings.clone(),
        // The masking key when there is one (stable across restarts, so
        // deferred grants survive them); otherwise a key of this process.
        fingerprint_key: hmac_key
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec()),
        pod: pod.clone(),
        approve_command: match &a.store.kubernetes {
            Some(k) => format!("kubectl cardgate approve NAME -n {}", k.namespace),
            None => format!(
                "cardgate-sidecar approvals --config {} approve NAME",
                path.display()
            ),
        },
    })
}

/// A local approval directory has no operator: the sidecar audits its
/// reviews and decisions and applies the retention.
fn spawn_approval_auditor<F: Future<Output = ()> + Send + 'static>(
    shared: &gate::Engine,
    stopped: &impl Fn() -> F,
) -> Option<JoinHandle<()>> {
    let Some(gate::Approvals {
        store: crate::approval::Store::Local(store),
        settings,
        ..
    }) = &shared.approvals
    else {
        return None;
    };
    Some(tokio::spawn(crate::approval::auditor::run(
        store.clone(),
        Arc::clone(&shared.audit),
        shared.policy_label.clone(),
        settings.retention.into(),
        stopped(),
    )))
}

/// What [`serve_targets`] started.
struct Targets {
    /// Listen address of each explicit-mode target, by name.
    listeners: Vec<(String, SocketAddr)>,
    /// The server task of each listener.
    servers: Vec<JoinHandle<()>>,
    /// The addresses each transparent target claims, with its proxy.
    transparent: Vec<(transparent::Claims, Arc<TargetProxy<Gate>>)>,
}

/// Builds every target's proxy and serves those with a listen address;
/// only PostgreSQL targets are served by this version (fail closed).
async fn serve_targets<F: Future<Output = ()> + Send + 'static>(
    config: &SidecarConfig,
    shared: &Arc<gate::Engine>,
    connections: &Arc<Semaphore>,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<Targets> {
    let client_tls = match &config.proxy.client_tls {
        Some(t) => Some(crate::postgres::tls::server_config(
            &t.cert_file,
            &t.key_file,
        )?),
        None => None,
    };
    let cancels = Arc::new(CancelRegistry::default());
    let mut started = Targets {
        listeners: Vec::new(),
        servers: Vec::new(),
        transparent: Vec::new(),
    };
    for t in &config.targets {
        if t.protocol != TargetProtocol::Postgres {
            anyhow::bail!(
                "target {:?}: protocol {:?} is not served by this sidecar version; only postgres targets are",
                t.name,
                t.protocol
            );
        }
        let upstream = UpstreamSettings::from_target(
            t,
            config.proxy.max_message_bytes as usize,
            Duration::from_secs(u64::from(config.proxy.connect_timeout_seconds)),
        )?;
        let proxy = Arc::new(TargetProxy::new(
            t.name.clone(),
            Arc::new(Gate::new(Arc::clone(shared), t.name.clone())),
            upstream,
            client_tls.clone(),
            Arc::clone(&cancels),
            Arc::clone(connections),
        ));
        if t.transparent {
            let claims = t.upstream.addresses.iter().filter_map(|a| Cidr::parse(a));
            let claims = claims.map(|c| (c, t.upstream.port)).collect();
            started.transparent.push((claims, Arc::clone(&proxy)));
        }
        let Some(listen) = &t.listen else { continue };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("target {}: cannot listen on {listen}", t.name))?;
        let addr = listener.local_addr()?;
        tracing::info!(target_name = %t.name, %addr, upstream = %proxy.upstream.addr(), "serving");
        started.listeners.push((t.name.clone(), addr));
        started
            .servers
            .push(tokio::spawn(proxy.serve(listener, stopped())));
    }
    Ok(started)
}

/// Serves redirected connections on `proxy.transparentListen` when any
/// target is transparent.
fn serve_transparent<F: Future<Output = ()> + Send + 'static>(
    config: &SidecarConfig,
    transparent: Vec<(transparent::Claims, Arc<TargetProxy<Gate>>)>,
    stopped: &impl Fn() -> F,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(listen) = &config.proxy.transparent_listen else {
        return Ok(None);
    };
    if transparent.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen.parse().context("proxy.transparentListen")?;
    let bound = transparent::bind(addr)
        .with_context(|| format!("cannot listen on proxy.transparentListen {addr}"))?;
    for l in &bound {
        tracing::info!(addr = %l.local_addr()?, "serving redirected connections");
    }
    Ok(Some(tokio::spawn(transparent::serve_transparent(
        bound,
        transparent,
        stopped(),
    ))))
}

impl Sidecar {
    /// Stops accepting, lets running sessions finish (up to a limit), and
    /// closes the audit trail with `audit.stop`.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        for s in self.servers {
            let _ = s.await;
        }
        // Sessions hold a connection permit until they end.
        let drained =
            tokio::time::timeout(DRAIN, self.connections.acquire_many(self.max_connections)).await;
        if drained.is_err() {
            tracing::warn!("sessions still open after {DRAIN:?}; closing the audit trail anyway");
        }
        self.admin_server.shutdown().await;
        match Arc::try_unwrap(self.audit) {
            Ok(audit) => audit.close().await.context("closing the audit trail")?,
            Err(_) => {
                tracing::warn!("audit trail still in use at shutdown; its writer flushes on exit")
            }
        }
        Ok(())
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let sidecar = start(path).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    sidecar.shutdown().await
}

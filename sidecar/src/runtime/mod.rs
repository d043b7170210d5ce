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
use cardgate_crds::config::SidecarConfig;
use cardgate_crds::v1alpha1::Protocol as TargetProtocol;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

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
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config = SidecarConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    start_with(config, path, &Sha256::digest(&text)).await
}

async fn start_with(config: SidecarConfig, path: &Path, digest: &[u8]) -> anyhow::Result<Sidecar> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pod = PodIdentity::from_env();
    let metrics = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let listeners_ready = readiness.flag("listeners");

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
    let policy_label = config.policy.to_string();
    let mut loaded = AuditRecord::new(
        EventKind::ConfigLoaded,
        AuditOutcome::Success,
        audit.origin().clone(),
    );
    loaded.policy = Some(policy_label.clone());
    loaded.message = Some(format!(
        "configuration sha256:{} loaded: {} targets, {} rules, default {}",
        hex::encode(digest),
        config.targets.len(),
        config.rules.len(),
        config.default_action
    ));
    audit
        .record(loaded)
        .context("audit trail refused the first record")?;

    let hmac_key = match &config.masking.hmac_key_file {
        Some(f) => Some(crate::masking::cli::read_hmac_key(Path::new(f))?),
        None => None,
    };
    let masker = Arc::new(Masker::from_config(&config.masking, hmac_key.as_deref())?);
    let auth = Arc::new(Authenticator::new(&config.identity, &pod).await?);
    for (issuer, e) in auth.warm_up().await {
        tracing::warn!(%issuer, error = %e, "issuer keys not loaded yet; its tokens are refused until they are");
    }
    let recordings = Recordings::from_config(&config.audit, RecordingLimits::default())?
        .map(|r| r.with_failure_counter(metrics.recording_failures.clone()));
    let approvals = match &config.approval {
        Some(a) => Some(gate::Approvals {
            store: crate::approval::Store::from_config(a)
                .await
                .context("cannot open the approval store")?,
            settings: a.settings.clone(),
            // The masking key when there is one (stable across restarts, so
            // deferred grants survive them); otherwise a key of this process.
            fingerprint_key: hmac_key
                .clone()
                .unwrap_or_else(|| rand::random::<[u8; 32]>().to_vec()),
            pod: pod.clone(),
            approve_command: match &a.store.kubernetes {
                Some(k) => format!("kubectl cardgate approve NAME -n {}", k.namespace),
                None => format!(
                    "cardgate-sidecar approvals --config {} approve NAME",
                    path.display()
                ),
            },
        }),
        None => None,
    };
    let shared = Arc::new(gate::Engine {
        policy: config.policy.clone(),
        policy_label,
        classifier: Arc::new(Classifier::new(config.proxy.classification_cache as usize)),
        rules: Arc::new(Policy::from_config(&config)),
        masker,
        auth,
        audit: Arc::clone(&audit),
        metrics: Arc::clone(&metrics),
        recordings,
        limits: RowLimits {
            max_rows: config.limits.max_rows.and_then(|n| u64::try_from(n).ok()),
            max_bytes: config.limits.max_bytes.and_then(|n| u64::try_from(n).ok()),
        },
        approvals,
    });

    let client_tls = match &config.proxy.client_tls {
        Some(t) => Some(crate::postgres::tls::server_config(
            &t.cert_file,
            &t.key_file,
        )?),
        None => None,
    };
    let cancels = Arc::new(CancelRegistry::default());
    let connections = Arc::new(Semaphore::new(config.proxy.max_connections as usize));
    let (stop, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    // A local approval directory has no operator: the sidecar audits its
    // reviews and decisions and applies the retention.
    if let Some(gate::Approvals {
        store: crate::approval::Store::Local(store),
        settings,
        ..
    }) = &shared.approvals
    {
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(crate::approval::auditor::run(
            store.clone(),
            Arc::clone(&audit),
            shared.policy_label.clone(),
            settings.retention.into(),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }
    let mut listeners = Vec::new();
    let mut transparent = Vec::new();
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
            Arc::new(Gate::new(Arc::clone(&shared), t.name.clone())),
            upstream,
            client_tls.clone(),
            Arc::clone(&cancels),
            Arc::clone(&connections),
        ));
        if t.transparent {
            let claims = t.upstream.addresses.iter().filter_map(|a| Cidr::parse(a));
            let claims = claims.map(|c| (c, t.upstream.port)).collect();
            transparent.push((claims, Arc::clone(&proxy)));
        }
        let Some(listen) = &t.listen else { continue };
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("target {}: cannot listen on {listen}", t.name))?;
        let addr = listener.local_addr()?;
        tracing::info!(target_name = %t.name, %addr, upstream = %proxy.upstream.addr(), "serving");
        listeners.push((t.name.clone(), addr));
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(proxy.serve(listener, async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }
    if let Some(listen) = &config.proxy.transparent_listen
        && !transparent.is_empty()
    {
        let addr: SocketAddr = listen.parse().context("proxy.transparentListen")?;
        let bound = transparent::bind(addr)
            .with_context(|| format!("cannot listen on proxy.transparentListen {addr}"))?;
        for l in &bound {
            tracing::info!(addr = %l.local_addr()?, "serving redirected connections");
        }
        let mut rx = stop_rx.clone();
        servers.push(tokio::spawn(transparent::serve_transparent(
            bound,
            transparent,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )));
    }
    let admin_addr: SocketAddr = config.admin.listen.parse().context("admin.listen")?;
    let admin_server = AdminServer::bind(admin_addr, Arc::clone(&metrics), readiness.clone())
        .await
        .with_context(|| format!("cannot listen on admin.listen {admin_addr}"))?;
    listeners_ready.set(true);
    Ok(Sidecar {
        admin: admin_server.local_addr(),
        listeners,
        stop,
        servers,
        audit,
        admin_server,
        connections,
        max_connections: config.proxy.max_connections,
    })
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

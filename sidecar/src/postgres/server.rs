//! Accepting client connections for one PostgreSQL target: connection
//! limits, the startup phase, token authentication, the upstream login and
//! then the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::cancel::{self, CancelRegistry, CancelTarget};
use super::catalog::Catalog;
use super::codec;
use super::relay::{self, RelayContext};
use super::startup::{self, Startup, StartupError};
use super::upstream::UpstreamSettings;
use crate::gate::ClientInfo;
use crate::postgres::guard::PgGuard;

/// Everything needed to serve clients of one target.
pub struct TargetProxy<G: PgGuard> {
    /// Target name.
    pub name: String,
    /// Decisions, masking and audit.
    pub guard: Arc<G>,
    /// The real server.
    pub upstream: Arc<UpstreamSettings>,
    /// TLS toward clients, when a certificate is configured.
    pub client_tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest message accepted from a client or the server.
    pub max_message: usize,
    /// Keys handed to clients for cancelling (shared by all targets).
    pub cancels: Arc<CancelRegistry>,
    /// Column names for masking rules.
    pub catalog: Catalog,
    /// Concurrent connection limit (shared by all targets).
    pub connections: Arc<Semaphore>,
}

impl<G: PgGuard> TargetProxy<G> {
    /// Builds the proxy for a target.
    pub fn new(
        name: String,
        guard: Arc<G>,
        upstream: UpstreamSettings,
        client_tls: Option<Arc<rustls::ServerConfig>>,
        cancels: Arc<CancelRegistry>,
        connections: Arc<Semaphore>,
    ) -> Self {
        let max_message = upstream.max_message;
        let upstream = Arc::new(upstream);
        Self {
            name,
            guard,
            catalog: Catalog::new(Arc::clone(&upstream)),
            upstream,
            client_tls,
            max_message,
            cancels,
            connections,
        }
    }

    /// Accepts connections until `shutdown` resolves; sessions in flight
    /// carry on.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = &mut shutdown => return,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let this = Arc::clone(&self);
                    tokio::spawn(async move { this.handle(tcp, peer).await });
                }
                Err(e) => {
                    tracing::warn!(target_name = %self.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves one client connection from start to end.
    pub async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let mut info = ClientInfo {
            addr: peer,
            target: self.name.clone(),
            user: String::new(),
            database: String::new(),
            application_name: None,
            tls: false,
            session_id: session_id(),
        };
        let Ok(_permit) = Arc::clone(&self.connections).try_acquire_owned() else {
            let message = "cardgate: too many connections to the sidecar";
            self.guard.refused(&info, message);
            let mut out = BytesMut::new();
            codec::Report::fatal("53300", message).write(&mut out);
            let mut tcp = tcp;
            let _ = tcp.write_all(&out).await;
            return;
        };
        let (mut reader, params) =
            match startup::accept(tcp, self.client_tls.clone(), self.max_message).await {
                Ok(Startup::Cancel { pid, secret }) => {
                    self.cancel(pid, secret).await;
                    return;
                }
                Ok(Startup::Session { reader, params }) => (reader, params),
                Err((reader, e)) => {
                    self.refuse(reader, &info, &e).await;
                    return;
                }
            };
        info.user = params.user.clone();
        info.database = params.database.clone();
        info.application_name = params.application_name.clone();
        info.tls = reader.get_ref().is_tls();

        let same_host = peer.ip().is_loopback() || local.is_some_and(|l| is_same_host(peer, l));
        if !info.tls && !same_host {
            let e = StartupError {
                code: "28000",
                message: "cardgate: connections from other hosts must use TLS (the token is sent as a password)".into(),
                reply: true,
            };
            self.refuse(Some(reader), &info, &e).await;
            return;
        }

        let token = match startup::read_token(&mut reader).await {
            Ok(t) => t,
            Err(e) => {
                self.refuse(Some(reader), &info, &e).await;
                return;
            }
        };
        let session = match self.guard.authenticate(&token, &info).await {
            Ok(s) => s,
            Err(reason) => {
                startup::refuse(
                    reader.get_mut(),
                    "28P01",
                    &format!("cardgate: authentication failed: {reason}"),
                )
                .await;
                return;
            }
        };
        drop(token);

        let upstream = match self
            .upstream
            .connect(&params.database, &params.passthrough)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let message = format!("cardgate: {e}");
                self.guard.refused(&info, &message);
                self.guard.session_ended(
                    session,
                    &crate::gate::SessionSummary {
                        error: Some(message.clone()),
                        ..Default::default()
                    },
                );
                startup::refuse(reader.get_mut(), "08006", &message).await;
                return;
            }
        };
        let target = CancelTarget {
            upstream: Arc::clone(&self.upstream),
            key: upstream.key,
            interrupt: Arc::new(tokio::sync::Notify::new()),
        };
        let key = self.cancels.register(target.clone());
        let mut out = BytesMut::with_capacity(512);
        codec::authentication(&mut out, 0);
        for p in &upstream.parameter_status {
            out.extend_from_slice(p);
        }
        codec::backend_key_data(&mut out, key.key().0, key.key().1);
        if let Some(text) = self.guard.greeting(&session) {
            codec::Report::notice(&text).write(&mut out);
        }
        codec::ready_for_query(&mut out, b'I');
        if reader.get_mut().write_all(&out).await.is_err() {
            return;
        }
        self.guard.session_started(&session);
        let recorder = self.guard.recorder(&session);
        let ctx = RelayContext {
            guard: &*self.guard,
            catalog: &self.catalog,
            database: &upstream.database,
            cancel: target,
            max_message: self.max_message,
        };
        relay::run(ctx, reader, upstream.reader, session, recorder).await;
        drop(key);
    }

    async fn cancel(&self, pid: i32, secret: i32) {
        match self.cancels.lookup(pid, secret) {
            Some(target) => {
                target.interrupt.notify_waiters();
                if let Err(e) = cancel::send_cancel(&target).await {
                    tracing::warn!(error = %e, "forwarding a cancel request failed");
                }
            }
            // PostgreSQL ignores unknown keys silently too.
            None => tracing::debug!("cancel request with an unknown key ignored"),
        }
    }

    async fn refuse(
        &self,
        reader: Option<super::stream::MessageReader<super::stream::Stream>>,
        info: &ClientInfo,
        e: &StartupError,
    ) {
        self.guard.refused(info, &e.message);
        if let (Some(mut r), true) = (reader, e.reply) {
            startup::refuse(r.get_mut(), e.code, &e.message).await;
        }
    }
}

/// Whether a client at `peer` runs on this host, so its token never crossed
/// a network. A connection redirected by iptables (transparent mode) arrives
/// at a loopback address but keeps the pod's own address as its source; the
/// kernel only delivers such a connection when the source is local too,
/// which binding to it confirms.
fn is_same_host(peer: SocketAddr, local: SocketAddr) -> bool {
    let peer = peer.ip().to_canonical();
    local.ip().to_canonical() == peer
        || (local.ip().to_canonical().is_loopback() && std::net::UdpSocket::bind((peer, 0)).is_ok())
}

fn session_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::is_same_host;

    #[test]
    fn redirected_local_clients_are_on_this_host_and_remote_ones_are_not() {
        let at = |s: &str| s.parse().unwrap();
        assert!(is_same_host(at("127.0.0.1:5000"), at("127.0.0.1:15001")));
        assert!(is_same_host(at("10.1.2.3:5000"), at("10.1.2.3:15432")));
        // 192.0.2.1 (TEST-NET-1) is not an address of this host: a
        // connection from it to a loopback address did not come from here.
        assert!(!is_same_host(at("192.0.2.1:5000"), at("127.0.0.1:15001")));
        assert!(!is_same_host(at("192.0.2.1:5000"), at("10.1.2.3:15432")));
    }
}

//! Connections redirected by the pod's iptables rules (`cardgate-sidecar
//! init`): the agent dialled the database's own address, the kernel
//! rewrote the destination to the sidecar's transparent port, and
//! `SO_ORIGINAL_DST` tells which address it dialled. That address picks the
//! target; a connection to an address no target claims is refused and
//! audited, never forwarded anywhere.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::MAX_STARTUP_PACKET;
use super::server::TargetProxy;
use super::startup::{self, Startup};
use crate::gate::ClientInfo;
use crate::intercept::Cidr;
use crate::postgres::guard::PgGuard;

/// The address ranges and port that belong to one target.
pub type Claims = Vec<(Cidr, u16)>;

/// Picks the target that claims `dst`: the most specific range with the
/// same port; between equally specific ranges, the target listed first.
pub fn pick<T>(routes: &[(Claims, T)], dst: SocketAddr) -> Option<&T> {
    let ip = dst.ip().to_canonical();
    let mut best: Option<(u8, &T)> = None;
    for (claims, target) in routes {
        for (cidr, port) in claims {
            if *port == dst.port()
                && cidr.contains(ip)
                && best.is_none_or(|(len, _)| cidr.prefix() > len)
            {
                best = Some((cidr.prefix(), target));
            }
        }
    }
    best.map(|(_, t)| t)
}

/// The address the client dialled before iptables redirected it.
pub fn original_destination(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(tcp);
    let ipv4 = match tcp.local_addr()?.ip() {
        IpAddr::V4(_) => true,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
    };
    let addr = if ipv4 {
        sock.original_dst_v4()?
    } else {
        sock.original_dst_v6()?
    };
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_ORIGINAL_DST returned no IP address",
        )
    })
}

/// Binds the transparent listener at `addr`, plus its IPv6 counterpart when
/// `addr` is IPv4 (`[::]` for `0.0.0.0`, `[::1]` for a loopback address),
/// because ip6tables redirects IPv6 connections to `[::1]`. A host without
/// IPv6 gets the IPv4 listener only.
pub fn bind(addr: SocketAddr) -> io::Result<Vec<TcpListener>> {
    let mut listeners = vec![listen(addr, false)?];
    let companion = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => Some(Ipv6Addr::UNSPECIFIED),
        IpAddr::V4(v4) if v4.is_loopback() => Some(Ipv6Addr::LOCALHOST),
        _ => None,
    };
    if let Some(ip) = companion {
        match listen(SocketAddr::new(IpAddr::V6(ip), addr.port()), true) {
            Ok(l) => listeners.push(l),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                ) =>
            {
                tracing::info!(error = %e, "no IPv6 here: transparent listener on IPv4 only");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(listeners)
}

fn listen(addr: SocketAddr, v6_only: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if v6_only {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts redirected connections on `listeners` until `shutdown` resolves
/// and hands each to the target that claims its original destination.
pub async fn serve_transparent<G: PgGuard>(
    listeners: Vec<TcpListener>,
    targets: Vec<(Claims, Arc<TargetProxy<G>>)>,
    shutdown: impl Future<Output = ()>,
) {
    let targets = Arc::new(targets);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = std::future::poll_fn(|cx| accept_any(&listeners, cx)) => a,
            () = &mut shutdown => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let targets = Arc::clone(&targets);
                tokio::spawn(async move { route(tcp, peer, &targets).await });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting a redirected connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn accept_any(
    listeners: &[TcpListener],
    cx: &mut Context<'_>,
) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
    for l in listeners {
        if let Poll::Ready(r) = l.poll_accept(cx) {
            return Poll::Ready(r);
        }
    }
    Poll::Pending
}

async fn route<G: PgGuard>(
    tcp: TcpStream,
    peer: SocketAddr,
    targets: &[(Claims, Arc<TargetProxy<G>>)],
) {
    let message = match original_destination(&tcp) {
        Ok(dst) => match pick(targets, dst) {
            Some(proxy) => {
                Arc::clone(proxy).handle(tcp, peer).await;
                return;
            }
            None => format!("cardgate: no target for {dst}"),
        },
        Err(e) => format!("cardgate: the original destination is unknown ({e})"),
    };
    let Some((_, proxy)) = targets.first() else {
        tracing::warn!(client = %peer, reason = %message, "redirected connection refused");
        return;
    };
    let info = ClientInfo {
        addr: peer,
        target: String::new(),
        user: String::new(),
        database: String::new(),
        application_name: None,
        tls: false,
        session_id: format!("{:016x}", rand::random::<u64>()),
    };
    proxy.guard.refused(&info, &message);
    // Answer in the protocol, after the client's startup message, so the
    // client shows the reason; within the connection limit and a deadline,
    // since nobody is served here.
    let Ok(_permit) = Arc::clone(&proxy.connections).try_acquire_owned() else {
        return;
    };
    let startup = tokio::time::timeout(
        REFUSAL_DEADLINE,
        startup::accept(tcp, None, MAX_STARTUP_PACKET),
    )
    .await;
    let mut reader = match startup {
        Ok(Ok(Startup::Session { reader, .. }) | Err((Some(reader), _))) => reader,
        _ => return,
    };
    let _ = tokio::time::timeout(
        REFUSAL_DEADLINE,
        startup::refuse(reader.get_mut(), "08006", &message),
    )
    .await;
}

/// How long a refused client gets to send its startup message.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(list: &[(&str, u16)]) -> Claims {
        list.iter()
            .map(|(c, p)| (Cidr::parse(c).unwrap(), *p))
            .collect()
    }

    fn routes() -> Vec<(Claims, &'static str)> {
        vec![
            (
                claims(&[("10.96.0.7", 5432), ("fd00:10:96::7", 5432)]),
                "payments-db",
            ),
            (claims(&[("10.96.0.0/16", 5432)]), "any-service"),
            (claims(&[("10.96.0.7", 6432)]), "pooler"),
            (claims(&[("10.96.0.0/16", 5432)]), "duplicate"),
        ]
    }

    fn at(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_and_port_pick_the_target() {
        let r = routes();
        assert_eq!(pick(&r, at("10.96.0.7:5432")), Some(&"payments-db"));
        assert_eq!(pick(&r, at("10.96.0.7:6432")), Some(&"pooler"));
        assert_eq!(pick(&r, at("[fd00:10:96::7]:5432")), Some(&"payments-db"));
    }

    #[test]
    fn the_most_specific_range_wins_then_the_first_listed() {
        let r = routes();
        assert_eq!(pick(&r, at("10.96.3.4:5432")), Some(&"any-service"));
        let mut reversed = r.clone();
        reversed.reverse();
        assert_eq!(pick(&reversed, at("10.96.0.7:5432")), Some(&"payments-db"));
        assert_eq!(pick(&reversed, at("10.96.3.4:5432")), Some(&"duplicate"));
    }

    #[test]
    fn unclaimed_addresses_and_ports_pick_nothing() {
        let r = routes();
        assert_eq!(pick(&r, at("10.97.0.7:5432")), None);
        assert_eq!(pick(&r, at("10.96.0.7:5433")), None);
        assert_eq!(pick(&r, at("[fd00:10:96::8]:5432")), None);
        assert_eq!(pick(&r, at("127.0.0.1:15001")), None);
        assert_eq!(pick::<&str>(&[], at("10.96.0.7:5432")), None);
    }

    #[test]
    fn ipv4_mapped_destinations_match_ipv4_ranges() {
        let r = routes();
        assert_eq!(
            pick(&r, at("[::ffff:10.96.0.7]:5432")),
            Some(&"payments-db")
        );
    }

    #[tokio::test]
    async fn a_connection_that_was_not_redirected_has_its_own_address_as_destination() {
        // Without NAT, conntrack's original destination is the listener
        // itself (or the kernel has no entry at all): either way no target
        // claims it.
        let listeners = bind(at("127.0.0.1:0")).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listeners[0].accept());
        let _client = client.unwrap();
        let (tcp, _) = server.unwrap();
        match original_destination(&tcp) {
            Ok(dst) => assert_eq!(dst, addr),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{e}"),
        }
    }

    #[tokio::test]
    async fn loopback_listeners_get_an_ipv6_companion() {
        let listeners = bind(at("127.0.0.1:0")).unwrap();
        assert!(listeners[0].local_addr().unwrap().is_ipv4());
        // Port 0 picks a different port for the companion, which is fine for
        // this check: it must be IPv6 loopback where the host has IPv6.
        if let Some(l) = listeners.get(1) {
            assert_eq!(
                l.local_addr().unwrap().ip(),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            );
        }
    }
}

//! The PostgreSQL data path: protocol framing, the client and server
//! handshakes, and the relay that puts every statement and every result row
//! through the gate ([`crate::gate::Guard`], with PostgreSQL's own part in
//! [`guard::PgGuard`]).
//!
//! Layering: [`codec`] and [`messages`] are sans-IO framing and parsing;
//! [`stream`] buffers whole messages off sockets; [`startup`] and
//! [`upstream`] run the two handshakes; [`pairing`] pairs requests and
//! responses (sans-IO); [`datarow`] masks result rows (sans-IO); [`relay`]
//! runs the two directions of a session; [`server`] ties a listener to them; [`transparent`] routes
//! connections redirected by iptables to the target they were meant for;
//! [`recorder`] turns the relay's view into session recordings.

pub mod cancel;
pub mod catalog;
pub mod codec;
pub mod datarow;
pub mod guard;
pub mod messages;
pub mod pairing;
pub mod recorder;
pub mod relay;
pub mod server;
pub mod startup;
pub mod stream;
pub mod tls;
pub mod transparent;
pub mod upstream;

/// PostgreSQL's own cap on a startup packet.
pub const MAX_STARTUP_PACKET: usize = cardgate_crds::config::MAX_STARTUP_PACKET as usize;

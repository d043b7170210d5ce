//! The admin endpoint: Prometheus metrics and the health checks Kubernetes
//! probes.
//!
//! - [`Metrics`]: typed handles the data path increments without lookups;
//! - [`Readiness`]: named conditions (configuration loaded, listeners bound,
//!   audit healthy) that decide `/readyz`;
//! - [`AdminServer`]: the HTTP server for `/metrics`, `/healthz`, `/readyz`.

pub mod metrics;
pub mod readiness;
pub mod server;

pub use metrics::{AuditMetrics, Metrics, SessionGuard};
pub use readiness::{Readiness, ReadyFlag};
pub use server::AdminServer;

//! Logging: JSON lines on stderr by default, for the cluster's log pipeline.
//! stdout carries the operator's audit records only ([`crate::audit`]), as
//! in the sidecar, so a pipeline can treat every stdout line as one.

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `filter`.
pub fn init(format: LogFormat, filter: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v),
        _ => EnvFilter::try_new(filter),
    }
    .map_err(|e| format!("invalid log filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

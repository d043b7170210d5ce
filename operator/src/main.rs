//! `cardgate-operator`: reconciles AccessPolicies and MaskingRules into
//! governed agent pods. See docs/operator.md for flags and behaviour.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use cardgate_operator::settings::Settings;
use cardgate_operator::{runtime, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = Settings::parse();
    if let Err(e) = telemetry::init(settings.log_format, &settings.log) {
        eprintln!("cardgate-operator: {e}");
        return ExitCode::from(2);
    }
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        tracing::debug!("a rustls crypto provider was already installed");
    }
    match runtime::run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cardgate-operator stopped");
            ExitCode::FAILURE
        }
    }
}

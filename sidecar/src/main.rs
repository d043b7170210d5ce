//! `cardgate-sidecar`: the data-path proxy and its operator tools.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cardgate_crds::audit::{Anchor, VerifyOptions};
use cardgate_crds::config::SidecarConfig;
use cardgate_sidecar::recording::{Pace, ReplayError, replay};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cardgate-sidecar", version, about = "cardgate data-path proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy: serve every target of the configuration, write the
    /// audit trail, expose /metrics, /healthz and /readyz.
    Run {
        /// The configuration file (YAML or JSON).
        #[arg(long, short, env = "CARDGATE_CONFIG", default_value = cardgate_crds::pod::CONFIG_FILE)]
        config: PathBuf,
        /// Log format on stderr: json (for pods) or text.
        #[arg(long, env = "CARDGATE_LOG_FORMAT", default_value = "json")]
        log_format: LogFormat,
    },
    /// Work with sidecar configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Work with audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Mask stdin line by line with the built-in or configured rules (a dry
    /// run of MaskingRules); `--explain` lists each detection instead.
    Mask(cardgate_sidecar::masking::cli::MaskArgs),
    /// Dry-run statements against a configuration: print, one JSON object per
    /// statement string, its class, relations and the decision.
    Check(cardgate_sidecar::policy::check::CheckArgs),
    /// DEVELOPMENT ONLY: local signing keys and agent tokens for demos and
    /// tests; real agents get tokens from an identity provider.
    Dev {
        #[command(subcommand)]
        command: cardgate_sidecar::identity::dev::DevCommand,
    },
    /// Program the pod's network namespace for transparent interception
    /// (run by the `cardgate-init` init container, which has NET_ADMIN).
    Init(cardgate_sidecar::intercept::InitArgs),
    /// Review approval requests of a local directory store (standalone
    /// mode): list, show, approve, deny.
    Approvals(cardgate_sidecar::approval::cli::ApprovalsArgs),
    /// Show a recorded session the way psql showed it, at the recorded pace.
    Replay {
        /// The recording (a `.jsonl` file from `audit.recordingsDir`).
        file: PathBuf,
        /// Play N times faster than recorded.
        #[arg(long, value_name = "N", conflicts_with = "instant", value_parser = parse_speed)]
        speed: Option<f64>,
        /// Show everything at once.
        #[arg(long)]
        instant: bool,
    },
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration and print what it allows, masks, holds for
    /// approval and denies. Exits 1 and lists every problem if it is invalid.
    Check {
        /// The configuration file (YAML or JSON).
        #[arg(long, short)]
        config: PathBuf,
        /// Only validate; print nothing when valid.
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of an audit log and name the first record that
    /// was modified, removed, reordered or forged.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// A `SEQ:HASH` kept elsewhere (e.g. printed by an earlier verify)
        /// that the log must contain; catches a removed or rewritten tail.
        #[arg(long)]
        anchor: Vec<Anchor>,
        /// Accept a log that starts mid-chain (an exported range).
        #[arg(long)]
        partial: bool,
    },
    /// Verify an export of audit records from many pods and report per PCI
    /// DSS requirement (the engine of `kubectl cardgate evidence`); exits 1
    /// when verification fails.
    Evidence {
        /// Files, directories (read recursively), or - for stdin.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Write the JSON report here (- for stdout instead of the summary).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write the self-contained HTML report here.
        #[arg(long)]
        html: Option<PathBuf>,
        /// Accept chains that start mid-way (an export of a time range).
        #[arg(long)]
        partial: bool,
        /// Report chains without audit.stop as warnings (still running).
        #[arg(long)]
        allow_open: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cardgate-sidecar: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Format of the sidecar's own logs (stderr; stdout carries audit records).
#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CARDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, log_format } => {
            init_logs(log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(cardgate_sidecar::runtime::run(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => Ok(cardgate_sidecar::policy::check::run(&args)),
        Command::Approvals(args) => Ok(cardgate_sidecar::approval::cli::run(&args)),
        Command::Config {
            command: ConfigCommand::Check { config, quiet },
        } => match SidecarConfig::load(&config) {
            Ok(c) => {
                if !quiet {
                    print!("{}", cardgate_crds::summary::summarize(&c));
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Dev { command } => {
            cardgate_sidecar::identity::dev::run(command)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    anchor,
                    partial,
                },
        } => {
            let options = VerifyOptions {
                allow_partial: partial,
                anchors: anchor,
            };
            let report = cardgate_crds::audit::verify_file(&file, &options)
                .with_context(|| format!("cannot read {}", file.display()))?;
            println!("{}: {report}", file.display());
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Audit {
            command:
                AuditCommand::Evidence {
                    paths,
                    json,
                    html,
                    partial,
                    allow_open,
                },
        } => {
            let args = cardgate_crds::evidence::cli::Args {
                paths,
                json,
                html,
                options: cardgate_crds::evidence::Options {
                    allow_partial: partial,
                    allow_open,
                },
            };
            let report = cardgate_crds::evidence::cli::run(
                &args,
                std::io::stdin().lock(),
                &mut std::io::stdout().lock(),
            )?;
            Ok(if report.verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Init(args) => {
            cardgate_sidecar::intercept::run(&args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mask(args) => {
            cardgate_sidecar::masking::cli::run(
                &args,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay {
            file,
            speed,
            instant,
        } => {
            let pace = if instant {
                Pace::Instant
            } else {
                Pace::Speed(speed.unwrap_or(1.0))
            };
            match replay(&file, pace, &mut std::io::stdout().lock()) {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(ReplayError::Malformed { line, reason }) => {
                    eprintln!(
                        "cardgate-sidecar: {}: line {line}: not a recording event ({reason}); the recording is damaged",
                        file.display()
                    );
                    Ok(ExitCode::FAILURE)
                }
                Err(e) => Err(e).with_context(|| format!("cannot replay {}", file.display())),
            }
        }
    }
}

//! `cardgate-sidecar`: the data-path proxy and its operator tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cardgate_crds::audit::{Anchor, VerifyOptions};
use cardgate_crds::config::SidecarConfig;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cardgate-sidecar", version, about = "cardgate data-path proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check(args) => Ok(cardgate_sidecar::policy::check::run(&args)),
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
        Command::Mask(args) => {
            cardgate_sidecar::masking::cli::run(
                &args,
                std::io::stdin().lock(),
                std::io::stdout().lock(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

//! `kubectl cardgate`: the plugin approvers and auditors use.

use std::path::PathBuf;
use std::process::ExitCode;

use cardgate_crds::audit::{Anchor, VerifyOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "kubectl-cardgate",
    bin_name = "kubectl cardgate",
    version,
    about = "cardgate for approvers and auditors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Work with exported audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of an audit log and name the first record that
    /// was modified, removed, reordered or forged.
    Verify {
        /// The audit log (JSON lines).
        file: PathBuf,
        /// A `SEQ:HASH` kept elsewhere that the log must contain.
        #[arg(long)]
        anchor: Vec<Anchor>,
        /// Accept a log that starts mid-chain (an exported range).
        #[arg(long)]
        partial: bool,
    },
}

fn main() -> ExitCode {
    let Command::Audit {
        command:
            AuditCommand::Verify {
                file,
                anchor,
                partial,
            },
    } = Cli::parse().command;
    let options = VerifyOptions {
        allow_partial: partial,
        anchors: anchor,
    };
    match cardgate_crds::audit::verify_file(&file, &options) {
        Ok(report) => {
            println!("{}: {report}", file.display());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("kubectl-cardgate: cannot read {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

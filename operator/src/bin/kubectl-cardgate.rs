//! `kubectl cardgate`: the plugin approvers and auditors use.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use cardgate_crds::audit::{Anchor, VerifyOptions};
use cardgate_crds::evidence;
use cardgate_crds::v1alpha1::Decision;
use cardgate_operator::approval::cli;
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
    /// List ApprovalRequests waiting for a decision.
    Approvals {
        /// Namespace (default: the current kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
        /// Keep watching and print a line whenever a request appears or
        /// changes.
        #[arg(short, long)]
        watch: bool,
    },
    /// Approve an ApprovalRequest (your identity and the time are recorded
    /// by the cluster, not by this tool).
    Approve {
        /// The ApprovalRequest.
        name: String,
        /// Namespace (default: the current kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Why (kept in the request and the audit trail).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny an ApprovalRequest.
    Deny {
        /// The ApprovalRequest.
        name: String,
        /// Namespace (default: the current kubeconfig context's).
        #[arg(short, long)]
        namespace: Option<String>,
        /// Why (required; shown to the agent and kept in the audit trail).
        #[arg(long, required = true)]
        reason: String,
    },
    /// Work with exported audit logs.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Verify an export of audit records from many pods (JSON lines, CRI
    /// container logs, Fluent Bit or Vector output) and report per PCI DSS
    /// requirement; exits 1 when verification fails.
    Evidence(EvidenceArgs),
}

#[derive(clap::Args)]
struct EvidenceArgs {
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
    /// Report chains without audit.stop as warnings (pods still running).
    #[arg(long)]
    allow_open: bool,
}

fn evidence(a: EvidenceArgs) -> ExitCode {
    let args = evidence::cli::Args {
        paths: a.paths,
        json: a.json,
        html: a.html,
        options: evidence::Options {
            allow_partial: a.partial,
            allow_open: a.allow_open,
        },
    };
    match evidence::cli::run(
        &args,
        std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    ) {
        Ok(report) if report.verified => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("kubectl-cardgate: evidence: {e}");
            ExitCode::from(2)
        }
    }
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

fn verify(file: PathBuf, anchor: Vec<Anchor>, partial: bool) -> ExitCode {
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

/// Runs `command`; cluster commands use the current kubeconfig.
async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let connect = || async { cli::connect().await.map_err(anyhow::Error::msg) };
    match command {
        Command::Audit {
            command:
                AuditCommand::Verify {
                    file,
                    anchor,
                    partial,
                },
        } => return Ok(verify(file, anchor, partial)),
        Command::Evidence(args) => return Ok(evidence(args)),
        Command::Approvals {
            namespace,
            all_namespaces,
            watch,
        } => {
            let (client, context_namespace) = connect().await?;
            let ns = (!all_namespaces).then(|| namespace.unwrap_or(context_namespace));
            if watch {
                cli::watch(&client, ns.as_deref(), &mut std::io::stdout().lock()).await?;
            } else {
                print!("{}", cli::list(&client, ns.as_deref()).await?);
            }
        }
        Command::Approve {
            name,
            namespace,
            reason,
        } => {
            let (client, context_namespace) = connect().await?;
            let ns = namespace.unwrap_or(context_namespace);
            let out =
                cli::review(&client, &ns, &name, Decision::Approved, reason.as_deref()).await?;
            print!("{out}");
        }
        Command::Deny {
            name,
            namespace,
            reason,
        } => {
            let (client, context_namespace) = connect().await?;
            let ns = namespace.unwrap_or(context_namespace);
            let out = cli::review(&client, &ns, &name, Decision::Denied, Some(&reason)).await?;
            print!("{out}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(Cli::parse().command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubectl-cardgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

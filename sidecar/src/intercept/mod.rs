//! `cardgate-sidecar init`: transparent interception. Run once per pod by the
//! injected init container (the only one with NET_ADMIN), it programs the
//! pod's network namespace so that every TCP connection from a process other
//! than the sidecar to a transparent target's address and port lands on the
//! sidecar's transparent port, and every other packet from those processes
//! to a target's addresses is dropped.
//!
//! [`plan`] computes the rules from the configuration and the current tables
//! (pure, unit-tested); [`backend`] finds the iptables flavour the kernel
//! supports; this module applies the plan with one `*-restore --noflush` per
//! family and reads the result back.

pub mod backend;
pub mod cidr;
pub mod plan;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use cardgate_crds::config::{ConfigError, SidecarConfig};

pub use cidr::Cidr;

use backend::Backend;
use plan::{Family, Interception, PlanError, Saved};

/// Arguments of the `init` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The rendered configuration; its transparent targets are intercepted.
    #[arg(long, short, required_unless_present = "cleanup")]
    pub config: Option<PathBuf>,
    /// Print the rules without applying them.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove cardgate's chains and the jumps into them, and nothing else.
    #[arg(long)]
    pub cleanup: bool,
}

/// Why the rules could not be installed or removed. Nothing is half-applied:
/// each family's rules go in with one restore, which the kernel takes whole
/// or not at all.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Installing needs a configuration.
    #[error("--config is required unless --cleanup is given")]
    MissingConfig,
    /// The configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The configuration cannot be turned into rules.
    #[error("{path}: {source}")]
    Plan {
        /// The configuration file.
        path: String,
        /// The problem.
        source: PlanError,
    },
    /// No iptables flavour can list rules here.
    #[error(
        "no iptables backend works in this network namespace (tried iptables-nft, iptables-legacy and iptables): the iptables package must be installed and the container needs NET_ADMIN and NET_RAW"
    )]
    NoBackend,
    /// An iptables program failed.
    #[error("{0}")]
    Iptables(String),
    /// The rules read back differ from the plan.
    #[error("{0}")]
    Verify(String),
    /// Writing the report failed.
    #[error("cannot write the report: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `init` and reports to `out` what was installed, would be installed
/// (`--dry-run`) or was removed (`--cleanup`).
pub fn run(args: &InitArgs, out: &mut impl Write) -> Result<(), InitError> {
    if args.cleanup {
        return cleanup(args.dry_run, out);
    }
    let path = args.config.as_ref().ok_or(InitError::MissingConfig)?;
    let config = SidecarConfig::load(path)?;
    let plan = Interception::from_config(&config).map_err(|source| InitError::Plan {
        path: path.display().to_string(),
        source,
    })?;
    let backend = backend::detect();
    if args.dry_run {
        return dry_run(&plan, backend, out);
    }
    let backend = backend.ok_or(InitError::NoBackend)?;
    for family in Family::ALL {
        let current = match backend::save(backend, family) {
            Ok(text) => Saved::parse(&text),
            Err(e) if plan.destinations(family).next().is_none() => {
                // A namespace without IPv6 has no IPv6 path to close.
                writeln!(
                    out,
                    "# {}: skipped, no {} target addresses and {e}",
                    family.label(),
                    family.label()
                )?;
                continue;
            }
            Err(e) => return Err(InitError::Iptables(e)),
        };
        let text = plan::install(&plan, family, &current);
        restore(backend, family, &text)?;
        let after = Saved::parse(&backend::save(backend, family).map_err(InitError::Iptables)?);
        verify(&text, &after, family)?;
        writeln!(
            out,
            "# {} rules installed with {}:",
            family.label(),
            backend.label()
        )?;
        write!(out, "{}", after.ours_text())?;
    }
    Ok(())
}

fn dry_run(
    plan: &Interception,
    backend: Option<Backend>,
    out: &mut impl Write,
) -> Result<(), InitError> {
    for family in Family::ALL {
        let current = backend.and_then(|b| backend::save(b, family).ok());
        let note = match (backend, &current) {
            (Some(b), Some(_)) => format!("with {}, against the current rules", b.label()),
            _ => "against empty tables (the current rules cannot be read here)".into(),
        };
        writeln!(out, "# {} (dry run, not applied) {note}:", family.label())?;
        let current = current.map(|t| Saved::parse(&t)).unwrap_or_default();
        write!(out, "{}", plan::install(plan, family, &current))?;
    }
    Ok(())
}

fn cleanup(dry_run: bool, out: &mut impl Write) -> Result<(), InitError> {
    let mut found = false;
    let mut usable = false;
    for backend in Backend::PROBED.into_iter().chain([Backend::Default]) {
        if backend == Backend::Default && usable {
            break;
        }
        for family in Family::ALL {
            let Ok(text) = backend::save(backend, family) else {
                continue;
            };
            usable = true;
            let current = Saved::parse(&text);
            let Some(removal) = plan::cleanup(&current) else {
                continue;
            };
            found = true;
            if dry_run {
                writeln!(
                    out,
                    "# {} with {} (dry run, not applied):",
                    family.label(),
                    backend.label()
                )?;
                write!(out, "{removal}")?;
                continue;
            }
            restore(backend, family, &removal)?;
            let after = Saved::parse(&backend::save(backend, family).map_err(InitError::Iptables)?);
            if after.has_ours() {
                return Err(InitError::Verify(format!(
                    "{} rules are still installed after cleanup with {}:\n{}",
                    family.label(),
                    backend.label(),
                    after.ours_text()
                )));
            }
            writeln!(
                out,
                "# {} rules removed from {}:",
                family.label(),
                backend.label()
            )?;
            write!(out, "{}", current.ours_text())?;
        }
    }
    if !usable {
        return Err(InitError::NoBackend);
    }
    if !found {
        writeln!(out, "# no cardgate rules are installed")?;
    }
    Ok(())
}

/// Applies restore input with the backend's `*-restore --noflush`, which
/// commits each table atomically.
fn restore(backend: Backend, family: Family, text: &str) -> Result<(), InitError> {
    let program = backend.program(family, "restore");
    let fail = |e: String| InitError::Iptables(format!("{program}: {e}"));
    let mut command = Command::new(&program);
    if std::env::var_os(LOCK_ENV).is_none() && !lock_file_writable() {
        command.env(LOCK_ENV, PRIVATE_LOCK_FILE);
    }
    let mut child = command
        .args(["--noflush", "--wait=10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| fail(format!("cannot write the rules: {e}")))?;
    }
    let output = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !output.status.success() {
        return Err(fail(format!(
            "{} (rules: {})",
            String::from_utf8_lossy(&output.stderr).trim(),
            text.replace('\n', " | ")
        )));
    }
    Ok(())
}

/// iptables-legacy serialises writers with a lock file, `/run/xtables.lock`
/// unless this variable names another. The lock only coordinates processes
/// that see the same file, i.e. share a mount namespace, and the init
/// container's is its own; with a read-only root filesystem the default
/// cannot even be created, so a private file on the writable `/dev/shm` is
/// used instead and nothing is lost.
const LOCK_ENV: &str = "XTABLES_LOCKFILE";
const DEFAULT_LOCK_FILE: &str = "/run/xtables.lock";
const PRIVATE_LOCK_FILE: &str = "/dev/shm/cardgate-xtables.lock";

fn lock_file_writable() -> bool {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DEFAULT_LOCK_FILE)
        .is_ok()
}

/// Checks that what the kernel now holds has as many rules in our chains as
/// the plan wrote, and exactly one jump into them per table.
fn verify(text: &str, after: &Saved, family: Family) -> Result<(), InitError> {
    let planned = text.lines().filter(|l| l.starts_with("-A ")).count();
    let listed = after.ours_text();
    let installed = listed
        .lines()
        .filter(|l| l.starts_with("-A CARDGATE_"))
        .count();
    let jumps = listed
        .lines()
        .filter(|l| l.starts_with("-A ") && !l.starts_with("-A CARDGATE_"))
        .count();
    if installed != planned || jumps != 2 {
        return Err(InitError::Verify(format!(
            "{}: expected {planned} rules in cardgate's chains and 2 jumps into them, found {installed} and {jumps}:\n{listed}",
            family.label()
        )));
    }
    Ok(())
}

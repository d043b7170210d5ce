//! `cardgate-sidecar approvals`: review requests of the local directory store
//! (standalone mode). With the Kubernetes store, `kubectl cardgate` does this
//! instead, and the API server authenticates the reviewer; here the reviewer
//! is who `--as` (default `$USER`) says, trusted because only the
//! directory's owner can write it.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cardgate_crds::config::SidecarConfig;
use cardgate_crds::v1alpha1::{ApprovalMode, ApprovalRequest, Approvers, Decision, Phase};
use jiff::{SignedDuration, Timestamp};

use super::StoreError;
use super::error::mask;
use super::local::{Directory, FileProblem, ReviewError};
use cardgate_crds::approval::review::Reviewer;

/// How long decided requests stay in `list` without `--all`.
const RECENT: SignedDuration = SignedDuration::from_hours(24);

/// Arguments of `approvals`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApprovalsArgs {
    /// The sidecar configuration; requests live in its
    /// `approval.store.directory`, approvers come from `approval.settings`.
    #[arg(long, short, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ApprovalsCommand,
}

/// What to do with the requests.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ApprovalsCommand {
    /// Pending requests and those decided in the last 24 hours: name, phase,
    /// requester, target, rule, age, statement.
    List {
        /// Every request in the directory.
        #[arg(long)]
        all: bool,
    },
    /// One request in full: statement, requester, reviews, decision.
    Show {
        /// Request name.
        name: String,
        /// Print the stored ApprovalRequest object as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (one review; the quorum may need more).
    Approve {
        /// Request name.
        name: String,
        /// Why (recorded with the review).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        reviewer: ReviewerArgs,
    },
    /// Deny a request; the first denial decides.
    Deny {
        /// Request name.
        name: String,
        /// Why (required; the agent is told).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        reviewer: ReviewerArgs,
    },
}

/// Who reviews.
#[derive(Debug, Clone, clap::Args)]
pub struct ReviewerArgs {
    /// Reviewer username; defaults to $USER.
    #[arg(long = "as", value_name = "USER")]
    pub as_user: Option<String>,
    /// A group the reviewer belongs to (repeatable); accepted as stated.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
}

/// Why a command failed; printed on stderr, exit status 1.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration cannot be used.
    #[error("{0}")]
    Config(String),
    /// The review was refused or not recorded.
    #[error(transparent)]
    Review(#[from] ReviewError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Output(#[from] io::Error),
    /// Some files are damaged (after the listing was printed).
    #[error("{0} file(s) in the approval directory could not be read")]
    Damaged(usize),
}

/// Runs the command; errors go to stderr.
pub fn run(args: &ApprovalsArgs) -> ExitCode {
    let user = std::env::var("USER").ok();
    match execute(args, Timestamp::now(), user, &mut io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cardgate-sidecar approvals: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`run`] with the clock, `$USER` and the output passed in.
pub fn execute(
    args: &ApprovalsArgs,
    now: Timestamp,
    env_user: Option<String>,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (dir, approvers) = open(args)?;
    match &args.command {
        ApprovalsCommand::List { all } => {
            let (requests, problems) = dir.list(now)?;
            let shown: Vec<&ApprovalRequest> = requests
                .iter()
                .filter(|r| *all || is_recent(r, now))
                .collect();
            out.write_all(table(&shown, now).as_bytes())?;
            report(&problems)
        }
        ApprovalsCommand::Show { name, json } => {
            let obj = dir.get(name, now)?;
            if *json {
                let text = serde_json::to_string_pretty(&obj)
                    .map_err(|e| StoreError::unavailable(format!("cannot encode {name}: {e}")))?;
                writeln!(out, "{}", mask(&text))?;
            } else {
                out.write_all(details(&obj, now).as_bytes())?;
            }
            Ok(())
        }
        ApprovalsCommand::Approve {
            name,
            reason,
            reviewer,
        } => {
            let reviewer = reviewer.resolve(env_user);
            let obj = dir.review(
                name,
                &approvers,
                &reviewer,
                Decision::Approved,
                reason.as_deref(),
                now,
            )?;
            confirm(out, &obj, Decision::Approved, &reviewer)
        }
        ApprovalsCommand::Deny {
            name,
            reason,
            reviewer,
        } => {
            let reviewer = reviewer.resolve(env_user);
            let obj = dir.review(
                name,
                &approvers,
                &reviewer,
                Decision::Denied,
                Some(reason),
                now,
            )?;
            confirm(out, &obj, Decision::Denied, &reviewer)
        }
    }
}

/// The directory and approvers of the configuration; a Kubernetes store is
/// reviewed with kubectl, not here.
fn open(args: &ApprovalsArgs) -> Result<(Directory, Approvers), CliError> {
    let path = args
        .config
        .as_ref()
        .ok_or_else(|| CliError::Config("--config FILE is required".into()))?;
    let config = SidecarConfig::load(path).map_err(|e| CliError::Config(e.to_string()))?;
    let approval = config.approval.ok_or_else(|| {
        CliError::Config(format!(
            "{} has no approval section: nothing is held for approval",
            path.display()
        ))
    })?;
    if let Some(k) = &approval.store.kubernetes {
        return Err(CliError::Config(format!(
            "{} keeps approval requests in Kubernetes (namespace {}): use kubectl cardgate approvals | approve NAME | deny NAME --reason …",
            path.display(),
            k.namespace
        )));
    }
    let dir = approval.store.directory.ok_or_else(|| {
        CliError::Config(format!(
            "{} names no approval.store.directory",
            path.display()
        ))
    })?;
    Ok((Directory::open(dir)?, approval.settings.approvers))
}

impl ReviewerArgs {
    /// The reviewer: `--as`, else `$USER` (`env_user`), with the claimed groups.
    fn resolve(&self, env_user: Option<String>) -> Reviewer {
        Reviewer {
            name: self.as_user.clone().or(env_user).unwrap_or_default(),
            groups: self.groups.clone(),
        }
    }
}

/// Tells the reviewer what their review did.
fn confirm(
    out: &mut impl Write,
    obj: &ApprovalRequest,
    decision: Decision,
    reviewer: &Reviewer,
) -> Result<(), CliError> {
    let name = obj.metadata.name.as_deref().unwrap_or_default();
    let status = obj.status.clone().unwrap_or_default();
    let verb = match decision {
        Decision::Approved => "approval",
        Decision::Denied => "denial",
    };
    let outcome = match status.phase {
        Phase::Pending => format!(
            "still pending ({} of {} approvals)",
            approvals(obj),
            obj.spec.quorum
        ),
        phase => format!("now {phase}"),
    };
    writeln!(
        out,
        "{name}: {verb} by {} recorded; {outcome}",
        reviewer.name.trim()
    )?;
    Ok(())
}

fn report(problems: &[FileProblem]) -> Result<(), CliError> {
    for p in problems {
        eprintln!("cardgate-sidecar approvals: {}", p.error);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CliError::Damaged(problems.len()))
    }
}

fn is_recent(r: &ApprovalRequest, now: Timestamp) -> bool {
    let status = r.status.clone().unwrap_or_default();
    if !status.phase.is_final() {
        return true;
    }
    let since = status.decided_at.map(|t| t.0).or(r
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0));
    since.is_some_and(|t| now.duration_since(t) <= RECENT)
}

fn approvals(r: &ApprovalRequest) -> usize {
    r.spec
        .reviews
        .iter()
        .filter(|x| x.decision == Decision::Approved)
        .count()
}

/// The phase as `list` shows it: progress while pending, an expired grant.
fn phase_cell(r: &ApprovalRequest, now: Timestamp) -> String {
    let status = r.status.clone().unwrap_or_default();
    match status.phase {
        Phase::Pending => format!("Pending {}/{}", approvals(r), r.spec.quorum),
        Phase::Approved
            if r.spec.mode == ApprovalMode::Deferred
                && status.grant_expires_at.is_some_and(|t| now >= t.0) =>
        {
            "Approved (grant expired)".into()
        }
        phase => phase.to_string(),
    }
}

fn age(r: &ApprovalRequest, now: Timestamp) -> String {
    let Some(created) = &r.metadata.creation_timestamp else {
        return "?".into();
    };
    let secs = now.duration_since(created.0).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

fn table(rows: &[&ApprovalRequest], now: Timestamp) -> String {
    let mut cells: Vec<[String; 7]> = vec![[
        "NAME".into(),
        "PHASE".into(),
        "REQUESTER".into(),
        "TARGET".into(),
        "RULE".into(),
        "AGE".into(),
        "STATEMENT".into(),
    ]];
    for r in rows {
        cells.push([
            r.metadata.name.clone().unwrap_or_default(),
            phase_cell(r, now),
            r.spec.requester.subject.clone(),
            r.spec.target.clone(),
            r.spec.rule.clone(),
            age(r, now),
            mask(&r.spec.statement.preview),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        for (c, w) in row.iter().zip(widths) {
            let _ = write!(out, "{c:<w$}   ");
        }
        out.push_str(&row[6]);
        out.push('\n');
    }
    out
}

fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn details(r: &ApprovalRequest, now: Timestamp) -> String {
    let s = &r.spec;
    let status = r.status.clone().unwrap_or_default();
    let q = &s.requester;
    let mut out = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<12} {v}");
    };
    line("Name:", r.metadata.name.clone().unwrap_or_default());
    line("Phase:", phase_cell(r, now));
    let mut who = q.subject.clone();
    if let Some(iss) = &q.issuer {
        let _ = write!(who, " (issuer {iss})");
    }
    if !q.groups.is_empty() {
        let _ = write!(who, " groups {}", q.groups.join(", "));
    }
    line("Requester:", who);
    if !q.pod.is_empty() {
        line(
            "Pod:",
            format!(
                "{} (uid {}, service account {})",
                q.pod, q.pod_uid, q.service_account
            ),
        );
    }
    line("Policy:", format!("{}, {}", s.policy, s.rule));
    line("Target:", s.target.clone());
    line("Class:", s.statement.class.to_string());
    line(
        "Mode:",
        match s.mode {
            ApprovalMode::Wait => "wait (the agent is held)".to_owned(),
            ApprovalMode::Deferred => format!(
                "deferred (grant {}, at most {} run(s); used {})",
                s.grant_ttl, s.max_uses, status.uses
            ),
        },
    );
    line("Quorum:", s.quorum.to_string());
    if let Some(c) = &r.metadata.creation_timestamp {
        line("Created:", time(c.0));
    }
    line("Expires:", time(s.expires_at.0));
    line("Fingerprint:", s.statement.fingerprint.clone());
    if let Some(m) = &status.message {
        line("Decision:", mask(m));
    }
    if let Some(g) = &status.grant_expires_at
        && s.mode == ApprovalMode::Deferred
    {
        line("Grant until:", time(g.0));
    }
    out.push_str("Statement:\n");
    for l in mask(&s.statement.text).lines() {
        let _ = writeln!(out, "    {l}");
    }
    if !s.reviews.is_empty() {
        out.push_str("Reviews:\n");
        for rv in &s.reviews {
            let _ = write!(
                out,
                "  - {:?} by {}",
                rv.decision,
                rv.reviewer.as_deref().unwrap_or("unknown")
            );
            if !rv.groups.is_empty() {
                let _ = write!(out, " (groups {})", rv.groups.join(", "));
            }
            if let Some(t) = &rv.time {
                let _ = write!(out, " at {}", time(t.0));
            }
            if let Some(why) = &rv.reason {
                let _ = write!(out, ": {}", mask(why));
            }
            out.push('\n');
        }
    }
    out
}

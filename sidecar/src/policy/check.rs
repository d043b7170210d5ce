//! `cardgate-sidecar check`: the dry run for policy authors.
//!
//! Each input string goes through the same classifier, session and decision
//! as in the proxy, in order (so `PREPARE` then `EXECUTE`, or `SET
//! search_path` then a query, behave as in one session; statements that are
//! not allowed leave no session effects, as they never reach PostgreSQL), and
//! one JSON object per input says what the sidecar would do and why.

use std::io::{self, BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use cardgate_crds::config::{PolicyName, SidecarConfig, SubjectMatch};
use cardgate_crds::pod::{ENV_POD_NAMESPACE, ENV_POD_SERVICE_ACCOUNT};
use cardgate_crds::v1alpha1::{Protocol, RuleAction, StatementClass};
use serde::Serialize;

use super::{Classifier, Policy, SqlSession};

/// Options of `cardgate-sidecar check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The configuration file (YAML or JSON).
    #[arg(long, short)]
    pub config: PathBuf,
    /// The postgres target the statements are sent to; defaults to the first
    /// target.
    #[arg(long)]
    pub target: Option<String>,
    /// Decide as this subject (the mapped token subject, e.g.
    /// `system:serviceaccount:payments:agent`); a subject that
    /// `identity.subjects` does not admit has every statement denied.
    #[arg(long)]
    pub subject: Option<String>,
    /// A group claim of the subject (repeatable).
    #[arg(long = "group", requires = "subject")]
    pub groups: Vec<String>,
    /// The token's issuer; defaults to the first configured issuer.
    #[arg(long, requires = "subject")]
    pub issuer: Option<String>,
    /// A statement string to check (repeatable); without it, one statement
    /// string per line is read from standard input.
    #[arg(long)]
    pub sql: Vec<String>,
}

/// Runs the command; problems with the configuration or target are printed
/// on stderr and give a failing exit code.
pub fn run(args: &CheckArgs) -> ExitCode {
    let config = match SidecarConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let pod_sa = match (
        std::env::var(ENV_POD_NAMESPACE),
        std::env::var(ENV_POD_SERVICE_ACCOUNT),
    ) {
        (Ok(ns), Ok(sa)) => Some(format!("system:serviceaccount:{ns}:{sa}")),
        _ => None,
    };
    let mut checker = match Checker::new(&config, args, pod_sa.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cardgate-sidecar check: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = io::stdout().lock();
    let written = if args.sql.is_empty() {
        io::stdin().lock().lines().try_for_each(|line| {
            let line = line?;
            if line.trim().is_empty() {
                return Ok(());
            }
            writeln!(out, "{}", checker.check(&line))
        })
    } else {
        args.sql
            .iter()
            .try_for_each(|sql| writeln!(out, "{}", checker.check(sql)))
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cardgate-sidecar check: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One session's worth of checking against one configuration.
struct Checker {
    policy: Policy,
    policy_name: PolicyName,
    classifier: Classifier,
    session: SqlSession,
    target: String,
    /// Why the subject may not connect at all.
    refused: Option<String>,
}

/// One output line.
#[derive(Serialize)]
struct Line<'a> {
    class: StatementClass,
    relations: Relations<'a>,
    action: RuleAction,
    rule: &'a str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
}

#[derive(Serialize)]
struct Relations<'a> {
    read: &'a [String],
    write: &'a [String],
}

impl Checker {
    /// Prepares a check of statements sent to `args.target` by
    /// `args.subject`; `pod_sa` is the pod's own service-account subject (for
    /// `podServiceAccount` entries), when known.
    fn new(
        config: &SidecarConfig,
        args: &CheckArgs,
        pod_sa: Option<&str>,
    ) -> Result<Checker, String> {
        let target = match &args.target {
            Some(name) => config.target(name).ok_or_else(|| {
                let names: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
                format!("unknown target {name:?} (targets: {})", names.join(", "))
            })?,
            None => config
                .targets
                .first()
                .ok_or("the configuration has no targets")?,
        };
        if target.protocol != Protocol::Postgres {
            return Err(format!(
                "target {:?} is not a postgres target; SQL statements do not apply",
                target.name
            ));
        }
        let refused = args.subject.as_deref().and_then(|subject| {
            let issuer = args
                .issuer
                .as_deref()
                .or(config.identity.issuers.first().map(|i| i.issuer.as_str()))
                .unwrap_or_default();
            (!admits(
                &config.identity.subjects,
                issuer,
                subject,
                &args.groups,
                pod_sa,
            ))
            .then(|| {
                format!(
                    "cardgate: subject {subject:?} is not admitted by AccessPolicy {} (identity.subjects)",
                    config.policy
                )
            })
        });
        Ok(Checker {
            policy: Policy::from_config(config),
            policy_name: config.policy.clone(),
            classifier: Classifier::new(config.proxy.classification_cache as usize),
            session: SqlSession::new(),
            target: target.name.clone(),
            refused,
        })
    }

    /// Decides one statement string and describes the outcome as one JSON
    /// object.
    fn check(&mut self, sql: &str) -> String {
        let c = self.session.effective(self.classifier.classify(sql));
        let decision = self.policy.decide(&self.target, &c);
        let (action, rule, reason) = match &self.refused {
            Some(why) => (RuleAction::Deny, "identity.subjects", why.clone()),
            None => {
                let reason = match decision.action {
                    RuleAction::Deny => decision.denial_message(&self.policy_name),
                    RuleAction::Allow => format!("allowed by {}", decision.label),
                    RuleAction::RequireApproval => {
                        format!("held for approval by {}", decision.label)
                    }
                };
                (decision.action, decision.label.as_str(), reason)
            }
        };
        if action != RuleAction::Allow {
            self.session.undo_last();
        }
        let line = Line {
            class: c.class,
            relations: Relations {
                read: &c.reads,
                write: &c.writes,
            },
            action,
            rule,
            reason,
            error: c.error.as_deref(),
            notes: &c.notes,
        };
        serde_json::to_string(&line)
            .unwrap_or_else(|e| format!("{{\"error\":{:?}}}", e.to_string()))
    }
}

/// Whether `identity.subjects` admits a token of `issuer` for `subject` with
/// `groups`: every condition an entry names must hold; no entries admit
/// everyone with a valid token.
fn admits(
    entries: &[SubjectMatch],
    issuer: &str,
    subject: &str,
    groups: &[String],
    pod_sa: Option<&str>,
) -> bool {
    entries.is_empty()
        || entries.iter().any(|m| {
            m.issuer.as_deref().is_none_or(|i| i == issuer)
                && m.subject.as_deref().is_none_or(|s| s == subject)
                && m.group
                    .as_deref()
                    .is_none_or(|g| groups.iter().any(|x| x == g))
                && (!m.pod_service_account || pod_sa == Some(subject))
        })
}

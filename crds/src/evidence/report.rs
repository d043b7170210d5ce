//! The report: totals, identities, denials, approvals and, per PCI DSS
//! v4.0.1 requirement in scope, what the export shows and which findings
//! concern it. Serialized as JSON; rendered as HTML by [`super::html`].

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::approvals::Approval;
use super::chains::{ChainSummary, record_ref};
use super::{Export, Finding, FindingKind, Options, RecordRef, Severity};

/// At most this many example records per list (denials, exceptions).
const MAX_EXAMPLES: usize = 50;

/// The whole report.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// True when no finding fails verification.
    pub verified: bool,
    /// When the report was made (UTC).
    pub generated: String,
    /// Whether partial and open chains were accepted.
    pub allow_partial: bool,
    /// See [`Options::allow_open`].
    pub allow_open: bool,
    /// Totals.
    pub summary: Summary,
    /// One entry per chain.
    pub chains: Vec<ChainSummary>,
    /// Approvals named in the export.
    pub approvals: Vec<Approval>,
    /// Per requirement.
    pub requirements: Vec<Requirement>,
    /// Everything found wrong.
    pub findings: Vec<Finding>,
}

/// Totals over the export.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Lines and bytes read (every byte scanned for card data).
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Audit records.
    pub records: usize,
    /// Lines that were not audit records (other streams, plain text).
    pub other_lines: u64,
    /// Chains.
    pub chains: usize,
    /// Earliest and latest record time.
    pub first_time: Option<String>,
    /// Latest record time.
    pub last_time: Option<String>,
    /// Records per event type.
    pub events: BTreeMap<String, u64>,
    /// Who acted, with record counts.
    pub identities: Vec<Identity>,
    /// Statements decided per action (`allow`, `deny`, `requireApproval`).
    pub decisions: BTreeMap<String, u64>,
    /// Records of refused statements, failed authentications and refused
    /// connections.
    pub denials: u64,
    /// Examples of those records.
    pub denial_records: Vec<RecordRef>,
    /// Values masked in responses (sum of `statement.maskedValues`).
    pub masked_values: u64,
    /// Approvals named in the export.
    pub approvals: usize,
}

/// One identity seen as `actor`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Identity {
    /// Subject.
    pub subject: String,
    /// Issuer (absent for reviewers authenticated by Kubernetes).
    pub issuer: Option<String>,
    /// Records with this actor.
    pub records: u64,
}

/// Whether a requirement's evidence holds.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The export shows it, with no finding against it.
    Pass,
    /// Findings fail it.
    Fail,
    /// Shown for the assessor to judge; nothing here can fail it.
    Info,
}

/// What the export shows for one requirement.
#[derive(Serialize, Debug)]
pub struct Requirement {
    /// PCI DSS v4.0.1 number(s).
    pub id: &'static str,
    /// Short title.
    pub title: &'static str,
    /// What cardgate does for it.
    pub control: &'static str,
    /// Status.
    pub status: Status,
    /// What the export shows, one line each.
    pub evidence: Vec<String>,
    /// Records that show exceptions (for 10.2.2: records missing a field).
    pub exceptions: Vec<RecordRef>,
    /// Indexes into the report's findings.
    pub findings: Vec<usize>,
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

/// Builds the report from what the checks found.
pub fn build(
    export: &Export,
    unique: &[usize],
    options: &Options,
    chains: Vec<ChainSummary>,
    approvals: BTreeMap<String, Approval>,
    findings: Vec<Finding>,
) -> Report {
    let summary = summarize(export, unique, chains.len(), approvals.len());
    let requirements = requirements(export, unique, &summary, &chains, &findings);
    Report {
        verified: findings.iter().all(|f| f.severity != Severity::Failure),
        generated: crate::audit::now_rfc3339(),
        allow_partial: options.allow_partial,
        allow_open: options.allow_open,
        summary,
        chains,
        approvals: approvals.into_values().collect(),
        requirements,
        findings,
    }
}

/// Totals over the records at `unique` (each record once).
fn summarize(export: &Export, unique: &[usize], chains: usize, approvals: usize) -> Summary {
    let mut s = Summary {
        lines: export.lines,
        bytes: export.bytes,
        records: unique.len(),
        other_lines: export.other_lines,
        chains,
        approvals,
        ..Summary::default()
    };
    let mut identities: BTreeMap<(String, Option<String>), u64> = BTreeMap::new();
    for &i in unique {
        let r = &export.entries[i].record;
        let event = text(r, &["event"]).unwrap_or("?");
        *s.events.entry(event.to_string()).or_default() += 1;
        if let Some(t) = text(r, &["time"]) {
            if s.first_time.as_deref().is_none_or(|f| t < f) {
                s.first_time = Some(t.to_string());
            }
            if s.last_time.as_deref().is_none_or(|l| t > l) {
                s.last_time = Some(t.to_string());
            }
        }
        if let Some(subject) = text(r, &["actor", "subject"]) {
            let issuer = text(r, &["actor", "issuer"]).map(str::to_string);
            *identities.entry((subject.to_string(), issuer)).or_default() += 1;
        }
        if let Some(d) = text(r, &["statement", "decision"]) {
            *s.decisions.entry(d.to_string()).or_default() += 1;
        }
        s.masked_values += r["statement"]["maskedValues"].as_u64().unwrap_or(0);
        if is_denial(r, event) {
            s.denials += 1;
            if s.denial_records.len() < MAX_EXAMPLES {
                s.denial_records.push(record_ref(&export.entries, i));
            }
        }
    }
    s.identities = identities
        .into_iter()
        .map(|((subject, issuer), records)| Identity {
            subject,
            issuer,
            records,
        })
        .collect();
    s
}

/// A refused statement, failed authentication or refused connection.
fn is_denial(r: &Value, event: &str) -> bool {
    match event {
        "auth.failure" | "connection.refused" => true,
        "statement" => {
            text(r, &["outcome"]) == Some("failure")
                && text(r, &["statement", "decision"]) != Some("allow")
        }
        _ => false,
    }
}

fn finding_indexes(findings: &[Finding], kinds: &[FindingKind]) -> Vec<usize> {
    findings
        .iter()
        .enumerate()
        .filter(|(_, f)| kinds.contains(&f.kind))
        .map(|(i, _)| i)
        .collect()
}

fn status(findings: &[Finding], indexes: &[usize]) -> Status {
    if indexes
        .iter()
        .any(|&i| findings[i].severity == Severity::Failure)
    {
        Status::Fail
    } else {
        Status::Pass
    }
}

fn count(s: &Summary, event: &str) -> u64 {
    s.events.get(event).copied().unwrap_or(0)
}

fn requirements(
    export: &Export,
    unique: &[usize],
    s: &Summary,
    chains: &[ChainSummary],
    findings: &[Finding],
) -> Vec<Requirement> {
    let scanned = format!(
        "{} lines ({} bytes) scanned with the masking engine's detector",
        s.lines, s.bytes
    );
    let sad = finding_indexes(findings, &[FindingKind::RawSad]);
    let pan = finding_indexes(findings, &[FindingKind::RawPan]);
    let chain_kinds = [
        FindingKind::Modified,
        FindingKind::Missing,
        FindingKind::Reordered,
        FindingKind::Forged,
        FindingKind::NoGenesis,
        FindingKind::Unclosed,
        FindingKind::Unreadable,
    ];
    let chain_findings = finding_indexes(findings, &chain_kinds);
    let approval_findings = finding_indexes(
        findings,
        &[
            FindingKind::SelfApproval,
            FindingKind::ApprovalUnrequested,
            FindingKind::ApprovalUnreviewed,
            FindingKind::ApprovalUndecided,
        ],
    );
    let (fields, exceptions) = fields_10_2_2(export, unique);
    let intact = chains.iter().filter(|c| c.intact).count();
    let closed = chains.iter().filter(|c| c.closed).count();
    let pauses = unique
        .iter()
        .filter(|&&i| {
            let r = &export.entries[i].record;
            text(r, &["event"]) == Some("audit.stop") && text(r, &["outcome"]) == Some("failure")
        })
        .map(|&i| record_ref(&export.entries, i))
        .collect::<Vec<_>>();
    vec![
        Requirement {
            id: "3.3.1",
            title: "SAD is not retained after authorization",
            control: "the sidecar redacts track data, CVV, PIN and PIN blocks in results, errors and audited statement text",
            status: status(findings, &sad),
            evidence: vec![scanned.clone(), format!("{} lines hold SAD", sad.len())],
            exceptions: Vec::new(),
            findings: sad,
        },
        Requirement {
            id: "3.4.1",
            title: "PAN is masked when displayed",
            control: "the sidecar shows card numbers as BIN6 + last 4 (or as configured) in everything it sends and writes",
            status: status(findings, &pan),
            evidence: vec![
                scanned,
                format!("{} lines hold an unmasked PAN", pan.len()),
                format!("{} values were masked in responses", s.masked_values),
            ],
            exceptions: Vec::new(),
            findings: pan,
        },
        Requirement {
            id: "3.5.1.1",
            title: "Hashes of PAN are keyed",
            control: "the sidecar refuses a configuration that hashes card numbers without a key of at least 32 bytes",
            status: Status::Info,
            evidence: vec![
                format!("{} configurations loaded", count(s, "config.loaded")),
                format!("{} configurations refused", count(s, "config.rejected")),
            ],
            exceptions: Vec::new(),
            findings: Vec::new(),
        },
        Requirement {
            id: "7.2.x",
            title: "Access is assigned by need to know and enforced",
            control: "every statement is decided by the AccessPolicy's rules; writes can be held for approval",
            status: status(findings, &approval_findings),
            evidence: vec![
                format!("statements by decision: {}", show_counts(&s.decisions)),
                format!(
                    "{} denials (refused statements, failed authentications, refused connections)",
                    s.denials
                ),
                format!(
                    "{} approvals named; each statement run under one is tied to its request, review and decision",
                    s.approvals
                ),
            ],
            exceptions: Vec::new(),
            findings: approval_findings,
        },
        Requirement {
            id: "8.2.1, 8.2.2",
            title: "Every user and agent has a unique ID",
            control: "agents authenticate with their own token (issuer + subject); reviewers are the cluster's authenticated users",
            status: if fields.get("actor").is_some_and(|(have, of)| have == of) {
                Status::Pass
            } else {
                Status::Info
            },
            evidence: vec![
                format!("{} identities seen", s.identities.len()),
                format!(
                    "{} successful and {} failed authentications",
                    count(s, "auth.success"),
                    count(s, "auth.failure")
                ),
            ],
            exceptions: Vec::new(),
            findings: Vec::new(),
        },
        Requirement {
            id: "8.6.x",
            title: "System and application accounts are managed",
            control: "agents are workload identities; the sidecar reaches the database with its own credentials, never the agent's",
            status: Status::Info,
            evidence: s
                .identities
                .iter()
                .filter(|i| i.issuer.is_some())
                .map(|i| {
                    format!(
                        "agent {} ({}): {} records",
                        i.subject,
                        i.issuer.as_deref().unwrap_or(""),
                        i.records
                    )
                })
                .collect(),
            exceptions: Vec::new(),
            findings: Vec::new(),
        },
        Requirement {
            id: "10.2.1.x",
            title: "Audit logs capture the required events",
            control: "the sidecar and the operator record each event type below",
            status: Status::Info,
            evidence: vec![
                format!(
                    "10.2.1.1 access to cardholder data: {} statements",
                    count(s, "statement")
                ),
                format!(
                    "10.2.1.2 administrative actions: {} policy changes, {} configurations loaded",
                    count(s, "policy.changed"),
                    count(s, "config.loaded")
                ),
                format!(
                    "10.2.1.4 invalid access attempts: {} failed authentications, {} refused connections, {} refused statements",
                    count(s, "auth.failure"),
                    count(s, "connection.refused"),
                    s.decisions.get("deny").copied().unwrap_or(0)
                ),
                format!(
                    "10.2.1.6 audit log start and stop: {} audit.start, {} audit.stop",
                    count(s, "audit.start"),
                    count(s, "audit.stop")
                ),
                format!(
                    "10.2.1.7 system-level objects: {} policy changes",
                    count(s, "policy.changed")
                ),
                format!("all events: {}", show_counts(&s.events)),
            ],
            exceptions: Vec::new(),
            findings: Vec::new(),
        },
        Requirement {
            id: "10.2.2",
            title: "Each record carries the required fields",
            control: "who (actor), what (event), when (time, UTC), outcome, origin (component and pod or host), resource",
            status: if exceptions.is_empty() {
                Status::Pass
            } else {
                Status::Fail
            },
            evidence: fields
                .iter()
                .map(|(f, (have, of))| format!("{f}: {have} of {of} records that need it"))
                .collect(),
            exceptions,
            findings: Vec::new(),
        },
        Requirement {
            id: "10.3.x",
            title: "Audit logs are protected from modification and changes are detected",
            control: "records are hash-chained per chain; this verification detects modified, removed, reordered and forged records and a lost tail",
            status: status(findings, &chain_findings),
            evidence: vec![
                format!("{intact} of {} chains verified intact", chains.len()),
                format!("{closed} chains end with a clean audit.stop"),
            ],
            exceptions: Vec::new(),
            findings: chain_findings,
        },
        Requirement {
            id: "10.7.x",
            title: "Failures of critical controls are detected and handled",
            control: "when an audit sink fails the sidecar refuses statements (fail closed) and records the outage when the sink recovers",
            status: Status::Info,
            evidence: vec![
                format!("{} audit trail pauses after a sink failure", pauses.len()),
                format!("{} configurations refused", count(s, "config.rejected")),
            ],
            exceptions: pauses,
            findings: Vec::new(),
        },
    ]
}

fn show_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per 10.2.2 field: records that have it, of those that need it; and
/// the records missing one.
fn fields_10_2_2(
    export: &Export,
    unique: &[usize],
) -> (BTreeMap<&'static str, (u64, u64)>, Vec<RecordRef>) {
    let mut fields: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    let mut exceptions = Vec::new();
    for &i in unique {
        let r = &export.entries[i].record;
        let event = text(r, &["event"]).unwrap_or("");
        let by_someone = event == "statement"
            || event.starts_with("auth.")
            || event.starts_with("session.")
            || event.starts_with("approval.");
        let origin = text(r, &["origin", "component"]).is_some()
            && (text(r, &["origin", "pod"]).is_some() || text(r, &["origin", "host"]).is_some());
        let checks = [
            (
                "actor",
                by_someone,
                text(r, &["actor", "subject"]).is_some(),
            ),
            ("event", true, !event.is_empty()),
            ("time", true, text(r, &["time"]).is_some()),
            ("outcome", true, text(r, &["outcome"]).is_some()),
            ("origin", true, origin),
            (
                "resource",
                event == "statement",
                r.get("resource").is_some(),
            ),
        ];
        let mut missing = false;
        for (name, needed, present) in checks {
            if needed {
                let f = fields.entry(name).or_default();
                f.1 += 1;
                f.0 += u64::from(present);
                missing |= !present;
            }
        }
        if missing && exceptions.len() < MAX_EXAMPLES {
            exceptions.push(record_ref(&export.entries, i));
        }
    }
    (fields, exceptions)
}

//! Approvals (PCI DSS 7.2.x, 8.2.x for the reviewers): every statement that
//! ran under an approval names a request whose creation, review and
//! decision are in the export, approved by someone other than the agent
//! that asked.
//!
//! Reviews carry the reviewer's groups as the cluster authenticated them;
//! the rule's approver list is not in the records, so the report lists the
//! groups for the assessor to compare with the AccessPolicy instead of
//! claiming membership.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::chains::record_ref;
use super::input::Entry;
use super::{Finding, FindingKind, RecordRef};

/// One review as recorded.
#[derive(Serialize, Clone, Debug)]
pub struct Review {
    /// Authenticated reviewer.
    pub reviewer: String,
    /// `Approved` or `Denied`.
    pub decision: String,
    /// Reviewer's groups, if recorded.
    pub groups: Vec<String>,
    /// Whether the review counts (the webhook stamped it).
    pub counted: bool,
    /// The record.
    pub record: RecordRef,
}

/// One ApprovalRequest as the export shows it.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Approval {
    /// Request name.
    pub name: String,
    /// The agent that asked (from `approval.created`).
    pub requester: Option<String>,
    /// `approval.created` records.
    pub created: Vec<RecordRef>,
    /// Reviews.
    pub reviews: Vec<Review>,
    /// Final decisions (`Approved`, `Denied`, `Consumed`, …) and their records.
    pub decisions: Vec<(String, RecordRef)>,
    /// Statements that ran under the request.
    pub runs: Vec<RecordRef>,
}

fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(Value::as_str)
}

/// Collects the approvals named in the records at `indexes`.
pub fn collect(entries: &[Entry], indexes: &[usize]) -> BTreeMap<String, Approval> {
    let mut out: BTreeMap<String, Approval> = BTreeMap::new();
    for &i in indexes {
        let r = &entries[i].record;
        let event = text(r, &["event"]).unwrap_or_default();
        let name = match event {
            "statement" => text(r, &["statement", "approval"]),
            _ if event.starts_with("approval.") => text(r, &["approval", "name"]),
            _ => None,
        };
        let Some(name) = name else { continue };
        let a = out.entry(name.to_string()).or_insert_with(|| Approval {
            name: name.to_string(),
            ..Approval::default()
        });
        let at = record_ref(entries, i);
        match event {
            "statement" if text(r, &["statement", "decision"]) == Some("allow") => a.runs.push(at),
            "approval.created" => {
                a.requester = a
                    .requester
                    .take()
                    .or_else(|| text(r, &["actor", "subject"]).map(str::to_string));
                a.created.push(at);
            }
            "approval.review" => a.reviews.push(review(r, at)),
            "approval.decided" => a.decisions.push((
                text(r, &["approval", "decision"])
                    .unwrap_or("?")
                    .to_string(),
                at,
            )),
            _ => {}
        }
    }
    out
}

fn review(r: &Value, at: RecordRef) -> Review {
    let reviewer = text(r, &["approval", "reviewer"])
        .or_else(|| text(r, &["actor", "subject"]))
        .unwrap_or("")
        .to_string();
    let groups = r["actor"]["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Review {
        reviewer,
        decision: text(r, &["approval", "decision"])
            .unwrap_or("?")
            .to_string(),
        groups,
        counted: text(r, &["outcome"]) == Some("success"),
        record: at,
    }
}

/// The findings about approvals.
pub fn check(approvals: &BTreeMap<String, Approval>) -> Vec<Finding> {
    let mut findings = Vec::new();
    for a in approvals.values() {
        let approving: Vec<&Review> = a
            .reviews
            .iter()
            .filter(|r| r.counted && r.decision == "Approved")
            .collect();
        for r in &approving {
            if a.requester.as_deref() == Some(r.reviewer.as_str()) {
                let mut records = vec![r.record.clone()];
                records.extend(a.created.iter().cloned());
                findings.push(Finding::failure(
                    FindingKind::SelfApproval,
                    format!(
                        "approval {}: approved by {}, who requested it (reviewer equals requester)",
                        a.name, r.reviewer
                    ),
                    records,
                ));
            }
        }
        if a.runs.is_empty() {
            continue;
        }
        let missing = |what: &str| {
            format!(
                "approval {}: {} statement(s) ran under it, but {what}",
                a.name,
                a.runs.len()
            )
        };
        if a.created.is_empty() {
            findings.push(Finding::failure(
                FindingKind::ApprovalUnrequested,
                missing("no approval.created record shows the request"),
                a.runs.clone(),
            ));
        }
        if approving.is_empty() {
            findings.push(Finding::failure(
                FindingKind::ApprovalUnreviewed,
                missing("no approval.review record approves it"),
                a.runs.clone(),
            ));
        }
        let decided = a
            .decisions
            .iter()
            .any(|(d, _)| matches!(d.as_str(), "Approved" | "Consumed"));
        if !decided {
            findings.push(Finding::failure(
                FindingKind::ApprovalUndecided,
                missing("no approval.decided record shows it approved"),
                a.runs.clone(),
            ));
        }
    }
    findings
}

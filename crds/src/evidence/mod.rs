//! The evidence engine: turns an export of audit records from many pods
//! (raw JSON lines, CRI container logs, shipper envelopes; interleaved) into
//! a verified report per PCI DSS v4.0.1 requirement.
//!
//! One implementation for `kubectl cardgate evidence` and
//! `cardgate-sidecar audit evidence`. The engine
//! - reads every line ([`input`]) and scans every byte for raw card data
//!   with the masking engine's detector ([`scan`]);
//! - separates chains by chain id and verifies each with the walk behind
//!   `audit verify` ([`chains`]): modifications, gaps, reorderings, forged
//!   links, missing starts, and chains that end without `audit.stop`;
//! - ties every statement run under an approval to the request's creation,
//!   review and decision, and refuses self-approval ([`approvals`]);
//! - summarises the records per requirement ([`report`]).
//!
//! Every finding names the records (source, line, chain, seq) that show it.

pub mod approvals;
pub mod chains;
pub mod cli;
pub mod html;
pub mod input;
pub mod report;
pub mod scan;

use serde::Serialize;

pub use input::{Export, Place};
pub use report::Report;

/// How strict verification is.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Accept chains that start mid-way (an export of a time range).
    pub allow_partial: bool,
    /// Report chains without `audit.stop` as warnings (an export taken while
    /// the pods still run) instead of failures.
    pub allow_open: bool,
}

/// A record a finding points at.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RecordRef {
    /// Where it was read.
    pub at: Place,
    /// Its chain id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Its seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Its event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
}

impl std::fmt::Display for RecordRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.at)?;
        if let Some(seq) = self.seq {
            write!(f, " seq={seq}")?;
        }
        if let Some(e) = &self.event {
            write!(f, " {e}")?;
        }
        Ok(())
    }
}

/// What a finding is about.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A record's content does not match its hash.
    Modified,
    /// Records are missing inside a chain.
    Missing,
    /// Records are out of order.
    Reordered,
    /// A record does not link to its predecessor.
    Forged,
    /// A chain does not start at its first record.
    NoGenesis,
    /// A chain ends without a clean `audit.stop`.
    Unclosed,
    /// A line looks like a damaged record.
    Unreadable,
    /// A raw card number in the export.
    RawPan,
    /// Raw sensitive authentication data in the export.
    RawSad,
    /// An approval approved by its own requester.
    SelfApproval,
    /// A statement ran under an approval whose request is not recorded.
    ApprovalUnrequested,
    /// … whose approving review is not recorded.
    ApprovalUnreviewed,
    /// … whose decision is not recorded.
    ApprovalUndecided,
}

/// Whether a finding fails verification.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Verification fails.
    Failure,
    /// Reported; verification still passes.
    Warning,
}

/// One finding, with the records that show it.
#[derive(Serialize, Clone, Debug)]
pub struct Finding {
    /// What.
    pub kind: FindingKind,
    /// Failure or warning.
    pub severity: Severity,
    /// One line for a person.
    pub message: String,
    /// The records that show it.
    pub records: Vec<RecordRef>,
}

impl Finding {
    /// A finding that fails verification.
    pub fn failure(kind: FindingKind, message: String, records: Vec<RecordRef>) -> Self {
        Self {
            kind,
            severity: Severity::Failure,
            message,
            records,
        }
    }

    /// A finding that is reported but does not fail verification.
    pub fn warning(kind: FindingKind, message: String, records: Vec<RecordRef>) -> Self {
        Self {
            kind,
            severity: Severity::Warning,
            message,
            records,
        }
    }
}

/// A reference to whatever was read at `at`: the record there, if any.
fn place_ref(export: &Export, at: &Place) -> RecordRef {
    match export.entries.iter().position(|e| &e.at == at) {
        Some(i) => chains::record_ref(&export.entries, i),
        None => RecordRef {
            at: at.clone(),
            chain: None,
            seq: None,
            event: None,
        },
    }
}

/// Verifies an export and builds the report.
pub fn examine(export: &Export, options: &Options) -> Report {
    let mut findings = Vec::new();
    for u in &export.unreadable {
        findings.push(Finding::failure(
            FindingKind::Unreadable,
            format!("{}: {}", u.at, u.reason),
            vec![place_ref(export, &u.at)],
        ));
    }
    for c in &export.card_data {
        for (class, kind) in [("pan", FindingKind::RawPan), ("sad", FindingKind::RawSad)] {
            let finds: Vec<(&String, &usize)> = c
                .kinds
                .iter()
                .zip(&c.offsets)
                .filter(|(k, _)| k.starts_with(class))
                .collect();
            if finds.is_empty() {
                continue;
            }
            let shown: Vec<String> = finds
                .iter()
                .map(|(k, o)| format!("{k} at byte {o}"))
                .collect();
            findings.push(Finding::failure(
                kind,
                format!(
                    "{}: unmasked {} ({}); the data itself is not repeated here",
                    c.at,
                    if class == "pan" {
                        "card number"
                    } else {
                        "sensitive authentication data"
                    },
                    shown.join(", ")
                ),
                vec![place_ref(export, &c.at)],
            ));
        }
    }
    let mut chains = Vec::new();
    let mut unique = Vec::with_capacity(export.entries.len());
    for (key, indexes) in chains::group(&export.entries) {
        let verified = chains::verify_chain(&export.entries, &key, &indexes, options);
        chains.push(verified.summary);
        findings.extend(verified.findings);
        unique.extend(verified.kept);
    }
    // Counts and approvals see each record once, in input order.
    unique.sort_unstable();
    let approvals = approvals::collect(&export.entries, &unique);
    findings.extend(approvals::check(&approvals));
    report::build(export, &unique, options, chains, approvals, findings)
}

//! Separating an interleaved export into chains and verifying each one
//! with the same walk as `audit verify` ([`crate::audit::walk`]).
//!
//! Records are grouped by their chain id (records older than chain ids by
//! their origin). Within one source the order is the order written; the
//! pieces of one chain found in different sources (rotated files, several
//! shippers) are put in order of their first seq, so a chain split over
//! files verifies while a reordering inside a file is still seen. Records
//! delivered twice, identical in every byte, are counted and dropped: log
//! shippers deliver at least once.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::input::Entry;
use super::{Finding, FindingKind, Options, RecordRef};
use crate::audit::{ChainProblem, VerifyOptions, walk};

/// At most this many findings per chain: after a problem the walk resumes
/// at the record that showed it, and one bad splice must not flood the
/// report.
const MAX_FINDINGS_PER_CHAIN: usize = 20;

/// What the report says about one chain.
#[derive(Serialize, Clone, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct ChainSummary {
    /// The chain id (`origin:…` for records without one).
    pub id: String,
    /// `sidecar` or `operator`.
    pub component: String,
    /// Pod namespace, name and UID, or host.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod UID.
    pub pod_uid: Option<String>,
    /// Host when not in a pod.
    pub host: Option<String>,
    /// Records read (after dropping duplicates).
    pub records: usize,
    /// Identical records delivered more than once.
    pub duplicates: usize,
    /// First and last seq, in chain order.
    pub first_seq: Option<u64>,
    /// Last seq.
    pub last_seq: Option<u64>,
    /// Time of the first and last record.
    pub first_time: Option<String>,
    /// Time of the last record.
    pub last_time: Option<String>,
    /// Whether the chain ends with a clean `audit.stop`.
    pub closed: bool,
    /// Whether every link verified.
    pub intact: bool,
}

/// The key records are grouped by.
pub fn chain_key(record: &Value) -> String {
    if let Some(id) = record.get("chain").and_then(Value::as_str) {
        return id.to_string();
    }
    let o = &record["origin"];
    let part = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    format!(
        "origin:{}/{}/{}/{}/{}",
        part("component"),
        part("namespace"),
        part("pod"),
        part("podUid"),
        part("host")
    )
}

/// Groups entry indexes by chain, each in chain order.
pub fn group(entries: &[Entry]) -> BTreeMap<String, Vec<usize>> {
    let mut by_chain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        by_chain.entry(chain_key(&e.record)).or_default().push(i);
    }
    for indexes in by_chain.values_mut() {
        *indexes = in_source_order(entries, indexes);
    }
    by_chain
}

/// Orders the pieces of a chain from different sources by their first seq,
/// keeping the order inside each source.
fn in_source_order(entries: &[Entry], indexes: &[usize]) -> Vec<usize> {
    let mut pieces: Vec<(u64, Vec<usize>)> = Vec::new();
    let mut by_source: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in indexes {
        let source = entries[i].at.source.as_str();
        let piece = *by_source.entry(source).or_insert_with(|| {
            pieces.push((seq(&entries[i].record).unwrap_or(0), Vec::new()));
            pieces.len() - 1
        });
        pieces[piece].1.push(i);
    }
    pieces.sort_by_key(|(first, _)| *first);
    pieces.into_iter().flat_map(|(_, p)| p).collect()
}

fn seq(record: &Value) -> Option<u64> {
    record.get("seq").and_then(Value::as_u64)
}

fn text<'a>(record: &'a Value, key: &str) -> Option<&'a str> {
    record.get(key).and_then(Value::as_str)
}

/// A reference to the record at entry `i`.
pub fn record_ref(entries: &[Entry], i: usize) -> RecordRef {
    let r = &entries[i].record;
    RecordRef {
        at: entries[i].at.clone(),
        chain: text(r, "chain").map(str::to_string),
        seq: seq(r),
        event: text(r, "event").map(str::to_string),
    }
}

/// One chain verified: its summary, findings, and the entries it kept
/// (without duplicates), in chain order.
pub struct Verified {
    /// For the report.
    pub summary: ChainSummary,
    /// What is wrong with it.
    pub findings: Vec<Finding>,
    /// Entry indexes, duplicates dropped.
    pub kept: Vec<usize>,
}

/// Verifies one chain (entry indexes in chain order).
pub fn verify_chain(
    entries: &[Entry],
    key: &str,
    indexes: &[usize],
    options: &Options,
) -> Verified {
    let (order, duplicates) = without_duplicates(entries, indexes);
    let mut findings = Vec::new();
    let mut start = 0;
    let mut partial = options.allow_partial;
    while start < order.len() && findings.len() < MAX_FINDINGS_PER_CHAIN {
        let slice: Vec<(usize, &Value)> = order[start..]
            .iter()
            .map(|&i| (i, &entries[i].record))
            .collect();
        let report = walk(
            &slice,
            &VerifyOptions {
                allow_partial: partial,
                anchors: Vec::new(),
            },
        );
        let Some(problem) = report.problem else {
            break;
        };
        let (at, resume_after) = problem_record(&problem, order[start]);
        let pos = order[start..]
            .iter()
            .position(|&i| i == at)
            .map_or(order.len(), |p| start + p);
        findings.push(chain_finding(entries, key, &problem, at));
        let next = if resume_after { pos + 1 } else { pos };
        // Resuming at the same record is only useful once, as a partial
        // chain; the walk always moves on.
        start = if next <= start && partial {
            start + 1
        } else {
            next
        };
        partial = true;
    }
    let summary = summarize(entries, key, &order, duplicates, findings.is_empty());
    if let Some(f) = unclosed(entries, key, &order, &summary, options) {
        findings.push(f);
    }
    Verified {
        summary,
        findings,
        kept: order,
    }
}

/// Drops records delivered twice (identical in every field).
fn without_duplicates(entries: &[Entry], indexes: &[usize]) -> (Vec<usize>, usize) {
    let mut seen: BTreeMap<(u64, &str), &Value> = BTreeMap::new();
    let mut order = Vec::with_capacity(indexes.len());
    let mut duplicates = 0;
    for &i in indexes {
        let r = &entries[i].record;
        let key = (seq(r).unwrap_or(0), text(r, "hash").unwrap_or(""));
        match seen.get(&key) {
            Some(earlier) if *earlier == r => duplicates += 1,
            _ => {
                seen.insert(key, r);
                order.push(i);
            }
        }
    }
    (order, duplicates)
}

/// The entry a problem names, and whether the walk resumes after it (the
/// record itself is bad) or at it (the records before it are missing).
fn problem_record(problem: &ChainProblem, first: usize) -> (usize, bool) {
    match problem {
        ChainProblem::Modified { line, .. } | ChainProblem::Malformed { line, .. } => (*line, true),
        ChainProblem::Missing { line, .. }
        | ChainProblem::Reordered { line, .. }
        | ChainProblem::Forged { line, .. }
        | ChainProblem::Truncated { line, .. } => (*line, false),
        ChainProblem::NoGenesis { .. } | ChainProblem::AnchorMismatch { .. } => (first, false),
    }
}

fn chain_finding(entries: &[Entry], key: &str, problem: &ChainProblem, at: usize) -> Finding {
    let r = record_ref(entries, at);
    let (kind, message) = match problem {
        ChainProblem::Modified { seq, .. } => (
            FindingKind::Modified,
            format!(
                "chain {key}: record seq={seq} was modified: its content does not match its hash"
            ),
        ),
        ChainProblem::Missing {
            expected, found, ..
        } => (
            FindingKind::Missing,
            format!(
                "chain {key}: records seq={expected}..={} are missing before seq={found}",
                found - 1
            ),
        ),
        ChainProblem::Reordered {
            expected, found, ..
        } => (
            FindingKind::Reordered,
            format!("chain {key}: seq={found} stands where seq={expected} belongs"),
        ),
        ChainProblem::Forged { seq, .. } => (
            FindingKind::Forged,
            format!(
                "chain {key}: record seq={seq} does not link to seq={}: it or its predecessor was replaced",
                seq.saturating_sub(1)
            ),
        ),
        ChainProblem::NoGenesis { seq } => (
            FindingKind::NoGenesis,
            format!(
                "chain {key}: starts at seq={seq}, not at its first record: earlier records are missing (use --partial for an export of a time range)"
            ),
        ),
        other => (FindingKind::Modified, format!("chain {key}: {other}")),
    };
    Finding::failure(kind, message, vec![r])
}

fn summarize(
    entries: &[Entry],
    key: &str,
    order: &[usize],
    duplicates: usize,
    intact: bool,
) -> ChainSummary {
    let first = order.first().map(|&i| &entries[i].record);
    let last = order.last().map(|&i| &entries[i].record);
    let origin = |k: &str| {
        first
            .and_then(|r| r["origin"].get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    ChainSummary {
        id: key.to_string(),
        component: origin("component").unwrap_or_default(),
        namespace: origin("namespace"),
        pod: origin("pod"),
        pod_uid: origin("podUid"),
        host: origin("host"),
        records: order.len(),
        duplicates,
        first_seq: first.and_then(seq),
        last_seq: last.and_then(seq),
        first_time: first.and_then(|r| text(r, "time")).map(str::to_string),
        last_time: last.and_then(|r| text(r, "time")).map(str::to_string),
        closed: last.is_some_and(|r| {
            text(r, "event") == Some("audit.stop") && text(r, "outcome") == Some("success")
        }),
        intact,
    }
}

/// A chain that does not end with a clean `audit.stop`: its sidecar was
/// killed, is still running, or the export lost the chain's tail.
fn unclosed(
    entries: &[Entry],
    key: &str,
    order: &[usize],
    summary: &ChainSummary,
    options: &Options,
) -> Option<Finding> {
    let &last = order.last()?;
    if summary.closed {
        return None;
    }
    let r = &entries[last].record;
    let paused = text(r, "event") == Some("audit.stop");
    let message = format!(
        "chain {key} ({}) ends at seq={} ({}) without a clean audit.stop{}: the export lost the chain's tail, or the {} stopped without closing its trail",
        who(summary),
        summary.last_seq.unwrap_or(0),
        summary.last_time.as_deref().unwrap_or("?"),
        if paused {
            " (its last record pauses the trail after a sink failure)"
        } else {
            ""
        },
        if summary.component.is_empty() {
            "writer"
        } else {
            &summary.component
        },
    );
    let refs = vec![record_ref(entries, last)];
    Some(if options.allow_open {
        Finding::warning(FindingKind::Unclosed, message, refs)
    } else {
        Finding::failure(FindingKind::Unclosed, message, refs)
    })
}

/// `pod NS/NAME uid UID`, or the host.
pub fn who(s: &ChainSummary) -> String {
    match (&s.pod, &s.host) {
        (Some(pod), _) => format!(
            "{} pod {}/{pod} uid {}",
            s.component,
            s.namespace.as_deref().unwrap_or("?"),
            s.pod_uid.as_deref().unwrap_or("?")
        ),
        (None, Some(host)) => format!("{} on host {host}", s.component),
        (None, None) => s.component.clone(),
    }
}

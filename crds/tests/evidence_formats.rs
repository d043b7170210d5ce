//! The evidence engine reads what log pipelines store: raw JSON lines, the
//! kubelet's CRI log (with partial lines), Fluent Bit's and Vector's file
//! output (fixtures made by tests/fixtures/evidence/generate.py in the
//! shapes docs/audit.md configures), and finds the same verified chain in
//! each.

use std::path::{Path, PathBuf};

use cardgate_crds::evidence::cli::{Args, run};
use cardgate_crds::evidence::{Export, FindingKind, Options, examine};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/evidence")
        .join(name)
}

fn read(name: &str) -> Export {
    let mut e = Export::default();
    let f = std::fs::File::open(fixture(name)).unwrap();
    e.read(name, std::io::BufReader::new(f)).unwrap();
    e
}

#[test]
fn every_format_yields_the_same_intact_chain() {
    let raw = read("raw.jsonl");
    for name in ["cri.log", "fluent-bit.jsonl", "vector.jsonl"] {
        let e = read(name);
        assert!(e.unreadable.is_empty(), "{name}: {:?}", e.unreadable);
        let records: Vec<_> = e.entries.iter().map(|x| &x.record).collect();
        let want: Vec<_> = raw.entries.iter().map(|x| &x.record).collect();
        assert_eq!(records, want, "{name}");
        let report = examine(&e, &Options::default());
        assert!(report.verified, "{name}: {:#?}", report.findings);
        assert_eq!(report.summary.records, 10);
        assert_eq!(report.chains.len(), 1);
        assert!(report.chains[0].closed && report.chains[0].intact);
        assert_eq!(
            report.chains[0].pod_uid.as_deref(),
            Some("2b6f0e4c-1d3a-4e5f-9a8b-7c6d5e4f3a2b")
        );
        assert_eq!(report.summary.masked_values, 1);
        let a = &report.approvals[0];
        assert_eq!(a.requester.as_deref(), Some("agent-7"));
        assert_eq!(a.reviews[0].reviewer, "alice");
        assert_eq!(a.reviews[0].groups, ["payments-approvers"]);
        assert_eq!(a.runs.len(), 1);
    }
    // The stderr line inside the CRI log is not a record.
    assert_eq!(read("cri.log").other_lines, 1);
}

#[test]
fn the_same_chain_in_several_files_and_formats_is_counted_once() {
    let mut out = Vec::new();
    let args = Args {
        paths: vec![fixture("fluent-bit.jsonl"), fixture("vector.jsonl")],
        ..Args::default()
    };
    let report = run(&args, std::io::empty(), &mut out).unwrap();
    assert!(report.verified, "{}", String::from_utf8_lossy(&out));
    assert_eq!(report.chains[0].records, 10);
    assert_eq!(report.chains[0].duplicates, 10);
    // Counted once: the totals and the approval see each record once.
    assert_eq!(report.summary.records, 10);
    assert_eq!(report.summary.events["statement"], 2);
    assert_eq!(report.approvals[0].runs.len(), 1);
}

#[test]
fn a_line_cut_from_the_middle_of_a_fluent_bit_file_is_named() {
    let text = std::fs::read_to_string(fixture("fluent-bit.jsonl")).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(4);
    let mut e = Export::default();
    e.read("fb", lines.join("\n").as_bytes()).unwrap();
    let report = examine(&e, &Options::default());
    assert!(!report.verified);
    let f = &report.findings[0];
    assert_eq!(f.kind, FindingKind::Missing);
    assert!(
        f.message.contains("seq=5..=5 are missing before seq=6"),
        "{}",
        f.message
    );
    assert_eq!((f.records[0].at.line, f.records[0].seq), (5, Some(6)));
}

#[test]
fn an_audit_outage_is_listed_under_10_7() {
    use cardgate_crds::audit::{AuditRecord, Chain, EventKind, Origin, Outcome};
    let origin = Origin {
        component: "sidecar".into(),
        pod: Some("p".into()),
        ..Origin::default()
    };
    let mut chain = Chain::default();
    let mut text = Vec::new();
    for (event, outcome) in [
        (EventKind::AuditStart, Outcome::Success),
        (EventKind::AuditStop, Outcome::Failure),
        (EventKind::AuditStart, Outcome::Success),
        (EventKind::AuditStop, Outcome::Success),
    ] {
        text.extend(chain.seal(&mut AuditRecord::new(event, outcome, origin.clone())));
    }
    let mut e = Export::default();
    e.read("x", text.as_slice()).unwrap();
    let report = examine(&e, &Options::default());
    assert!(report.verified, "{:#?}", report.findings);
    let q = report
        .requirements
        .iter()
        .find(|q| q.id == "10.7.x")
        .unwrap();
    assert_eq!(q.exceptions.len(), 1);
    assert_eq!(q.exceptions[0].seq, Some(2));
    assert_eq!(q.evidence[0], "1 audit trail pauses after a sink failure");
}

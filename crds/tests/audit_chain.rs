//! The verifier names the first modified, missing, reordered or forged record
//! and reports a cut-off tail as such.

use cardgate_crds::audit::{
    Anchor, AuditRecord, Chain, ChainProblem, EventKind, Origin, Outcome, VerifyOptions,
    canonical_bytes, record_hash, verify,
};
use proptest::prelude::*;
use serde_json::Value;

fn origin() -> Origin {
    Origin {
        component: "sidecar".into(),
        namespace: Some("payments".into()),
        pod: Some("agent-0".into()),
        ..Origin::default()
    }
}

/// A log of `n` sealed records, as lines without newlines.
fn log(n: usize) -> Vec<String> {
    let mut chain = Chain::default();
    (0..n)
        .map(|i| {
            let mut r = AuditRecord::new(
                if i == 0 {
                    EventKind::AuditStart
                } else {
                    EventKind::Statement
                },
                Outcome::Success,
                origin(),
            );
            r.message = Some(format!("event {i}"));
            let line = chain.seal(&mut r);
            String::from_utf8(line).unwrap().trim_end().to_string()
        })
        .collect()
}

fn check(lines: &[String], opts: &VerifyOptions) -> cardgate_crds::audit::VerifyReport {
    let text = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    verify(text.as_bytes(), opts).unwrap()
}

fn problem(lines: &[String]) -> ChainProblem {
    check(lines, &VerifyOptions::default())
        .problem
        .expect("a problem is found")
}

fn edit(line: &str, f: impl FnOnce(&mut Value)) -> String {
    let mut v: Value = serde_json::from_str(line).unwrap();
    f(&mut v);
    serde_json::to_string(&v).unwrap()
}

#[test]
fn an_intact_log_verifies() {
    let l = log(10);
    let r = check(&l, &VerifyOptions::default());
    assert!(r.ok(), "{:?}", r.problem);
    assert_eq!(r.records, 10);
    assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(10)));
    let last: Value = serde_json::from_str(&l[9]).unwrap();
    assert_eq!(r.last_hash.as_deref(), last["hash"].as_str());
}

#[test]
fn hash_is_over_sorted_compact_json_without_hash() {
    let l = log(1);
    let v: Value = serde_json::from_str(&l[0]).unwrap();
    let canon = String::from_utf8(canonical_bytes(&v)).unwrap();
    assert!(!canon.contains("\"hash\""));
    assert!(
        canon.starts_with("{\"chain\":\"")
            && canon.contains("\",\"event\":\"audit.start\",\"message\""),
        "{canon}"
    );
    assert_eq!(record_hash(&v), v["hash"].as_str().unwrap());
}

#[test]
fn a_modified_record_is_named() {
    let mut l = log(10);
    l[3] = edit(&l[3], |v| v["message"] = "event 3, edited".into());
    assert_eq!(problem(&l), ChainProblem::Modified { line: 4, seq: 4 });
}

#[test]
fn a_deleted_record_is_named() {
    let mut l = log(10);
    l.remove(4);
    assert_eq!(
        problem(&l),
        ChainProblem::Missing {
            line: 5,
            expected: 5,
            found: 6
        }
    );
    let mut l = log(10);
    l.drain(4..7);
    let p = problem(&l);
    assert!(p.to_string().contains("records 5..=7 were removed"), "{p}");
}

#[test]
fn reordered_records_are_named() {
    let mut l = log(10);
    l.swap(5, 6);
    assert_eq!(
        problem(&l),
        ChainProblem::Reordered {
            line: 6,
            expected: 6,
            found: 7
        }
    );
}

#[test]
fn a_forged_record_is_named() {
    // A forger who rewrites record 5 and recomputes its hash, but cannot make
    // it link to the real record 4.
    let mut l = log(10);
    l[4] = edit(&l[4], |v| {
        v["message"] = "nothing to see".into();
        v["prevHash"] = "f".repeat(64).into();
        v["hash"] = record_hash(v).into();
    });
    assert_eq!(problem(&l), ChainProblem::Forged { line: 5, seq: 5 });

    // A careful forger links to record 4; record 6 then no longer links.
    let mut l = log(10);
    l[4] = edit(&l[4], |v| {
        v["message"] = "nothing to see".into();
        v["hash"] = record_hash(v).into();
    });
    assert_eq!(problem(&l), ChainProblem::Forged { line: 6, seq: 6 });
}

#[test]
fn a_cut_off_tail_is_reported_as_truncation() {
    let l = log(10);
    let mut text: String = l.iter().map(|x| format!("{x}\n")).collect();
    let cut = text.len() - l[9].len() / 2;
    text.truncate(cut);
    let r = verify(text.as_bytes(), &VerifyOptions::default()).unwrap();
    assert_eq!(
        r.problem,
        Some(ChainProblem::Truncated {
            line: 10,
            last_seq: 9
        })
    );
    assert_eq!(r.records, 9, "the complete prefix still verifies");
    assert!(r.problem.unwrap().to_string().contains("cut off"));
}

#[test]
fn a_removed_tail_is_caught_by_an_anchor() {
    let l = log(10);
    let last: Value = serde_json::from_str(&l[9]).unwrap();
    let anchor = Anchor {
        seq: 10,
        hash: last["hash"].as_str().unwrap().into(),
    };
    let opts = VerifyOptions {
        anchors: vec![anchor],
        ..Default::default()
    };
    assert!(check(&l, &opts).ok());
    let p = check(&l[..7], &opts).problem.unwrap();
    assert!(
        matches!(p, ChainProblem::AnchorMismatch { seq: 10, .. }),
        "{p}"
    );
}

#[test]
fn a_removed_head_is_reported_unless_partial() {
    let l = log(10);
    assert_eq!(problem(&l[3..]), ChainProblem::NoGenesis { seq: 4 });
    let partial = VerifyOptions {
        allow_partial: true,
        ..Default::default()
    };
    assert!(check(&l[3..], &partial).ok());
}

#[test]
fn garbage_in_the_middle_is_malformed() {
    let mut l = log(5);
    l[2] = "not json".into();
    assert!(matches!(
        problem(&l),
        ChainProblem::Malformed { line: 3, .. }
    ));
}

#[test]
fn a_resumed_chain_continues() {
    let l = log(3);
    let last: Value = serde_json::from_str(&l[2]).unwrap();
    let mut chain = Chain::resume(
        3,
        last["hash"].as_str().unwrap().into(),
        last["chain"].as_str().map(str::to_string),
    );
    let mut r = AuditRecord::new(EventKind::AuditStop, Outcome::Success, origin());
    let line = String::from_utf8(chain.seal(&mut r)).unwrap();
    let mut all = l.clone();
    all.push(line.trim_end().into());
    let report = check(&all, &VerifyOptions::default());
    assert!(report.ok() && report.closed && report.records == 4);
    assert_eq!(r.chain.as_deref(), last["chain"].as_str());
    assert_eq!(report.chain, r.chain);
}

proptest! {
    /// Changing any byte of any record's content is detected.
    #[test]
    fn any_single_change_is_detected(record in 0usize..6, offset in 0usize..400, byte in any::<u8>()) {
        let mut l = log(6);
        let bytes = set_byte(&l[record], offset, byte);
        prop_assume!(bytes.as_ref().is_some_and(|b| b != &l[record]));
        l[record] = bytes.unwrap();
        let text = l.iter().map(|x| format!("{x}\n")).collect::<String>();
        let r = verify(text.as_bytes(), &VerifyOptions::default()).unwrap();
        prop_assert!(r.problem.is_some(), "undetected change in record {}", record + 1);
    }
}

/// Replaces one byte of a line, keeping it valid UTF-8 without newlines.
fn set_byte(line: &str, offset: usize, byte: u8) -> Option<String> {
    let mut b = line.as_bytes().to_vec();
    let i = offset % b.len();
    if byte == b'\n' || byte == b'\r' {
        return None;
    }
    b[i] = byte;
    String::from_utf8(b).ok()
}

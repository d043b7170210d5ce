//! `kubectl cardgate evidence` as an assessor runs it: over the Fluent Bit
//! and Vector fixtures it exits 0 and writes both reports; over an export
//! with a modified record it exits 1 and names the record.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crds/tests/fixtures/evidence")
        .join(name)
}

fn evidence(args: &[&std::ffi::OsStr], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-cardgate"));
    cmd.arg("evidence").args(args);
    if let Some(input) = stdin {
        use std::io::Write;
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        return child.wait_with_output().unwrap();
    }
    cmd.output().unwrap()
}

#[test]
fn an_intact_export_exits_0_with_json_and_html_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (json, html) = (dir.path().join("e.json"), dir.path().join("e.html"));
    let out = evidence(
        &[
            fixture("fluent-bit.jsonl").as_os_str(),
            fixture("vector.jsonl").as_os_str(),
            "--json".as_ref(),
            json.as_os_str(),
            "--html".as_ref(),
            html.as_os_str(),
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("VERIFIED: 10 records in 1 chains"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["chains"][0]["duplicates"], 10);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("VERIFIED") && page.contains("id=\"req-10.3.x\""));
}

#[test]
fn a_modified_record_on_stdin_exits_1_and_is_named() {
    let text = std::fs::read_to_string(fixture("raw.jsonl")).unwrap();
    let tampered = text.replacen("ticket 4711", "ticket 4712", 1);
    assert_ne!(text, tampered);
    let out = evidence(&["-".as_ref()], Some(tampered.as_bytes()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("FAILED"), "{stdout}");
    assert!(
        stdout.contains("record seq=6 was modified")
            && stdout.contains("record -:6 seq=6 approval.review"),
        "{stdout}"
    );
}

#[test]
fn an_unreadable_input_exits_2() {
    let out = evidence(&["/nonexistent/export".as_ref()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/export"));
}

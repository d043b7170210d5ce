//! Recordings written by the Recorder and replayed by the real binary.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cardgate_sidecar::recording::format::{Event, Line};
use cardgate_sidecar::recording::{
    DiagnosticRef, Recorder, RecordingLimits, Recordings, SessionInfo,
};

const BIN: &str = env!("CARGO_BIN_EXE_cardgate-sidecar");

fn session(recordings: &Recordings) -> Recorder {
    recordings
        .start(&SessionInfo {
            session: "sess/1",
            subject: "agent@example",
            target: "payments",
            database: Some("shop"),
            client: Some("127.0.0.1:50000"),
        })
        .unwrap()
}

fn replay(args: &[&str], file: &Path) -> Output {
    let mut child = Command::new(BIN)
        .arg("replay")
        .args(args)
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("replay did not finish");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn read_lines(path: &Path) -> Vec<Line> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn header_and_end(path: &Path) -> (String, String) {
    let lines = read_lines(path);
    let Event::Session { started, .. } = &lines[0].event else {
        panic!("first line is not the session");
    };
    let end = lines.last().unwrap();
    assert_eq!(end.event, Event::End);
    (
        format!(
            "-- cardgate session sess/1: agent@example on payments (database shop) from 127.0.0.1:50000, started {started}\n"
        ),
        format!("-- session ended after {:.3} s\n", end.t_us as f64 / 1e6),
    )
}

#[test]
fn a_recorded_session_replays_like_psql() {
    let dir = tempfile::tempdir().unwrap();
    let recordings = Recordings::open(dir.path().join("rec"), RecordingLimits::default()).unwrap();
    let mut r = session(&recordings);
    r.query("SELECT id, pan FROM cards");
    r.columns([("id", 23), ("pan", 25)]);
    r.row([Some(&b"1"[..]), Some(&b"411111******1111"[..])]);
    r.row([Some(&b"2"[..]), None]);
    r.complete("SELECT 2");
    r.query("DROP TABLE cards");
    r.error(&DiagnosticRef {
        severity: "ERROR",
        code: "42501",
        message: "cardgate: denied by AccessPolicy payments/agent-readonly rule 3 (ddl)",
        detail: None,
        hint: None,
    });
    r.query("INSERT INTO orders VALUES (1)");
    r.complete("INSERT 0 1");
    r.notice(&DiagnosticRef {
        severity: "NOTICE",
        code: "00000",
        message: "table \"x\" does not exist, skipping",
        ..DiagnosticRef::default()
    });
    r.query("SELECT data FROM blobs");
    r.columns([("data", 17)]);
    r.row([Some(&[0xff, 0x00][..])]);
    r.complete("SELECT 1");
    let path = r.path().to_path_buf();
    r.finish();

    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with("-sess_1.jsonl"), "{name}");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let out = replay(&["--instant"], &path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (header, end) = header_and_end(&path);
    let expected = header
        + "shop=> SELECT id, pan FROM cards\n"
        + " id |       pan        \n"
        + "----+------------------\n"
        + "  1 | 411111******1111\n"
        + "  2 | \n"
        + "(2 rows)\n"
        + "\n"
        + "shop=> DROP TABLE cards\n"
        + "ERROR:  cardgate: denied by AccessPolicy payments/agent-readonly rule 3 (ddl)\n"
        + "shop=> INSERT INTO orders VALUES (1)\n"
        + "INSERT 0 1\n"
        + "NOTICE:  table \"x\" does not exist, skipping\n"
        + "shop=> SELECT data FROM blobs\n"
        + "  data  \n"
        + "--------\n"
        + " \\xff00\n"
        + "(1 row)\n"
        + "\n"
        + &end;
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

#[test]
fn rows_past_the_limit_are_counted_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let recordings = Recordings::open(
        dir.path(),
        RecordingLimits {
            max_rows_per_statement: 3,
            ..RecordingLimits::default()
        },
    )
    .unwrap();
    let mut r = session(&recordings);
    r.query("SELECT n FROM big");
    r.columns([("n", 23)]);
    for i in 0..10 {
        let v = i.to_string();
        r.row([Some(v.as_bytes())]);
    }
    r.complete("SELECT 10");
    let path = r.path().to_path_buf();
    r.finish();

    let lines = read_lines(&path);
    let rows = lines
        .iter()
        .filter(|l| matches!(l.event, Event::Row { .. }))
        .count();
    assert_eq!(rows, 3);
    assert!(lines.iter().any(|l| l.event
        == Event::Complete {
            tag: "SELECT 10".into(),
            omitted: 7
        }));

    let out = replay(&["--instant"], &path);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            " n \n---\n 0\n 1\n 2\n-- 7 more rows were returned but not recorded\n(10 rows)\n"
        ),
        "{text}"
    );
}

#[test]
fn a_truncated_recording_replays_up_to_the_cut_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let recordings = Recordings::open(dir.path(), RecordingLimits::default()).unwrap();
    let mut r = session(&recordings);
    r.query("SELECT 1 AS one");
    r.columns([("one", 23)]);
    r.row([Some(&b"1"[..])]);
    r.complete("SELECT 1");
    r.query("SELECT pg_sleep(10)");
    let path = r.path().to_path_buf();
    r.flush();
    // The sidecar died mid-write: the last line is cut off.
    let bytes = std::fs::read(&path).unwrap();
    let cut: PathBuf = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &bytes[..bytes.len() - 12]).unwrap();
    let last_line = bytes[..bytes.len() - 1]
        .rsplit(|&b| b == b'\n')
        .next()
        .unwrap()
        .len();
    let partial = last_line + 1 - 12;
    drop(r);

    let out = replay(&["--instant"], &cut);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(" one \n-----\n   1\n(1 row)\n"), "{text}");
    assert!(!text.contains("pg_sleep"), "{text}");
    let note = format!(
        "-- the recording is truncated: its last line ({partial} bytes) was cut off, so what followed is missing\n"
    );
    assert!(text.ends_with(&note), "{text}");
}

#[test]
fn a_recording_damaged_in_the_middle_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, r#"{{"t_us":0,"kind":"query","text":"select 1"}}"#).unwrap();
    writeln!(f, r#"{{"t_us":1,"kind":"nonsense"}}"#).unwrap();
    writeln!(f, r#"{{"t_us":2,"kind":"end"}}"#).unwrap();
    drop(f);
    let out = replay(&["--instant"], &path);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cardgate=> select 1"),
        "what comes before the damage is shown"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2"), "{err}");
}

#[test]
fn speed_scales_recorded_time() {
    // Five minutes of recorded idle time, replayed 100 000 times faster.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.jsonl");
    std::fs::write(
        &path,
        "{\"t_us\":0,\"kind\":\"query\",\"text\":\"BEGIN\"}\n{\"t_us\":300000000,\"kind\":\"complete\",\"tag\":\"BEGIN\"}\n{\"t_us\":300000001,\"kind\":\"end\"}\n",
    )
    .unwrap();
    let out = replay(&["--speed", "100000"], &path);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "cardgate=> BEGIN\nBEGIN\n-- session ended after 300.000 s\n"
    );
    let out = replay(&["--speed", "0"], &path);
    assert_eq!(out.status.code(), Some(2), "a speed of 0 is refused");
}

#[test]
fn a_recording_stops_at_its_size_limit_and_a_dropped_recorder_still_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let recordings = Recordings::open(
        dir.path(),
        RecordingLimits {
            max_bytes_per_session: 600,
            ..RecordingLimits::default()
        },
    )
    .unwrap();
    let mut r = session(&recordings);
    for i in 0..20 {
        r.query(&format!("SELECT {i}"));
    }
    assert!(!r.active());
    let path = r.path().to_path_buf();
    drop(r);
    let lines = read_lines(&path);
    assert!(std::fs::metadata(&path).unwrap().len() < 800);
    assert!(matches!(lines.last().unwrap().event, Event::Stopped { .. }));
    let out = replay(&["--instant"], &path);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("-- recording stopped: the recording reached its limit of 600 bytes"),
        "{text}"
    );

    let mut r = session(&recordings);
    r.query("SELECT 1");
    let path = r.path().to_path_buf();
    drop(r);
    assert_eq!(read_lines(&path).last().unwrap().event, Event::End);
}

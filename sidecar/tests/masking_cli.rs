//! `cardgate-sidecar mask`, run as users run it: the built binary with text
//! on stdin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .arg("mask")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cardgate-sidecar");
    // A command that fails early stops reading: a broken pipe is expected.
    if let Err(e) = child.stdin.take().unwrap().write_all(stdin) {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "{e}");
    }
    child.wait_with_output().unwrap()
}

/// A directory of its own for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cardgate-mask-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const CONFIG_HEAD: &str = "apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy:
  name: mask-test
identity:
  issuers:
    - issuer: https://issuer.test
      audiences: [cardgate]
      jwksFile: jwks.json
targets:
  - name: db
    listen: 127.0.0.1:15432
    upstream: {host: 127.0.0.1, port: 5432}
    credentials: {username: proxy, passwordFile: password}
";

#[test]
fn masks_each_line_with_the_builtin_rules() {
    let input =
        "first 4111111111111111\n{\"cvv\":\"123\"}\nnothing here\n\nlast 5555 5555 5555 4444";
    let out = run(&[], input.as_bytes());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "first 411111******1111\n{\"cvv\":\"[REDACTED]\"}\nnothing here\n\nlast 5555 55** **** 4444\n"
    );
}

#[test]
fn passes_bytes_that_are_not_utf8_through() {
    let out = run(&[], b"caf\xe9 4111111111111111\r\n");
    assert!(out.status.success());
    assert_eq!(out.stdout, b"caf\xe9 411111******1111\r\n");
}

#[test]
fn explain_prints_one_json_object_per_detection() {
    let out = run(
        &["--explain"],
        b"no card\npan=4111111111111111&cvv=123\n;4111111111111111=27121010000?\n",
    );
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(!stdout.contains("4111111111111111"), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(
        lines,
        vec![
            serde_json::json!({"line": 2, "detector": "pan", "kind": "visa", "start": 4, "end": 20, "action": "truncate"}),
            serde_json::json!({"line": 2, "detector": "sad", "kind": "cvv", "start": 25, "end": 28, "action": "redact"}),
            serde_json::json!({"line": 3, "detector": "sad", "kind": "track2", "start": 0, "end": 30, "action": "redact"}),
        ]
    );
}

#[test]
fn config_rules_and_key_file_apply() {
    let dir = scratch("config");
    std::fs::write(dir.join("masking.key"), [7u8; 32]).unwrap();
    let config = format!(
        "{CONFIG_HEAD}masking:
  hmacKeyFile: masking.key
  rules:
    - name: cards
      spec:
        detectors: [{{type: pan}}]
        action: {{type: hmac, hmacKeySecretRef: {{name: masking-key, key: key}}}}
    - name: accounts
      spec:
        detectors: [{{type: regex, pattern: 'ACCT-[0-9]{{8}}'}}]
        action: {{type: last4}}
"
    );
    let path = dir.join("cardgate.yaml");
    std::fs::write(&path, config).unwrap();
    let input = b"pay 4111111111111111 from ACCT-12345678\nagain 4111-1111-1111-1111\n";
    let out = run(&["--config", path.to_str().unwrap()], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    let token = lines[0]
        .strip_prefix("pay ")
        .and_then(|l| l.strip_suffix(" from ****-****5678"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(token.starts_with("tok_") && !token.bytes().any(|b| b.is_ascii_digit()));
    assert_eq!(lines[1], format!("again {token}"));

    let explain = run(
        &["--config", path.to_str().unwrap(), "--explain"],
        b"ACCT-12345678\n",
    );
    let line: Value = serde_json::from_slice(&explain.stdout).unwrap();
    assert_eq!(line["rule"], "accounts");
    assert_eq!(line["detector"], "regex");
    assert_eq!(line["action"], "last4");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn errors_go_to_stderr_with_a_failing_status_and_no_card_number() {
    let dir = scratch("errors");
    let missing = run(
        &["--config", dir.join("absent.yaml").to_str().unwrap()],
        b"4111111111111111\n",
    );
    assert!(!missing.status.success());
    assert!(missing.stdout.is_empty(), "nothing is printed unmasked");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.yaml"));

    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        format!(
            "{CONFIG_HEAD}masking:
  rules:
    - name: broken
      spec:
        detectors: [{{type: regex, pattern: '4111111111111111('}}]
        action: {{type: redact}}
"
        ),
    )
    .unwrap();
    let out = run(&["--config", bad.to_str().unwrap()], b"text\n");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("masking.rules[0].spec.detectors[0].pattern"),
        "{stderr}"
    );
    assert!(!stderr.contains("4111111111111111"), "{stderr}");

    let no_key = dir.join("no-key.yaml");
    std::fs::write(
        &no_key,
        format!(
            "{CONFIG_HEAD}masking:
  hmacKeyFile: missing.key
  rules:
    - name: cards
      spec:
        detectors: [{{type: pan}}]
        action: {{type: hmac, hmacKeySecretRef: {{name: k, key: k}}}}
"
        ),
    )
    .unwrap();
    let out = run(
        &["--config", no_key.to_str().unwrap()],
        b"4111111111111111\n",
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.key"));
    std::fs::remove_dir_all(dir).unwrap();
}

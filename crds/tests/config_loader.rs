//! The configuration loader reports every problem at once, each with the path
//! of the field to fix.

use cardgate_crds::config::{ConfigError, SidecarConfig};

const BASE: &str = r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {name: test}
identity:
  issuers:
    - {issuer: https://issuer.example, audiences: [cardgate], jwksFile: jwks.json}
targets:
  - name: db
    listen: 127.0.0.1:15432
    upstream: {host: 127.0.0.1, port: 5432}
    credentials: {username: proxy, passwordFile: pw}
"#;

fn problems(text: &str) -> Vec<String> {
    match SidecarConfig::from_text(text, "test.yaml") {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
        Err(e) => vec![e.to_string()],
    }
}

#[test]
fn minimal_config_loads_with_safe_defaults() {
    let c = SidecarConfig::from_text(BASE, "test.yaml").unwrap();
    assert_eq!(c.default_action, cardgate_crds::v1alpha1::RuleAction::Deny);
    assert_eq!(c.audit.sinks.len(), 1, "stdout audit is on by default");
    assert_eq!(c.proxy.max_message_bytes, 16 << 20);
}

#[test]
fn schema_problems_are_all_reported_with_paths() {
    let text = format!(
        "{BASE}\nrules:\n  - action: allow\n    match: {{classes: [read]}}\n  - action: allow\n    match: {{classes: [read]}}\n  - action: allow\n    match:\n      classes: [wirte]\n      tabels: [x]\n  - action: permit\nlimits: {{maxRows: lots}}\n"
    );
    let p = problems(&text);
    let want = [
        r#"rules[2].match.classes[0]: unknown class "wirte""#,
        r#"rules[2].match: unknown field "tabels""#,
        r#"rules[3].action: unknown action "permit""#,
        "limits.maxRows:",
    ];
    for w in want {
        assert!(
            p.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {p:#?}"
        );
    }
}

#[test]
fn semantic_problems_are_all_reported_with_paths() {
    let text = format!(
        r#"{BASE}
  - name: db
    listen: 127.0.0.1:15432
    upstream: {{host: 127.0.0.1, port: 5433}}
rules:
  - action: allow
    match: {{targets: [warehouse], tables: ["a.b.c"]}}
  - action: requireApproval
masking:
  rules:
    - name: acct
      spec:
        detectors: [{{type: regex, pattern: "acct-([0-9]+"}}]
        action: {{type: hmac, hmacKeySecretRef: {{name: k, key: k}}}}
audit:
  sinks: [{{type: file}}]
"#
    );
    let p = problems(&text);
    let want = [
        r#"targets[1].name: duplicate target name "db""#,
        "targets[1].listen: 127.0.0.1:15432 is already used",
        "targets[1].credentials: postgres targets need",
        r#"rules[0].match.targets[0]: unknown target "warehouse""#,
        "rules[0].match.tables[0]: pattern \"a.b.c\" has 3 parts",
        "approval: rules with action requireApproval need",
        "masking.rules[0].spec.detectors[0].pattern: invalid pattern",
        "masking.hmacKeyFile: masking rule \"acct\" uses hmac",
        "audit.sinks[0].path: a file sink needs path",
    ];
    for w in want {
        assert!(
            p.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {p:#?}"
        );
    }
    assert!(p.len() >= want.len());
}

#[test]
fn card_numbers_are_shown_one_way_per_deployment() {
    let text = format!(
        r#"{BASE}
masking:
  hmacKeyFile: key
  rules:
    - name: a
      spec: {{detectors: [{{type: pan}}], action: {{type: truncate}}}}
    - name: b
      spec: {{detectors: [{{type: pan}}], action: {{type: hmac, hmacKeySecretRef: {{name: k, key: k}}}}}}
"#
    );
    let p = problems(&text);
    assert!(
        p.iter().any(|e| e.contains("one way per deployment")),
        "{p:#?}"
    );
}

#[test]
fn unsafe_identity_settings_are_refused() {
    let text = BASE.replace(
        "{issuer: https://issuer.example, audiences: [cardgate], jwksFile: jwks.json}",
        "{issuer: http://issuer.example, audiences: [], algorithms: [HS256]}",
    );
    let p = problems(&text);
    assert!(p.iter().any(|e| e.contains("HS256")), "{p:#?}");
    let text = BASE.replace(
        "{issuer: https://issuer.example, audiences: [cardgate], jwksFile: jwks.json}",
        "{issuer: http://issuer.example, audiences: []}",
    );
    let p = problems(&text);
    assert!(
        p.iter()
            .any(|e| e.starts_with("identity.issuers[0].audiences")),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|e| e.starts_with("identity.issuers[0].issuer") && e.contains("HTTPS")),
        "{p:#?}"
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let err = SidecarConfig::from_text("targets:\n  - name: [unclosed\n", "bad.yaml").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{text}");
    assert!(text.starts_with("bad.yaml:"), "{text}");
    assert!(text.contains('2') || text.contains("line"), "{text}");
}

#[test]
fn null_means_absent() {
    let text = format!("{BASE}\napproval:\nlimits:\n");
    assert!(problems(&text).is_empty(), "{:#?}", problems(&text));
}

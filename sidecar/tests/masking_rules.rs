//! MaskingRules on top of the built-in masking: column rules as the
//! PostgreSQL proxy applies them per result column, JSON paths, regexes, the
//! card-number actions (BIN8, last4, redact, keyed tokens), and rules that
//! cannot run (errors, never panics, never a raw PAN in the message).

use std::path::Path;

use cardgate_crds::config::{MaskingConfig, SidecarConfig};
use cardgate_crds::v1alpha1::MaskActionType;
use cardgate_sidecar::masking::{ColumnOutput, Masker, MaskingError, TOKEN_PREFIX};
use serde_json::{Value, json};

const KEY: [u8; 32] = *b"0123456789abcdef0123456789abcdef";

fn config(rules: Value) -> MaskingConfig {
    serde_json::from_value(json!({ "rules": rules })).expect("masking config")
}

fn rule(name: &str, detectors: Value, action: Value) -> Value {
    json!({"name": name, "spec": {"detectors": detectors, "action": action}})
}

fn masker(rules: Value) -> Masker {
    Masker::from_config(&config(rules), Some(&KEY)).expect("valid rules")
}

fn hmac() -> Value {
    json!({"type": "hmac", "hmacKeySecretRef": {"name": "masking-key", "key": "key"}})
}

fn column(m: &Masker, name: &str, value: &[u8], text_like: bool) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let rule = m
        .column_rule(parts[0], parts[1], parts[2])
        .unwrap_or_else(|| panic!("no rule for {name}"));
    let mut out = b"prefix:".to_vec();
    match m.mask_column_to(rule, value, text_like, &mut out) {
        ColumnOutput::Null => {
            assert_eq!(out, b"prefix:", "Null writes nothing");
            None
        }
        ColumnOutput::Masked => Some(String::from_utf8(out[7..].to_vec()).unwrap()),
    }
}

#[test]
fn standalone_sample_masks_pan_columns_and_nulls_cvv_columns() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/standalone/cardgate.yaml");
    let cfg = SidecarConfig::load(&path).expect("the shipped standalone configuration loads");
    let m = Masker::from_config(&cfg.masking, None).expect("its masking rules compile");

    let pan = m
        .column_rule("public", "cards", "pan")
        .expect("*.pan has a rule");
    assert_eq!(pan.action(), MaskActionType::Truncate);
    assert_eq!(m.rule_name(pan), Some("card-numbers"));
    assert_eq!(
        column(&m, "public.cards.pan", b"4111111111111111", true).as_deref(),
        Some("411111******1111")
    );
    // A column rule applies to the whole value, card number or not.
    assert_eq!(
        column(&m, "public.cards.pan", b"pending", true).as_deref(),
        Some("*******")
    );
    // Binary values of non-text types cannot be masked in place: NULL.
    assert_eq!(
        column(&m, "public.cards.pan", &4111u64.to_be_bytes(), false),
        None
    );

    let cvv = m
        .column_rule("payments", "cards", "cvv")
        .expect("*.cvv has a rule");
    assert_eq!(cvv.action(), MaskActionType::Null);
    assert_eq!(column(&m, "payments.cards.cvv", b"123", true), None);
    assert_eq!(m.column_rule("public", "orders", "total"), None);
    assert_eq!(m.column_rule("public", "cards", "pan_hash"), None);

    // Text everywhere else still gets the built-in masking with the PAN action.
    assert_eq!(m.mask_str("pan 4111111111111111"), "pan 411111******1111");
}

#[test]
fn first_matching_column_rule_wins_and_patterns_match_trailing_parts() {
    let m = masker(json!([
        rule(
            "exact",
            json!([{"type": "column", "columns": ["payments.cards.pan"]}]),
            json!({"type": "redact"})
        ),
        rule(
            "any-pan",
            json!([{"type": "column", "columns": ["*.pan", "cards.card_number"]}]),
            json!({"type": "last4"})
        ),
    ]));
    let name = |s, t, c| m.column_rule(s, t, c).and_then(|r| m.rule_name(r));
    assert_eq!(name("payments", "cards", "pan"), Some("exact"));
    assert_eq!(name("public", "cards", "pan"), Some("any-pan"));
    assert_eq!(name("public", "cards", "card_number"), Some("any-pan"));
    assert_eq!(name("public", "other", "card_number"), None);
    assert_eq!(
        column(&m, "payments.cards.pan", b"4111111111111111", true).as_deref(),
        Some("[REDACTED]")
    );
    assert_eq!(
        column(&m, "public.cards.pan", b"4111-1111-1111-1111", true).as_deref(),
        Some("****-****-****-1111")
    );
    // Short values never show their digits.
    assert_eq!(
        column(&m, "public.cards.pan", b"1234", true).as_deref(),
        Some("****")
    );
}

#[test]
fn column_values_holding_sad_are_redacted_even_when_the_rule_shows_digits() {
    let m = masker(json!([rule(
        "raw-swipes",
        json!([{"type": "column", "columns": ["*.swipe"]}]),
        json!({"type": "truncate"})
    )]));
    assert_eq!(
        column(
            &m,
            "pos.events.swipe",
            b";4111111111111111=27121011234?",
            true
        )
        .as_deref(),
        Some("[REDACTED]")
    );
}

#[test]
fn column_handles_from_another_masker_fail_closed() {
    let m = masker(json!([
        rule(
            "a",
            json!([{"type": "column", "columns": ["*.a"]}]),
            json!({"type": "redact"})
        ),
        rule(
            "b",
            json!([{"type": "column", "columns": ["*.b"]}]),
            json!({"type": "redact"})
        ),
    ]));
    let stale = m.column_rule("s", "t", "b").unwrap();
    let mut out = Vec::new();
    assert_eq!(
        Masker::builtin().mask_column_to(stale, b"secret", true, &mut out),
        ColumnOutput::Null
    );
    assert!(out.is_empty());
}

#[test]
fn bin8_applies_to_card_numbers_of_16_digits_or_more() {
    let m = masker(json!([rule(
        "cards",
        json!([{"type": "pan"}]),
        json!({"type": "truncate", "truncate": {"leadingDigits": 8, "trailingDigits": 4}})
    )]));
    assert_eq!(m.mask_str("4111111111111111"), "41111111****1111");
    assert_eq!(m.mask_str("4111 1111 1111 1111"), "4111 1111 **** 1111");
    assert_eq!(m.mask_str("378282246310005"), "378282*****0005");
    assert_eq!(m.mask_str("30569309025904"), "305693****5904");
}

#[test]
fn last4_and_redact_for_card_numbers() {
    let last4 = masker(json!([rule(
        "c",
        json!([{"type": "pan"}]),
        json!({"type": "last4"})
    )]));
    assert_eq!(
        last4.mask_str("a 5555 5555 5555 4444 b"),
        "a **** **** **** 4444 b"
    );
    let redact = masker(json!([rule(
        "c",
        json!([{"type": "pan"}]),
        json!({"type": "redact", "replacement": "<card>"})
    )]));
    assert_eq!(redact.mask_str("a 5555-5555-5555-4444 b"), "a <card> b");
    // SAD keeps its own redaction.
    assert_eq!(redact.mask_str("cvv=123"), "cvv=[REDACTED]");
}

#[test]
fn a_sad_rule_sets_the_sad_redaction_text() {
    let m = masker(json!([rule(
        "sad",
        json!([{"type": "sad"}]),
        json!({"type": "redact", "replacement": "[SAD]"})
    )]));
    assert_eq!(m.mask_str(r#"{"cvv":"123"}"#), r#"{"cvv":"[SAD]"}"#);
    assert_eq!(m.mask_str("4111111111111111"), "411111******1111");
}

#[test]
fn hmac_tokens_are_keyed_stable_and_join_text_with_columns() {
    let rules = json!([rule(
        "cards",
        json!([{"type": "pan"}, {"type": "column", "columns": ["*.pan"]}]),
        hmac()
    )]);
    let m = masker(rules.clone());
    let in_text = m.mask_str("charged 4111 1111 1111 1111 today").into_owned();
    let token = in_text
        .strip_prefix("charged ")
        .and_then(|t| t.strip_suffix(" today"))
        .unwrap()
        .to_string();
    assert!(token.starts_with(TOKEN_PREFIX), "{token}");
    assert_eq!(
        token.len(),
        TOKEN_PREFIX.len() + 32,
        "128 bits, two letters per byte"
    );
    assert!(!token.bytes().any(|b| b.is_ascii_digit()), "{token}");
    // Same card number, same token, whatever the grouping or place.
    assert_eq!(m.mask_str("4111-1111-1111-1111"), token);
    assert_eq!(
        column(&m, "p.cards.pan", b"4111111111111111", true).as_deref(),
        Some(token.as_str())
    );
    // Masking the output again changes nothing.
    assert_eq!(m.mask_str(&in_text), in_text);
    // Another card number, another token; another key, another token.
    assert_ne!(m.mask_str("5555555555554444"), token);
    let other = Masker::from_config(&config(rules), Some(&[9u8; 32])).unwrap();
    assert_ne!(other.mask_str("4111111111111111"), token);
}

#[test]
fn hmac_needs_a_long_enough_key() {
    let rules = config(json!([rule("cards", json!([{"type": "pan"}]), hmac())]));
    assert!(matches!(
        Masker::from_config(&rules, None),
        Err(MaskingError::MissingHmacKey { rule }) if rule == "cards"
    ));
    assert!(matches!(
        Masker::from_config(&rules, Some(b"short key")),
        Err(MaskingError::HmacKeyTooShort { len: 9 })
    ));
}

#[test]
fn regex_detectors_mask_their_matches() {
    let m = masker(json!([
        rule(
            "accounts",
            json!([{"type": "regex", "pattern": "ACCT-[0-9]{8}"}]),
            json!({"type": "last4"})
        ),
        rule(
            "labels",
            json!([{"type": "regex", "pattern": "card: [0-9]+"}]),
            json!({"type": "redact"})
        ),
        rule(
            "short",
            json!([{"type": "regex", "pattern": "4111"}]),
            json!({"type": "redact"})
        ),
    ]));
    assert_eq!(m.mask_str("from ACCT-12345678 ok"), "from ****-****5678 ok");
    // Card numbers inside a match keep the deployment's card-number format;
    // the match masks the rest.
    assert_eq!(
        m.mask_str("card: 4111111111111111."),
        "[REDACTED]411111******1111."
    );
    // A match never cuts a number: this one covers the whole card number,
    // which the card-number detector masks.
    assert_eq!(m.mask_str("x 4111111111111111 y"), "x 411111******1111 y");
    assert_eq!(m.mask_str("x 41112222 y"), "x [REDACTED] y");
    assert_eq!(m.mask_str("code 4111 here"), "code [REDACTED] here");
    let found = m.explain(b"from ACCT-12345678 ok");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].start, found[0].end), (5, 18));
    assert_eq!(found[0].rule.as_deref(), Some("accounts"));
}

#[test]
fn json_paths_mask_whole_values_in_json_documents() {
    let m = masker(json!([
        rule(
            "card-json",
            json!([{"type": "column", "jsonPaths": ["$.card.number"]}]),
            json!({"type": "last4"})
        ),
        rule(
            "secrets",
            json!([{"type": "column", "jsonPaths": ["$..secret", "$.items[*].note"]}]),
            json!({"type": "redact"})
        ),
        rule(
            "holder",
            json!([{"type": "column", "jsonPaths": ["$.card['holder']", "$.items[1]"]}]),
            json!({"type": "null"})
        ),
    ]));
    let doc = r#"{"card": {"number": "4111\u00201111 1111 1111", "holder": {"name": "Jo"}},
        "a": {"secret": {"x": "abc", "y": 5, "z": true}},
        "items": [{"note": "call me"}, {"note": "gone"}, {"id": 7}]}"#;
    let want = r#"{"card": {"number": "**** **** **** 1111", "holder": null},
        "a": {"secret": {"x": "[REDACTED]", "y": "[REDACTED]", "z": true}},
        "items": [{"note": "[REDACTED]"}, null, {"id": 7}]}"#;
    assert_eq!(m.mask_str(doc), want);
    let masked: Value = serde_json::from_str(&m.mask_str(doc)).expect("still JSON");
    assert_eq!(masked["items"][2]["id"], 7);
    // JSON lines: each document on its own.
    assert_eq!(
        m.mask_str("{\"secret\":\"a\"}\n{\"secret\":\"b\"}"),
        "{\"secret\":\"[REDACTED]\"}\n{\"secret\":\"[REDACTED]\"}"
    );
    // Not JSON, or malformed JSON: only the text detectors run.
    assert_eq!(m.mask_str("secret: abc"), "secret: abc");
    assert_eq!(
        m.mask_str(r#"{"secret": "abc", "pan": "4111111111111111""#),
        r#"{"secret": "abc", "pan": "411111******1111""#
    );
    // SAD inside a matched value: the whole value is redacted.
    assert_eq!(
        m.mask_str(r#"{"card": {"number": ";4111111111111111=2712101123?"}}"#),
        r#"{"card": {"number": "[REDACTED]"}}"#
    );
}

#[test]
fn rules_that_cannot_run_are_errors_with_paths_and_no_card_numbers() {
    let bad_regex = config(json!([rule(
        "broken",
        json!([{"type": "regex", "pattern": "4111111111111111("}]),
        json!({"type": "redact"})
    )]));
    let err = Masker::from_config(&bad_regex, None).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, MaskingError::Invalid(_)), "{msg}");
    assert!(
        msg.contains("masking.rules[0].spec.detectors[0].pattern"),
        "{msg}"
    );
    assert!(!msg.contains("4111111111111111"), "{msg}");

    let bad_path = config(json!([rule(
        "paths",
        json!([{"type": "column", "jsonPaths": ["$.card["]}]),
        json!({"type": "redact"})
    )]));
    assert!(matches!(
        Masker::from_config(&bad_path, None),
        Err(MaskingError::JsonPath { rule, path, .. }) if rule == "paths" && path == "$.card["
    ));

    let null_pan = config(json!([rule(
        "n",
        json!([{"type": "pan"}]),
        json!({"type": "null"})
    )]));
    assert!(matches!(
        Masker::from_config(&null_pan, None),
        Err(MaskingError::Invalid(_))
    ));

    let too_deep = config(json!([rule(
        "c",
        json!([{"type": "column", "columns": ["a.b.c.d"]}]),
        json!({"type": "redact"})
    )]));
    assert!(matches!(
        Masker::from_config(&too_deep, None),
        Err(MaskingError::Invalid(_))
    ));

    let mixed = config(json!([
        rule("a", json!([{"type": "pan"}]), json!({"type": "truncate"})),
        rule("b", json!([{"type": "pan"}]), hmac()),
    ]));
    let err = Masker::from_config(&mixed, Some(&KEY)).unwrap_err();
    assert!(matches!(err, MaskingError::MixedPanActions(_)), "{err}");
}

#[test]
fn mask_to_appends_to_the_callers_buffer_and_counts_values() {
    let m = Masker::builtin();
    let mut out = b"kept|".to_vec();
    assert_eq!(
        m.mask_to(b"4111111111111111 cvv=123 5555555555554444", &mut out),
        Some(3)
    );
    assert_eq!(
        out,
        b"kept|411111******1111 cvv=[REDACTED] 555555******4444"
    );
    let before = out.clone();
    assert_eq!(m.mask_to(b"nothing to see, order 42", &mut out), None);
    assert_eq!(out, before);
}

#[test]
fn one_masker_serves_many_sessions_at_once() {
    let m = std::sync::Arc::new(masker(json!([rule(
        "cards",
        json!([{"type": "pan"}, {"type": "column", "columns": ["*.pan"]}]),
        hmac()
    )])));
    let want = m.mask_str("4111111111111111").into_owned();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let m = std::sync::Arc::clone(&m);
            std::thread::spawn(move || {
                let mut out = Vec::new();
                (0..200)
                    .map(|_| {
                        out.clear();
                        m.mask_to(b"4111111111111111", &mut out);
                        String::from_utf8(out.clone()).unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().iter().all(|s| *s == want));
    }
}

#[test]
fn regex_matches_that_end_inside_a_number_mask_all_of_it() {
    let m = masker(json!([rule(
        "codes",
        json!([{"type": "regex", "pattern": "[0-9]{3}-x"}]),
        json!({"type": "redact"})
    )]));
    // Masking only `000-x` would leave 6304090210766, a valid 13-digit
    // Maestro number, behind; the second pass would then mask it.
    for (input, want) in [
        ("6304090210766000-x", "[REDACTED]"),
        ("357100000000000300-x", "357100********0300[REDACTED]"),
    ] {
        let once = m.mask_str(input).into_owned();
        assert_eq!(once, want);
        assert_eq!(m.mask_str(&once), once, "masking twice changes nothing");
    }
}

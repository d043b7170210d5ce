//! Properties of the masking engine over generated input: card numbers of
//! every issuer range, length and grouping, embedded in arbitrary text.
//!
//! - masking never reveals more than the BIN and last four digits of a PAN
//!   (less under last4, hmac and redact);
//! - every valid PAN embedded in text is found, at its exact span;
//! - masking is idempotent, also on arbitrary text with digits;
//! - text without digits comes back byte-identical, with nothing written.

use std::borrow::Cow;

use cardgate_crds::config::MaskingConfig;
use cardgate_sidecar::masking::{ISSUERS, Masker};
use proptest::prelude::*;
use serde_json::json;

/// A valid card number: a prefix from an issuer range, a length that range
/// issues, random digits and the Luhn check digit.
fn pan() -> impl Strategy<Value = String> {
    (
        0..ISSUERS.len(),
        any::<u64>(),
        proptest::collection::vec(0u8..10, 19),
    )
        .prop_map(|(i, pick, digits)| {
            let r = &ISSUERS[i];
            let lengths: Vec<usize> = r.lengths.iter().collect();
            let len = lengths[(pick % lengths.len() as u64) as usize];
            let prefix = r.lo + (pick / 7 % u64::from(r.hi - r.lo + 1)) as u32;
            let mut s = format!("{prefix:0width$}", width = usize::from(r.prefix_len));
            for d in &digits[s.len()..len - 1] {
                s.push(char::from(b'0' + d));
            }
            s.push(check_digit(&s));
            s
        })
}

fn check_digit(body: &str) -> char {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    char::from(b'0' + ((10 - sum % 10) % 10) as u8)
}

/// The PAN as people write it: contiguous, or in the usual grouping for its
/// length with spaces or dashes.
fn written(pan: &str, style: u8) -> String {
    let groups: &[usize] = match pan.len() {
        14 => &[4, 6, 4],
        15 => &[4, 6, 5],
        16 => &[4, 4, 4, 4],
        19 => &[4, 4, 4, 4, 3],
        _ => return pan.to_string(),
    };
    let sep = match style % 3 {
        0 => return pan.to_string(),
        1 => " ",
        _ => "-",
    };
    let mut parts = Vec::new();
    let mut at = 0;
    for g in groups {
        parts.push(&pan[at..at + g]);
        at += g;
    }
    parts.join(sep)
}

/// Characters that end a card number without being part of it.
const BOUNDARIES: &[&str] = &[
    " ", ",", ";", "\"", "'", "(", ")", "[", "]", "{", "}", "<", ">", ":", "|", "/", "\t", "\n",
    "=", "_", "#", "!", "*", "&", "?", "~", "@", "$",
];

fn boundary() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(BOUNDARIES)
}

/// Any text without ASCII digits.
fn filler() -> impl Strategy<Value = String> {
    "[^0-9]{0,30}"
}

/// Text with `pans` written in it, each between boundary characters.
fn text_with_pans() -> impl Strategy<Value = (String, Vec<String>)> {
    proptest::collection::vec((filler(), boundary(), pan(), any::<u8>(), boundary()), 1..5)
        .prop_flat_map(|pieces| {
            filler().prop_map(move |tail| {
                let mut text = String::new();
                let mut pans = Vec::new();
                for (fill, before, pan, style, after) in &pieces {
                    text.push_str(fill);
                    text.push_str(before);
                    text.push_str(&written(pan, *style));
                    text.push_str(after);
                    pans.push(pan.clone());
                }
                text.push_str(&tail);
                (text, pans)
            })
        })
}

fn masker_with(action: serde_json::Value) -> Masker {
    let cfg: MaskingConfig = serde_json::from_value(json!({
        "rules": [{"name": "cards", "spec": {"detectors": [{"type": "pan"}], "action": action}}]
    }))
    .unwrap();
    Masker::from_config(&cfg, Some(&[42u8; 32])).unwrap()
}

/// The digits of a PAN a way of showing it may reveal.
type Reveals = fn(&str) -> String;

/// Every way card numbers can be shown, with the digits each may reveal.
fn maskers() -> Vec<(&'static str, Masker, Reveals)> {
    fn bin6(p: &str) -> String {
        format!("{}{}", &p[..6], &p[p.len() - 4..])
    }
    fn bin8(p: &str) -> String {
        let lead = if p.len() >= 16 { 8 } else { 6 };
        format!("{}{}", &p[..lead], &p[p.len() - 4..])
    }
    fn last4(p: &str) -> String {
        p[p.len() - 4..].to_string()
    }
    fn nothing(_: &str) -> String {
        String::new()
    }
    let hmac_ref = json!({"name": "k", "key": "k"});
    vec![
        ("builtin", Masker::builtin(), bin6),
        (
            "bin8",
            masker_with(
                json!({"type": "truncate", "truncate": {"leadingDigits": 8, "trailingDigits": 4}}),
            ),
            bin8,
        ),
        ("last4", masker_with(json!({"type": "last4"})), last4),
        ("redact", masker_with(json!({"type": "redact"})), nothing),
        (
            "hmac",
            masker_with(json!({"type": "hmac", "hmacKeySecretRef": hmac_ref})),
            nothing,
        ),
    ]
}

/// Bytes that matter to the detectors, for dense adversarial input.
const TRICKY: &[u8] = b"0123456789000041111 -_.,;:=^?%\\uUxXbBdDeEfF\"'{}[]<>+*\n\t";

fn json_masker() -> Masker {
    let cfg: MaskingConfig = serde_json::from_value(json!({
        "rules": [{"name": "json", "spec": {
            "detectors": [{"type": "column", "jsonPaths": ["$..a", "$[*].b"]}, {"type": "regex", "pattern": "[0-9]{3}-x"}],
            "action": {"type": "redact"}
        }}]
    }))
    .unwrap();
    Masker::from_config(&cfg, None).unwrap()
}

fn mask(m: &Masker, s: &str) -> String {
    m.mask_str(s).into_owned()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn masking_never_reveals_more_than_bin_and_last4((text, pans) in text_with_pans()) {
        for (name, m, reveal) in maskers() {
            let out = mask(&m, &text);
            let allowed: String = pans.iter().map(|p| reveal(p)).collect();
            // The filler holds no digits: every digit left comes from a PAN.
            prop_assert_eq!(digits(&out), allowed, "{} masked {:?} as {:?}", name, text, out);
            for p in &pans {
                prop_assert!(!digits(&out).contains(p.as_str()), "{}: {:?}", name, out);
            }
        }
    }

    #[test]
    fn every_embedded_pan_is_found_at_its_span((text, pans) in text_with_pans()) {
        let m = Masker::builtin();
        let found = m.explain(text.as_bytes());
        prop_assert_eq!(found.len(), pans.len(), "{:?}: {:?}", text, found);
        for (d, p) in found.iter().zip(&pans) {
            prop_assert_eq!(digits(&text[d.start..d.end]), p.clone());
        }
        let mut out = Vec::new();
        prop_assert_eq!(m.mask_to(text.as_bytes(), &mut out), Some(pans.len()));
    }

    #[test]
    fn masking_is_idempotent_with_pans((text, _) in text_with_pans()) {
        for (name, m, _) in maskers() {
            let once = mask(&m, &text);
            prop_assert_eq!(mask(&m, &once), once.clone(), "{} on {:?}", name, text);
        }
    }

    #[test]
    fn masking_is_idempotent_on_any_text(text in "\\PC{0,200}", ascii in "[ -~]{0,200}") {
        for (name, m, _) in maskers() {
            for t in [&text, &ascii] {
                let once = mask(&m, t);
                prop_assert_eq!(mask(&m, &once), once.clone(), "{} on {:?}", name, t);
            }
        }
    }

    #[test]
    fn dense_tricky_input_never_panics_and_masks_idempotently(
        bytes in proptest::collection::vec(proptest::sample::select(TRICKY), 0..400),
        seeds in proptest::collection::vec(pan(), 0..3),
    ) {
        // Card numbers and track fragments mixed with escapes, separators,
        // hex letters and JSON punctuation.
        let mut input = bytes;
        for (i, p) in seeds.iter().enumerate() {
            let at = (i * 37) % (input.len() + 1);
            input.splice(at..at, p.bytes());
        }
        let mut all = maskers();
        all.push(("json", json_masker(), |_: &str| String::new()));
        for (name, m, _) in &all {
            let mut once = Vec::new();
            if m.mask_to(&input, &mut once).is_none() {
                once = input.clone();
            }
            let mut twice = Vec::new();
            if m.mask_to(&once, &mut twice).is_none() {
                twice = once.clone();
            }
            prop_assert_eq!(&twice, &once, "{} on {:?}", name, String::from_utf8_lossy(&input));
            let _ = m.explain(&input);
        }
    }

    #[test]
    fn sad_is_never_shown(
        pan in pan(),
        expiry in 1000u32..10000,
        extra in "[0-9]{0,12}",
        cvv in 100u32..10000,
        before in filler(),
        after in filler(),
    ) {
        let text = format!(
            "{before} ;{pan}={expiry}101{extra}? \"cvv\":\"{cvv}\" %B{pan}^DOE/J^{expiry}101{extra}? {after}"
        );
        let out = mask(&Masker::builtin(), &text);
        prop_assert_eq!(digits(&out), "", "{:?} became {:?}", text, out);
    }

    #[test]
    fn text_without_digits_is_untouched(text in "[^0-9]{0,300}") {
        let cfg: MaskingConfig = serde_json::from_value(json!({
            "rules": [{"name": "cols", "spec": {
                "detectors": [{"type": "column", "columns": ["*.pan"]}],
                "action": {"type": "hmac", "hmacKeySecretRef": {"name": "k", "key": "k"}}
            }}]
        }))
        .unwrap();
        for m in [Masker::builtin(), Masker::from_config(&cfg, Some(&[1u8; 32])).unwrap()] {
            let mut out = Vec::new();
            prop_assert_eq!(m.mask_to(text.as_bytes(), &mut out), None);
            prop_assert!(out.is_empty());
            prop_assert!(matches!(m.mask_str(&text), Cow::Borrowed(_)));
            prop_assert!(m.explain(text.as_bytes()).is_empty());
        }
    }
}

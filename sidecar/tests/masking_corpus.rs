//! A corpus of card numbers and sensitive authentication data in the places
//! they turn up (JSON, escaped JSON, SQL, CSV, XML, URLs, log lines,
//! PostgreSQL error details, EMV dumps), and of numbers that look like card
//! numbers but are not (order ids, timestamps, phone numbers, IBANs, UUIDs,
//! long digit runs, numbers already masked). Each case states the exact text
//! the built-in masker must produce.

use std::borrow::Cow;

use cardgate_sidecar::masking::{Masker, card_brand};

/// Every card number used below, with its brand: the corpus fails loudly if
/// one of them is mistyped (a bad check digit would turn a positive case
/// into a silent negative one).
const CARDS: &[(&str, &str)] = &[
    ("4111111111111111", "visa"),
    ("4012888888881881", "visa"),
    ("4222222222222", "visa"),
    ("4111111111111111110", "visa"),
    ("5555555555554444", "mastercard"),
    ("5105105105105100", "mastercard"),
    ("2223003122003222", "mastercard"),
    ("2720990000000007", "mastercard"),
    ("378282246310005", "amex"),
    ("371449635398431", "amex"),
    ("6011111111111117", "discover"),
    ("6445644564456445", "discover"),
    ("6500000000000002", "discover"),
    ("3530111333300000", "jcb"),
    ("3566002020360505", "jcb"),
    ("30569309025904", "diners"),
    ("36227206271667", "diners"),
    ("38520000023237", "diners"),
    ("6200000000000005", "unionpay"),
    ("6212345678900000003", "unionpay"),
    ("6759649826438453", "maestro"),
    ("2200000000000004", "mir"),
];

#[test]
fn corpus_card_numbers_are_valid() {
    for (pan, brand) in CARDS {
        assert_eq!(card_brand(pan.as_bytes()), Some(*brand), "{pan}");
    }
}

fn mask(s: &str) -> String {
    let masker = Masker::builtin();
    let mut out = Vec::new();
    let n = masker.mask_to(s.as_bytes(), &mut out);
    let via_str = masker.mask_str(s);
    match n {
        None => {
            assert!(out.is_empty(), "nothing detected, nothing written: {s}");
            assert!(matches!(via_str, Cow::Borrowed(_)), "{s}");
            s.to_string()
        }
        Some(_) => {
            let text = String::from_utf8(out).expect("masked text is UTF-8");
            assert_eq!(via_str, text);
            text
        }
    }
}

#[track_caller]
fn check(cases: &[(&str, &str)]) {
    let mut failures = Vec::new();
    for (input, want) in cases {
        let got = mask(input);
        if got != *want {
            failures.push(format!("  input: {input}\n   want: {want}\n    got: {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn every_brand_and_length_contiguous() {
    check(&[
        ("4111111111111111", "411111******1111"),
        ("4222222222222", "422222***2222"),
        ("4111111111111111110", "411111*********1110"),
        ("5105105105105100", "510510******5100"),
        ("2223003122003222", "222300******3222"),
        ("2720990000000007", "272099******0007"),
        ("378282246310005", "378282*****0005"),
        ("6011111111111117", "601111******1117"),
        ("6445644564456445", "644564******6445"),
        ("6500000000000002", "650000******0002"),
        ("3566002020360505", "356600******0505"),
        ("30569309025904", "305693****5904"),
        ("38520000023237", "385200****3237"),
        ("6212345678900000003", "621234*********0003"),
        ("6759649826438453", "675964******8453"),
        ("2200000000000004", "220000******0004"),
    ]);
}

#[test]
fn groupings_keep_their_separators() {
    check(&[
        ("4111 1111 1111 1111", "4111 11** **** 1111"),
        ("4111-1111-1111-1111", "4111-11**-****-1111"),
        ("3782 822463 10005", "3782 82**** *0005"),
        ("3714-496353-98431", "3714-49****-*8431"),
        ("3056 930902 5904", "3056 93**** 5904"),
        ("4111 1111 1111 1111 110", "4111 11** **** ***1 110"),
        ("6212 3456 7890 0000 003", "6212 34** **** ***0 003"),
    ]);
}

#[test]
fn contexts() {
    check(&[
        (
            r#"{"pan":"4111111111111111","name":"Jo"}"#,
            r#"{"pan":"411111******1111","name":"Jo"}"#,
        ),
        (r#"{"pan":5555555555554444}"#, r#"{"pan":555555******4444}"#),
        (
            r#"{\"card\":\"378282246310005\"}"#,
            r#"{\"card\":\"378282*****0005\"}"#,
        ),
        (
            r#""line one\n4111111111111111\tnext""#,
            r#""line one\n411111******1111\tnext""#,
        ),
        (
            r#"{"html":"\u003e4111111111111111\u003c"}"#,
            r#"{"html":"\u003e411111******1111\u003c"}"#,
        ),
        (
            "INSERT INTO cards (pan) VALUES ('6011111111111117');",
            "INSERT INTO cards (pan) VALUES ('601111******1117');",
        ),
        (
            "SELECT * FROM cards WHERE pan = E'4111111111111111'",
            "SELECT * FROM cards WHERE pan = E'411111******1111'",
        ),
        (
            "42,Jo Smith,4012888888881881,2027-01",
            "42,Jo Smith,401288******1881,2027-01",
        ),
        (
            "7\t3530111333300000\tsettled\n",
            "7\t353011******0000\tsettled\n",
        ),
        (
            "<card><number>5555555555554444</number></card>",
            "<card><number>555555******4444</number></card>",
        ),
        (
            "https://pay.example/charge?pan=4111111111111111&amount=10",
            "https://pay.example/charge?pan=411111******1111&amount=10",
        ),
        (
            "https://pay.example/charge?q=card%3D4111111111111111",
            "https://pay.example/charge?q=card%3D411111******1111",
        ),
        (
            "https://pay.example/charge?q=card%204111111111111111",
            "https://pay.example/charge?q=card%20411111******1111",
        ),
        (
            "2026-11-22T10:00:00Z ERROR charge failed card=4111111111111111 code=51",
            "2026-11-22T10:00:00Z ERROR charge failed card=411111******1111 code=51",
        ),
        (
            "Key (pan)=(4111111111111111) already exists.",
            "Key (pan)=(411111******1111) already exists.",
        ),
        ("Card No.4111111111111111", "Card No.411111******1111"),
        (
            "receipt_4111111111111111.pdf",
            "receipt_411111******1111.pdf",
        ),
        ("4111111111111111 at start", "411111******1111 at start"),
        ("at end 4111111111111111", "at end 411111******1111"),
        (
            "two 4111111111111111,5555 5555 5555 4444 on a line",
            "two 411111******1111,5555 55** **** 4444 on a line",
        ),
        (
            "qty 2 4111 1111 1111 1111 exp 12/27",
            "qty 2 4111 11** **** 1111 exp 12/27",
        ),
        ("ümlaut: 4111111111111111 ✓", "ümlaut: 411111******1111 ✓"),
    ]);
}

#[test]
fn look_alikes_stay_as_they_are() {
    let unchanged = [
        // Order ids and references: wrong check digit, no issuer, or too long.
        "order 4111111111111112 shipped",
        "order 1234567890123456 shipped",
        "ref 9999999999999995",
        "41111111111111111111 and 123456789012345678901234",
        // Epoch timestamps in seconds and milliseconds.
        "ts=1700000000 ts_ms=1700000000000",
        // Phone numbers.
        "call +14155552671 or (415) 555-2671 or +49 151 23456789",
        "fax +4111111111111111",
        // IBANs, compact and grouped.
        "IBAN DE89370400440532013000",
        "IBAN DE89 3704 0044 0532 0130 00",
        "IBAN GB82 WEST 1234 5698 7654 32",
        // UUIDs and hashes.
        "id 123e4567-e89b-12d3-a456-426614174000",
        "id 12345678-1234-1234-1234-123456789012",
        "sha e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        // Already masked.
        "411111******1111 and 4111 11** **** 1111 and ************1111",
        "XXXX-XXXX-XXXX-1111 and 3782 82**** *0005",
        // Glued to letters, decimals, wrong groupings and shapes.
        "ab4111111111111111 4111111111111111cd",
        "score 0.4111111111111111 and 12.5555555555554444",
        "4111 1111 1111 111 1",
        "4111 1111-1111 1111",
        "4111  1111  1111  1111",
        "3782 8224 6310 005",
        // Amex is 15 digits; Mastercard 16.
        "3782822463100052 555555555555444",
        // Dates, amounts, versions, addresses.
        "2026-11-22 12:30:00 1,234,567.89 v1.2.3 10.0.0.1",
        // CVV-sized numbers without a card-security field name.
        r#"{"qty": "123", "order": 4567}"#,
        "cvv_count=3 cvvs=12345",
    ];
    let cases: Vec<(&str, &str)> = unchanged.iter().map(|s| (*s, *s)).collect();
    check(&cases);
}

#[test]
fn track_data_is_redacted_whole() {
    check(&[
        (
            "%B4111111111111111^DOE/JOHN^27121010000000000000000?",
            "[REDACTED]",
        ),
        (
            "swipe B4111111111111111^DOE/JOHN ^2712101000 done",
            "swipe [REDACTED] done",
        ),
        (
            ";4111111111111111=27121010000000000000? ok",
            "[REDACTED] ok",
        ),
        ("t2=4111111111111111=2712101123456", "t2=[REDACTED]"),
        (
            r#"{"track2":";5555555555554444=2712101?"}"#,
            r#"{"track2":"[REDACTED]"}"#,
        ),
    ]);
}

#[test]
fn emv_tags_with_track_data_or_pan() {
    check(&[
        // 57: track 2 equivalent data.
        (
            "57134111111111111111D27122010000000000000F",
            "5713[REDACTED]",
        ),
        // 9F6B: track 2 data (contactless).
        (
            "9F6B134111111111111111D27122010000000000000F",
            "9F6B13[REDACTED]",
        ),
        // 56: track 1 data, hex-encoded ASCII ("B4111111111111111^DOE/JOHN^2712").
        (
            "561F42343131313131313131313131313131315E444F452F4A4F484E5E32373132",
            "561F[REDACTED]",
        ),
        // 5A: application PAN, in a template with other tags after it.
        (
            "70125A0841111111111111115F24032712319F0702FF00",
            "70125A08411111******11115F24032712319F0702FF00",
        ),
        // Odd-length PAN padded with F.
        ("5A0A6212345678900000003F", "5A0A621234*********0003F"),
    ]);
}

#[test]
fn card_security_codes_pins_and_pin_blocks_next_to_their_names() {
    check(&[
        (r#"{"cvv":"123"}"#, r#"{"cvv":"[REDACTED]"}"#),
        (r#"{"card_cvc": 1234}"#, r#"{"card_cvc": [REDACTED]}"#),
        (r#"{\"cvv2\":\"123\"}"#, r#"{\"cvv2\":\"[REDACTED]\"}"#),
        (
            r#"{\\\"securityCode\\\":\\\"987\\\"}"#,
            r#"{\\\"securityCode\\\":\\\"[REDACTED]\\\"}"#,
        ),
        ("/pay?cvc=321&x=y", "/pay?cvc=[REDACTED]&x=y"),
        ("<CVV2>999</CVV2>", "<CVV2>[REDACTED]</CVV2>"),
        ("<ns:cid>1234</ns:cid>", "<ns:cid>[REDACTED]</ns:cid>"),
        ("cvv=123 approved", "cvv=[REDACTED] approved"),
        ("CVV: 123.", "CVV: [REDACTED]."),
        ("cvv: '123'", "cvv: '[REDACTED]'"),
        (
            "UPDATE cards SET cvv = '123'",
            "UPDATE cards SET cvv = '[REDACTED]'",
        ),
        ("params: {:cvv=>\"123\"}", "params: {:cvv=>\"[REDACTED]\"}"),
        ("pin=1234", "pin=[REDACTED]"),
        (
            r#"{"pinBlock":"041234FFFFFFFFFF"}"#,
            r#"{"pinBlock":"[REDACTED]"}"#,
        ),
        (
            "pin_block=9A3F2C7D1E5B8A604C2D1F3E5A7B9C0D end",
            "pin_block=[REDACTED] end",
        ),
        // The card number next to it is masked by its own rule.
        (
            r#"{"pan":"4111111111111111","cvv":"123"}"#,
            r#"{"pan":"411111******1111","cvv":"[REDACTED]"}"#,
        ),
    ]);
}

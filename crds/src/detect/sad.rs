//! Sensitive authentication data (PCI DSS 3.3.1): magnetic-stripe track data,
//! EMV tags that carry it, CVV/CVC/CID values and PINs next to their field
//! names, PIN blocks. Always redacted whole, and looked for before card
//! numbers so that a PAN inside track data is never shown truncated.
//!
//! Every detector here is anchored on a digit run the scanner already found,
//! so text without digits costs nothing.

use super::issuers::card_brand;

/// What kind of sensitive authentication data was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SadKind {
    /// Track 1 (`%B…^NAME^…?`), also hex-encoded in EMV tag 56.
    Track1,
    /// Track 2 (`;PAN=YYMM…?`) or its EMV equivalent (tags 57 and 9F6B).
    Track2,
    /// A card verification value next to its field name.
    Cvv,
    /// A PIN next to its field name.
    Pin,
    /// A PIN block next to its field name.
    PinBlock,
}

impl SadKind {
    /// Name used in `mask --explain` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Track1 => "track1",
            Self::Track2 => "track2",
            Self::Cvv => "cvv",
            Self::Pin => "pin",
            Self::PinBlock => "pin-block",
        }
    }
}

/// Something found in a hex dump of EMV TLV data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmvFind {
    /// Track data (tags 56, 57, 9F6B): redact.
    Sad(SadKind),
    /// The application PAN (tag 5A): the card-number action applies.
    Pan(&'static str),
}

/// Longest track 1 record, start sentinel to end sentinel.
const TRACK1_MAX: usize = 79;
/// Longest cardholder name on track 1.
const TRACK1_NAME_MAX: usize = 26;

/// Field names whose 3–4 digit values are card verification values. Names
/// are compared lower-cased with `_` and `-` removed, and also match as a
/// suffix (`card_cvv`, `cardCvc2`), except `cid` which matches only whole.
const CVV_SUFFIXES: &[&[u8]] = &[
    b"cvv",
    b"cvv2",
    b"cvc",
    b"cvc2",
    b"cvn",
    b"cvn2",
    b"cvd",
    b"cav2",
    b"csc",
    b"securitycode",
    b"cardverificationvalue",
    b"cardverificationcode",
];
/// Field names whose 4–12 digit values are PINs (whole names only).
const PIN_NAMES: &[&[u8]] = &[b"pin", b"pincode", b"pinnumber", b"cardpin", b"atmpin"];
/// Field names whose 16 or 32 hex-digit values are PIN blocks (whole names).
const PIN_BLOCK_NAMES: &[&[u8]] = &[b"pinblock", b"epb", b"encryptedpinblock", b"pinblk"];

/// Track data anchored on the digit run `input[start..end]`: the span to
/// redact, if any.
pub fn track_at(input: &[u8], start: usize, end: usize) -> Option<(usize, usize, SadKind)> {
    match input.get(end)? {
        b'^' => track1(input, start, end),
        b'=' | b'D' | b'd' => track2(input, start, end),
        _ => None,
    }
}

/// `%B` + PAN + `^` + name + `^` + expiry, service code, discretionary data,
/// `?`. Without the `B` format code the PAN must be a valid card number.
fn track1(input: &[u8], start: usize, end: usize) -> Option<(usize, usize, SadKind)> {
    let len = end - start;
    let format_b = start >= 1 && input[start - 1].eq_ignore_ascii_case(&b'B');
    if !(12..=19).contains(&len) || !(format_b || card_brand(&input[start..end]).is_some()) {
        return None;
    }
    let name_start = end + 1;
    let name_len = input[name_start..]
        .iter()
        .take(TRACK1_NAME_MAX + 1)
        .position(|&b| b == b'^')?;
    if !input[name_start..name_start + name_len]
        .iter()
        .all(|b| (b' '..=b'~').contains(b) && *b != b'?')
    {
        return None;
    }
    let span_start = if format_b {
        if start >= 2 && input[start - 2] == b'%' {
            start - 2
        } else {
            start - 1
        }
    } else {
        start
    };
    let data_start = name_start + name_len + 1;
    let budget = TRACK1_MAX.saturating_sub(data_start - span_start);
    let data = input[data_start..]
        .iter()
        .take(budget)
        .take_while(|b| b.is_ascii_alphanumeric())
        .count();
    let mut span_end = data_start + data;
    if input.get(span_end) == Some(&b'?') {
        span_end += 1;
    }
    Some((span_start, span_end, SadKind::Track1))
}

/// PAN + `=` (or `D` in EMV hex) + expiry, service code, discretionary data.
/// With the `;` start sentinel any 12–19 digits count as the PAN; otherwise
/// it must be a valid card number, which may end a longer run of hex (a TLV
/// tag and length glued in front of it).
fn track2(input: &[u8], start: usize, end: usize) -> Option<(usize, usize, SadKind)> {
    let sep = input[end];
    let sentinel = start >= 1 && input[start - 1] == b';';
    let after = input[end + 1..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    let len = end - start;
    let pan_start = if sep == b'=' {
        let with_sentinel = sentinel && (12..=19).contains(&len) && after >= 4;
        if !with_sentinel && (after < 7 || card_brand(&input[start..end]).is_none()) {
            return None;
        }
        start
    } else {
        if after < 7 {
            return None;
        }
        (13..=19.min(len))
            .rev()
            .map(|n| end - n)
            .find(|&s| card_brand(&input[s..end]).is_some())?
    };
    let mut span_end = end + 1;
    if sep == b'=' {
        span_end += after;
        if input.get(span_end) == Some(&b'?') {
            span_end += 1;
        }
    } else {
        span_end += input[span_end..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
    }
    let span_start = if sentinel && pan_start == start {
        start - 1
    } else {
        pan_start
    };
    Some((span_start, span_end, SadKind::Track2))
}

/// Looks for EMV tags carrying track data or the PAN in the hex token
/// `input[token_start..token_end]`, at tag positions from `from` on: 56
/// (track 1, hex-encoded ASCII), 57 and 9F6B (track 2 equivalent), 5A
/// (application PAN). Returns the value span and what it holds.
pub fn emv_in_hex(
    input: &[u8],
    token_start: usize,
    token_end: usize,
    from: usize,
) -> Option<(usize, usize, EmvFind)> {
    let token = &input[token_start..token_end];
    let mut i = from.saturating_sub(token_start);
    while i + 4 <= token.len() {
        let (tag_len, tag) = match [token[i], token[i + 1]] {
            [b'9', b'F' | b'f'] if token[i + 2..i + 4].eq_ignore_ascii_case(b"6B") => {
                (4, Tag::Track2)
            }
            [b'5', b'6'] => (2, Tag::Track1),
            [b'5', b'7'] => (2, Tag::Track2),
            [b'5', b'A' | b'a'] => (2, Tag::Pan),
            _ => {
                i += 1;
                continue;
            }
        };
        if let Some((vs, ve, what)) = emv_value(token, i + tag_len, tag) {
            return Some((token_start + vs, token_start + ve, what));
        }
        i += 1;
    }
    None
}

#[derive(Clone, Copy)]
enum Tag {
    Track1,
    Track2,
    Pan,
}

/// Checks the length byte at `at` and the value after it against what `tag`
/// must hold; returns the value's span within `token`.
fn emv_value(token: &[u8], at: usize, tag: Tag) -> Option<(usize, usize, EmvFind)> {
    let len = usize::from(hex_byte(token.get(at..at + 2)?)?);
    let vs = at + 2;
    let ve = vs + 2 * len;
    let value = token.get(vs..ve)?;
    match tag {
        Tag::Track1 => {
            // ASCII track 1: 'B', printable characters, two '^' separators.
            let mut carets = 0;
            for (k, pair) in value.chunks(2).enumerate() {
                let b = hex_byte(pair)?;
                if (k == 0 && b != b'B') || !(b' '..=b'~').contains(&b) {
                    return None;
                }
                carets += usize::from(b == b'^');
            }
            (carets >= 2).then_some((vs, ve, EmvFind::Sad(SadKind::Track1)))
        }
        Tag::Track2 => {
            let pan = value.iter().take_while(|b| b.is_ascii_digit()).count();
            let rest = value.get(pan + 1..)?;
            let ok = (12..=19).contains(&pan)
                && value[pan].eq_ignore_ascii_case(&b'D')
                && rest.iter().take_while(|b| b.is_ascii_digit()).count() >= 4;
            ok.then_some((vs, ve, EmvFind::Sad(SadKind::Track2)))
        }
        Tag::Pan => {
            let digits = value.iter().take_while(|b| b.is_ascii_digit()).count();
            let padding = &value[digits..];
            if !padding.iter().all(|b| b.eq_ignore_ascii_case(&b'F')) || padding.len() > 1 {
                return None;
            }
            let brand = card_brand(&value[..digits])?;
            Some((vs, vs + digits, EmvFind::Pan(brand)))
        }
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    let hi = (pair[0] as char).to_digit(16)?;
    let lo = (pair[1] as char).to_digit(16)?;
    Some((hi * 16 + lo) as u8)
}

/// A CVV, PIN or PIN block: the value token around the digit run
/// `input[start..end]` directly after a field name it belongs to
/// (`"cvv": "123"`, `\"cvc\":\"123\"`, `cvv=123`, `<cvv2>123</cvv2>`,
/// `pin_block=0412…`).
pub fn field_value_at(input: &[u8], start: usize, end: usize) -> Option<(usize, usize, SadKind)> {
    // Cheap rejection first: most digit runs follow a character that can
    // neither end a field name nor belong to a hex value.
    let first = *input.get(start.checked_sub(1)?)?;
    if !is_field_separator(first) && !first.is_ascii_hexdigit() {
        return None;
    }
    let vs = start
        - input[..start]
            .iter()
            .rev()
            .take(32)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
    let ve = end
        + input[end..]
            .iter()
            .take(33)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
    if !is_field_separator(*input.get(vs.checked_sub(1)?)?) {
        return None;
    }
    if input.get(ve).is_some_and(|&c| !is_value_end(c)) {
        return None;
    }
    let mut name = [0u8; 40];
    let name = field_name_before(input, vs, &mut name)?;
    let all_digits = vs == start && ve == end;
    let len = ve - vs;
    let kind = if CVV_SUFFIXES.iter().any(|s| name.ends_with(s)) || name == b"cid" {
        SadKind::Cvv
    } else if PIN_NAMES.contains(&name) {
        SadKind::Pin
    } else if PIN_BLOCK_NAMES.contains(&name) {
        SadKind::PinBlock
    } else {
        return None;
    };
    let ok = match kind {
        SadKind::Cvv => all_digits && (3..=4).contains(&len),
        SadKind::Pin => all_digits && (4..=12).contains(&len),
        _ => len == 16 || len == 32,
    };
    ok.then_some((vs, ve, kind))
}

/// Characters that can come between a field name and its value (quotes,
/// `:`, `=`, `>`, blanks).
#[inline]
pub fn is_field_separator(b: u8) -> bool {
    matches!(b, b'"' | b'\'' | b'\\' | b':' | b'=' | b'>' | b' ' | b'\t')
}

/// Characters that end a field value (quotes, separators, markup, space).
fn is_value_end(c: u8) -> bool {
    matches!(
        c,
        b'"' | b'\''
            | b'\\'
            | b'&'
            | b'<'
            | b','
            | b'.'
            | b';'
            | b'}'
            | b']'
            | b')'
            | b'|'
            | b' '
            | b'\t'
            | b'\r'
            | b'\n'
    )
}

/// The field name ending just before a value at `value_start`, lower-cased
/// without `_` and `-`: skips an opening quote (plain or escaped), blanks, a
/// separator (`:`, `=`, `=>`, or the `>` closing an XML start tag), blanks and
/// a closing quote.
fn field_name_before<'a>(
    input: &[u8],
    value_start: usize,
    buf: &'a mut [u8; 40],
) -> Option<&'a [u8]> {
    let mut i = value_start;
    let skip = |i: &mut usize, pred: fn(u8) -> bool, max: usize| {
        let mut n = 0;
        while *i > 0 && n < max && pred(input[*i - 1]) {
            *i -= 1;
            n += 1;
        }
    };
    let quote = |b: u8| matches!(b, b'"' | b'\'' | b'\\');
    let blank = |b: u8| b == b' ' || b == b'\t';
    skip(&mut i, quote, 7);
    skip(&mut i, blank, 8);
    match input.get(i.checked_sub(1)?)? {
        b':' | b'=' => i -= 1,
        b'>' => {
            i -= 1;
            if i > 0 && input[i - 1] == b'=' {
                i -= 1;
            }
        }
        _ => return None,
    }
    skip(&mut i, blank, 8);
    skip(&mut i, quote, 7);
    let name_end = i;
    skip(
        &mut i,
        |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
        41,
    );
    let raw = &input[i..name_end];
    if raw.is_empty() || raw.len() > 40 {
        return None;
    }
    let mut n = 0;
    for &b in raw {
        if b != b'_' && b != b'-' {
            buf[n] = b.to_ascii_lowercase();
            n += 1;
        }
    }
    Some(&buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Field detection anchored on the first occurrence of `digits` in `s`.
    fn field(s: &str, digits: &str) -> Option<(usize, usize, SadKind)> {
        let start = s.find(digits)?;
        field_value_at(s.as_bytes(), start, start + digits.len())
    }

    #[test]
    fn field_names() {
        let kind = |s, d| field(s, d).map(|f| f.2);
        assert_eq!(
            field(r#"{"cvv": "123"}"#, "123"),
            Some((9, 12, SadKind::Cvv))
        );
        assert_eq!(
            kind(r#"{\"card_cvc\":\"1234\"}"#, "1234"),
            Some(SadKind::Cvv)
        );
        assert_eq!(kind("?cvv2=123&x=1", "123"), Some(SadKind::Cvv));
        assert_eq!(kind("<ns:CVV2>123</ns:CVV2>", "123"), Some(SadKind::Cvv));
        assert_eq!(kind("cid=123", "123"), Some(SadKind::Cvv));
        assert_eq!(kind("pin: 1234", "1234"), Some(SadKind::Pin));
        assert_eq!(
            field(r#""pinBlock":"041234FFFFFFFFFF""#, "041234"),
            Some((12, 28, SadKind::PinBlock))
        );
        assert_eq!(kind(r#"{"order": "123"}"#, "123"), None);
        assert_eq!(kind(r#"{"cvv": "12345"}"#, "12345"), None);
        assert_eq!(kind(r#"{"acid": "123"}"#, "123"), None);
        assert_eq!(kind("cvv=123abc", "123"), None);
    }

    #[test]
    fn emv() {
        let t = b"5A0841111111111111115F2403251231";
        let (s, e, f) = emv_in_hex(t, 0, t.len(), 0).unwrap();
        assert_eq!(
            (&t[s..e], f),
            (&b"4111111111111111"[..], EmvFind::Pan("visa"))
        );
        let t = b"57134111111111111111D25122010000000000000F";
        let (s, e, f) = emv_in_hex(t, 0, t.len(), 0).unwrap();
        assert_eq!((s, e, f), (4, t.len(), EmvFind::Sad(SadKind::Track2)));
        assert_eq!(emv_in_hex(b"e3b0c44298fc1c149afbf4c8", 0, 24, 0), None);
    }
}

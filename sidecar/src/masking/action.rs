//! How a detected value is shown: truncated, last four, redacted or replaced
//! by a keyed token. Every output is ASCII apart from a configured
//! replacement, and contains no digit the action does not mean to show, so
//! masked text is never detected again.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The character written in place of a hidden digit or character.
pub const MASK_CHAR: u8 = b'*';
/// Prefix of keyed tokens.
pub const TOKEN_PREFIX: &str = "tok_";
/// Token alphabet: 16 consonants, so a token has no digits (never taken for
/// a card number) and spells no words.
const TOKEN_ALPHABET: &[u8; 16] = b"bcdfghjklmnpqrst";
/// Bytes of the HMAC kept in a token: 128 bits, as PCI DSS 3.5.1.1 asks of
/// keyed hashes.
const TOKEN_BYTES: usize = 16;
/// Length of a token, prefix included.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 2 * TOKEN_BYTES;
/// Shortest HMAC key accepted.
pub const MIN_HMAC_KEY_LEN: usize = 32;

/// A keyed HMAC-SHA-256 state, ready to clone for each token.
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

impl HmacKey {
    /// Keys tokens with `key`; the caller enforces [`MIN_HMAC_KEY_LEN`].
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length (long ones are hashed first), so
        // this cannot fail.
        Self(<Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!()))
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

/// How a value found in text is shown.
#[derive(Debug, Clone)]
pub enum TextAction {
    /// First `lead` and last `trail` digits kept (see [`visible_digits`]).
    Truncate { lead: u8, trail: u8 },
    /// Last four digits kept.
    Last4,
    /// Replaced by a fixed text.
    Redact(Box<str>),
    /// Replaced by a keyed token.
    Hmac(HmacKey),
}

/// How many leading and trailing digits of a value with `n` digit positions
/// stay visible. Leading digits are shown only for card-number lengths (13
/// or more; 8 only from 16 on, else 6), trailing digits only when at least as
/// many stay hidden, so a short value (a CVV, a PIN) is never shown.
pub fn visible_digits(n: usize, lead: u8, trail: u8) -> (usize, usize) {
    let (lead, trail) = (usize::from(lead), usize::from(trail));
    let lead = match n {
        0..=12 => 0,
        13..=15 if lead > 6 => 6,
        _ => lead,
    };
    let trail = if n >= 13 || n >= 2 * trail { trail } else { 0 };
    (lead, trail)
}

/// Writes `value` with digits hidden except the visible ones. Spaces and
/// dashes stay so a card number keeps its shape; `*` counts as an already
/// hidden digit (so masking twice changes nothing); every other character
/// becomes one `*`.
pub fn mask_digits(value: &[u8], lead: u8, trail: u8, out: &mut Vec<u8>) {
    let n = value
        .iter()
        .filter(|&&b| b.is_ascii_digit() || b == MASK_CHAR)
        .count();
    let (lead, trail) = visible_digits(n, lead, trail);
    let hidden = lead..n - trail;
    // Card numbers (digits, spaces, dashes) are copied and masked in place.
    let base = out.len();
    out.extend_from_slice(value);
    let mut i = 0;
    for b in &mut out[base..] {
        match *b {
            b'0'..=b'9' | MASK_CHAR => {
                if hidden.contains(&i) {
                    *b = MASK_CHAR;
                }
                i += 1;
            }
            b' ' | b'-' => {}
            _ => {
                out.truncate(base);
                mask_text(value, hidden, out);
                return;
            }
        }
    }
}

/// [`mask_digits`] for values with other characters: each becomes one `*`.
fn mask_text(value: &[u8], hidden: std::ops::Range<usize>, out: &mut Vec<u8>) {
    let mut i = 0;
    for &b in value {
        match b {
            b'0'..=b'9' | MASK_CHAR => {
                out.push(if hidden.contains(&i) { MASK_CHAR } else { b });
                i += 1;
            }
            b' ' | b'-' => out.push(b),
            // UTF-8 continuation bytes belong to the character already masked.
            0x80..=0xBF => {}
            _ => out.push(MASK_CHAR),
        }
    }
}

/// The keyed token of `value`: `tok_` and 32 letters from 128 bits of
/// HMAC-SHA-256. A card number is keyed by its digits alone, so the same
/// number gives the same token however it is grouped.
pub fn write_token(key: &HmacKey, value: &[u8], out: &mut Vec<u8>) {
    let mut mac = key.0.clone();
    if let Some(digits) = card_digits(value) {
        mac.update(&digits.0[..digits.1]);
    } else {
        mac.update(value);
    }
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(TOKEN_PREFIX.as_bytes());
    for b in &tag[..TOKEN_BYTES] {
        out.push(TOKEN_ALPHABET[usize::from(b >> 4)]);
        out.push(TOKEN_ALPHABET[usize::from(b & 0xf)]);
    }
}

/// Whether `value` already is a token, which keying again would only hide.
pub fn is_token(value: &[u8]) -> bool {
    value.len() == TOKEN_LEN
        && value.starts_with(TOKEN_PREFIX.as_bytes())
        && value[TOKEN_PREFIX.len()..]
            .iter()
            .all(|b| TOKEN_ALPHABET.contains(b))
}

/// The digits of a value made only of 13–19 digits, spaces and dashes.
fn card_digits(value: &[u8]) -> Option<([u8; 19], usize)> {
    let mut digits = [0u8; 19];
    let mut n = 0;
    for &b in value {
        match b {
            b'0'..=b'9' if n < digits.len() => {
                digits[n] = b;
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return None,
        }
    }
    (n >= 13).then_some((digits, n))
}

impl TextAction {
    /// Writes how `value` is shown under this action.
    pub fn apply(&self, value: &[u8], out: &mut Vec<u8>) {
        match self {
            Self::Truncate { lead, trail } => mask_digits(value, *lead, *trail, out),
            Self::Last4 => mask_digits(value, 0, 4, out),
            Self::Redact(text) => out.extend_from_slice(text.as_bytes()),
            Self::Hmac(_) if is_token(value) => out.extend_from_slice(value),
            Self::Hmac(key) => write_token(key, value, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(v: &str, lead: u8, trail: u8) -> String {
        let mut out = Vec::new();
        mask_digits(v.as_bytes(), lead, trail, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn truncation_keeps_shape_and_hides_short_values() {
        assert_eq!(masked("4111111111111111", 6, 4), "411111******1111");
        assert_eq!(masked("4111 1111 1111 1111", 6, 4), "4111 11** **** 1111");
        assert_eq!(masked("4111-1111-1111-1111", 8, 4), "4111-1111-****-1111");
        assert_eq!(masked("378282246310005", 8, 4), "378282*****0005");
        assert_eq!(masked("123", 6, 4), "***");
        assert_eq!(masked("12345678", 0, 4), "****5678");
        assert_eq!(masked("Jöhn 42", 6, 4), "**** **");
        // Masking twice changes nothing.
        assert_eq!(masked("411111******1111", 6, 4), "411111******1111");
    }

    #[test]
    fn tokens_are_keyed_stable_and_digit_free() {
        let k1 = HmacKey::new(&[7u8; 32]);
        let k2 = HmacKey::new(&[8u8; 32]);
        let tok = |k: &HmacKey, v: &str| {
            let mut out = Vec::new();
            write_token(k, v.as_bytes(), &mut out);
            String::from_utf8(out).unwrap()
        };
        let t = tok(&k1, "4111111111111111");
        assert_eq!(t.len(), TOKEN_LEN);
        assert!(is_token(t.as_bytes()));
        assert!(!t.bytes().any(|b| b.is_ascii_digit()));
        assert_eq!(t, tok(&k1, "4111 1111 1111 1111"));
        assert_ne!(t, tok(&k2, "4111111111111111"));
        assert_ne!(t, tok(&k1, "5555555555554444"));
    }
}

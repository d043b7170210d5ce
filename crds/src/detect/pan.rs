//! Where a card number starts and ends in text: contiguous digit runs and the
//! usual groupings, with the boundary rules that keep ids, decimals, phone
//! numbers and IBANs out.

use super::issuers::card_brand;

/// Groupings accepted with one consistent separator, longest first so that a
/// 19-digit number is not cut to its first 16 digits.
const GROUPINGS: &[&[usize]] = &[&[4, 4, 4, 4, 3], &[4, 4, 4, 4], &[4, 6, 5], &[4, 6, 4]];

/// A card number found in text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PanMatch {
    /// First byte of the number (a digit).
    pub start: usize,
    /// One past its last digit.
    pub end: usize,
    /// Issuer brand.
    pub brand: &'static str,
}

/// Tries the maximal digit run `input[start..end]` as the start of a card
/// number (contiguous, or the first group of a grouped one).
pub fn pan_at(input: &[u8], start: usize, end: usize) -> Option<PanMatch> {
    // The whole run first: if escape digits and a card number happen to
    // form a longer card number, masking the longer one shows less.
    let len = end - start;
    if (len == 4 || (13..=19).contains(&len))
        && left_boundary_ok(input, start)
        && let Some(m) = candidate(input, start, end)
    {
        return Some(m);
    }
    // An escape takes one to four digits: only longer runs can hide a
    // card number behind one.
    if len < 5 {
        return None;
    }
    escape_overlap(input, start, end).and_then(|a| candidate(input, a, end))
}

fn candidate(input: &[u8], start: usize, end: usize) -> Option<PanMatch> {
    let len = end - start;
    if (13..=19).contains(&len) {
        if !right_boundary_ok(input, end) {
            return None;
        }
        let brand = card_brand(&input[start..end])?;
        return Some(PanMatch { start, end, brand });
    }
    if len == 4 {
        return grouped(input, start);
    }
    None
}

/// A grouped number whose first (4-digit) group starts at `start`.
fn grouped(input: &[u8], start: usize) -> Option<PanMatch> {
    let sep = *input.get(start + 4)?;
    if sep != b' ' && sep != b'-' {
        return None;
    }
    // Lengths and ends of up to five groups joined by `sep`.
    let mut groups = [(0usize, 0usize); 5];
    let mut count = 0;
    let mut pos = start;
    while count < groups.len() {
        let run = input[pos..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if run == 0 {
            break;
        }
        groups[count] = (run, pos + run);
        count += 1;
        pos += run;
        if input.get(pos) == Some(&sep) && input.get(pos + 1).is_some_and(u8::is_ascii_digit) {
            pos += 1;
        } else {
            break;
        }
    }
    for shape in GROUPINGS {
        if shape.len() > count
            || !shape
                .iter()
                .zip(&groups)
                .all(|(want, (got, _))| want == got)
        {
            continue;
        }
        let end = groups[shape.len() - 1].1;
        if !right_boundary_ok(input, end) || follows_iban_prefix(input, start, sep) {
            continue;
        }
        let mut digits = [0u8; 19];
        let mut n = 0;
        for &b in &input[start..end] {
            if b.is_ascii_digit() {
                digits[n] = b;
                n += 1;
            }
        }
        if let Some(brand) = card_brand(&digits[..n]) {
            return Some(PanMatch { start, end, brand });
        }
    }
    None
}

/// Whether the groups before `start` (4 characters each, joined by `sep`)
/// begin with an IBAN country code and check digits (`DE89 3704 …`).
fn follows_iban_prefix(input: &[u8], start: usize, sep: u8) -> bool {
    let mut pos = start;
    // An IBAN has at most 34 characters: eight groups before the candidate.
    for _ in 0..8 {
        if pos < 5 || input[pos - 1] != sep {
            return false;
        }
        let group = &input[pos - 5..pos - 1];
        if !group.iter().all(u8::is_ascii_alphanumeric)
            || (pos >= 6 && input[pos - 6].is_ascii_alphanumeric())
        {
            return false;
        }
        if group[..2].iter().all(u8::is_ascii_uppercase)
            && group[2..].iter().all(u8::is_ascii_digit)
        {
            return true;
        }
        pos -= 5;
    }
    false
}

/// When a digit run begins inside an escape (`%20`, `\u0022`), where the
/// digits after the escape start.
fn escape_overlap(input: &[u8], start: usize, end: usize) -> Option<usize> {
    let adjusted = if start >= 1 && input[start - 1] == b'%' {
        start + 2
    } else if start >= 2 && input[start - 2] == b'%' && input[start - 1].is_ascii_hexdigit() {
        start + 1
    } else {
        let hex_before =
            (0..=3).find(|&k| start >= k + 2 && &input[start - k - 2..start - k] == b"\\u")?;
        if !input[start - hex_before..start]
            .iter()
            .all(u8::is_ascii_hexdigit)
        {
            return None;
        }
        start + 4 - hex_before
    };
    (adjusted < end).then_some(adjusted)
}

/// Whether a digit run starting at `start` stands on its own on the left:
/// not glued to a letter (escapes like `\n`, `%3D` and `\u003d` do not
/// count), not a phone number (`+`), not the fraction of a decimal number.
pub fn left_boundary_ok(input: &[u8], start: usize) -> bool {
    let Some(&c) = start.checked_sub(1).and_then(|i| input.get(i)) else {
        return true;
    };
    if c.is_ascii_alphabetic() {
        return ends_escape(input, start);
    }
    match c {
        b'0'..=b'9' => false,
        b'+' => false,
        b'.' => {
            let int_digits = input[..start - 1]
                .iter()
                .rev()
                .take(13)
                .take_while(|b| b.is_ascii_digit())
                .count();
            !(1..=12).contains(&int_digits)
        }
        _ => true,
    }
}

/// Whether the letter just before `at` ends an escape sequence.
fn ends_escape(input: &[u8], at: usize) -> bool {
    if at >= 2 && input[at - 2] == b'\\' {
        return true;
    }
    if at >= 3 && input[at - 3] == b'%' && input[at - 2].is_ascii_hexdigit() {
        return true;
    }
    at >= 6
        && &input[at - 6..at - 4] == b"\\u"
        && input[at - 4..at].iter().all(u8::is_ascii_hexdigit)
}

/// Whether a number ending at `end` is not glued to a letter on the right.
pub fn right_boundary_ok(input: &[u8], end: usize) -> bool {
    input.get(end).is_none_or(|c| !c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(s: &str) -> Option<(usize, usize)> {
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let e = i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                if let Some(m) = pan_at(b, i, e) {
                    return Some((m.start, m.end));
                }
                i = e;
            } else {
                i += 1;
            }
        }
        None
    }

    #[test]
    fn shapes() {
        assert_eq!(first("4111111111111111"), Some((0, 16)));
        assert_eq!(first("x 4111 1111 1111 1111 y"), Some((2, 21)));
        assert_eq!(first("4111-1111-1111-1111"), Some((0, 19)));
        assert_eq!(first("3782 822463 10005"), Some((0, 17)));
        assert_eq!(first("3056 930902 5904"), Some((0, 16)));
        assert_eq!(first("4111 1111-1111 1111"), None);
        assert_eq!(first("41111111111111111111"), None);
    }

    #[test]
    fn boundaries() {
        assert_eq!(first("a4111111111111111"), None);
        assert_eq!(first("4111111111111111b"), None);
        assert_eq!(first("\\n4111111111111111"), Some((2, 18)));
        assert_eq!(first("%3D4111111111111111"), Some((3, 19)));
        assert_eq!(first("%204111111111111111"), Some((3, 19)));
        assert_eq!(first("\\u00224111111111111111"), Some((6, 22)));
        assert_eq!(first("\\u003e4111111111111111"), Some((6, 22)));
        assert_eq!(first("+4111111111111111"), None);
        assert_eq!(first("0.4111111111111111"), None);
        assert_eq!(first("No.4111111111111111"), Some((3, 19)));
        assert_eq!(first("DE89 4111 1111 1111 1111"), None);
    }
}

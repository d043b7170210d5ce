//! The built-in scan: finds digit runs at close to memory speed and asks the
//! sensitive-authentication-data detectors, then the card-number detector,
//! about each run. Finds come out in order and never overlap.

use super::pan::pan_at;
use super::sad::{self, EmvFind, SadKind};

/// What the built-in scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A card number of this brand.
    Pan(&'static str),
    /// Sensitive authentication data.
    Sad(SadKind),
}

/// One finding: `input[start..end]` is to be masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Find {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// What it is.
    pub found: Found,
}

/// Bytes looked at per step when skipping text without digits.
const BLOCK: usize = 32;
const LANES_LO: u64 = 0x0101_0101_0101_0101;
const LANES_HI: u64 = 0x8080_8080_8080_8080;

/// Whether `block` holds an ASCII digit. Branch-free over the block, so the
/// compiler turns it into vector compares: this is the loop that skips text
/// without digits.
#[inline]
fn block_has_digit(block: &[u8]) -> bool {
    block
        .iter()
        .fold(0u8, |acc, &b| acc | u8::from(b.wrapping_sub(b'0') < 10))
        != 0
}

/// The high bit of each byte of `w` (little-endian) that is an ASCII digit:
/// eight bytes at a time without carries between them ("has byte between"
/// from Bit Twiddling Hacks, for '0' - 1 < byte < '9' + 1).
#[inline]
fn digit_lanes(w: u64) -> u64 {
    let low7 = w & (LANES_LO * 127);
    (LANES_LO * (127 + 0x3A)).wrapping_sub(low7)
        & !w
        & low7.wrapping_add(LANES_LO * (127 - 0x2F))
        & LANES_HI
}

#[inline]
fn word(chunk: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(chunk);
    u64::from_le_bytes(bytes)
}

/// Offset of the first ASCII digit in `h`: eight bytes per step near the
/// start (dense text), then 32-byte blocks (text with few digits).
#[inline]
pub fn find_digit(h: &[u8]) -> Option<usize> {
    let mut offset = 0;
    let words = h.chunks_exact(8);
    for chunk in words.take(BLOCK / 8) {
        let lanes = digit_lanes(word(chunk));
        if lanes != 0 {
            return Some(offset + (lanes.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    if offset == BLOCK {
        for block in h[offset..].chunks_exact(BLOCK) {
            if block_has_digit(block) {
                for (k, chunk) in block.chunks_exact(8).enumerate() {
                    let lanes = digit_lanes(word(chunk));
                    if lanes != 0 {
                        return Some(offset + k * 8 + (lanes.trailing_zeros() / 8) as usize);
                    }
                }
            }
            offset += BLOCK;
        }
    }
    h[offset..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| offset + p)
}

/// Number of ASCII digits at the start of `h`, eight bytes per step.
#[inline]
pub fn digit_run(h: &[u8]) -> usize {
    let mut offset = 0;
    for chunk in h.chunks_exact(8) {
        let others = !digit_lanes(word(chunk)) & LANES_HI;
        if others != 0 {
            return offset + (others.trailing_zeros() / 8) as usize;
        }
        offset += 8;
    }
    offset
        + h[offset..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
}

/// Iterator over the built-in finds of one input.
pub struct Scanner<'a> {
    input: &'a [u8],
    pos: usize,
    /// The hex token (`start..end`) last looked at for EMV tags, and from
    /// where in it tags are still to be looked for; each token is read once.
    hex: (usize, usize),
    hex_from: usize,
    /// The next EMV find in that token, not reached yet.
    pending: Option<(usize, usize, EmvFind)>,
}

impl<'a> Scanner<'a> {
    /// Scans `input` from the start.
    pub fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            pos: 0,
            hex: (0, 0),
            hex_from: 0,
            pending: None,
        }
    }

    /// Looks at the digit run `start..end` (maximal unless a previous find
    /// ended inside it).
    #[inline]
    fn at_run(&mut self, start: usize, end: usize) -> Option<Find> {
        let input = self.input;
        let len = end - start;
        let prev = start.checked_sub(1).map_or(b' ', |i| input[i]);
        let next = input.get(end).copied().unwrap_or(b' ');
        let hex_glued = prev.is_ascii_hexdigit() || next.is_ascii_hexdigit();
        if len < 3 && !hex_glued {
            // Too short for anything: the common case of dates, times and
            // small numbers.
            return None;
        }
        if hex_glued && let Some(f) = self.emv(start, end) {
            return Some(f);
        }
        // Each detector is only asked when the characters around the run
        // allow it to match, so ordinary numbers cost a few compares.
        let track = matches!(next, b'^' | b'=' | b'D' | b'd')
            .then(|| sad::track_at(input, start, end))
            .flatten();
        let field = || {
            (len <= 32 && (prev.is_ascii_hexdigit() || sad::is_field_separator(prev)))
                .then(|| sad::field_value_at(input, start, end))
                .flatten()
        };
        if let Some((s, e, kind)) = track.or_else(field) {
            return Some(Find {
                start: s,
                end: e,
                found: Found::Sad(kind),
            });
        }
        let pan_shaped = len == 4 || (13..=19).contains(&len);
        let escaped = matches!(prev, b'%' | b'u') || prev.is_ascii_hexdigit();
        if !pan_shaped && !escaped {
            return None;
        }
        pan_at(input, start, end).map(|m| Find {
            start: m.start,
            end: m.end,
            found: Found::Pan(m.brand),
        })
    }

    /// EMV tags in the hex token around a digit run glued to hex letters
    /// (the caller checks that it is).
    /// A tag found further on in the token waits until the scan reaches it,
    /// so the runs before it still get every other check.
    #[inline(never)]
    fn emv(&mut self, start: usize, end: usize) -> Option<Find> {
        let input = self.input;
        if start >= self.hex.1 {
            let ts = start
                - input[..start]
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .count();
            let te = end
                + input[end..]
                    .iter()
                    .take_while(|b| b.is_ascii_hexdigit())
                    .count();
            self.hex = (ts.max(self.hex.1), te);
            self.hex_from = self.hex.0;
            self.pending = None;
        }
        if self.pending.is_some_and(|(s, _, _)| s < self.pos) {
            // An earlier find covered part of it: look again from there.
            self.pending = None;
        }
        if self.pending.is_none() {
            let from = self.hex_from.max(self.pos);
            if from >= self.hex.1 {
                return None;
            }
            self.pending = sad::emv_in_hex(input, self.hex.0, self.hex.1, from);
            self.hex_from = self.pending.map_or(self.hex.1, |(_, e, _)| e);
        }
        let (s, e, what) = self.pending.filter(|&(s, _, _)| s <= end)?;
        self.pending = None;
        Some(Find {
            start: s,
            end: e,
            found: match what {
                EmvFind::Sad(kind) => Found::Sad(kind),
                EmvFind::Pan(brand) => Found::Pan(brand),
            },
        })
    }
}

impl Iterator for Scanner<'_> {
    type Item = Find;

    fn next(&mut self) -> Option<Find> {
        loop {
            let start = self.pos + find_digit(&self.input[self.pos..])?;
            let end = start + digit_run(&self.input[start..]);
            if let Some(f) = self.at_run(start, end) {
                self.pos = f.end.max(start + 1);
                return Some(f);
            }
            self.pos = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_digit_across_blocks() {
        let mut text = vec![b'a'; 100];
        assert_eq!(find_digit(&text), None);
        for at in [0, 31, 32, 33, 64, 99] {
            text[at] = b'7';
            assert_eq!(find_digit(&text), Some(at), "{at}");
            text[at] = b'a';
        }
    }

    #[test]
    fn digit_lanes_are_exact() {
        for b in 0..=255u8 {
            let lanes = digit_lanes(u64::from_le_bytes([b'x', b, b'x', b'x', 0xff, b, 0x00, b]));
            let want = if b.is_ascii_digit() {
                0x8000_8000_0000_8000
            } else {
                0
            };
            assert_eq!(lanes, want, "{b:#x}");
        }
    }

    #[test]
    fn digit_runs_across_blocks() {
        for len in [0, 1, 31, 32, 33, 64, 70] {
            let mut text = vec![b'5'; len];
            assert_eq!(digit_run(&text), len);
            text.extend_from_slice(b"x123");
            assert_eq!(digit_run(&text), len, "{len}");
        }
    }
}

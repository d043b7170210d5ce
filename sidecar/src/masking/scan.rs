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

/// Offset of the first ASCII digit in `h`. Checks 32 bytes per step without
/// branching inside the block, which the compiler turns into vector compares.
#[inline]
pub fn find_digit(h: &[u8]) -> Option<usize> {
    const BLOCK: usize = 32;
    let mut offset = 0;
    for block in h.chunks_exact(BLOCK) {
        let any = block
            .iter()
            .fold(0u8, |acc, &b| acc | u8::from(b.wrapping_sub(b'0') < 10));
        if any != 0 {
            break;
        }
        offset += BLOCK;
    }
    h[offset..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| offset + p)
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
        let hex_glued = start
            .checked_sub(1)
            .is_some_and(|i| input[i].is_ascii_hexdigit())
            || input.get(end).is_some_and(u8::is_ascii_hexdigit);
        if end - start < 3 && !hex_glued {
            // Too short for anything: the common case of dates, times and
            // small numbers.
            return None;
        }
        if hex_glued && let Some(f) = self.emv(start, end) {
            return Some(f);
        }
        let sad = sad::track_at(input, start, end).or_else(|| {
            if end - start <= 32 {
                sad::field_value_at(input, start, end)
            } else {
                None
            }
        });
        if let Some((s, e, kind)) = sad {
            return Some(Find {
                start: s,
                end: e,
                found: Found::Sad(kind),
            });
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
            let end = start
                + self.input[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
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
}

//! Masking of one DataRow, value by value, with the column plan of its
//! result: the PostgreSQL adapter between result rows and the guard's
//! column rules and text masking. Sans-IO.

use std::sync::Arc;

use super::messages::{self, Malformed};
use crate::postgres::guard::{ColumnOutput, PgGuard};

/// How one result column is treated.
#[derive(Clone, Copy)]
pub struct ColumnPlan<R> {
    /// The column rule of the table column it shows, if any.
    pub rule: Option<R>,
    /// Binary result format.
    pub binary: bool,
    /// Type OID.
    pub type_oid: u32,
}

/// The column plans of one result, in column order.
pub type Plan<R> = Arc<[ColumnPlan<R>]>;

/// What happens to one value.
enum Action {
    Keep,
    Null,
    Replaced,
}

const BYTEA: u32 = 17;
const JSONB: u32 = 3802;

/// Masks DataRows into buffers it keeps between rows.
#[derive(Default)]
pub struct RowMasker {
    /// One masked value.
    scratch: Vec<u8>,
    /// The masked row, a whole message.
    row: Vec<u8>,
}

impl RowMasker {
    /// The last row [`RowMasker::mask`] rewrote, as a whole message.
    pub fn row(&self) -> &[u8] {
        &self.row
    }

    /// Masks one DataRow body; returns the number of masked values, or
    /// `None` when nothing changed (the original message is forwarded as
    /// is). Without a plan every value is scanned as text.
    pub fn mask<G: PgGuard>(
        &mut self,
        guard: &G,
        body: &[u8],
        plan: Option<&[ColumnPlan<G::ColumnRule>]>,
    ) -> Result<Option<u64>, Malformed> {
        let mut values = messages::data_row(body)?;
        let mut changed = false;
        let mut masked = 0u64;
        let mut value_start = 2usize;
        for i in 0.. {
            let Some(value) = values.next_value()? else {
                break;
            };
            let col = plan.and_then(|p| p.get(i)).copied();
            let value_len = 4 + value.map_or(0, <[u8]>::len);
            let action = match value {
                None => Action::Keep,
                Some(v) => self.mask_value(guard, v, col),
            };
            match action {
                Action::Keep if changed => self
                    .row
                    .extend_from_slice(&body[value_start..value_start + value_len]),
                Action::Keep => {}
                Action::Null | Action::Replaced => {
                    if !changed {
                        changed = true;
                        self.row.clear();
                        self.row.extend_from_slice(&[b'D', 0, 0, 0, 0]);
                        self.row.extend_from_slice(&body[..value_start]);
                    }
                    masked += 1;
                    self.put_value(matches!(action, Action::Null));
                }
            }
            value_start += value_len;
        }
        if !changed {
            return Ok(None);
        }
        let len = (self.row.len() - 1) as u32;
        self.row[1..5].copy_from_slice(&len.to_be_bytes());
        Ok(Some(masked))
    }

    /// Appends NULL or the masked value in `scratch` to the row.
    fn put_value(&mut self, null: bool) {
        if null {
            self.row.extend_from_slice(&(-1i32).to_be_bytes());
        } else {
            self.row
                .extend_from_slice(&(self.scratch.len() as i32).to_be_bytes());
            self.row.extend_from_slice(&self.scratch);
        }
    }

    fn mask_value<G: PgGuard>(
        &mut self,
        guard: &G,
        v: &[u8],
        col: Option<ColumnPlan<G::ColumnRule>>,
    ) -> Action {
        self.scratch.clear();
        let (binary, type_oid, rule) = match col {
            Some(c) => (c.binary, c.type_oid, c.rule),
            // Without a plan the format is unknown: scan as text, which is
            // what every client gets unless it asked for binary.
            None => (false, 0, None),
        };
        let text_like = !binary || is_text_like(type_oid);
        let jsonb = binary && type_oid == JSONB;
        // Binary jsonb starts with a version byte.
        let payload = if jsonb {
            v.get(1..).unwrap_or_default()
        } else {
            v
        };
        let action = if let Some(rule) = rule {
            match guard.mask_column(rule, payload, text_like, &mut self.scratch) {
                ColumnOutput::Null => Action::Null,
                ColumnOutput::Masked => Action::Replaced,
            }
        } else if text_like || type_oid == BYTEA {
            match guard.mask_text(payload, &mut self.scratch) {
                None => Action::Keep,
                Some(_) => Action::Replaced,
            }
        } else {
            return binary_number_action(guard, type_oid, v);
        };
        if jsonb && matches!(action, Action::Replaced) {
            self.scratch.insert(0, 1);
        }
        action
    }
}

/// Binary numbers can hold a card number too (a bigint column of PANs):
/// decode, scan, and withhold the value if it is one.
fn binary_number_action<G: PgGuard>(guard: &G, type_oid: u32, v: &[u8]) -> Action {
    if let Some(text) = binary_number_text(type_oid, v) {
        let mut tmp = Vec::new();
        if guard.mask_text(text.as_bytes(), &mut tmp).is_some() {
            return Action::Null;
        }
    }
    Action::Keep
}

/// Types whose binary format is their text (plus jsonb's version byte).
fn is_text_like(oid: u32) -> bool {
    matches!(
        oid,
        25 | 1043 | 1042 | 19 | 705 | 114 | 142 | 18 | JSONB | 0
    )
}

/// Decimal text of a binary int8, int4 or integral numeric value.
fn binary_number_text(oid: u32, v: &[u8]) -> Option<String> {
    match (oid, v.len()) {
        (20, 8) => Some(
            i64::from_be_bytes(v.try_into().ok()?)
                .unsigned_abs()
                .to_string(),
        ),
        (1700, n) if n >= 8 => numeric_integer_text(v),
        _ => None,
    }
}

/// The integral part of a binary numeric, if it has one.
fn numeric_integer_text(v: &[u8]) -> Option<String> {
    let ndigits = u16::from_be_bytes([v[0], v[1]]) as usize;
    let weight = i16::from_be_bytes([v[2], v[3]]);
    if ndigits == 0 || weight < 0 || v.len() < 8 + ndigits * 2 {
        return None;
    }
    let mut s = String::new();
    for d in 0..=(weight as usize) {
        let digit = if d < ndigits {
            u16::from_be_bytes([v[8 + d * 2], v[9 + d * 2]])
        } else {
            0
        };
        if s.is_empty() {
            s.push_str(&digit.to_string());
        } else {
            s.push_str(&format!("{digit:04}"));
        }
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_numbers_decode() {
        assert_eq!(
            binary_number_text(20, &4111111111111111i64.to_be_bytes()).as_deref(),
            Some("4111111111111111")
        );
        // numeric 4111111111111111 = digits [4111, 1111, 1111, 1111], weight 3
        let mut v = Vec::new();
        v.extend_from_slice(&4u16.to_be_bytes());
        v.extend_from_slice(&3i16.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        v.extend_from_slice(&0u16.to_be_bytes());
        for d in [4111u16, 1111, 1111, 1111] {
            v.extend_from_slice(&d.to_be_bytes());
        }
        assert_eq!(
            binary_number_text(1700, &v).as_deref(),
            Some("4111111111111111")
        );
        assert_eq!(binary_number_text(23, &[0, 0, 0, 1]), None);
    }
}

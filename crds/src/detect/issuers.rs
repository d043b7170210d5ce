//! Which digit strings are card numbers: the issuer table and the Luhn check.
//!
//! A run of digits is only treated as a PAN when its leading digits fall in an
//! issuer range *and* its length is one that issuer uses *and* its Luhn check
//! digit is right. Each condition alone would flag order ids, timestamps and
//! phone numbers; together they keep false positives rare. This table is the
//! one place where ranges live; `docs/masking.md` reproduces it.

/// One issuer range: card numbers whose first `prefix_len` digits lie in
/// `lo..=hi` and whose length is in `lengths`.
#[derive(Debug, Clone, Copy)]
pub struct IssuerRange {
    /// Short brand name used in `mask --explain` output.
    pub brand: &'static str,
    /// How many leading digits `lo` and `hi` describe (1 to 6).
    pub prefix_len: u8,
    /// First prefix of the range.
    pub lo: u32,
    /// Last prefix of the range.
    pub hi: u32,
    /// Card-number lengths the brand issues in this range.
    pub lengths: Lengths,
}

/// A set of card-number lengths (13 to 19) as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lengths(u32);

impl Lengths {
    const fn of(lengths: &[u8]) -> Self {
        let mut bits = 0;
        let mut i = 0;
        while i < lengths.len() {
            bits |= 1 << lengths[i];
            i += 1;
        }
        Self(bits)
    }

    const fn span(lo: u8, hi: u8) -> Self {
        let mut bits = 0;
        let mut n = lo;
        while n <= hi {
            bits |= 1 << n;
            n += 1;
        }
        Self(bits)
    }

    /// Whether a card number of `n` digits can be in this range.
    pub fn contains(self, n: usize) -> bool {
        n < 32 && self.0 & (1 << n) != 0
    }

    /// The lengths, shortest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        (0..32).filter(move |n| self.0 & (1 << n) != 0)
    }
}

const fn range(
    brand: &'static str,
    prefix_len: u8,
    lo: u32,
    hi: u32,
    lengths: Lengths,
) -> IssuerRange {
    IssuerRange {
        brand,
        prefix_len,
        lo,
        hi,
        lengths,
    }
}

const ANY: Lengths = Lengths::span(16, 19);

/// Issuer ranges, most specific first (the first match names the brand).
/// Sources: the card networks' published IIN ranges as collected in ISO/IEC
/// 7812 registries. 12-digit Maestro numbers are out of scope: the detector
/// looks at 13 to 19 digits.
pub const ISSUERS: &[IssuerRange] = &[
    range("amex", 2, 34, 34, Lengths::of(&[15])),
    range("amex", 2, 37, 37, Lengths::of(&[15])),
    range("diners", 3, 300, 305, Lengths::span(14, 19)),
    range("diners", 4, 3095, 3095, Lengths::span(14, 19)),
    range("diners", 2, 36, 36, Lengths::span(14, 19)),
    range("diners", 2, 38, 39, Lengths::span(14, 19)),
    range("jcb", 4, 3528, 3589, ANY),
    range("rupay", 3, 353, 353, Lengths::of(&[16])),
    range("rupay", 3, 356, 356, Lengths::of(&[16])),
    range("mir", 4, 2200, 2204, ANY),
    range("mastercard", 4, 2221, 2720, Lengths::of(&[16])),
    range("mastercard", 2, 51, 55, Lengths::of(&[16])),
    range("visa", 1, 4, 4, Lengths::of(&[13, 16, 19])),
    range("verve", 6, 506099, 506198, Lengths::of(&[16, 18, 19])),
    range("verve", 6, 507865, 507964, Lengths::of(&[16, 18, 19])),
    range("verve", 6, 650002, 650027, Lengths::of(&[16, 18, 19])),
    range("dankort", 4, 5019, 5019, Lengths::of(&[16])),
    range("maestro", 4, 5018, 5018, Lengths::span(13, 19)),
    range("maestro", 4, 5020, 5020, Lengths::span(13, 19)),
    range("maestro", 4, 5038, 5038, Lengths::span(13, 19)),
    range("maestro", 4, 5893, 5893, Lengths::span(13, 19)),
    range("maestro", 4, 6304, 6304, Lengths::span(13, 19)),
    range("maestro", 4, 6759, 6759, Lengths::span(13, 19)),
    range("maestro", 4, 6761, 6763, Lengths::span(13, 19)),
    range("rupay", 3, 508, 508, Lengths::of(&[16])),
    range("discover", 4, 6011, 6011, ANY),
    range("discover", 3, 644, 649, ANY),
    range("discover", 2, 65, 65, ANY),
    range("unionpay", 2, 62, 62, ANY),
    range("interpayment", 3, 636, 636, ANY),
    range("rupay", 2, 60, 60, Lengths::of(&[16])),
    range("unionpay", 2, 81, 81, ANY),
    range("rupay", 2, 82, 82, Lengths::of(&[16])),
    range("troy", 4, 9792, 9792, Lengths::of(&[16])),
];

/// The brand of `digits` (ASCII digits only) if its prefix and length match
/// an issuer range; the Luhn check is separate.
pub fn issuer(digits: &[u8]) -> Option<&'static str> {
    let n = digits.len();
    if !(13..=19).contains(&n) {
        return None;
    }
    let mut p6 = 0u32;
    for &d in &digits[..6] {
        p6 = p6 * 10 + u32::from(d.wrapping_sub(b'0'));
    }
    let first = usize::from(digits[0].wrapping_sub(b'0')).min(9);
    let (from, to) = BY_FIRST_DIGIT[first];
    (from..to)
        .map(|i| BY_FIRST_DIGIT_ORDER[i])
        .find(|&i| {
            let (lo, hi) = SCALED[i];
            lo <= p6 && p6 <= hi && ISSUERS[i].lengths.contains(n)
        })
        .map(|i| ISSUERS[i].brand)
}

/// Indices of [`ISSUERS`] grouped by the first digit of their range, table
/// order kept within a group; [`BY_FIRST_DIGIT`] gives each group's bounds.
const BY_FIRST_DIGIT_ORDER: [usize; ISSUERS.len()] = {
    let mut out = [0; ISSUERS.len()];
    let mut n = 0;
    let mut d = 0;
    while d < 10 {
        let mut i = 0;
        while i < ISSUERS.len() {
            if SCALED[i].0 / 100_000 == d {
                out[n] = i;
                n += 1;
            }
            i += 1;
        }
        d += 1;
    }
    out
};

/// For each first digit, the slice of [`BY_FIRST_DIGIT_ORDER`] to try.
const BY_FIRST_DIGIT: [(usize, usize); 10] = {
    let mut out = [(0, 0); 10];
    let mut start = 0;
    let mut d = 0;
    while d < 10 {
        let mut count = 0;
        let mut i = 0;
        while i < ISSUERS.len() {
            if SCALED[i].0 / 100_000 == d {
                count += 1;
            }
            i += 1;
        }
        out[d as usize] = (start, start + count);
        start += count;
        d += 1;
    }
    out
};

/// Each range of [`ISSUERS`] widened to six-digit prefixes, so a lookup
/// compares one number per range.
const SCALED: [(u32, u32); ISSUERS.len()] = {
    let mut out = [(0, 0); ISSUERS.len()];
    let mut i = 0;
    while i < ISSUERS.len() {
        let r = &ISSUERS[i];
        let scale = 10u32.pow(6 - r.prefix_len as u32);
        out[i] = (r.lo * scale, (r.hi + 1) * scale - 1);
        i += 1;
    }
    out
};

/// The Luhn (mod 10) check every issued card number passes.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let digit = |b: &u8| u32::from(b.wrapping_sub(b'0'));
    // From the right, every second digit is doubled, minus 9 when over 9;
    // two digits per step, without branches.
    let doubled = |b: &u8| {
        let v = digit(b);
        2 * v - 9 * u32::from(v > 4)
    };
    let mut sum = 0u32;
    let mut rest = digits;
    while let [head @ .., left, right] = rest {
        sum += doubled(left) + digit(right);
        rest = head;
    }
    if let [first] = rest {
        sum += digit(first);
    }
    sum.is_multiple_of(10)
}

/// The brand of `digits` if it is a card number: 13 to 19 ASCII digits, a
/// known issuer range and length, and a valid Luhn check digit.
pub fn card_brand(digits: &[u8]) -> Option<&'static str> {
    let brand = issuer(digits)?;
    luhn_valid(digits).then_some(brand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"4111111111111111"));
        assert!(!luhn_valid(b"4111111111111112"));
        assert!(luhn_valid(b"79927398713"));
    }

    #[test]
    fn brands_and_lengths() {
        assert_eq!(card_brand(b"4111111111111111"), Some("visa"));
        assert_eq!(card_brand(b"4222222222222"), Some("visa"));
        assert_eq!(card_brand(b"5555555555554444"), Some("mastercard"));
        assert_eq!(card_brand(b"2223000048400011"), Some("mastercard"));
        assert_eq!(card_brand(b"378282246310005"), Some("amex"));
        assert_eq!(card_brand(b"6011111111111117"), Some("discover"));
        assert_eq!(card_brand(b"3530111333300000"), Some("jcb"));
        assert_eq!(card_brand(b"30569309025904"), Some("diners"));
        assert_eq!(card_brand(b"6200000000000005"), Some("unionpay"));
        assert_eq!(card_brand(b"6759649826438453"), Some("maestro"));
        // Amex is 15 digits only; Mastercard 16 only.
        assert_eq!(issuer(b"3782822463100050"), None);
        assert_eq!(issuer(b"555555555555444"), None);
        // No issuer starts with 1 or 7.
        assert_eq!(issuer(b"1700000000000"), None);
        assert_eq!(issuer(b"7000000000000000"), None);
    }

    #[test]
    fn ranges_are_well_formed() {
        for r in ISSUERS {
            assert!((1..=6).contains(&r.prefix_len), "{r:?}");
            assert!(r.lo <= r.hi, "{r:?}");
            assert!(r.hi < 10u32.pow(u32::from(r.prefix_len)), "{r:?}");
            assert!(r.lengths.iter().all(|n| (13..=19).contains(&n)), "{r:?}");
        }
        // Grouping by first digit needs each range to keep its first digit.
        for (lo, hi) in SCALED {
            assert_eq!(lo / 100_000, hi / 100_000);
        }
    }
}

//! The card-data scan of an export: every byte goes through the masking
//! engine's own detector ([`crate::detect`]), so the evidence says "nothing
//! the sidecar would mask is in these logs" with the very rule that masks.

use serde::Serialize;

use super::input::Place;
use crate::detect::Scanner;

/// Raw card data on one line. The data itself is never copied: only its
/// kind and byte offsets, so the report is safe to hand on.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct CardData {
    /// The line.
    pub at: Place,
    /// What was found, e.g. `pan:visa`, `sad:track2`, one per find.
    pub kinds: Vec<String>,
    /// Byte offsets of the finds in the line (or in the decoded record).
    pub offsets: Vec<usize>,
}

/// Scans one line.
pub fn scan(at: &Place, bytes: &[u8]) -> Option<CardData> {
    let mut found = Scanner::new(bytes).peekable();
    found.peek()?;
    let (kinds, offsets) = found
        .map(|f| (format!("{}:{}", f.found.class(), f.found.kind()), f.start))
        .unzip();
    Some(CardData {
        at: at.clone(),
        kinds,
        offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_raw_pan_but_not_a_masked_one_or_a_hash() {
        let at = Place {
            source: "t".into(),
            line: 1,
        };
        let masked = br#"{"text":"411111******1111","hash":"4111111111111111ab"}"#;
        assert_eq!(scan(&at, masked), None);
        let raw = br#"{"message":"card 4111111111111111 ok"}"#;
        let c = scan(&at, raw).unwrap();
        assert_eq!(c.kinds, ["pan:visa"]);
        assert_eq!(c.offsets, [17]);
        let track = b";4111111111111111=29121010000012345678?";
        assert_eq!(scan(&at, track).unwrap().kinds, ["sad:track2"]);
    }
}

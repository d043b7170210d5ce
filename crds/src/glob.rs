//! Name patterns for relations (`schema.table`) and columns
//! (`schema.table.column`).
//!
//! A pattern is a dot-separated list of parts; each part may use `*` (any run of
//! characters) and `?` (one character), never crossing a dot. A pattern with
//! fewer parts than the name matches the name's trailing parts, so `cards`
//! matches `payments.cards`, and `*.cvv` matches the `cvv` column of any table
//! in any schema. Names compare exactly as PostgreSQL reports them (unquoted
//! identifiers are lower case).

use std::fmt;

/// A compiled name pattern; cheap to match on the hot path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    parts: Vec<String>,
}

impl NamePattern {
    /// Parses `pattern`, allowing at most `max_parts` dot-separated parts (2
    /// for relations, 3 for columns).
    pub fn parse(pattern: &str, max_parts: usize) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("empty pattern".into());
        }
        let parts: Vec<String> = pattern.split('.').map(str::to_string).collect();
        if parts.len() > max_parts {
            return Err(format!(
                "pattern {pattern:?} has {} parts; at most {max_parts} ({}) are allowed",
                parts.len(),
                if max_parts == 2 {
                    "schema.table"
                } else {
                    "schema.table.column"
                }
            ));
        }
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("pattern {pattern:?} has an empty part"));
        }
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '"')
        {
            return Err(format!("pattern {pattern:?} contains {c:?}"));
        }
        Ok(Self { parts })
    }

    /// Whether the qualified name (outermost part first) matches; names with
    /// fewer parts than the pattern never match.
    pub fn matches(&self, name: &[&str]) -> bool {
        if name.len() < self.parts.len() {
            return false;
        }
        let tail = &name[name.len() - self.parts.len()..];
        self.parts
            .iter()
            .zip(tail)
            .all(|(p, n)| wildcard_match(p.as_bytes(), n.as_bytes()))
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.parts.join("."))
    }
}

/// Matches `*` and `?` wildcards without recursion (linear backtracking on the
/// last star), so hostile patterns cannot blow up.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str) -> bool {
        let parts: Vec<&str> = name.split('.').collect();
        NamePattern::parse(p, 3).unwrap().matches(&parts)
    }

    #[test]
    fn trailing_parts_match() {
        assert!(m("cards", "payments.cards"));
        assert!(m("payments.cards", "payments.cards"));
        assert!(!m("public.cards", "payments.cards"));
        assert!(m("*.cvv", "payments.cards.cvv"));
        assert!(m("cvv", "payments.cards.cvv"));
        assert!(!m("*.cvv", "payments.cards.cvv2"));
        assert!(m("payments.card*.pan", "payments.cards_archive.pan"));
        assert!(!m("payments.cards.pan", "cards.pan"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"*", b""));
        assert!(wildcard_match(b"c?rds", b"cards"));
        assert!(wildcard_match(b"*_archive", b"cards_archive"));
        assert!(!wildcard_match(b"*_archive", b"cards_archive2"));
        assert!(wildcard_match(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard_match(b"a*b*c", b"aXXbYY"));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert!(NamePattern::parse("", 2).is_err());
        assert!(NamePattern::parse("a..b", 3).is_err());
        assert!(
            NamePattern::parse("a.b.c", 2)
                .unwrap_err()
                .contains("at most 2")
        );
        assert!(NamePattern::parse("a b", 2).is_err());
    }
}

//! Validation errors that name every problem with its path.
//!
//! Users fix configuration in one pass only when they see all problems at once,
//! each pointing at the field to change (`rules[2].match.classes[0]: unknown
//! class "wirte"`). Validators therefore push into a [`Problems`] collector
//! instead of returning at the first error.

use std::fmt;

/// One problem found in a document, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with indices, e.g. `targets[0].upstream.port`; empty for the
    /// document itself.
    pub path: String,
    /// What is wrong and, where possible, what would be accepted.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a document; never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// The problems in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// Whether some problem sits at exactly `path` and mentions `needle`; used
    /// by callers that react to a specific problem, and by tests.
    pub fn has(&self, path: &str, needle: &str) -> bool {
        self.0
            .iter()
            .any(|e| e.path == path && e.message.contains(needle))
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} problem{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Collects problems while a validator walks a document.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Whether nothing was found so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` when nothing was found, otherwise every problem.
    pub fn finish(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Joins a parent path and a child field or index (`[3]`) into one path.
pub fn join(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ if child.starts_with('[') => format!("{parent}{child}"),
        _ => format!("{parent}.{child}"),
    }
}

/// Path of element `i` of the list at `parent`.
pub fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Turns a JSON pointer (`/targets/0/port`) into our dotted path form
/// (`targets[0].port`), so schema errors read like the validator's own.
pub fn pointer_to_path(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// Whether `s` is a DNS-1123 label (lowercase alphanumerics and '-', at most 63
/// characters); target and rule names end up in object names and metric labels.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_become_dotted_paths() {
        assert_eq!(
            pointer_to_path("/rules/2/match/classes/0"),
            "rules[2].match.classes[0]"
        );
        assert_eq!(pointer_to_path(""), "");
        assert_eq!(pointer_to_path("/a~1b"), "a/b");
    }

    #[test]
    fn joins_fields_and_indices() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "[1]"), "a[1]");
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(join("a", ""), "a");
    }

    #[test]
    fn display_lists_every_problem() {
        let mut p = Problems::default();
        p.push("a", "first");
        p.push("b[0]", "second");
        let text = p.finish().unwrap_err().to_string();
        assert!(text.starts_with("2 problems:"));
        assert!(text.contains("a: first"));
        assert!(text.contains("b[0]: second"));
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("payments-db"));
        assert!(!is_dns_label("Payments"));
        assert!(!is_dns_label("-x"));
        assert!(!is_dns_label(""));
    }
}

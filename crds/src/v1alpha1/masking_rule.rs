//! MaskingRule: what counts as sensitive and how it is shown.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::SecretKeyRef;
use crate::glob::NamePattern;
use crate::validation::{Problems, ValidationErrors, index, join};

/// Longest regex pattern accepted, in bytes.
pub const MAX_REGEX_LEN: usize = 1024;
/// Upper bound on the compiled program of one regex detector.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Upper bound on the lazy DFA cache of one regex detector.
pub const REGEX_DFA_SIZE_LIMIT: usize = 2 << 20;
/// Fixed mask written by the `redact` action unless a replacement is given.
pub const DEFAULT_REDACTION: &str = "[REDACTED]";

/// Extra masking for the governed pods of the AccessPolicies that list this
/// rule. Card numbers (PAN) and sensitive authentication data (track data,
/// CVV, PIN blocks) are always masked; a MaskingRule adds columns, JSON paths
/// and patterns, or chooses how card numbers are shown.
#[derive(CustomResource, Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[kube(
    group = "cardgate.dev",
    version = "v1alpha1",
    kind = "MaskingRule",
    plural = "maskingrules",
    shortname = "mr",
    category = "cardgate",
    namespaced,
    status = "MaskingRuleStatus",
    doc = "MaskingRule says what counts as sensitive in results and logs, and how it is shown.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Detectors",
        type_ = "string",
        json_path = ".spec.detectors[*].type"
    ),
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action.type"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.action.type != 'null' || self.detectors.all(d, d.type == 'column')").message("action null applies to column detectors only: a value found inside text cannot be nulled"))]
pub struct MaskingRuleSpec {
    /// What to look for; a value any detector finds gets `action`.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("at least one detector is required"))]
    pub detectors: Vec<Detector>,
    /// How a detected value is shown.
    pub action: MaskAction,
    /// Free text for the people who read the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Kind of detector: `pan` (card numbers: Luhn-valid, 13-19 digits, known
/// issuer ranges), `sad` (track data, CVV/CVC next to their field names, PIN
/// blocks), `column` (whole values of the named columns or JSON fields),
/// `regex` (values matching `pattern`).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DetectorType {
    Pan,
    Sad,
    Column,
    Regex,
}

/// One way of finding sensitive values.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.type != 'regex' || has(self.pattern)").message("a regex detector needs pattern"))]
#[x_kube(validation = Rule::new("self.type == 'regex' || !has(self.pattern)").message("pattern is only used by regex detectors"))]
#[x_kube(validation = Rule::new("self.type != 'column' || (has(self.columns) && size(self.columns) > 0) || (has(self.jsonPaths) && size(self.jsonPaths) > 0)").message("a column detector needs columns or jsonPaths"))]
pub struct Detector {
    /// pan, sad, column or regex.
    #[serde(rename = "type")]
    pub kind: DetectorType,
    /// column: `schema.table.column` patterns (`*.cvv`, `payments.cards.pan`);
    /// fewer parts match the trailing parts of the name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// column: JSON paths in HTTP bodies (`$.card.number`, `$..cvv`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub json_paths: Vec<String>,
    /// regex: the pattern (Rust regex syntax, at most 1024 bytes, no
    /// look-around or back-references).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// How a detected value is shown: `truncate` (first digits and last four, see
/// `truncate`), `last4` (last four only), `redact` (a fixed mask), `hmac` (a
/// keyed token `tok_…`, the same for the same value, usable for joins), `null`
/// (column detectors only: the value becomes NULL).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskActionType {
    Truncate,
    Last4,
    Redact,
    Hmac,
    Null,
}

/// How a detected value is shown.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("self.type != 'hmac' || has(self.hmacKeySecretRef)").message("action hmac needs hmacKeySecretRef: unkeyed hashes of card numbers are not allowed (PCI DSS 3.5.1.1)"))]
#[x_kube(validation = Rule::new("self.type == 'truncate' || !has(self.truncate)").message("truncate settings are only used by action truncate"))]
pub struct MaskAction {
    /// truncate, last4, redact, hmac or null.
    #[serde(rename = "type")]
    pub kind: MaskActionType,
    /// truncate: how many leading and trailing digits stay visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<Truncate>,
    /// redact: the text written instead of the value; defaults to [REDACTED].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    /// hmac: Secret key holding at least 32 random bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_key_secret_ref: Option<SecretKeyRef>,
}

/// Digits left visible by truncation. PCI DSS 3.4.1 allows at most the BIN
/// (6 digits, or 8 for 8-digit BINs) and the last four.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("!has(self.leadingDigits) || self.leadingDigits <= 6 || self.leadingDigits == 8").message("truncate.leadingDigits may be at most 6, or 8 for an 8-digit BIN (PCI DSS 3.4.1)"))]
#[x_kube(validation = Rule::new("!has(self.trailingDigits) || self.trailingDigits <= 4").message("truncate.trailingDigits may be at most 4 (PCI DSS 3.4.1)"))]
pub struct Truncate {
    /// Leading digits shown: at most 6, or 8 (BIN8; applied to card numbers
    /// of 16 digits or more, shorter ones fall back to 6).
    #[serde(default = "six")]
    // Kubernetes knows no `uint8` format (it warns and drops it); int32
    // with the 0-255 range says the same to the API server.
    #[schemars(range(min = 0), extend("format" = "int32"))]
    pub leading_digits: u8,
    /// Trailing digits shown: at most 4.
    #[serde(default = "four")]
    #[schemars(range(min = 0), extend("format" = "int32"))]
    pub trailing_digits: u8,
}

impl Default for Truncate {
    fn default() -> Self {
        Self {
            leading_digits: 6,
            trailing_digits: 4,
        }
    }
}

fn six() -> u8 {
    6
}
fn four() -> u8 {
    4
}

/// Observed state of a MaskingRule.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MaskingRuleStatus {
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (or its reason Invalid, with every problem in the message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// AccessPolicies in this namespace that use the rule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// Compiles a regex detector's pattern with the size limits every component
/// uses, so a pattern that validates is one the sidecar can run.
pub fn compile_pattern(pattern: &str) -> Result<regex::bytes::Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!(
            "pattern is {} bytes; at most {MAX_REGEX_LEN} are allowed",
            pattern.len()
        ));
    }
    if pattern.is_empty() {
        return Err("pattern is empty".into());
    }
    let re = regex::bytes::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid pattern: {}", one_line(&e.to_string())))?;
    if re.is_match(b"") {
        return Err("pattern matches the empty string, so it would match everywhere".into());
    }
    Ok(re)
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl MaskingRuleSpec {
    /// Checks everything that could make the rule fail at run time: regexes
    /// compile within limits, column patterns parse, action settings fit.
    /// `path` is where the spec sits (`spec`, or `masking.rules[0]`).
    pub fn validate_at(&self, path: &str, p: &mut Problems) {
        if self.detectors.is_empty() {
            p.push(join(path, "detectors"), "at least one detector is required");
        }
        for (i, d) in self.detectors.iter().enumerate() {
            let dp = index(&join(path, "detectors"), i);
            match d.kind {
                DetectorType::Regex => match &d.pattern {
                    Some(pat) => {
                        if let Err(e) = compile_pattern(pat) {
                            p.push(join(&dp, "pattern"), e);
                        }
                    }
                    None => p.push(join(&dp, "pattern"), "a regex detector needs pattern"),
                },
                _ if d.pattern.is_some() => p.push(
                    join(&dp, "pattern"),
                    "pattern is only used by regex detectors",
                ),
                DetectorType::Column if d.columns.is_empty() && d.json_paths.is_empty() => {
                    p.push(dp.clone(), "a column detector needs columns or jsonPaths")
                }
                _ => {}
            }
            for (j, c) in d.columns.iter().enumerate() {
                if let Err(e) = NamePattern::parse(c, 3) {
                    p.push(index(&join(&dp, "columns"), j), e);
                }
            }
            for (j, jp) in d.json_paths.iter().enumerate() {
                if !jp.starts_with('$') {
                    p.push(
                        index(&join(&dp, "jsonPaths"), j),
                        format!("{jp:?} must start with '$', e.g. $.card.number or $..cvv"),
                    );
                }
            }
        }
        let ap = join(path, "action");
        let a = &self.action;
        if a.kind == MaskActionType::Null
            && self
                .detectors
                .iter()
                .any(|d| d.kind != DetectorType::Column)
        {
            p.push(
                join(&ap, "type"),
                "action null applies to column detectors only: a value found inside text cannot be nulled",
            );
        }
        if a.kind == MaskActionType::Hmac && a.hmac_key_secret_ref.is_none() {
            p.push(
                join(&ap, "hmacKeySecretRef"),
                "action hmac needs a key: unkeyed hashes of card numbers are not allowed (PCI DSS 3.5.1.1)",
            );
        }
        if let Some(t) = &a.truncate {
            if a.kind != MaskActionType::Truncate {
                p.push(join(&ap, "truncate"), "only used by action truncate");
            }
            if !(t.leading_digits <= 6 || t.leading_digits == 8) {
                p.push(
                    join(&ap, "truncate.leadingDigits"),
                    "may be at most 6, or 8 for an 8-digit BIN (PCI DSS 3.4.1)",
                );
            }
            if t.trailing_digits > 4 {
                p.push(
                    join(&ap, "truncate.trailingDigits"),
                    "may be at most 4 (PCI DSS 3.4.1)",
                );
            }
        }
        if let Some(r) = &a.replacement
            && r.bytes().any(|b| b.is_ascii_digit())
        {
            p.push(
                join(&ap, "replacement"),
                "must not contain digits, so a mask is never mistaken for data",
            );
        }
    }

    /// Validates a MaskingRule object's spec, with paths rooted at `spec`.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut p = Problems::default();
        self.validate_at("spec", &mut p);
        p.finish()
    }
}

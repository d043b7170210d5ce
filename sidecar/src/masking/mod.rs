//! The masking engine: card numbers (PAN) and sensitive authentication data
//! (SAD) never leave the data path unmasked (PCI DSS 3.3.1, 3.4.1).
//!
//! A [`Masker`] is built once per configuration and shared by every session.
//! It is pure (no IO): the PostgreSQL proxy calls it on DataRow values,
//! error and notice fields, notifications and COPY data; the audit writer on
//! statement text and parameters. Built-in detection is always on: SAD is
//! redacted whole and looked for first, then card numbers are shown as the
//! deployment's PAN action says (BIN6 + last 4 unless a MaskingRule says
//! otherwise). MaskingRules add column, JSON-path and regex detectors.
//!
//! Speed: the scan jumps from digit run to digit run, so text without digits
//! costs about as much as reading it, and input with nothing to mask is
//! neither copied nor allocated ([`Masker::mask_to`] returns `None`).

mod action;
pub mod cli;
mod json;

use std::borrow::Cow;
use std::collections::BTreeMap;

use cardgate_crds::config::MaskingConfig;
use cardgate_crds::glob::NamePattern;
use cardgate_crds::v1alpha1::{
    DEFAULT_REDACTION, DetectorType, MaskAction, MaskActionType, compile_pattern,
};
use cardgate_crds::validation::{Problems, index, join};
use serde::Serialize;

pub use action::{MASK_CHAR, MIN_HMAC_KEY_LEN, TOKEN_PREFIX};
pub use cardgate_crds::detect::{ISSUERS, IssuerRange, Lengths, card_brand};

use action::{HmacKey, TextAction};
use cardgate_crds::detect::{Find, Found, Scanner};
use json::{JsonFind, JsonRule, JsonValue};

/// Why a masking configuration cannot be used. Messages never quote a card
/// number: anything taken from the configuration is masked first.
#[derive(Debug, thiserror::Error)]
pub enum MaskingError {
    /// A rule fails validation (bad regex, column pattern, action settings…).
    #[error("invalid masking rules: {0}")]
    Invalid(String),
    /// A JSON path is not one the engine understands.
    #[error("masking rule {rule:?}: JSON path {path:?}: {message}")]
    JsonPath {
        /// The MaskingRule.
        rule: String,
        /// The path as written.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// An hmac action without a key.
    #[error(
        "masking rule {rule:?} uses hmac, which needs a key (masking.hmacKeyFile): unkeyed hashes of card numbers are not allowed (PCI DSS 3.5.1.1)"
    )]
    MissingHmacKey {
        /// The MaskingRule.
        rule: String,
    },
    /// A key too short to make tokens that cannot be brute-forced.
    #[error("the HMAC key has {len} bytes; at least {MIN_HMAC_KEY_LEN} random bytes are required")]
    HmacKeyTooShort {
        /// Its length.
        len: usize,
    },
    /// Rules that would show card numbers in two ways.
    #[error(
        "card numbers must be shown one way per deployment, but rules use {0}; a truncated PAN next to a token of the same PAN weakens both (PCI DSS 3.5.1.1)"
    )]
    MixedPanActions(String),
    /// The `mask` command could not load its configuration or key.
    #[error("{0}")]
    Config(String),
    /// The `mask` command could not read its input or write its output.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A column rule resolved for one result column: a small handle to pass to
/// [`Masker::mask_column_to`] for each value of that column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMask {
    target: u32,
    action: MaskActionType,
}

impl ColumnMask {
    /// How the column's values are shown (for audit and `explain`).
    pub fn action(self) -> MaskActionType {
        self.action
    }
}

/// What to send instead of a column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnOutput {
    /// Send SQL NULL.
    Null,
    /// Send the bytes appended to `out`.
    Masked,
}

/// One detection, for `mask --explain` and tests. Spans are byte offsets
/// into the input; the detected text itself is never included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// Which kind of detector found it.
    pub detector: DetectorType,
    /// The card brand (`visa`…), the SAD kind (`track2`, `cvv`…), or
    /// `column`, `json-path`, `regex`.
    pub kind: &'static str,
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// How it is shown.
    pub action: MaskActionType,
    /// The MaskingRule behind it; absent for built-in masking.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// How a configured rule shows what its column, JSON-path and regex
/// detectors find.
#[derive(Debug, Clone)]
enum RuleAction {
    Text(TextAction),
    Null,
}

#[derive(Debug, Clone)]
struct Target {
    rule: usize,
    action: RuleAction,
    kind: MaskActionType,
}

/// The masking engine for one configuration. Built once, shared as
/// `Arc<Masker>` by all sessions.
#[derive(Debug)]
pub struct Masker {
    pan: TextAction,
    pan_kind: MaskActionType,
    pan_rule: Option<usize>,
    sad: Box<str>,
    sad_rule: Option<usize>,
    rules: Vec<String>,
    targets: Vec<Target>,
    columns: Vec<(NamePattern, u32)>,
    json: Vec<JsonRule>,
    regexes: Vec<(regex::bytes::Regex, u32)>,
}

/// A detection while the detections of several detectors are merged.
#[derive(Debug, Clone, Copy)]
struct Item {
    start: usize,
    end: usize,
    what: What,
    /// A JSON value that swallowed sensitive authentication data: written
    /// as a redaction.
    sad_inside: bool,
}

#[derive(Debug, Clone, Copy)]
enum What {
    Builtin(Found),
    Json(u32, JsonValue),
    Regex(u32),
}

impl Masker {
    /// Built-in rules only: SAD redaction + PAN truncate (BIN6 + last 4).
    /// Used when no configuration is given.
    pub fn builtin() -> Masker {
        Masker {
            pan: TextAction::Truncate { lead: 6, trail: 4 },
            pan_kind: MaskActionType::Truncate,
            pan_rule: None,
            sad: DEFAULT_REDACTION.into(),
            sad_rule: None,
            rules: Vec::new(),
            targets: Vec::new(),
            columns: Vec::new(),
            json: Vec::new(),
            regexes: Vec::new(),
        }
    }

    /// From the sidecar configuration; `hmac_key` is the content of
    /// `masking.hmacKeyFile` (at least 32 bytes, used as is) if any. Every
    /// rule is validated again here, so a rule that cannot run is an error,
    /// never a panic or a silently skipped detector.
    pub fn from_config(
        cfg: &MaskingConfig,
        hmac_key: Option<&[u8]>,
    ) -> Result<Masker, MaskingError> {
        let mut problems = Problems::default();
        for (i, r) in cfg.rules.iter().enumerate() {
            r.spec
                .validate_at(&join(&index("masking.rules", i), "spec"), &mut problems);
        }
        problems
            .finish()
            .map_err(|e| MaskingError::Invalid(clean(&e.to_string())))?;
        let key = match hmac_key {
            Some(k) if k.len() < MIN_HMAC_KEY_LEN => {
                return Err(MaskingError::HmacKeyTooShort { len: k.len() });
            }
            Some(k) => Some(HmacKey::new(k)),
            None => None,
        };

        let mut m = Masker::builtin();
        for (ri, r) in cfg.rules.iter().enumerate() {
            m.rules.push(clean(&r.name));
            let action = rule_action(&r.spec.action, key.as_ref()).ok_or_else(|| {
                MaskingError::MissingHmacKey {
                    rule: clean(&r.name),
                }
            })?;
            let target = u32::try_from(m.targets.len())
                .map_err(|_| MaskingError::Invalid("too many masking rules".into()))?;
            m.targets.push(Target {
                rule: ri,
                action: action.clone(),
                kind: r.spec.action.kind,
            });
            for d in &r.spec.detectors {
                match d.kind {
                    DetectorType::Pan => {
                        let RuleAction::Text(text) = &action else {
                            return Err(null_on_text(&r.name));
                        };
                        match m.pan_rule {
                            None => {
                                m.pan = text.clone();
                                m.pan_kind = r.spec.action.kind;
                                m.pan_rule = Some(ri);
                            }
                            Some(_) if m.pan_kind != r.spec.action.kind => {
                                return Err(MaskingError::MixedPanActions(format!(
                                    "{} and {}",
                                    action_name(m.pan_kind),
                                    action_name(r.spec.action.kind)
                                )));
                            }
                            Some(_) => {}
                        }
                    }
                    DetectorType::Sad => {
                        if m.sad_rule.is_none() {
                            m.sad_rule = Some(ri);
                            if let RuleAction::Text(TextAction::Redact(text)) = &action {
                                m.sad = text.clone();
                            }
                        }
                    }
                    DetectorType::Column => {
                        for c in &d.columns {
                            let pattern = NamePattern::parse(c, 3)
                                .map_err(|e| MaskingError::Invalid(clean(&e)))?;
                            m.columns.push((pattern, target));
                        }
                        for p in &d.json_paths {
                            let path = json::JsonPath::parse(p).map_err(|message| {
                                MaskingError::JsonPath {
                                    rule: clean(&r.name),
                                    path: clean(p),
                                    message: clean(&message),
                                }
                            })?;
                            m.json.push(JsonRule {
                                path,
                                target,
                                null: matches!(action, RuleAction::Null),
                            });
                        }
                    }
                    DetectorType::Regex => {
                        if matches!(action, RuleAction::Null) {
                            return Err(null_on_text(&r.name));
                        }
                        let pattern = d.pattern.as_deref().unwrap_or_default();
                        let re = compile_pattern(pattern)
                            .map_err(|e| MaskingError::Invalid(clean(&e)))?;
                        m.regexes.push((re, target));
                    }
                }
            }
        }
        Ok(m)
    }

    /// Hot path. If nothing is detected: returns `None` and writes nothing
    /// (the caller forwards the original bytes, zero copy). Otherwise appends
    /// the masked bytes to `out` (the caller reuses the buffer) and returns
    /// the number of values masked.
    pub fn mask_to(&self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        if self.has_extra_detectors() {
            let items = self.items(input);
            if items.is_empty() {
                return None;
            }
            let mut last = 0;
            for it in &items {
                out.extend_from_slice(&input[last..it.start]);
                self.write_item(input, it, out);
                last = it.end;
            }
            out.extend_from_slice(&input[last..]);
            return Some(items.len());
        }
        let mut scanner = Scanner::new(input);
        let first = scanner.next()?;
        out.reserve(input.len() + 16);
        let mut last = 0;
        let mut count = 0;
        for f in std::iter::once(first).chain(scanner) {
            out.extend_from_slice(&input[last..f.start]);
            self.write_builtin(&input[f.start..f.end], f.found, out);
            last = f.end;
            count += 1;
        }
        out.extend_from_slice(&input[last..]);
        Some(count)
    }

    /// Convenience for logs, audit and errors: `Cow::Borrowed` when nothing
    /// matched. The output is valid UTF-8.
    pub fn mask_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Vec::new();
        match self.mask_to(s.as_bytes(), &mut out) {
            None => Cow::Borrowed(s),
            Some(_) => Cow::Owned(
                String::from_utf8(out)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }

    /// Whether any column rule exists, so the data path can skip resolving
    /// result column names when none could apply.
    pub fn has_column_rules(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Column rules, resolved once per result set (e.g. from a
    /// RowDescription): the first rule, in configuration order, whose
    /// column pattern matches `schema.table.column`.
    pub fn column_rule(&self, schema: &str, table: &str, column: &str) -> Option<ColumnMask> {
        let name = [schema, table, column];
        self.columns
            .iter()
            .find(|(p, _)| p.matches(&name))
            .map(|&(_, target)| ColumnMask {
                target,
                action: self.targets[target as usize].kind,
            })
    }

    /// Applies a column rule to one value. `text_like` says whether the value
    /// is text (text format, or binary format of a text-like type: text,
    /// varchar, bpchar, name, unknown, json); a column rule on a non-text
    /// binary value yields `Null`, since its bytes cannot be masked in place.
    /// A value holding sensitive authentication data is redacted whole even
    /// when the rule would show some digits. A handle from another `Masker`
    /// (after a reload) fails closed: `Null`.
    pub fn mask_column_to(
        &self,
        rule: ColumnMask,
        value: &[u8],
        text_like: bool,
        out: &mut Vec<u8>,
    ) -> ColumnOutput {
        let Some(target) = self.targets.get(rule.target as usize) else {
            return ColumnOutput::Null;
        };
        let RuleAction::Text(action) = &target.action else {
            return ColumnOutput::Null;
        };
        if !text_like {
            return ColumnOutput::Null;
        }
        self.write_whole(action, value, out);
        ColumnOutput::Masked
    }

    /// For `mask --explain`: every detection with detector, byte span and
    /// action, in input order.
    pub fn explain(&self, input: &[u8]) -> Vec<Detection> {
        let items = if self.has_extra_detectors() {
            self.items(input)
        } else {
            Scanner::new(input).map(builtin_item).collect()
        };
        items.iter().map(|it| self.detection(it)).collect()
    }

    /// The MaskingRule a column handle comes from.
    pub fn rule_name(&self, rule: ColumnMask) -> Option<&str> {
        let target = self.targets.get(rule.target as usize)?;
        self.rules.get(target.rule).map(String::as_str)
    }

    fn has_extra_detectors(&self) -> bool {
        !self.regexes.is_empty() || !self.json.is_empty()
    }

    fn write_builtin(&self, value: &[u8], found: Found, out: &mut Vec<u8>) {
        match found {
            Found::Pan(_) => self.pan.apply(value, out),
            Found::Sad(_) => out.extend_from_slice(self.sad.as_bytes()),
        }
    }

    /// Writes a whole value under `action`, unless it carries SAD and the
    /// action would show part of it.
    fn write_whole(&self, action: &TextAction, value: &[u8], out: &mut Vec<u8>) {
        let shows_digits = matches!(action, TextAction::Truncate { .. } | TextAction::Last4);
        if shows_digits && Scanner::new(value).any(|f| matches!(f.found, Found::Sad(_))) {
            out.extend_from_slice(self.sad.as_bytes());
        } else {
            action.apply(value, out);
        }
    }

    /// Every detection of every detector, overlaps resolved: SAD first, then
    /// JSON paths, card numbers, regexes in rule order. A JSON value that
    /// contains earlier finds replaces them (the whole value is masked as
    /// one, as a redaction if it swallowed SAD). A regex match masks only the
    /// parts that no earlier find covers, so card numbers keep the one
    /// format of the deployment.
    fn items(&self, input: &[u8]) -> Vec<Item> {
        let (sad, pans): (Vec<Item>, Vec<Item>) = Scanner::new(input)
            .map(builtin_item)
            .partition(|it| matches!(it.what, What::Builtin(Found::Sad(_))));
        let json: Vec<Item> = if !self.json.is_empty() && json::looks_like_json(input) {
            json::find_values(input, &self.json)
                .into_iter()
                .map(|f: JsonFind| Item {
                    start: f.start,
                    end: f.end,
                    what: What::Json(f.target, f.value),
                    sad_inside: false,
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut accepted: BTreeMap<usize, Item> =
            sad.into_iter().map(|it| (it.start, it)).collect();
        let mut add = |it: Item| {
            let overlapping: Vec<usize> = accepted
                .range(..it.end)
                .rev()
                .take_while(|(_, a)| a.end > it.start)
                .map(|(&k, _)| k)
                .collect();
            if overlapping.is_empty() {
                accepted.insert(it.start, it);
                return;
            }
            if matches!(it.what, What::Regex(_)) {
                // A regex match masks what nobody else covers; card numbers
                // and SAD inside it keep their own (deployment-wide) format.
                let mut covered: Vec<(usize, usize)> = overlapping
                    .iter()
                    .map(|k| (accepted[k].start, accepted[k].end))
                    .collect();
                covered.sort_unstable();
                covered.push((it.end, it.end));
                let mut from = it.start;
                for (s, e) in covered {
                    if s > from {
                        accepted.insert(
                            from,
                            Item {
                                start: from,
                                end: s,
                                ..it
                            },
                        );
                    }
                    from = from.max(e);
                }
                return;
            }
            if overlapping
                .iter()
                .any(|k| accepted[k].start < it.start || accepted[k].end > it.end)
            {
                // A JSON value (a whole string or number) that other finds
                // straddle is left to them.
                return;
            }
            let mut it = it;
            for k in overlapping {
                if let Some(old) = accepted.remove(&k) {
                    it.sad_inside |= matches!(old.what, What::Builtin(Found::Sad(_)));
                }
            }
            accepted.insert(it.start, it);
        };
        json.into_iter().for_each(&mut add);
        pans.into_iter().for_each(&mut add);
        for (re, target) in &self.regexes {
            for m in re.find_iter(input).filter(|m| !m.is_empty()) {
                let (start, end) = whole_digit_runs(input, m.start(), m.end());
                add(Item {
                    start,
                    end,
                    what: What::Regex(*target),
                    sad_inside: false,
                });
            }
        }
        accepted.into_values().collect()
    }

    fn write_item(&self, input: &[u8], it: &Item, out: &mut Vec<u8>) {
        let value = &input[it.start..it.end];
        match it.what {
            What::Builtin(found) => self.write_builtin(value, found, out),
            What::Regex(target) => match &self.targets[target as usize].action {
                RuleAction::Text(action) => self.write_whole(action, value, out),
                // Regex rules with a null action are refused by from_config.
                RuleAction::Null => out.extend_from_slice(self.sad.as_bytes()),
            },
            What::Json(target, kind) => {
                let action = &self.targets[target as usize].action;
                match (kind, action) {
                    (JsonValue::Null, _) | (_, RuleAction::Null) => out.extend_from_slice(b"null"),
                    (_, RuleAction::Text(action)) => {
                        let decoded: Cow<'_, [u8]> = match kind {
                            JsonValue::String => match serde_json::from_slice::<String>(value) {
                                Ok(s) => Cow::Owned(s.into_bytes()),
                                Err(_) => Cow::Borrowed(&value[1..value.len() - 1]),
                            },
                            _ => Cow::Borrowed(value),
                        };
                        let mut masked = Vec::with_capacity(decoded.len() + 8);
                        if it.sad_inside {
                            masked.extend_from_slice(self.sad.as_bytes());
                        } else {
                            self.write_whole(action, &decoded, &mut masked);
                        }
                        let text = String::from_utf8_lossy(&masked);
                        // Writing a string into a Vec cannot fail.
                        let _ = serde_json::to_writer(&mut *out, text.as_ref());
                    }
                }
            }
        }
    }

    fn detection(&self, it: &Item) -> Detection {
        let target = |t: u32| &self.targets[t as usize];
        let name = |rule: Option<usize>| rule.and_then(|r| self.rules.get(r)).cloned();
        let (detector, kind, action, rule) = match it.what {
            What::Builtin(Found::Pan(brand)) => {
                (DetectorType::Pan, brand, self.pan_kind, name(self.pan_rule))
            }
            What::Builtin(Found::Sad(k)) => (
                DetectorType::Sad,
                k.as_str(),
                MaskActionType::Redact,
                name(self.sad_rule),
            ),
            What::Json(t, _) => (
                DetectorType::Column,
                "json-path",
                target(t).kind,
                name(Some(target(t).rule)),
            ),
            What::Regex(t) => (
                DetectorType::Regex,
                "regex",
                target(t).kind,
                name(Some(target(t).rule)),
            ),
        };
        Detection {
            detector,
            kind,
            start: it.start,
            end: it.end,
            action: if it.sad_inside {
                MaskActionType::Redact
            } else {
                action
            },
            rule,
        }
    }
}

/// Widens `start..end` so it does not cut a run of digits: a match that
/// ended inside a number would leave the rest of it behind as a new,
/// shorter number (possibly a valid card number).
fn whole_digit_runs(input: &[u8], mut start: usize, mut end: usize) -> (usize, usize) {
    let digit = |i: usize| input.get(i).is_some_and(u8::is_ascii_digit);
    if start > 0 && digit(start - 1) && digit(start) {
        while start > 0 && digit(start - 1) {
            start -= 1;
        }
    }
    if end > 0 && digit(end - 1) && digit(end) {
        while digit(end) {
            end += 1;
        }
    }
    (start, end)
}

fn builtin_item(f: Find) -> Item {
    Item {
        start: f.start,
        end: f.end,
        what: What::Builtin(f.found),
        sad_inside: false,
    }
}

/// The compiled action of a rule; `None` when it needs a key that is absent.
fn rule_action(a: &MaskAction, key: Option<&HmacKey>) -> Option<RuleAction> {
    Some(match a.kind {
        MaskActionType::Truncate => {
            let t = a.truncate.clone().unwrap_or_default();
            RuleAction::Text(TextAction::Truncate {
                lead: t.leading_digits,
                trail: t.trailing_digits,
            })
        }
        MaskActionType::Last4 => RuleAction::Text(TextAction::Last4),
        MaskActionType::Redact => RuleAction::Text(TextAction::Redact(
            a.replacement.as_deref().unwrap_or(DEFAULT_REDACTION).into(),
        )),
        MaskActionType::Hmac => RuleAction::Text(TextAction::Hmac(key?.clone())),
        MaskActionType::Null => RuleAction::Null,
    })
}

fn action_name(kind: MaskActionType) -> &'static str {
    match kind {
        MaskActionType::Truncate => "truncate",
        MaskActionType::Last4 => "last4",
        MaskActionType::Redact => "redact",
        MaskActionType::Hmac => "hmac",
        MaskActionType::Null => "null",
    }
}

fn null_on_text(rule: &str) -> MaskingError {
    MaskingError::Invalid(format!(
        "masking rule {:?}: action null applies to column detectors only",
        clean(rule)
    ))
}

/// Text from the configuration, safe to put in an error message.
fn clean(s: &str) -> String {
    Masker::builtin().mask_str(s).into_owned()
}

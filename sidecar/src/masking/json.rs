//! JSON-path detectors: whole values at `$.card.number`, `$..cvv`,
//! `$.items[*].pan` in input that is a JSON document (or JSON lines).
//!
//! The document is walked once without building a tree; each value's path is
//! matched incrementally (one small state set per path pattern), so the cost
//! is linear in the input whatever the patterns.

use memchr::memchr2;

/// Deepest nesting walked; deeper documents are left to the text detectors.
const MAX_DEPTH: usize = 128;
/// Most segments in one path pattern (the match state is a 64-bit set).
const MAX_SEGMENTS: usize = 63;

/// A parsed JSON path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `.name`, `[0]`, `[*]`: a direct child.
    Child(Selector),
    /// `..name`: a descendant at any depth.
    Descendant(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Selector {
    Name(String),
    Index(usize),
    Any,
}

/// One step of a value's path: an object key or an array index.
#[derive(Debug, Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Selector {
    fn matches(&self, step: Step<'_>) -> bool {
        match (self, step) {
            (Self::Any, _) => true,
            (Self::Name(n), Step::Key(k)) => n == k,
            (Self::Index(i), Step::Index(j)) => *i == j,
            _ => false,
        }
    }
}

impl JsonPath {
    /// Parses `$`, `.name`, `..name`, `.*`, `[N]`, `[*]`, `['name']` and
    /// `["name"]` segments.
    pub fn parse(path: &str) -> Result<Self, String> {
        let b = path.as_bytes();
        if b.first() != Some(&b'$') {
            return Err("must start with '$', e.g. $.card.number or $..cvv".into());
        }
        let mut segments = Vec::new();
        let mut i = 1;
        while i < b.len() {
            let descendant = b[i..].starts_with(b"..");
            let (selector, next) = if descendant || b[i] == b'.' {
                i += if descendant { 2 } else { 1 };
                if b.get(i) == Some(&b'[') {
                    bracket(path, i)?
                } else {
                    let end = b[i..]
                        .iter()
                        .position(|&c| c == b'.' || c == b'[')
                        .map_or(b.len(), |p| i + p);
                    match &path[i..end] {
                        "" => return Err(format!("empty name at byte {i}")),
                        "*" => (Selector::Any, end),
                        name => (Selector::Name(name.to_string()), end),
                    }
                }
            } else if b[i] == b'[' {
                bracket(path, i)?
            } else {
                return Err(format!("unexpected {:?} at byte {i}", b[i] as char));
            };
            segments.push(if descendant {
                Segment::Descendant(selector)
            } else {
                Segment::Child(selector)
            });
            i = next;
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(format!(
                "has {} segments; at most {MAX_SEGMENTS} are allowed",
                segments.len()
            ));
        }
        Ok(Self { segments })
    }

    /// The state before any step: nothing matched yet.
    fn start(&self) -> u64 {
        1
    }

    /// The states after taking `step` from `states`.
    fn step(&self, states: u64, step: Step<'_>) -> u64 {
        let mut next = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            if states & (1 << i) == 0 {
                continue;
            }
            match seg {
                Segment::Child(s) if s.matches(step) => next |= 1 << (i + 1),
                Segment::Child(_) => {}
                Segment::Descendant(s) => {
                    next |= 1 << i;
                    if s.matches(step) {
                        next |= 1 << (i + 1);
                    }
                }
            }
        }
        next
    }

    fn accepts(&self, states: u64) -> bool {
        states & (1 << self.segments.len()) != 0
    }
}

/// Parses `[N]`, `[*]`, `['name']` or `["name"]` at `i`; returns the selector
/// and the index after `]`.
fn bracket(path: &str, i: usize) -> Result<(Selector, usize), String> {
    let close = path[i..]
        .find(']')
        .map(|p| i + p)
        .ok_or_else(|| format!("unclosed '[' at byte {i}"))?;
    let inner = &path[i + 1..close];
    let selector = if inner == "*" {
        Selector::Any
    } else if let Ok(n) = inner.parse::<usize>() {
        Selector::Index(n)
    } else if inner.len() >= 2
        && ((inner.starts_with('\'') && inner.ends_with('\''))
            || (inner.starts_with('"') && inner.ends_with('"')))
    {
        Selector::Name(inner[1..inner.len() - 1].to_string())
    } else {
        return Err(format!(
            "unsupported selector [{inner}]; use [N], [*] or ['name']"
        ));
    };
    Ok((selector, close + 1))
}

/// A path pattern and what a matching value gets.
#[derive(Debug, Clone)]
pub struct JsonRule {
    /// The pattern.
    pub path: JsonPath,
    /// Index of the action (see `Masker`).
    pub target: u32,
    /// The action is `null`: the whole value becomes `null`.
    pub null: bool,
}

/// How a matched value is rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonValue {
    /// A string literal (span includes the quotes): decoded, masked,
    /// written back as a string.
    String,
    /// A number: masked and written as a string.
    Number,
    /// Any value under a `null` rule: written as `null`.
    Null,
}

/// A value matched by a JSON-path rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonFind {
    /// Start of the value.
    pub start: usize,
    /// End of the value.
    pub end: usize,
    /// The rule's action index.
    pub target: u32,
    /// How to rewrite it.
    pub value: JsonValue,
}

/// Whether `input` looks like a JSON document (starts with `{` or `[`).
pub fn looks_like_json(input: &[u8]) -> bool {
    matches!(
        input.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    )
}

/// The values of `input` that `rules` match, in document order. Values
/// under a match are covered by it: every string and number leaf of a
/// matched object or array is reported (or the whole value, for `null`
/// rules). Input that is not well-formed JSON yields nothing.
pub fn find_values(input: &[u8], rules: &[JsonRule]) -> Vec<JsonFind> {
    let mut w = Walker {
        input,
        pos: 0,
        rules,
        finds: Vec::new(),
    };
    let states: Vec<u64> = rules.iter().map(|r| r.path.start()).collect();
    loop {
        w.skip_ws();
        if w.pos == input.len() {
            return w.finds;
        }
        if w.value(&states, Cover::Free, 0).is_none() {
            return Vec::new();
        }
    }
}

/// What an enclosing match means for the values below it.
#[derive(Debug, Clone, Copy)]
enum Cover {
    /// No enclosing match: paths are checked.
    Free,
    /// Inside a value matched by this rule: every leaf is masked.
    Leaves(usize),
    /// Inside a value that a null rule replaces whole.
    Silent,
}

struct Walker<'a, 'r> {
    input: &'a [u8],
    pos: usize,
    rules: &'r [JsonRule],
    finds: Vec<JsonFind>,
}

impl Walker<'_, '_> {
    fn skip_ws(&mut self) {
        while self
            .input
            .get(self.pos)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.skip_ws();
        (self.peek()? == b).then(|| self.pos += 1)
    }

    /// Walks one value whose path states are `states`, under the match of
    /// an enclosing value (`cover`). `None` on malformed input.
    fn value(&mut self, states: &[u64], cover: Cover, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.skip_ws();
        let start = self.pos;
        let (cover, null_here) = match cover {
            Cover::Free => match self
                .rules
                .iter()
                .zip(states)
                .position(|(r, &s)| r.path.accepts(s))
            {
                Some(i) if self.rules[i].null => (Cover::Silent, Some(i)),
                Some(i) => (Cover::Leaves(i), None),
                None => (Cover::Free, None),
            },
            other => (other, None),
        };
        let leaf = match self.peek()? {
            b'{' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek()? == b'}' {
                    self.pos += 1;
                } else {
                    let mut child = vec![0; states.len()];
                    loop {
                        self.skip_ws();
                        let (ks, ke) = self.string()?;
                        let key = decode_key(&self.input[ks..ke])?;
                        self.expect(b':')?;
                        for (i, r) in self.rules.iter().enumerate() {
                            child[i] = r.path.step(states[i], Step::Key(&key));
                        }
                        self.value(&child, cover, depth + 1)?;
                        self.skip_ws();
                        match self.peek()? {
                            b',' => self.pos += 1,
                            b'}' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                None
            }
            b'[' => {
                self.pos += 1;
                self.skip_ws();
                if self.peek()? == b']' {
                    self.pos += 1;
                } else {
                    let mut child = vec![0; states.len()];
                    let mut index = 0;
                    loop {
                        for (i, r) in self.rules.iter().enumerate() {
                            child[i] = r.path.step(states[i], Step::Index(index));
                        }
                        self.value(&child, cover, depth + 1)?;
                        index += 1;
                        self.skip_ws();
                        match self.peek()? {
                            b',' => self.pos += 1,
                            b']' => {
                                self.pos += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                None
            }
            b'"' => {
                self.string()?;
                Some(JsonValue::String)
            }
            b't' | b'f' | b'n' => {
                let lit: &[u8] = match self.peek()? {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !self.input[self.pos..].starts_with(lit) {
                    return None;
                }
                self.pos += lit.len();
                None
            }
            _ => {
                let n = self.input[self.pos..]
                    .iter()
                    .take_while(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .count();
                if n == 0 {
                    return None;
                }
                self.pos += n;
                Some(JsonValue::Number)
            }
        };
        let end = self.pos;
        match (null_here, cover, leaf) {
            (Some(i), _, _) => self.push(start, end, i, JsonValue::Null),
            (None, Cover::Leaves(i), Some(value)) => self.push(start, end, i, value),
            _ => {}
        }
        Some(())
    }

    fn push(&mut self, start: usize, end: usize, rule: usize, value: JsonValue) {
        self.finds.push(JsonFind {
            start,
            end,
            target: self.rules[rule].target,
            value,
        });
    }

    /// A string literal at the cursor: its span including quotes.
    fn string(&mut self) -> Option<(usize, usize)> {
        let start = self.pos;
        if self.peek()? != b'"' {
            return None;
        }
        let mut i = start + 1;
        loop {
            i += memchr2(b'"', b'\\', self.input.get(i..)?)?;
            if self.input[i] == b'\\' {
                i += 2;
            } else {
                self.pos = i + 1;
                return Some((start, self.pos));
            }
        }
    }
}

/// An object key as text; escapes are decoded only when present.
fn decode_key(literal: &[u8]) -> Option<std::borrow::Cow<'_, str>> {
    let inner = &literal[1..literal.len() - 1];
    if inner.contains(&b'\\') {
        serde_json::from_slice::<String>(literal)
            .ok()
            .map(Into::into)
    } else {
        std::str::from_utf8(inner).ok().map(Into::into)
    }
}

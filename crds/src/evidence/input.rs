//! Reading an export: audit records as the log pipeline delivers them.
//!
//! A line is one of
//! - a raw record (`{"chain":…,"seq":…,"hash":…}`), as the sidecar writes it;
//! - a CRI container-log line, `<time> <stream> <P|F> <content>`, as the
//!   kubelet stores it; `P` (partial) lines are joined with what follows up
//!   to the `F` line, per source and stream;
//! - a shipper's JSON envelope holding the record (as text, possibly a CRI
//!   line itself, or as an object) in `log` (Fluent Bit) or `message`
//!   (Vector), next to Kubernetes metadata.
//!
//! Lines of other streams (`stderr`) and non-JSON lines are not records;
//! they are counted, and still scanned for card data like every byte.
//! A line that looks like JSON but does not parse is a finding: it may be a
//! damaged record.

use std::collections::HashMap;
use std::io::BufRead;

use serde::Serialize;
use serde_json::Value;

/// Longest line (or joined partial line) read; longer ones are findings,
/// so a hostile export cannot exhaust memory through one line.
pub const MAX_LINE: usize = 8 << 20;

/// Where something was found: the source (a path, or `-` for stdin) and its
/// line, counted from 1.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    /// File path, or `-`.
    pub source: String,
    /// Line number.
    pub line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.source, self.line)
    }
}

/// How a record was wrapped.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Wrapping {
    /// A JSON line.
    Raw,
    /// A CRI container-log line.
    Cri,
    /// A shipper envelope with the record in `log`.
    EnvelopeLog,
    /// A shipper envelope with the record in `message`.
    EnvelopeMessage,
}

/// One record read from the export.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Where it was read (the last line of a joined partial line).
    pub at: Place,
    /// How it was wrapped.
    pub wrapping: Wrapping,
    /// The record.
    pub record: Value,
}

/// A line that could not be read as what it claims to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Where.
    pub at: Place,
    /// Why.
    pub reason: String,
}

/// Everything read from the inputs, in input order.
#[derive(Debug, Default)]
pub struct Export {
    /// Records.
    pub entries: Vec<Entry>,
    /// Lines that look damaged.
    pub unreadable: Vec<Unreadable>,
    /// Lines that are not audit records (other streams, plain text).
    pub other_lines: u64,
    /// Lines read.
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Raw card data found while reading (every byte is scanned).
    pub card_data: Vec<super::scan::CardData>,
}

/// What the content of a line turned out to be.
enum Content {
    Record(Value, Wrapping),
    Other,
    Damaged(String),
}

impl Export {
    /// Reads one source (`name` is how findings refer to it).
    pub fn read(&mut self, name: &str, mut reader: impl BufRead) -> std::io::Result<()> {
        let mut partial: HashMap<String, (Vec<u8>, usize)> = HashMap::new();
        let mut line_no = 0;
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let (read, whole) = read_line(&mut reader, &mut buf)?;
            if read == 0 {
                break;
            }
            line_no += 1;
            self.lines += 1;
            self.bytes += read as u64;
            let at = Place {
                source: name.to_string(),
                line: line_no,
            };
            self.card_data.extend(super::scan::scan(&at, &buf));
            if !whole {
                self.damaged(at, format!("longer than {MAX_LINE} bytes; not read"));
                continue;
            }
            self.line(at, &buf, &mut partial);
        }
        for (stream, (_, line)) in partial {
            let at = Place {
                source: name.to_string(),
                line,
            };
            self.damaged(
                at,
                format!("partial CRI line on {stream} never completed by an F line"),
            );
        }
        Ok(())
    }

    fn line(&mut self, at: Place, bytes: &[u8], partial: &mut HashMap<String, (Vec<u8>, usize)>) {
        let text = trim_eol(bytes);
        if text.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let content = match cri(text) {
            Some(cri) => match join_partial(cri, at.line, partial) {
                Joined::Pending => return,
                Joined::TooLong => {
                    Content::Damaged(format!("joined partial line longer than {MAX_LINE} bytes"))
                }
                Joined::Other => Content::Other,
                Joined::Whole(content) => match classify(&content) {
                    Content::Record(v, _) => Content::Record(v, Wrapping::Cri),
                    other => other,
                },
            },
            None => classify(text),
        };
        match content {
            Content::Record(record, wrapping) => {
                // Escapes (`\u0034`) could hide digits from the byte scan;
                // the decoded record is scanned too.
                let decoded = crate::audit::canonical_bytes(&record);
                if self.card_data.last().is_none_or(|c| c.at != at)
                    && let Some(found) = super::scan::scan(&at, &decoded)
                {
                    self.card_data.push(found);
                }
                self.entries.push(Entry {
                    at,
                    wrapping,
                    record,
                })
            }
            Content::Other => self.other_lines += 1,
            Content::Damaged(reason) => self.damaged(at, reason),
        }
    }

    fn damaged(&mut self, at: Place, reason: String) {
        self.unreadable.push(Unreadable { at, reason });
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes into `buf`; returns the
/// bytes consumed and whether the line was whole (a longer line is skipped
/// to its end).
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    let mut consumed = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((consumed, buf.len() <= MAX_LINE));
        }
        let (chunk, done) = match memchr_newline(available) {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let n = chunk.len();
        if buf.len() <= MAX_LINE {
            buf.extend_from_slice(&chunk[..n.min(MAX_LINE + 1 - buf.len())]);
        }
        reader.consume(n);
        consumed += n;
        if done {
            return Ok((consumed, buf.len() <= MAX_LINE));
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn trim_eol(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    bytes.strip_suffix(b"\r").unwrap_or(bytes)
}

/// A CRI line: stream, tag (`P` or `F`) and content.
struct Cri<'a> {
    stream: &'a str,
    partial: bool,
    content: &'a [u8],
}

/// Parses `<RFC 3339 time> <stdout|stderr> <P|F[:…]> <content>`.
fn cri(line: &[u8]) -> Option<Cri<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = parts.next()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let looks_like_time = time.len() >= 20 && time.first()?.is_ascii_digit() && time[4] == b'-';
    if !looks_like_time || !matches!(stream, "stdout" | "stderr") {
        return None;
    }
    let partial = match tag.split(|&b| b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Cri {
        stream,
        partial,
        content,
    })
}

enum Joined {
    Pending,
    TooLong,
    Other,
    Whole(Vec<u8>),
}

/// Joins `P` lines with the `F` line that ends them (per stream).
fn join_partial(
    cri: Cri<'_>,
    line: usize,
    partial: &mut HashMap<String, (Vec<u8>, usize)>,
) -> Joined {
    let (mut content, _) = partial.remove(cri.stream).unwrap_or_default();
    if content.len() + cri.content.len() > MAX_LINE {
        return Joined::TooLong;
    }
    content.extend_from_slice(cri.content);
    if cri.partial {
        partial.insert(cri.stream.to_string(), (content, line));
        return Joined::Pending;
    }
    if cri.stream != "stdout" {
        return Joined::Other;
    }
    Joined::Whole(content)
}

/// Decides what a line's content is: a record, an envelope holding one,
/// something else, or a damaged JSON line.
fn classify(text: &[u8]) -> Content {
    let trimmed = text.trim_ascii();
    if trimmed.first() != Some(&b'{') {
        return Content::Other;
    }
    let value: Value = match serde_json::from_slice(trimmed) {
        Ok(v) => v,
        Err(e) => return Content::Damaged(format!("not valid JSON: {e}")),
    };
    unwrap_value(value, 0)
}

/// A record, or an envelope around one (at most a few levels deep).
fn unwrap_value(value: Value, depth: u8) -> Content {
    if is_record(&value) {
        return Content::Record(value, Wrapping::Raw);
    }
    let Value::Object(mut map) = value else {
        return Content::Other;
    };
    if depth > 2 {
        return Content::Other;
    }
    if map.get("stream").and_then(Value::as_str) == Some("stderr") {
        return Content::Other;
    }
    for (field, wrapping) in [
        ("log", Wrapping::EnvelopeLog),
        ("message", Wrapping::EnvelopeMessage),
    ] {
        let inner = match map.remove(field) {
            Some(Value::String(s)) => inner_text(s.as_bytes(), depth),
            Some(obj @ Value::Object(_)) => unwrap_value(obj, depth + 1),
            _ => continue,
        };
        return match inner {
            Content::Record(v, _) => Content::Record(v, wrapping),
            other => other,
        };
    }
    Content::Other
}

/// The text inside an envelope: a JSON record, or a CRI line holding one
/// (a shipper that did not parse the container log format).
fn inner_text(text: &[u8], depth: u8) -> Content {
    let text = trim_eol(text);
    let content = match cri(text) {
        Some(c) if c.partial => {
            return Content::Damaged(
                "a partial CRI line inside an envelope (the shipper did not join P lines)".into(),
            );
        }
        Some(c) if c.stream != "stdout" => return Content::Other,
        Some(c) => c.content,
        None => text,
    };
    let trimmed = content.trim_ascii();
    if trimmed.first() != Some(&b'{') {
        return Content::Other;
    }
    match serde_json::from_slice(trimmed) {
        Ok(v) => match unwrap_value(v, depth + 1) {
            Content::Record(v, _) => Content::Record(v, Wrapping::Raw),
            other => other,
        },
        Err(e) => Content::Damaged(format!("not valid JSON inside the envelope: {e}")),
    }
}

/// Whether a JSON object is an audit record: it has the chain fields.
fn is_record(v: &Value) -> bool {
    v.get("seq").is_some_and(Value::is_u64)
        && v.get("hash").is_some_and(Value::is_string)
        && v.get("prevHash").is_some_and(Value::is_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Export {
        let mut e = Export::default();
        e.read("t", text.as_bytes()).unwrap();
        e
    }

    const R: &str = r#"{"seq":1,"prevHash":"00","hash":"ab","event":"audit.start"}"#;

    #[test]
    fn raw_cri_and_envelopes_yield_the_same_record() {
        let escaped = serde_json::to_string(R).unwrap();
        let text = format!(
            "{R}\n2026-12-03T04:00:00.000000001Z stdout F {R}\n{{\"log\":{escaped},\"kubernetes\":{{\"pod_name\":\"p\"}}}}\n{{\"message\":{escaped}}}\n{{\"message\":{R}}}\n"
        );
        let e = read(&text);
        assert_eq!(e.entries.len(), 5, "{:?}", e.unreadable);
        let want: Value = serde_json::from_str(R).unwrap();
        assert!(e.entries.iter().all(|x| x.record == want));
        let kinds: Vec<Wrapping> = e.entries.iter().map(|x| x.wrapping).collect();
        assert_eq!(
            kinds,
            [
                Wrapping::Raw,
                Wrapping::Cri,
                Wrapping::EnvelopeLog,
                Wrapping::EnvelopeMessage,
                Wrapping::EnvelopeMessage
            ]
        );
    }

    #[test]
    fn partial_cri_lines_are_joined_per_stream() {
        let (a, b) = R.split_at(20);
        let text = format!(
            "2026-12-03T04:00:00Z stdout P {a}\n2026-12-03T04:00:00Z stderr F {{\"level\":\"info\"}}\n2026-12-03T04:00:01Z stdout F {b}\n"
        );
        let e = read(&text);
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.entries[0].at.line, 3);
        assert_eq!(e.other_lines, 1);
    }

    #[test]
    fn a_fluent_bit_envelope_of_a_cri_line_is_read() {
        let line = format!("2026-12-03T04:00:00Z stdout F {R}");
        let env = serde_json::json!({"log": line, "stream": "stdout"}).to_string();
        let e = read(&env);
        assert_eq!(e.entries.len(), 1);
    }

    #[test]
    fn damaged_lines_and_unfinished_partials_are_named() {
        let text = format!(
            "{}\nplain text\n2026-12-03T04:00:00Z stdout P {{\"seq\":\n",
            &R[..30]
        );
        let e = read(&text);
        assert_eq!(e.entries.len(), 0);
        assert_eq!(e.other_lines, 1);
        let lines: Vec<usize> = e.unreadable.iter().map(|u| u.at.line).collect();
        assert_eq!(lines, [1, 3], "{:?}", e.unreadable);
    }

    #[test]
    fn an_overlong_line_is_a_finding_not_an_allocation() {
        let mut text = "x".repeat(MAX_LINE + 10);
        text.push('\n');
        text.push_str(R);
        let e = read(&text);
        assert_eq!(e.entries.len(), 1);
        assert_eq!(e.unreadable.len(), 1);
        assert!(e.unreadable[0].reason.contains("longer than"));
    }
}

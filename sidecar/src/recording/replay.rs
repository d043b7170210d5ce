//! `cardgate-sidecar replay`: shows a recorded session the way psql showed
//! it, at the recorded pace (or faster).
//!
//! Parsing and rendering are pure ([`parse`], [`Renderer`]); [`replay`]
//! only adds the clock and the output stream. Tables follow psql's default
//! aligned format: centered header, `-+-` separator, numbers right-aligned,
//! `+` marking a value that continues on the next line, `(N rows)` footer.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use unicode_width::UnicodeWidthStr;

use super::format::{Column, Diagnostic, Event, Line};

/// Type OIDs psql right-aligns (integers, floats, numeric, money, oid, xid, cid).
const RIGHT_ALIGNED: [u32; 11] = [20, 21, 23, 26, 28, 29, 700, 701, 790, 1700, 5069];

/// How fast to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As recorded, divided by the factor (2.0 is twice as fast).
    Speed(f64),
    /// No waiting at all.
    Instant,
}

/// Why a recording cannot be replayed (further).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The file cannot be read or the output cannot be written.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A line in the middle of the file is not a recording event.
    #[error("line {line}: not a recording event ({reason}); the recording is damaged")]
    Malformed {
        /// Line number (from 1).
        line: usize,
        /// Parser message.
        reason: String,
    },
}

/// A recording read into memory.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Events in file order.
    pub lines: Vec<Line>,
    /// Size in bytes of a last line that was cut off mid-write.
    pub truncated: Option<usize>,
    /// The first damaged line (not the last), if any.
    pub damaged: Option<(usize, String)>,
}

/// Reads a recording; a cut-off last line is reported, not an error.
pub fn parse(bytes: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    let mut rest = bytes;
    let mut n = 0;
    while !rest.is_empty() {
        n += 1;
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                let l = &rest[..i];
                rest = &rest[i + 1..];
                (l, true)
            }
            None => {
                let l = rest;
                rest = &[];
                (l, false)
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Line>(line) {
            // A last line without its newline is still whole if it parses.
            Ok(l) => parsed.lines.push(l),
            Err(_) if !complete => {
                parsed.truncated = Some(line.len());
                break;
            }
            Err(e) => {
                parsed.damaged = Some((n, e.to_string()));
                break;
            }
        }
    }
    parsed
}

/// A result row's values; `None` is SQL NULL.
type Row = Vec<Option<String>>;

/// Turns events into psql-like text.
#[derive(Debug, Default)]
pub struct Renderer {
    prompt: String,
    table: Option<(Vec<Column>, Vec<Row>)>,
    ended: bool,
}

impl Renderer {
    /// A renderer before the session line.
    pub fn new() -> Self {
        Self {
            prompt: "cardgate".into(),
            ..Self::default()
        }
    }

    /// Whether the session's `end` line was seen.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The text to show for one line (possibly empty).
    pub fn render(&mut self, line: &Line) -> String {
        let mut out = String::new();
        match &line.event {
            Event::Session {
                session,
                started,
                subject,
                target,
                database,
                client,
                ..
            } => {
                self.prompt = database.clone().unwrap_or_else(|| target.clone());
                out.push_str(&format!(
                    "-- cardgate session {session}: {subject} on {target}"
                ));
                if let Some(db) = database {
                    out.push_str(&format!(" (database {db})"));
                }
                if let Some(c) = client {
                    out.push_str(&format!(" from {c}"));
                }
                out.push_str(&format!(", started {started}\n"));
            }
            Event::Query { text } => {
                for (i, l) in text.lines().enumerate() {
                    let mark = if i == 0 { '=' } else { '-' };
                    out.push_str(&format!("{}{mark}> {l}\n", self.prompt));
                }
            }
            Event::Columns { columns } => self.table = Some((columns.clone(), Vec::new())),
            Event::Row { values } => {
                if let Some((_, rows)) = &mut self.table {
                    rows.push(values.clone());
                }
            }
            Event::Complete { tag, omitted } => match self.table.take() {
                Some((columns, rows)) => {
                    let total = rows.len() as u64 + omitted;
                    out.push_str(&render_table(&columns, &rows));
                    if *omitted > 0 {
                        out.push_str(&format!(
                            "-- {omitted} more rows were returned but not recorded\n"
                        ));
                    }
                    out.push_str(&if total == 1 {
                        "(1 row)\n\n".to_string()
                    } else {
                        format!("({total} rows)\n\n")
                    });
                    // psql also shows the status of a write with RETURNING.
                    if ["INSERT", "UPDATE", "DELETE", "MERGE"]
                        .iter()
                        .any(|w| tag.starts_with(w))
                    {
                        out.push_str(tag);
                        out.push('\n');
                    }
                }
                None => {
                    out.push_str(tag);
                    out.push('\n');
                }
            },
            Event::Error(d) | Event::Notice(d) => {
                if matches!(line.event, Event::Error(_)) {
                    // psql shows no partial result before an error.
                    self.table = None;
                }
                out.push_str(&diagnostic(d));
            }
            Event::Stopped { reason } => out.push_str(&format!("-- recording stopped: {reason}\n")),
            Event::End => {
                self.ended = true;
                out.push_str(&format!(
                    "-- session ended after {:.3} s\n",
                    line.t_us as f64 / 1e6
                ));
            }
        }
        out
    }
}

fn diagnostic(d: &Diagnostic) -> String {
    let mut out = format!("{}:  {}\n", d.severity, d.message);
    if let Some(x) = &d.detail {
        out.push_str(&format!("DETAIL:  {x}\n"));
    }
    if let Some(x) = &d.hint {
        out.push_str(&format!("HINT:  {x}\n"));
    }
    out
}

/// Splits a value into display lines the way psql does: newlines start a
/// new line, tabs expand to the next multiple of 8, `\r` and other control
/// characters are shown escaped.
fn display_lines(value: &str) -> Vec<String> {
    let mut lines = vec![String::new()];
    let mut width = 0;
    for c in value.chars() {
        let cur = lines.last_mut().expect("never empty");
        match c {
            '\n' => {
                lines.push(String::new());
                width = 0;
            }
            '\r' => {
                cur.push_str("\\r");
                width += 2;
            }
            '\t' => loop {
                cur.push(' ');
                width += 1;
                if width % 8 == 0 {
                    break;
                }
            },
            c if c.is_control() => {
                let s = format!("\\x{:02X}", u32::from(c));
                width += s.len();
                cur.push_str(&s);
            }
            c => {
                cur.push(c);
                width += unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
            }
        }
    }
    lines
}

/// Renders a result as psql's aligned format with border 1 (without footer).
pub fn render_table(columns: &[Column], rows: &[Row]) -> String {
    let n = columns.len();
    if n == 0 {
        return "--\n".into();
    }
    let right: Vec<bool> = columns
        .iter()
        .map(|c| RIGHT_ALIGNED.contains(&c.type_oid))
        .collect();
    let cells: Vec<Vec<Vec<String>>> = rows
        .iter()
        .map(|r| {
            (0..n)
                .map(|j| display_lines(r.get(j).and_then(Option::as_deref).unwrap_or("")))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.name.width()).collect();
    for row in &cells {
        for (j, lines) in row.iter().enumerate() {
            for l in lines {
                widths[j] = widths[j].max(l.width());
            }
        }
    }

    let mut out = String::new();
    for (j, c) in columns.iter().enumerate() {
        let pad = widths[j] - c.name.width();
        out.push(' ');
        spaces(&mut out, pad / 2);
        out.push_str(&c.name);
        spaces(&mut out, pad.div_ceil(2));
        out.push(' ');
        if j + 1 < n {
            out.push('|');
        }
    }
    out.push('\n');
    for (j, w) in widths.iter().enumerate() {
        if j > 0 {
            out.push('+');
        }
        out.push_str(&"-".repeat(w + 2));
    }
    out.push('\n');

    for row in &cells {
        let height = row.iter().map(Vec::len).max().unwrap_or(1);
        for k in 0..height {
            for (j, lines) in row.iter().enumerate() {
                let last = j + 1 == n;
                out.push(' ');
                let continues = k + 1 < lines.len();
                match lines.get(k) {
                    None => {
                        if !last {
                            spaces(&mut out, widths[j]);
                        }
                    }
                    Some(text) => {
                        let pad = widths[j] - text.width();
                        if right[j] {
                            spaces(&mut out, pad);
                            out.push_str(text);
                        } else {
                            out.push_str(text);
                            if !last || continues {
                                spaces(&mut out, pad);
                            }
                        }
                    }
                }
                if continues {
                    out.push('+');
                } else if !last {
                    out.push(' ');
                }
                if !last {
                    out.push('|');
                }
            }
            out.push('\n');
        }
    }
    out
}

fn spaces(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// What a replay found besides the session itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Events shown.
    pub events: usize,
    /// The last line was cut off.
    pub truncated: bool,
    /// The session's `end` line was present.
    pub ended: bool,
}

/// Replays the recording at `path` to `out` at `pace`. A cut-off last line
/// or a missing end is said in the output; a damaged line in the middle is
/// an error after everything before it was shown.
pub fn replay(path: &Path, pace: Pace, out: &mut impl Write) -> Result<ReplaySummary, ReplayError> {
    let bytes = std::fs::read(path)?;
    let parsed = parse(&bytes);
    let mut renderer = Renderer::new();
    let started = Instant::now();
    for line in &parsed.lines {
        if let Pace::Speed(speed) = pace {
            let at = Duration::from_secs_f64(line.t_us as f64 / 1e6 / speed);
            let now = started.elapsed();
            if at > now {
                std::thread::sleep(at - now);
            }
        }
        let text = renderer.render(line);
        out.write_all(text.as_bytes())?;
        out.flush()?;
    }
    if let Some((line, reason)) = parsed.damaged {
        return Err(ReplayError::Malformed { line, reason });
    }
    if let Some(len) = parsed.truncated {
        writeln!(
            out,
            "-- the recording is truncated: its last line ({len} bytes) was cut off, so what followed is missing"
        )?;
    } else if !renderer.ended() {
        writeln!(
            out,
            "-- the recording ends without a session end: the session was still open, or the sidecar stopped"
        )?;
    }
    out.flush()?;
    Ok(ReplaySummary {
        events: parsed.lines.len(),
        truncated: parsed.truncated.is_some(),
        ended: renderer.ended(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(spec: &[(&str, u32)]) -> Vec<Column> {
        spec.iter()
            .map(|(n, t)| Column {
                name: (*n).into(),
                type_oid: *t,
            })
            .collect()
    }

    fn row(values: &[Option<&str>]) -> Row {
        values.iter().map(|v| v.map(String::from)).collect()
    }

    // Expected texts were captured from psql 15 (`psql -X`, default
    // aligned format) running the same queries.
    #[test]
    fn tables_match_psql() {
        assert_eq!(
            render_table(
                &cols(&[("a", 23), ("bb", 25)]),
                &[row(&[Some("1"), Some("xyz")])]
            ),
            " a | bb  \n---+-----\n 1 | xyz\n"
        );
        assert_eq!(
            render_table(
                &cols(&[("num", 23), ("t", 25), ("n", 25), ("x", 1700)]),
                &[row(&[Some("12345"), Some("a"), None, Some("3.5")])]
            ),
            "  num  | t | n |  x  \n-------+---+---+-----\n 12345 | a |   | 3.5\n"
        );
        assert_eq!(
            render_table(
                &cols(&[("multi", 25), ("k", 23)]),
                &[row(&[Some("line1\nlonger line2"), Some("7")])]
            ),
            "    multi     | k \n--------------+---\n line1       +| 7\n longer line2 | \n"
        );
        assert_eq!(
            render_table(
                &cols(&[("first", 25), ("last", 25)]),
                &[row(&[Some("x"), Some("a\nbb")])]
            ),
            " first | last \n-------+------\n x     | a   +\n       | bb\n"
        );
        assert_eq!(
            render_table(
                &cols(&[("wïde", 25), ("c", 25)]),
                &[row(&[Some("ü€"), Some("ab")])]
            ),
            " wïde | c  \n------+----\n ü€   | ab\n"
        );
        assert_eq!(render_table(&[], &[Vec::new()]), "--\n");
    }

    #[test]
    fn control_characters_are_shown_as_psql_does() {
        assert_eq!(display_lines("a\tb"), vec!["a       b"]);
        assert_eq!(display_lines("a\rb\u{1}"), vec!["a\\rb\\x01"]);
    }

    fn line(t_us: u64, event: Event) -> Line {
        Line { t_us, event }
    }

    #[test]
    fn statements_results_and_errors_render_like_psql() {
        let mut r = Renderer::new();
        let mut out = String::new();
        for l in [
            line(
                0,
                Event::Session {
                    version: 1,
                    session: "s1".into(),
                    started: "2026-11-22T10:00:00.000000Z".into(),
                    subject: "agent".into(),
                    target: "payments".into(),
                    database: Some("shop".into()),
                    client: None,
                },
            ),
            line(
                1,
                Event::Query {
                    text: "insert into t values (1),(2) returning i".into(),
                },
            ),
            line(
                2,
                Event::Columns {
                    columns: cols(&[("i", 23)]),
                },
            ),
            line(
                3,
                Event::Row {
                    values: vec![Some("1".into())],
                },
            ),
            line(
                4,
                Event::Row {
                    values: vec![Some("2".into())],
                },
            ),
            line(
                5,
                Event::Complete {
                    tag: "INSERT 0 2".into(),
                    omitted: 0,
                },
            ),
            line(
                6,
                Event::Complete {
                    tag: "CREATE TABLE".into(),
                    omitted: 0,
                },
            ),
            line(
                7,
                Event::Columns {
                    columns: cols(&[("x", 23)]),
                },
            ),
            line(
                8,
                Event::Error(Diagnostic {
                    severity: "ERROR".into(),
                    code: "22012".into(),
                    message: "division by zero".into(),
                    detail: None,
                    hint: Some("do not".into()),
                }),
            ),
            line(1_500_000, Event::End),
        ] {
            out.push_str(&r.render(&l));
        }
        assert_eq!(
            out,
            "-- cardgate session s1: agent on payments (database shop), started 2026-11-22T10:00:00.000000Z\n\
             shop=> insert into t values (1),(2) returning i\n \
             i \n---\n 1\n 2\n(2 rows)\n\nINSERT 0 2\n\
             CREATE TABLE\n\
             ERROR:  division by zero\nHINT:  do not\n\
             -- session ended after 1.500 s\n"
        );
        assert!(r.ended());
    }

    #[test]
    fn a_cut_off_last_line_is_reported_not_fatal() {
        let p = parse(
            b"{\"t_us\":0,\"kind\":\"query\",\"text\":\"select 1\"}\n{\"t_us\":5,\"kind\":\"ro",
        );
        assert_eq!(p.lines.len(), 1);
        assert_eq!(p.truncated, Some(20));
        assert!(p.damaged.is_none());

        let p = parse(b"{\"t_us\":0,\"kind\":\"end\"}");
        assert_eq!(p.lines.len(), 1, "a last line without newline is whole");

        let p = parse(b"garbage\n{\"t_us\":0,\"kind\":\"end\"}\n");
        assert_eq!(p.damaged.as_ref().map(|d| d.0), Some(1));
    }
}

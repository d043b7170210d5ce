//! Cache keys that ignore numeric literals.
//!
//! Clients that send values inline (`… WHERE id = 4711`, pgbench, many ORMs
//! in simple-query mode) would make every statement text unique and every
//! classification a cache miss — a full parse on the hot path. A statement's
//! class, relations and session effects never depend on the value of a
//! number, so numbers are replaced by `0` in the cache key. Strings are left
//! alone: some of them do matter (`set_config('role', …)`, `SET search_path
//! = '…'`). The lexer knows PostgreSQL's quoting (strings, escape strings,
//! quoted identifiers, dollar quoting, comments) so digits inside those, in
//! identifiers (`t1`) or in parameters (`$1`) are kept.
//!
//! Only runs of digits, dots and exponents collapse; every keyword,
//! identifier, operator and string stays in the key. Two statements that
//! share a key therefore name the same relations and functions, even where
//! this lexer and PostgreSQL's split a number differently.

use std::borrow::Cow;

/// `sql` with every numeric literal replaced by `0`; borrowed when there is
/// none.
pub fn without_numbers(sql: &str) -> Cow<'_, str> {
    let b = sql.as_bytes();
    if !b.iter().any(u8::is_ascii_digit) {
        return Cow::Borrowed(sql);
    }
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `sql` already in `out`
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let escapes = i > 0
                    && matches!(b[i - 1], b'E' | b'e')
                    && !ident_char(b.get(i.wrapping_sub(2)).copied());
                i = skip_quoted(b, i + 1, b'\'', escapes);
            }
            b'"' => i = skip_quoted(b, i + 1, b'"', false),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i + 2),
            b'$' => i = skip_dollar(b, i),
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                if i > 0 && (ident_char(Some(b[i - 1])) || (c == b'.' && b[i - 1] == b'.')) {
                    i += 1;
                    continue;
                }
                let end = number_end(b, i);
                let o = out.get_or_insert_with(|| String::with_capacity(sql.len()));
                o.push_str(&sql[copied..i]);
                o.push('0');
                copied = end;
                i = end;
            }
            c if ident_char(Some(c)) => {
                while i < b.len() && ident_char(Some(b[i])) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    match out {
        None => Cow::Borrowed(sql),
        Some(mut o) => {
            o.push_str(&sql[copied..]);
            Cow::Owned(o)
        }
    }
}

fn ident_char(c: Option<u8>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80)
}

/// End of a quoted run starting after its opening quote; a doubled quote is
/// part of the run, and in escape strings so is a backslash-escaped one.
fn skip_quoted(b: &[u8], mut i: usize, quote: u8, escapes: bool) -> usize {
    while i < b.len() {
        if escapes && b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn skip_block_comment(b: &[u8], mut i: usize) -> usize {
    let mut depth = 1;
    while i < b.len() && depth > 0 {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
        } else {
            i += 1;
        }
    }
    i
}

/// Skips `$tag$ … $tag$`, or a `$1` parameter, starting at the `$`.
fn skip_dollar(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    if b.get(j).is_some_and(u8::is_ascii_digit) {
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        return j;
    }
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if b.get(j) != Some(&b'$') {
        return i + 1;
    }
    let tag = &b[i..=j];
    match b[j + 1..].windows(tag.len()).position(|w| w == tag) {
        Some(p) => j + 1 + p + tag.len(),
        None => b.len(),
    }
}

fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
        i += 1;
    }
    if i < b.len() && matches!(b[i], b'e' | b'E') {
        let mut j = i + 1;
        if j < b.len() && matches!(b[j], b'+' | b'-') {
            j += 1;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            i = j;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::without_numbers as n;

    #[test]
    fn numbers_become_zero() {
        assert_eq!(
            n("SELECT abalance FROM pgbench_accounts WHERE aid = 74211;"),
            "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
        );
        assert_eq!(n("SELECT 1.5, .5, 2e10, 3E-4"), "SELECT 0, 0, 0, 0");
        assert_eq!(n("SELECT -12"), "SELECT -0");
    }

    #[test]
    fn digits_elsewhere_are_kept() {
        for sql in [
            "SELECT * FROM t1 JOIN x2y ON t1.c3 = x2y.c3",
            "SELECT '4111 1111' FROM t",
            "SELECT \"col 7\" FROM t",
            "SELECT $1, $22",
            "SELECT $body$ 42 $body$",
            "SELECT $$ 42 $$",
            "SELECT E'it\\'s 42'",
            "SELECT 'it''s 42'",
            "-- 42\nSELECT a",
            "/* 42 /* 43 */ 44 */ SELECT a",
            "SELECT übung9",
        ] {
            assert_eq!(n(sql), sql, "{sql}");
        }
        assert!(matches!(
            n("SELECT a FROM b"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn mixed() {
        assert_eq!(
            n("UPDATE t1 SET note = 'x 9' WHERE id = 9 AND c2 > 3.5"),
            "UPDATE t1 SET note = 'x 9' WHERE id = 0 AND c2 > 0"
        );
        assert_eq!(n("SELECT $x$ 1 $x$, 2"), "SELECT $x$ 1 $x$, 0");
    }
}

//! Borrowed views of the message bodies the sidecar inspects.
//!
//! Every parser works on a body slice and returns slices into it; nothing is
//! copied. A body that ends early or has a bad count is a [`Malformed`]
//! error, answered with SQLSTATE 08P01 — never a panic.

use std::ops::Range;

/// A message body that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what} message: {why}")]
pub struct Malformed {
    /// Which message.
    pub what: &'static str,
    /// What is wrong.
    pub why: &'static str,
}

/// A cursor over a message body.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    /// Reads `body`, naming it `what` in errors.
    pub fn new(what: &'static str, body: &'a [u8]) -> Self {
        Self {
            buf: body,
            pos: 0,
            what,
        }
    }

    fn err(&self, why: &'static str) -> Malformed {
        Malformed {
            what: self.what,
            why,
        }
    }

    /// Position in the body.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// A NUL-terminated string (without the NUL).
    pub fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        let rest = &self.buf[self.pos..];
        let end = memchr::memchr(0, rest).ok_or_else(|| self.err("unterminated string"))?;
        self.pos += end + 1;
        Ok(&rest[..end])
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err("too short"))?;
        self.pos += 1;
        Ok(b)
    }

    /// A big-endian i16.
    pub fn i16(&mut self) -> Result<i16, Malformed> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// A big-endian i32.
    pub fn i32(&mut self) -> Result<i32, Malformed> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.remaining() < n {
            return Err(self.err("too short"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A count (i16) that must not be negative.
    pub fn count16(&mut self) -> Result<usize, Malformed> {
        usize::try_from(self.i16()?).map_err(|_| self.err("negative count"))
    }

    /// A length-prefixed value (i32 length, -1 = NULL), as a range of the body.
    pub fn value(&mut self) -> Result<Option<Range<usize>>, Malformed> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.err("negative length"))?;
        let start = self.pos;
        self.take(len)?;
        Ok(Some(start..start + len))
    }

    /// Fails unless the body was read completely.
    pub fn finish(&self) -> Result<(), Malformed> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

/// Query ('Q'): the SQL text.
pub fn query_text(body: &[u8]) -> Result<&[u8], Malformed> {
    let mut c = Cursor::new("Query", body);
    let sql = c.cstr()?;
    c.finish()?;
    Ok(sql)
}

/// Parse ('P').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name ("" = unnamed).
    pub name: &'a [u8],
    /// SQL text.
    pub sql: &'a [u8],
    /// Number of parameter types given.
    pub param_types: usize,
}

/// Parses a Parse body.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, Malformed> {
    let mut c = Cursor::new("Parse", body);
    let name = c.cstr()?;
    let sql = c.cstr()?;
    let n = c.count16()?;
    c.take(n * 4)?;
    c.finish()?;
    Ok(Parse {
        name,
        sql,
        param_types: n,
    })
}

/// Bind ('B'): only what the sidecar needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal ("" = unnamed).
    pub portal: &'a [u8],
    /// Source statement.
    pub statement: &'a [u8],
    /// Parameter values (ranges of the body; None = NULL).
    pub params: Vec<Option<Range<usize>>>,
    /// Result-column format codes (0 text, 1 binary); empty = all text, one
    /// = applies to all.
    pub result_formats: Vec<i16>,
}

/// Parses a Bind body.
pub fn bind(body: &[u8]) -> Result<Bind<'_>, Malformed> {
    let mut c = Cursor::new("Bind", body);
    let portal = c.cstr()?;
    let statement = c.cstr()?;
    let nf = c.count16()?;
    c.take(nf * 2)?;
    let np = c.count16()?;
    let mut params = Vec::with_capacity(np);
    for _ in 0..np {
        params.push(c.value()?);
    }
    let nr = c.count16()?;
    let mut result_formats = Vec::with_capacity(nr);
    for _ in 0..nr {
        result_formats.push(c.i16()?);
    }
    c.finish()?;
    Ok(Bind {
        portal,
        statement,
        params,
        result_formats,
    })
}

/// Describe ('D') or Close ('C'): kind (`S` or `P`) and name.
pub fn target<'a>(what: &'static str, body: &'a [u8]) -> Result<(u8, &'a [u8]), Malformed> {
    let mut c = Cursor::new(what, body);
    let kind = c.u8()?;
    if kind != b'S' && kind != b'P' {
        return Err(Malformed {
            what,
            why: "kind must be 'S' or 'P'",
        });
    }
    let name = c.cstr()?;
    c.finish()?;
    Ok((kind, name))
}

/// Execute ('E'): portal and row limit (0 = all).
pub fn execute(body: &[u8]) -> Result<(&[u8], i32), Malformed> {
    let mut c = Cursor::new("Execute", body);
    let portal = c.cstr()?;
    let max = c.i32()?;
    c.finish()?;
    Ok((portal, max))
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    /// Column label.
    pub name: &'a [u8],
    /// OID of the source table, 0 if none.
    pub table_oid: u32,
    /// Attribute number in the source table, 0 if none.
    pub attnum: i16,
    /// Type OID.
    pub type_oid: u32,
    /// Format code (0 text, 1 binary).
    pub format: i16,
}

/// Parses a RowDescription ('T') into its columns.
pub fn row_description(body: &[u8]) -> Result<Vec<Column<'_>>, Malformed> {
    let mut c = Cursor::new("RowDescription", body);
    let n = c.count16()?;
    let mut cols = Vec::with_capacity(n);
    for _ in 0..n {
        let name = c.cstr()?;
        let table_oid = c.i32()? as u32;
        let attnum = c.i16()?;
        let type_oid = c.i32()? as u32;
        c.take(6)?;
        let format = c.i16()?;
        cols.push(Column {
            name,
            table_oid,
            attnum,
            type_oid,
            format,
        });
    }
    c.finish()?;
    Ok(cols)
}

/// Iterates over the values of a DataRow ('D') body; `None` items are NULLs.
#[derive(Debug, Clone)]
pub struct DataRow<'a> {
    cursor: Cursor<'a>,
    left: usize,
}

/// Reads the column count of a DataRow.
pub fn data_row(body: &[u8]) -> Result<DataRow<'_>, Malformed> {
    let mut cursor = Cursor::new("DataRow", body);
    let left = cursor.count16()?;
    Ok(DataRow { cursor, left })
}

impl<'a> DataRow<'a> {
    /// Number of values not yet read.
    pub fn len(&self) -> usize {
        self.left
    }

    /// Whether all values were read.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The next value.
    pub fn next_value(&mut self) -> Result<Option<Option<&'a [u8]>>, Malformed> {
        if self.left == 0 {
            self.cursor.finish()?;
            return Ok(None);
        }
        self.left -= 1;
        let body = self.cursor.buf;
        Ok(Some(self.cursor.value()?.map(|r| &body[r])))
    }
}

/// Iterates over the fields of an ErrorResponse or NoticeResponse.
pub fn report_fields(body: &[u8]) -> Result<Vec<(u8, &[u8])>, Malformed> {
    let mut c = Cursor::new("ErrorResponse", body);
    let mut out = Vec::with_capacity(8);
    loop {
        let code = c.u8()?;
        if code == 0 {
            break;
        }
        out.push((code, c.cstr()?));
    }
    c.finish()?;
    Ok(out)
}

/// The SQLSTATE of an ErrorResponse body, if present and readable.
pub fn sqlstate(body: &[u8]) -> Option<&[u8]> {
    report_fields(body)
        .ok()?
        .into_iter()
        .find_map(|(c, v)| (c == b'C').then_some(v))
}

/// NotificationResponse ('A'): process id, channel, payload.
pub fn notification(body: &[u8]) -> Result<(i32, &[u8], &[u8]), Malformed> {
    let mut c = Cursor::new("NotificationResponse", body);
    let pid = c.i32()?;
    let channel = c.cstr()?;
    let payload = c.cstr()?;
    c.finish()?;
    Ok((pid, channel, payload))
}

/// The row count at the end of a CommandComplete tag (`SELECT 5`,
/// `INSERT 0 5`), if any.
pub fn command_rows(body: &[u8]) -> Option<u64> {
    let tag = body.strip_suffix(&[0]).unwrap_or(body);
    let last = tag.rsplit(|&b| b == b' ').next()?;
    std::str::from_utf8(last).ok()?.parse().ok()
}

/// Startup-phase packet from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket<'a> {
    /// StartupMessage with its parameters.
    Startup(Vec<(&'a [u8], &'a [u8])>),
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the backend key.
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: i32,
    },
    /// A protocol version the sidecar does not speak.
    Unsupported(u32),
}

/// Parses a startup-phase packet (length included).
pub fn startup_packet(packet: &[u8]) -> Result<StartupPacket<'_>, Malformed> {
    use crate::postgres::codec::{CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_3_0, SSL_REQUEST};
    let mut c = Cursor::new("startup", packet);
    c.i32()?;
    let code = c.i32()? as u32;
    match code {
        SSL_REQUEST => {
            c.finish()?;
            Ok(StartupPacket::Ssl)
        }
        GSSENC_REQUEST => {
            c.finish()?;
            Ok(StartupPacket::GssEnc)
        }
        CANCEL_REQUEST => {
            let pid = c.i32()?;
            let secret = c.i32()?;
            c.finish()?;
            Ok(StartupPacket::Cancel { pid, secret })
        }
        PROTOCOL_3_0 => {
            let mut params = Vec::new();
            loop {
                let k = c.cstr()?;
                if k.is_empty() {
                    break;
                }
                params.push((k, c.cstr()?));
            }
            c.finish()?;
            Ok(StartupPacket::Startup(params))
        }
        other => Ok(StartupPacket::Unsupported(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::codec;
    use bytes::BytesMut;

    #[test]
    fn parses_bind_with_nulls_and_formats() {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"p1\0s1\0");
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&2i16.to_be_bytes());
        b.extend_from_slice(&3i32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        b.extend_from_slice(&1i16.to_be_bytes());
        let bind = bind(&b).unwrap();
        assert_eq!(bind.portal, b"p1");
        assert_eq!(bind.statement, b"s1");
        assert_eq!(&b[bind.params[0].clone().unwrap()], b"abc");
        assert_eq!(bind.params[1], None);
        assert_eq!(bind.result_formats, vec![1]);
    }

    #[test]
    fn truncated_bodies_are_malformed_not_panics() {
        let mut b = BytesMut::new();
        codec::parse(&mut b, b"s", "SELECT 1");
        let body = &b[5..];
        for cut in 0..body.len() {
            assert!(parse(&body[..cut]).is_err(), "cut {cut}");
        }
        assert!(parse(body).is_ok());
        assert!(data_row(&[0xff, 0xff]).is_err());
        let mut row = data_row(&[0, 1, 0, 0, 0, 9, b'x']).unwrap();
        assert!(row.next_value().is_err());
    }

    #[test]
    fn command_tags_give_row_counts() {
        assert_eq!(command_rows(b"SELECT 5\0"), Some(5));
        assert_eq!(command_rows(b"INSERT 0 12\0"), Some(12));
        assert_eq!(command_rows(b"BEGIN\0"), None);
    }

    #[test]
    fn startup_packets() {
        let mut b = BytesMut::new();
        codec::startup_message(&mut b, [("user", "alice")]);
        assert_eq!(
            startup_packet(&b).unwrap(),
            StartupPacket::Startup(vec![(&b"user"[..], &b"alice"[..])])
        );
        let mut b = BytesMut::new();
        codec::cancel_request(&mut b, 7, 9);
        assert_eq!(
            startup_packet(&b).unwrap(),
            StartupPacket::Cancel { pid: 7, secret: 9 }
        );
    }
}

//! PostgreSQL v3 message framing, sans IO.
//!
//! Readers hand a byte buffer to [`next_frame`]; it answers with the length
//! of the first complete message (so callers forward or inspect it in place,
//! with no per-message allocation) or asks for more bytes. Lengths are
//! checked against a configured maximum before any body is buffered, so a
//! peer announcing a huge message is refused without memory growth. The
//! writers build protocol messages into a caller-owned buffer.

use bytes::{BufMut, BytesMut};

/// Size of a tagged message header: 1 tag byte + 4 length bytes.
pub const HEADER: usize = 5;
/// PostgreSQL's own cap on a startup packet.
pub const MAX_STARTUP: usize = crate::postgres::MAX_STARTUP_PACKET;
/// Protocol version 3.0 in a StartupMessage.
pub const PROTOCOL_3_0: u32 = 196_608;
/// Request code of SSLRequest.
pub const SSL_REQUEST: u32 = 80_877_103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// Why a byte stream is not valid framing; answered with SQLSTATE 08P01.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message announced more bytes than allowed.
    #[error("message of type {} announces {len} bytes; at most {max} are allowed", tag_name(*.tag))]
    TooLarge {
        /// Message type byte (0 for a startup packet).
        tag: u8,
        /// Announced length.
        len: usize,
        /// Configured maximum.
        max: usize,
    },
    /// A length smaller than the length field itself.
    #[error("message of type {} has an invalid length {len}", tag_name(*.tag))]
    BadLength {
        /// Message type byte (0 for a startup packet).
        tag: u8,
        /// Announced length.
        len: usize,
    },
}

/// A printable name for a message type byte in errors.
pub fn tag_name(tag: u8) -> String {
    if tag == 0 {
        "startup".into()
    } else if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

/// Length in bytes (header included) of the first complete tagged message in
/// `buf`, or `None` if more bytes are needed.
#[inline]
pub fn next_frame(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let tag = buf[0];
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len < 4 {
        return Err(FrameError::BadLength { tag, len });
    }
    if len > max {
        return Err(FrameError::TooLarge { tag, len, max });
    }
    let total = len + 1;
    Ok((buf.len() >= total).then_some(total))
}

/// Length of the first complete untagged startup-phase packet (StartupMessage,
/// SSLRequest, GSSENCRequest, CancelRequest), or `None` if more is needed.
pub fn next_startup(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len < 8 {
        return Err(FrameError::BadLength { tag: 0, len });
    }
    if len > MAX_STARTUP {
        return Err(FrameError::TooLarge {
            tag: 0,
            len,
            max: MAX_STARTUP,
        });
    }
    Ok((buf.len() >= len).then_some(len))
}

/// Appends a tagged message whose body `body` writes, fixing up the length.
#[inline]
pub fn write_message(out: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let at = out.len();
    out.put_u32(0);
    body(out);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string; interior NULs are dropped so a value can
/// never split a field.
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    if memchr::memchr(0, s).is_some() {
        out.extend(s.iter().copied().filter(|&b| b != 0));
    } else {
        out.put_slice(s);
    }
    out.put_u8(0);
}

/// Severity of a sidecar-generated ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
    /// Informational (NoticeResponse).
    Notice,
}

impl Severity {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::Error => b"ERROR",
            Self::Fatal => b"FATAL",
            Self::Notice => b"NOTICE",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse the sidecar writes.
#[derive(Debug, Clone, Copy)]
pub struct Report<'a> {
    /// Severity.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: &'a str,
    /// Primary message.
    pub message: &'a str,
    /// Optional detail.
    pub detail: Option<&'a str>,
    /// Optional hint.
    pub hint: Option<&'a str>,
}

impl<'a> Report<'a> {
    /// An ERROR with SQLSTATE `code`.
    pub fn error(code: &'a str, message: &'a str) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    /// A FATAL error with SQLSTATE `code`; the connection closes after it.
    pub fn fatal(code: &'a str, message: &'a str) -> Self {
        Self {
            severity: Severity::Fatal,
            ..Self::error(code, message)
        }
    }

    /// A NOTICE.
    pub fn notice(message: &'a str) -> Self {
        Self {
            severity: Severity::Notice,
            ..Self::error("00000", message)
        }
    }

    /// Adds a hint.
    pub fn with_hint(self, hint: &'a str) -> Self {
        Self {
            hint: Some(hint),
            ..self
        }
    }

    /// Adds a detail.
    pub fn with_detail(self, detail: &'a str) -> Self {
        Self {
            detail: Some(detail),
            ..self
        }
    }

    /// Appends the report as an ErrorResponse ('E') or, for notices, a
    /// NoticeResponse ('N').
    pub fn write(&self, out: &mut BytesMut) {
        let tag = if self.severity == Severity::Notice {
            b'N'
        } else {
            b'E'
        };
        write_message(out, tag, |b| {
            for (field, value) in [
                (b'S', Some(self.severity.as_bytes())),
                (b'V', Some(self.severity.as_bytes())),
                (b'C', Some(self.code.as_bytes())),
                (b'M', Some(self.message.as_bytes())),
                (b'D', self.detail.map(str::as_bytes)),
                (b'H', self.hint.map(str::as_bytes)),
            ] {
                if let Some(v) = value {
                    b.put_u8(field);
                    put_cstr(b, v);
                }
            }
            b.put_u8(0);
        });
    }
}

/// Appends ReadyForQuery with transaction status `I`, `T` or `E`.
pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    write_message(out, b'Z', |b| b.put_u8(status));
}

/// Appends an Authentication message with `code` (0 = ok, 3 = cleartext
/// password request) and no payload.
pub fn authentication(out: &mut BytesMut, code: u32) {
    write_message(out, b'R', |b| b.put_u32(code));
}

/// Appends ParameterStatus.
pub fn parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    write_message(out, b'S', |b| {
        put_cstr(b, name);
        put_cstr(b, value);
    });
}

/// Appends BackendKeyData.
pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    write_message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(secret);
    });
}

/// Appends a frontend Query message.
pub fn query(out: &mut BytesMut, sql: &str) {
    write_message(out, b'Q', |b| put_cstr(b, sql.as_bytes()));
}

/// Appends a frontend Parse message without parameter types.
pub fn parse(out: &mut BytesMut, name: &[u8], sql: &str) {
    write_message(out, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, sql.as_bytes());
        b.put_i16(0);
    });
}

/// Appends a frontend Describe of a statement (`S`) or portal (`P`).
pub fn describe(out: &mut BytesMut, kind: u8, name: &[u8]) {
    write_message(out, b'D', |b| {
        b.put_u8(kind);
        put_cstr(b, name);
    });
}

/// Appends a StartupMessage (protocol 3.0) with `params`.
pub fn startup_message<'a>(
    out: &mut BytesMut,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) {
    let at = out.len();
    out.put_u32(0);
    out.put_u32(PROTOCOL_3_0);
    for (k, v) in params {
        put_cstr(out, k.as_bytes());
        put_cstr(out, v.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a CancelRequest for the given backend key.
pub fn cancel_request(out: &mut BytesMut, pid: i32, secret: i32) {
    out.put_u32(16);
    out.put_u32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
}

/// Appends an SSLRequest.
pub fn ssl_request(out: &mut BytesMut) {
    out.put_u32(8);
    out.put_u32(SSL_REQUEST);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_need_complete_messages() {
        let mut b = BytesMut::new();
        query(&mut b, "SELECT 1");
        let total = b.len();
        for cut in 0..total {
            assert_eq!(next_frame(&b[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        assert_eq!(next_frame(&b, 1 << 20), Ok(Some(total)));
        b.extend_from_slice(&[b'S', 0, 0]);
        assert_eq!(next_frame(&b, 1 << 20), Ok(Some(total)));
    }

    #[test]
    fn oversized_and_undersized_lengths_are_refused_early() {
        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            next_frame(&huge, 1024),
            Err(FrameError::TooLarge { tag: b'Q', .. })
        ));
        let tiny = [b'Q', 0, 0, 0, 3];
        assert_eq!(
            next_frame(&tiny, 1024),
            Err(FrameError::BadLength { tag: b'Q', len: 3 })
        );
        assert!(next_startup(&[0, 1, 0, 0]).is_err());
        assert!(next_startup(&[0, 0, 0, 4]).is_err());
    }

    #[test]
    fn reports_are_well_formed() {
        let mut b = BytesMut::new();
        Report::error("42501", "denied")
            .with_hint("ask")
            .write(&mut b);
        assert_eq!(b[0], b'E');
        assert_eq!(next_frame(&b, 1024), Ok(Some(b.len())));
        let body = &b[5..];
        assert!(body.windows(6).any(|w| w == b"C42501"));
        assert_eq!(*body.last().unwrap(), 0);
    }

    #[test]
    fn cstrings_never_carry_interior_nuls() {
        let mut b = BytesMut::new();
        put_cstr(&mut b, b"a\0b");
        assert_eq!(&b[..], b"ab\0");
    }

    #[test]
    fn startup_message_round_trips() {
        let mut b = BytesMut::new();
        startup_message(&mut b, [("user", "u"), ("database", "d")]);
        assert_eq!(next_startup(&b), Ok(Some(b.len())));
    }
}

//! The client side of connection startup: SSLRequest and GSSENCRequest,
//! CancelRequest, the StartupMessage with its parameter allow-list, and the
//! password exchange that carries the agent's token.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::codec::{self, Report};
use super::messages::{self, StartupPacket};
use super::stream::{MessageReader, ReadError, Stream};

/// Startup parameters passed through to the server unchanged. Anything else
/// is refused: `options` could set arbitrary server settings, `replication`
/// opens a replication connection, and settings such as
/// standard_conforming_strings change how statements must be parsed.
const PASSTHROUGH: &[&str] = &[
    "application_name",
    "datestyle",
    "timezone",
    "intervalstyle",
    "extra_float_digits",
    "search_path",
    "bytea_output",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
];

/// What the client asked for at startup.
#[derive(Debug, Clone)]
pub struct StartupParams {
    /// `user`.
    pub user: String,
    /// `database` (defaults to the user name, as in PostgreSQL).
    pub database: String,
    /// `application_name`.
    pub application_name: Option<String>,
    /// Allow-listed parameters to pass upstream.
    pub passthrough: Vec<(String, String)>,
}

/// Result of the startup phase.
pub enum Startup {
    /// A client that wants a session; the password has not been asked yet.
    Session {
        /// Reader over the client connection (TLS if negotiated).
        reader: MessageReader<Stream>,
        /// The startup parameters.
        params: StartupParams,
    },
    /// A cancel request for a running session.
    Cancel {
        /// pid of the key.
        pid: i32,
        /// secret of the key.
        secret: i32,
    },
}

/// Why startup failed; `code` and `message` are sent to the client as FATAL.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StartupError {
    /// SQLSTATE.
    pub code: &'static str,
    /// Message for the client and the audit record.
    pub message: String,
    /// Whether the client can still receive an ErrorResponse.
    pub reply: bool,
}

impl StartupError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reply: true,
        }
    }
}

impl From<ReadError> for StartupError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Frame(f) => Self::new("08P01", f.to_string()),
            ReadError::Closed | ReadError::Truncated | ReadError::Io(_) => Self {
                code: "08006",
                message: format!("client connection lost during startup: {e}"),
                reply: false,
            },
        }
    }
}

impl From<messages::Malformed> for StartupError {
    fn from(e: messages::Malformed) -> Self {
        Self::new("08P01", e.to_string())
    }
}

/// Runs the startup phase on a new client connection.
pub async fn accept(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_message: usize,
) -> Result<Startup, (Option<MessageReader<Stream>>, StartupError)> {
    let mut reader = MessageReader::new(Stream::Plain(tcp), max_message);
    let mut tls = tls;
    loop {
        let packet = match reader.next_startup().await {
            Ok(p) => p,
            Err(e) => return Err((Some(reader), e.into())),
        };
        let parsed = match messages::startup_packet(&packet) {
            Ok(p) => p,
            Err(e) => return Err((Some(reader), e.into())),
        };
        match parsed {
            StartupPacket::Ssl => {
                if !reader.buffered().is_empty() {
                    // Bytes after SSLRequest before the answer could be
                    // injected in the clear (CVE-2021-23214 class).
                    return Err((
                        Some(reader),
                        StartupError::new("08P01", "unexpected data after SSLRequest"),
                    ));
                }
                match tls.take() {
                    Some(config) => {
                        let (stream, _) = reader.into_parts();
                        let Stream::Plain(mut tcp) = stream else {
                            return Err((
                                None,
                                StartupError::new("08P01", "SSLRequest on an encrypted connection"),
                            ));
                        };
                        if let Err(e) = tcp.write_all(b"S").await {
                            return Err((None, StartupError::from(ReadError::Io(e))));
                        }
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        match acceptor.accept(tcp).await {
                            Ok(s) => {
                                reader =
                                    MessageReader::new(Stream::ServerTls(Box::new(s)), max_message);
                            }
                            Err(e) => {
                                return Err((
                                    None,
                                    StartupError {
                                        code: "08P01",
                                        message: format!(
                                            "TLS handshake with the client failed: {e}"
                                        ),
                                        reply: false,
                                    },
                                ));
                            }
                        }
                    }
                    None => {
                        if let Err(e) = reader.get_mut().write_all(b"N").await {
                            return Err((None, StartupError::from(ReadError::Io(e))));
                        }
                    }
                }
            }
            StartupPacket::GssEnc => {
                if let Err(e) = reader.get_mut().write_all(b"N").await {
                    return Err((None, StartupError::from(ReadError::Io(e))));
                }
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Startup::Cancel { pid, secret }),
            StartupPacket::Unsupported(version) => {
                let (major, minor) = (version >> 16, version & 0xffff);
                return Err((
                    Some(reader),
                    StartupError::new(
                        "0A000",
                        format!(
                            "unsupported frontend protocol {major}.{minor}: cardgate speaks 3.0"
                        ),
                    ),
                ));
            }
            StartupPacket::Startup(raw) => {
                let params = match check_params(&raw) {
                    Ok(p) => p,
                    Err(e) => return Err((Some(reader), e)),
                };
                return Ok(Startup::Session { reader, params });
            }
        }
    }
}

fn check_params(raw: &[(&[u8], &[u8])]) -> Result<StartupParams, StartupError> {
    let mut user = None;
    let mut database = None;
    let mut application_name = None;
    let mut passthrough = Vec::new();
    for (k, v) in raw {
        let key = std::str::from_utf8(k)
            .map_err(|_| StartupError::new("08P01", "startup parameter names must be UTF-8"))?;
        let value = std::str::from_utf8(v).map_err(|_| {
            StartupError::new(
                "22021",
                format!("startup parameter {key} is not valid UTF-8"),
            )
        })?;
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "user" => user = Some(value.to_string()),
            "database" => database = Some(value.to_string()),
            "client_encoding" => {
                if !is_utf8_encoding(value) {
                    return Err(StartupError::new(
                        "22023",
                        format!(
                            "cardgate: client_encoding {value} is not supported; connect with client_encoding=UTF8"
                        ),
                    ));
                }
            }
            "replication" => {
                return Err(StartupError::new(
                    "28000",
                    "cardgate: replication connections are not allowed through the sidecar",
                ));
            }
            "options" => {
                return Err(StartupError::new(
                    "28000",
                    "cardgate: the startup parameter \"options\" is not allowed (it can change server settings); set allowed settings with SET after connecting",
                ));
            }
            name if name.starts_with("_pq_.") => {}
            name if PASSTHROUGH.contains(&name) => {
                if lower == "application_name" {
                    application_name = Some(value.to_string());
                }
                passthrough.push((key.to_string(), value.to_string()));
            }
            _ => {
                return Err(StartupError::new(
                    "28000",
                    format!(
                        "cardgate: the startup parameter {key:?} is not allowed through the sidecar"
                    ),
                ));
            }
        }
    }
    let user = user.ok_or_else(|| {
        StartupError::new(
            "28000",
            "no PostgreSQL user name specified in startup packet",
        )
    })?;
    passthrough.push(("client_encoding".into(), "UTF8".into()));
    Ok(StartupParams {
        database: database
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone()),
        user,
        application_name,
        passthrough,
    })
}

/// Whether an encoding name means UTF-8 the way PostgreSQL reads it
/// (`clean_encoding_name` in its encnames.c): every character that is not an
/// ASCII letter or digit is dropped and the rest lower-cased, so asyncpg's
/// quoted `'utf-8'` is UTF8. `unicode` is PostgreSQL's alias for it.
fn is_utf8_encoding(name: &str) -> bool {
    let clean: String = name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    clean == "utf8" || clean == "unicode"
}

/// Asks the client for a cleartext password and returns it: the agent's
/// token. The client must answer with a PasswordMessage.
pub async fn read_token(reader: &mut MessageReader<Stream>) -> Result<String, StartupError> {
    let mut out = BytesMut::with_capacity(16);
    codec::authentication(&mut out, 3);
    reader
        .get_mut()
        .write_all(&out)
        .await
        .map_err(|e| StartupError::from(ReadError::Io(e)))?;
    let msg = reader.next().await?;
    if msg[0] != b'p' {
        return Err(StartupError::new(
            "08P01",
            format!(
                "expected a password message, got {}",
                codec::tag_name(msg[0])
            ),
        ));
    }
    let mut c = messages::Cursor::new("PasswordMessage", &msg[5..]);
    let token = c.cstr()?;
    c.finish()?;
    String::from_utf8(token.to_vec())
        .map_err(|_| StartupError::new("28P01", "cardgate: authentication failed: malformed token"))
}

/// Sends a FATAL error to the client (best effort) and closes.
pub async fn refuse(stream: &mut Stream, code: &str, message: &str) {
    let mut out = BytesMut::with_capacity(128 + message.len());
    Report::fatal(code, message).write(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(list: &[(&str, &str)]) -> Result<StartupParams, StartupError> {
        let raw: Vec<(&[u8], &[u8])> = list
            .iter()
            .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
            .collect();
        check_params(&raw)
    }

    #[test]
    fn allow_listed_parameters_pass() {
        let p = params(&[
            ("user", "agent"),
            ("application_name", "psql"),
            ("DateStyle", "ISO"),
        ])
        .unwrap();
        assert_eq!(p.database, "agent");
        assert_eq!(p.application_name.as_deref(), Some("psql"));
        assert!(p.passthrough.iter().any(|(k, _)| k == "DateStyle"));
    }

    /// asyncpg sends `client_encoding='utf-8'` (quotes included); the server
    /// accepts it, so the sidecar must too. Before the fix this was refused
    /// with 22023 and asyncpg could not connect at all.
    #[test]
    fn utf8_is_recognised_as_postgres_spells_it() {
        for v in [
            "'utf-8'",
            "UTF8",
            "utf_8",
            "Unicode",
            "\"UTF-8\"",
            " utf 8 ",
        ] {
            let p = params(&[("user", "a"), ("client_encoding", v)]).unwrap();
            assert!(
                p.passthrough
                    .iter()
                    .any(|(k, v)| k == "client_encoding" && v == "UTF8"),
                "{v}"
            );
        }
        for v in ["'sjis'", "latin1", "utf-16", "utf", ""] {
            let err = params(&[("user", "a"), ("client_encoding", v)]).unwrap_err();
            assert_eq!(err.code, "22023", "{v}");
        }
    }

    #[test]
    fn dangerous_parameters_are_refused() {
        for (k, v, needle) in [
            ("options", "-c role=postgres", "options"),
            ("replication", "database", "replication"),
            ("standard_conforming_strings", "off", "not allowed"),
            ("client_encoding", "SJIS", "UTF8"),
        ] {
            let err = params(&[("user", "a"), (k, v)]).unwrap_err();
            assert!(err.message.contains(needle), "{k}: {}", err.message);
        }
        assert!(params(&[("database", "x")]).is_err());
    }
}

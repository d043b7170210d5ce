//! Connecting to the real server with the credential only the sidecar holds.
//!
//! The agent's own password field carried its token; upstream, the sidecar
//! logs in as the configured role (SCRAM-SHA-256, or md5 for old servers),
//! optionally over TLS verified against a CA file. The password is read from
//! its file for every connection (so a rotated Secret takes effect) and never
//! leaves this module.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::codec;
use super::messages::{Cursor, report_fields};
use super::stream::{MessageReader, ReadError, Stream};
use cardgate_crds::config::TargetConfig;
use cardgate_crds::v1alpha1::TlsMode;

/// Everything needed to reach one target's server.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Host to connect to.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database forced by the policy, if any.
    pub database: Option<String>,
    /// Role name, or the file holding it.
    pub username: Credential,
    /// File holding the password.
    pub password_file: String,
    /// TLS configuration when TLS is on.
    pub tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Largest message accepted from the server.
    pub max_message: usize,
}

/// A value given inline or read from a file at connection time.
#[derive(Clone, Debug)]
pub enum Credential {
    /// Inline.
    Value(String),
    /// Read from this file.
    File(String),
}

impl Credential {
    fn read(&self) -> Result<String, UpstreamError> {
        match self {
            Self::Value(v) => Ok(v.clone()),
            Self::File(path) => read_secret(path),
        }
    }
}

fn read_secret(path: &str) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| UpstreamError::Credentials(format!("cannot read {path}: {e}")))
}

/// Why the upstream connection could not be made. Messages are safe to show
/// the agent: they never contain the credential.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connect failed or timed out.
    #[error("cannot reach the database at {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// TLS was required but failed.
    #[error("TLS to the database failed: {0}")]
    Tls(String),
    /// The credential files could not be read.
    #[error("the sidecar's database credential is unavailable: {0}")]
    Credentials(String),
    /// The server refused the sidecar's login or startup.
    #[error("the database refused the sidecar: {message}")]
    Refused {
        /// SQLSTATE from the server.
        code: String,
        /// Server message.
        message: String,
    },
    /// The server asked for an authentication method the sidecar does not offer.
    #[error("the database asked for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    /// The server broke the protocol or the connection.
    #[error("the database connection failed during startup: {0}")]
    Protocol(String),
}

impl From<ReadError> for UpstreamError {
    fn from(e: ReadError) -> Self {
        Self::Protocol(e.to_string())
    }
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// A logged-in upstream connection, ready for queries.
pub struct Connected {
    /// The message reader over the connection.
    pub reader: MessageReader<Stream>,
    /// ParameterStatus messages the server sent, raw, to pass to the client.
    pub parameter_status: Vec<BytesMut>,
    /// The server's BackendKeyData (pid, secret), for cancelling.
    pub key: (i32, i32),
    /// Database the session uses.
    pub database: String,
}

impl UpstreamSettings {
    /// Builds settings for a target of the configuration.
    pub fn from_target(
        t: &TargetConfig,
        max_message: usize,
        connect_timeout: Duration,
    ) -> Result<Self, UpstreamError> {
        let creds = t
            .credentials
            .as_ref()
            .ok_or_else(|| UpstreamError::Credentials("no credentials configured".into()))?;
        let username = match (&creds.username, &creds.username_file) {
            (Some(u), _) => Credential::Value(u.clone()),
            (None, Some(f)) => Credential::File(f.clone()),
            (None, None) => {
                return Err(UpstreamError::Credentials("no user name configured".into()));
            }
        };
        let tls = match t.tls.mode {
            TlsMode::Disable => None,
            mode => {
                let config = super::tls::client_config(mode, t.tls.ca_file.as_deref())
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                let name = t
                    .tls
                    .server_name
                    .clone()
                    .unwrap_or_else(|| t.upstream.host.clone());
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    UpstreamError::Tls(format!("{name:?} is not a valid server name"))
                })?;
                Some((config, name))
            }
        };
        Ok(Self {
            host: t.upstream.host.clone(),
            port: t.upstream.port,
            database: t.database.clone(),
            username,
            password_file: creds.password_file.clone(),
            tls,
            connect_timeout,
            max_message,
        })
    }

    /// host:port for messages.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Opens a raw connection (TCP, then TLS if configured).
    pub async fn open_stream(&self) -> Result<Stream, UpstreamError> {
        let addr = self.addr();
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| UpstreamError::Connect {
            addr: addr.clone(),
            reason: format!("timed out after {:?}", self.connect_timeout),
        })?
        .map_err(|e| UpstreamError::Connect {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        tcp.set_nodelay(true)?;
        let Some((config, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut req = BytesMut::new();
        codec::ssl_request(&mut req);
        tcp.write_all(&req).await?;
        let mut answer = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut answer).await?;
        if answer[0] != b'S' {
            return Err(UpstreamError::Tls("the server does not accept TLS".into()));
        }
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        Ok(Stream::ClientTls(Box::new(tls)))
    }

    /// Connects and logs in; `client_params` are the client's allow-listed
    /// startup parameters (application_name, DateStyle, …) passed through.
    pub async fn connect(
        &self,
        database: &str,
        client_params: &[(String, String)],
    ) -> Result<Connected, UpstreamError> {
        let user = self.username.read()?;
        let database = self
            .database
            .clone()
            .unwrap_or_else(|| database.to_string());
        let stream = self.open_stream().await?;
        let mut reader = MessageReader::new(stream, self.max_message);
        let mut out = BytesMut::with_capacity(256);
        let mut params: Vec<(&str, &str)> = vec![("user", &user), ("database", &database)];
        params.extend(client_params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        codec::startup_message(&mut out, params);
        send(&mut reader, &mut out).await?;
        self.authenticate(&mut reader, &user).await?;

        let mut parameter_status = Vec::new();
        let mut key = (0, 0);
        loop {
            let msg = reader.next().await?;
            match msg[0] {
                b'S' => parameter_status.push(msg),
                b'K' => {
                    let mut c = Cursor::new("BackendKeyData", &msg[5..]);
                    key = (
                        c.i32()
                            .map_err(|e| UpstreamError::Protocol(e.to_string()))?,
                        c.i32()
                            .map_err(|e| UpstreamError::Protocol(e.to_string()))?,
                    );
                }
                b'Z' => break,
                b'E' => return Err(refused(&msg)),
                b'N' => {}
                other => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message {} during startup",
                        codec::tag_name(other)
                    )));
                }
            }
        }
        Ok(Connected {
            reader,
            parameter_status,
            key,
            database,
        })
    }

    async fn authenticate(
        &self,
        reader: &mut MessageReader<Stream>,
        user: &str,
    ) -> Result<(), UpstreamError> {
        let mut out = BytesMut::with_capacity(256);
        let mut scram: Option<ScramSha256> = None;
        loop {
            let msg = reader.next().await?;
            if msg[0] == b'E' {
                return Err(refused(&msg));
            }
            if msg[0] != b'R' {
                return Err(UpstreamError::Protocol(format!(
                    "expected an authentication request, got {}",
                    codec::tag_name(msg[0])
                )));
            }
            let mut c = Cursor::new("Authentication", &msg[5..]);
            let code = c
                .i32()
                .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
            let rest = &msg[5 + 4..];
            match code {
                0 => return Ok(()),
                3 => {
                    if !reader.get_ref().is_tls() {
                        tracing::warn!(upstream = %self.addr(), "the database asked for a cleartext password over an unencrypted connection");
                    }
                    let password = read_secret(&self.password_file)?;
                    codec::write_message(&mut out, b'p', |b| {
                        codec::put_cstr(b, password.as_bytes())
                    });
                }
                5 => {
                    let salt: [u8; 4] = rest
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| UpstreamError::Protocol("short md5 salt".into()))?;
                    let password = read_secret(&self.password_file)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        user.as_bytes(),
                        password.as_bytes(),
                        salt,
                    );
                    codec::write_message(&mut out, b'p', |b| codec::put_cstr(b, hash.as_bytes()));
                }
                10 => {
                    let offered: Vec<&[u8]> =
                        rest.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    if !offered.contains(&SCRAM_SHA_256.as_bytes()) {
                        let names: Vec<String> = offered
                            .iter()
                            .map(|m| String::from_utf8_lossy(m).into_owned())
                            .collect();
                        return Err(UpstreamError::UnsupportedAuth(format!(
                            "SASL {}",
                            names.join(", ")
                        )));
                    }
                    let password = read_secret(&self.password_file)?;
                    let s = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    codec::write_message(&mut out, b'p', |b| {
                        codec::put_cstr(b, SCRAM_SHA_256.as_bytes());
                        let first = s.message();
                        b.extend_from_slice(&(first.len() as i32).to_be_bytes());
                        b.extend_from_slice(first);
                    });
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        UpstreamError::Protocol("SASL continue without a SASL start".into())
                    })?;
                    s.update(rest)
                        .map_err(|e| UpstreamError::Protocol(format!("SCRAM: {e}")))?;
                    codec::write_message(&mut out, b'p', |b| b.extend_from_slice(s.message()));
                }
                12 => {
                    let mut s = scram.take().ok_or_else(|| {
                        UpstreamError::Protocol("SASL final without a SASL start".into())
                    })?;
                    s.finish(rest).map_err(|e| {
                        UpstreamError::Protocol(format!(
                            "the server's SCRAM signature is invalid: {e}"
                        ))
                    })?;
                }
                other => return Err(UpstreamError::UnsupportedAuth(format!("code {other}"))),
            }
            if !out.is_empty() {
                send(reader, &mut out).await?;
            }
        }
    }
}

async fn send(reader: &mut MessageReader<Stream>, out: &mut BytesMut) -> Result<(), UpstreamError> {
    reader.get_mut().write_all(out).await?;
    out.clear();
    Ok(())
}

fn refused(msg: &[u8]) -> UpstreamError {
    let fields = report_fields(&msg[5..]).unwrap_or_default();
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    UpstreamError::Refused {
        code: get(b'C'),
        message: get(b'M'),
    }
}

//! Byte streams toward clients and servers, plain or TLS, and buffered
//! message reading on top of them.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::codec::{self, FrameError};

/// A connection that may have been upgraded to TLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS toward a client (the sidecar is the server).
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS toward an upstream (the sidecar is the client).
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        !matches!(self, Self::Plain(_))
    }

    /// The underlying TCP stream (for socket options and addresses).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(s) => s,
            Self::ServerTls(s) => s.get_ref().0,
            Self::ClientTls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why reading a message failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection (cleanly, between messages).
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection in the middle of a message.
    #[error("connection closed in the middle of a message")]
    Truncated,
    /// The bytes are not valid framing.
    #[error("{0}")]
    Frame(#[from] FrameError),
}

/// Buffered reader of whole protocol messages.
pub struct MessageReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

/// Initial read buffer; grows only as far as one message needs.
const READ_CHUNK: usize = 16 * 1024;

impl<R: AsyncRead + Unpin> MessageReader<R> {
    /// Reads messages of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max,
        }
    }

    /// Bytes read but not yet consumed (e.g. pipelined after a startup packet).
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The inner stream, for writing on it.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the inner stream and any bytes read ahead.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// Rebuilds a reader around a stream and bytes already read.
    pub fn from_parts(inner: R, buf: BytesMut, max: usize) -> Self {
        Self { inner, buf, max }
    }

    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.inner.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(if self.buf.is_empty() {
                ReadError::Closed
            } else {
                ReadError::Truncated
            });
        }
        Ok(())
    }

    /// The next tagged message (header included); valid until the next call.
    pub async fn next(&mut self) -> Result<BytesMut, ReadError> {
        loop {
            if let Some(len) = codec::next_frame(&self.buf, self.max)? {
                return Ok(self.buf.split_to(len));
            }
            if self.buf.len() >= codec::HEADER {
                let want = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize
                    + 1;
                self.buf.reserve(want.saturating_sub(self.buf.len()));
            }
            self.fill().await?;
        }
    }

    /// Resolves when the peer closes the connection (or it fails), reading
    /// ahead into the buffer meanwhile so nothing the peer sends is lost;
    /// stops reading (and waits) once a whole maximum message is buffered.
    pub async fn closed(&mut self) -> ReadError {
        loop {
            if self.buf.len() >= self.max {
                return std::future::pending().await;
            }
            self.buf.reserve(READ_CHUNK);
            match self.inner.read_buf(&mut self.buf).await {
                Ok(0) => return ReadError::Closed,
                Ok(_) => {}
                Err(e) => return ReadError::Io(e),
            }
        }
    }

    /// Whether a complete message is already buffered (so the caller can
    /// keep batching writes before it flushes).
    pub fn has_message(&self) -> bool {
        matches!(codec::next_frame(&self.buf, self.max), Ok(Some(_)))
    }

    /// The next untagged startup-phase packet.
    pub async fn next_startup(&mut self) -> Result<BytesMut, ReadError> {
        loop {
            if let Some(len) = codec::next_startup(&self.buf)? {
                return Ok(self.buf.split_to(len));
            }
            self.fill().await?;
        }
    }
}

//! Query cancellation across the sidecar.
//!
//! Clients cancel by opening a new connection with the BackendKeyData they
//! were given. The sidecar hands each client a key of its own (so the
//! server's key never leaves the sidecar) and maps it to the upstream key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec;
use super::upstream::{UpstreamError, UpstreamSettings};

/// Where a cancel request must go.
#[derive(Clone)]
pub struct CancelTarget {
    /// The upstream the session is connected to.
    pub upstream: Arc<UpstreamSettings>,
    /// The server's key for the session.
    pub key: (i32, i32),
}

/// Maps the keys handed to clients to upstream sessions.
#[derive(Default)]
pub struct CancelRegistry {
    map: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

impl CancelRegistry {
    /// Registers a session and returns the key to give its client; the entry
    /// is removed when the returned guard drops.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> KeyGuard {
        let mut map = self.map.lock().expect("cancel registry poisoned");
        let key = loop {
            let k = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            if !map.contains_key(&k) {
                break k;
            }
        };
        map.insert(key, target);
        KeyGuard {
            registry: Arc::clone(self),
            key,
        }
    }

    /// The session a client key belongs to.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        self.map
            .lock()
            .expect("cancel registry poisoned")
            .get(&(pid, secret))
            .cloned()
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.map.lock().expect("cancel registry poisoned").len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps a session's key registered while it lives.
pub struct KeyGuard {
    registry: Arc<CancelRegistry>,
    key: (i32, i32),
}

impl KeyGuard {
    /// The key given to the client.
    pub fn key(&self) -> (i32, i32) {
        self.key
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.map.lock() {
            map.remove(&self.key);
        }
    }
}

/// Sends a CancelRequest for `target` on a new upstream connection and
/// returns once the server has acted on it (it closes the connection after
/// signalling the session), or after a few seconds.
pub async fn send_cancel(target: &CancelTarget) -> Result<(), UpstreamError> {
    let mut stream = target.upstream.open_stream().await?;
    let mut buf = BytesMut::with_capacity(16);
    codec::cancel_request(&mut buf, target.key.0, target.key.1);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    Ok(())
}

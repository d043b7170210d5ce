//! The serving certificate, swappable while the server runs.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Hands rustls the current serving certificate for each handshake; a new
/// certificate installed here is used from the next handshake on, without a
/// restart and without dropping open connections.
#[derive(Debug, Default)]
pub struct CertResolver {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    /// An empty resolver: handshakes fail until a certificate is installed.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Installs `key` unless it is the certificate already served; returns
    /// whether it changed.
    pub fn install(&self, key: CertifiedKey) -> bool {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| c.cert.first() == key.cert.first())
        {
            return false;
        }
        *current = Some(Arc::new(key));
        true
    }

    /// Whether a certificate is installed (the server can complete handshakes).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

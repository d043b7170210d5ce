//! The audit collector's CA bundle, read from `--collector-ca-file` and
//! read again while the operator runs: the file is usually a mounted Secret
//! that cert-manager rotates, and every rendered ConfigMap must follow.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often the file is read again. Kubelet refreshes mounted Secrets
/// about once a minute, so polling is as prompt as a file watch would be
/// and survives the symlink swap kubelet uses to update them.
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("cannot read --collector-ca-file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file holds no certificate.
    #[error("--collector-ca-file {path} holds no PEM certificate")]
    NotPem {
        /// The file.
        path: PathBuf,
    },
}

/// Reads a PEM CA bundle.
pub fn read(path: &Path) -> Result<String, CaFileError> {
    let pem = std::fs::read_to_string(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(CaFileError::NotPem {
            path: path.to_path_buf(),
        });
    }
    Ok(pem)
}

/// Reads `path` every `every` until `stop` and publishes a changed bundle
/// on `tx`. A file that cannot be read or holds no certificate keeps the
/// last good bundle in use: sidecars keep shipping to the collector they
/// trust rather than losing their CA to a half-written update.
pub async fn follow(
    path: PathBuf,
    every: Duration,
    tx: watch::Sender<Option<String>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        match read(&path) {
            Ok(pem) => {
                let changed = tx.send_if_modified(|current| {
                    if current.as_deref() == Some(pem.as_str()) {
                        return false;
                    }
                    *current = Some(pem);
                    true
                });
                if changed {
                    info!(path = %path.display(), "the collector CA changed; rendering every policy again");
                }
            }
            Err(e) => warn!(error = %e, "keeping the last collector CA"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n";
    const B: &str = "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_file_without_a_certificate_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, "not a certificate").unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(
            e.contains("holds no PEM certificate") && e.contains("ca.crt"),
            "{e}"
        );
        let e = read(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.starts_with("cannot read --collector-ca-file"), "{e}");
    }

    #[tokio::test]
    async fn a_rotated_ca_is_published_and_a_broken_file_keeps_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, A).unwrap();
        let (tx, mut rx) = watch::channel(Some(A.to_string()));
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(
            path.clone(),
            Duration::from_millis(10),
            tx,
            stop.clone(),
        ));

        std::fs::write(&path, B).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().as_deref(), Some(B));

        std::fs::write(&path, "half-written").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("other"), A).unwrap();
        // Several polls of a missing file change nothing.
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!rx.has_changed().unwrap());
        assert_eq!(rx.borrow().as_deref(), Some(B));

        std::fs::write(&path, A).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow().as_deref(), Some(A));

        stop.cancel();
        task.await.unwrap();
    }
}

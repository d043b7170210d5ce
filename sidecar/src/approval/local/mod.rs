//! The standalone approval store: a directory of request files (see
//! [`Directory`]) watched for changes, reviewed with `cardgate-sidecar
//! approvals`, audited and pruned by the sidecar ([`auditor`]).
//!
//! Without an admission webhook or an operator, the rules are enforced here
//! (see [`crate::approval::lifecycle`]), and trust rests on the directory's
//! permissions: whoever can write it can approve.

pub mod auditor;
mod directory;
mod watch;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use tokio::sync::broadcast::error::RecvError;

pub use directory::{Directory, FileProblem, ReviewError};
use watch::{Change, Changes};

use super::lifecycle::{earliest_grant, resolution};
use super::{Grant, NewRequest, Resolution, StoreError};

/// How often a waiter re-reads its request even without a notification:
/// guards against events the kernel cannot deliver (e.g. a directory on a
/// network filesystem written from another host).
const SAFETY_RECHECK: Duration = Duration::from_secs(30);

/// A watched request directory. Clones share the watch.
#[derive(Clone)]
pub struct LocalStore {
    dir: Directory,
    changes: Arc<Changes>,
}

impl LocalStore {
    /// Opens the directory (see [`Directory::open`]) and starts watching it.
    pub fn open(path: impl AsRef<Path>) -> Result<LocalStore, StoreError> {
        let dir = Directory::open(path)?;
        let changes = Arc::new(Changes::watch(dir.path())?);
        Ok(LocalStore { dir, changes })
    }

    /// Writes a new Pending request; returns its name.
    pub async fn create(&self, req: &NewRequest) -> Result<String, StoreError> {
        let req = req.clone();
        let obj = self
            .blocking(move |dir| dir.create(&req, Timestamp::now()))
            .await?;
        Ok(obj.metadata.name.unwrap_or_default())
    }

    /// Waits for a decision: re-reads the request when its file changes,
    /// at `expiresAt` (writing Expired), and every [`SAFETY_RECHECK`].
    pub async fn wait(&self, name: &str) -> Result<Resolution, StoreError> {
        let mut changes = self.changes.subscribe();
        loop {
            let owned = name.to_owned();
            let (obj, ()) = self
                .blocking(move |dir| {
                    dir.update(&owned, Timestamp::now(), |_| Ok::<_, StoreError>(()))
                })
                .await?;
            if let Some(done) = resolution(&obj) {
                return Ok(done);
            }
            let until_expiry = obj.spec.expires_at.0.duration_since(Timestamp::now());
            let wake = tokio::time::Instant::now()
                + Duration::try_from(until_expiry)
                    .unwrap_or(Duration::ZERO)
                    .min(SAFETY_RECHECK);
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Request(n)) if n != name => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            return Err(StoreError::unavailable(format!(
                                "change notifications for {} stopped",
                                self.dir.path().display()
                            )));
                        }
                    },
                    () = tokio::time::sleep_until(wake) => break,
                }
            }
        }
    }

    /// Marks a Pending request Withdrawn.
    pub async fn withdraw(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |dir| dir.withdraw(&name, Timestamp::now()))
            .await
            .map(drop)
    }

    /// The live deferred grant for `fingerprint` that expires first.
    /// Damaged files are logged and skipped: they cannot grant anything.
    pub async fn find_grant(&self, fingerprint: &str) -> Result<Option<Grant>, StoreError> {
        let fingerprint = fingerprint.to_owned();
        self.blocking(move |dir| {
            let now = Timestamp::now();
            let (requests, problems) = dir.list(now)?;
            for p in problems {
                tracing::warn!(file = %p.file.display(), error = %p.error, "skipping damaged approval request file");
            }
            Ok(earliest_grant(&requests, &fingerprint, now))
        })
        .await
    }

    /// Takes one use of an approval (Consumed at `maxUses`).
    pub async fn record_use(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.blocking(move |dir| dir.record_use(&name, Timestamp::now()))
            .await
            .map(drop)
    }

    /// Runs file work (locking, fsync) off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Directory) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || work(&dir))
            .await
            .map_err(|e| StoreError::unavailable(format!("approval store task failed: {e}")))?
    }
}

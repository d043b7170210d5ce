//! The append-only file sink.
//!
//! Opening an existing log verifies its tail before anything is appended: a
//! damaged tail is refused rather than buried under new records. While
//! running, the sink checks before each write that its path still names the
//! file it holds open, so a log that was deleted, renamed or replaced is
//! reported instead of silently written into a file nobody will read.

use std::fs::{File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cardgate_crds::audit::{VerifyOptions, verify, verify_file};
use cardgate_crds::config::FsyncPolicy;

use super::AuditError;

/// Longest time a record waits for fsync under `fsync: batch`.
pub const BATCH_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// How much of an existing log is read to find and verify its tail; grows
/// when a single record is larger.
const TAIL_WINDOW: u64 = 1 << 20;

/// Where an existing chain ends: the last record's seq, hash and chain id.
pub(crate) type Tail = Option<(u64, String, Option<String>)>;

/// A write or sync that failed; `permanent` failures are not retried.
#[derive(Debug)]
pub(crate) struct FileFailure {
    pub(crate) message: String,
    pub(crate) permanent: bool,
}

/// An open audit log file.
#[derive(Debug)]
pub(crate) struct FileSink {
    path: PathBuf,
    file: File,
    identity: (u64, u64),
    policy: FsyncPolicy,
    /// Length of the file up to the last completely written batch.
    len: u64,
    last_sync: Option<Instant>,
}

impl FileSink {
    /// Opens (or creates) the log at `path` and returns where its chain ends.
    pub(crate) fn open(path: &Path, policy: FsyncPolicy) -> Result<(Self, Tail), AuditError> {
        let open_err = |reason: String| AuditError::Open {
            sink: format!("file {}", path.display()),
            reason,
        };
        let existed = match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Err(open_err("is a directory".into())),
            Ok(m) if !m.is_file() => return Err(open_err("is not a regular file".into())),
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(open_err(e.to_string())),
        };
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| open_err(e.to_string()))?;
        let meta = file.metadata().map_err(|e| open_err(e.to_string()))?;
        if !existed {
            // The new file's directory entry must survive a crash too.
            sync_parent(path).map_err(|e| open_err(format!("cannot sync its directory: {e}")))?;
        }
        let mut sink = Self {
            path: path.to_path_buf(),
            file,
            identity: (meta.dev(), meta.ino()),
            policy,
            len: meta.len(),
            last_sync: None,
        };
        let tail = sink.read_tail().map_err(|e| match e {
            TailError::Io(e) => open_err(format!("cannot read it: {e}")),
            TailError::Corrupt(problem) => AuditError::Corrupt {
                path: path.display().to_string(),
                problem,
            },
        })?;
        Ok((sink, tail))
    }

    /// Device and inode, to spot one file configured twice.
    pub(crate) fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// The log's path, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The sink's fsync policy.
    pub(crate) fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    fn read_tail(&mut self) -> Result<Tail, TailError> {
        if self.len == 0 {
            return Ok(None);
        }
        let mut window = TAIL_WINDOW;
        let (bytes, partial) = loop {
            let start = self.len.saturating_sub(window);
            let mut buf = vec![0; (self.len - start) as usize];
            self.file.read_exact_at(&mut buf, start)?;
            if start == 0 {
                break (buf, false);
            }
            // The window starts mid-record: skip to the first line boundary,
            // and widen it until at least one whole record is inside.
            match buf.iter().position(|&b| b == b'\n') {
                Some(nl) if nl + 1 < buf.len() => {
                    buf.drain(..=nl);
                    break (buf, true);
                }
                _ => window *= 4,
            }
        };
        let report = verify(
            Cursor::new(&bytes),
            &VerifyOptions {
                allow_partial: partial,
                anchors: Vec::new(),
            },
        )?;
        if !report.ok() {
            // Report the problem with line numbers of the whole file.
            let full = verify_file(
                &self.path,
                &VerifyOptions {
                    allow_partial: true,
                    anchors: Vec::new(),
                },
            )?;
            let problem = full.problem.or(report.problem).expect("report is not ok");
            return Err(TailError::Corrupt(problem.to_string()));
        }
        let (Some(seq), Some(hash)) = (report.last_seq, report.last_hash) else {
            return Ok(None);
        };
        if bytes.last() != Some(&b'\n') {
            // The last record is whole but its newline never reached the
            // disk: end the line so the next record starts on its own.
            self.file.write_all(b"\n")?;
            self.len += 1;
            self.file.sync_data()?;
        }
        Ok(Some((seq, hash, report.chain)))
    }

    /// Appends whole lines. On failure the file is cut back to its previous
    /// length, so a retry never leaves half a record in the middle.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> Result<(), FileFailure> {
        self.check_identity()?;
        if let Err(e) = self.file.write_all(bytes) {
            if let Err(t) = self.file.set_len(self.len) {
                return Err(FileFailure {
                    message: format!(
                        "write failed ({e}) and the partial record could not be removed ({t}); restart to verify the log"
                    ),
                    permanent: true,
                });
            }
            return Err(FileFailure {
                message: format!("write failed: {e}"),
                permanent: false,
            });
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Flushes written records to stable storage. A failed fsync may have
    /// dropped the written pages, and a later fsync could report success
    /// without them: such a failure is permanent.
    pub(crate) fn sync(&mut self) -> Result<(), FileFailure> {
        self.file.sync_data().map_err(|e| FileFailure {
            message: format!("fsync failed: {e}; records written since the last fsync may be lost, restart to verify the log"),
            permanent: true,
        })?;
        self.last_sync = Some(Instant::now());
        Ok(())
    }

    /// Whether a batch-policy fsync is due now (at most one per interval).
    pub(crate) fn batch_sync_due(&self, now: Instant) -> bool {
        self.last_sync
            .is_none_or(|t| now.duration_since(t) >= BATCH_SYNC_INTERVAL)
    }

    /// When the next batch-policy fsync may run.
    pub(crate) fn next_batch_sync(&self) -> Instant {
        self.last_sync
            .map_or_else(Instant::now, |t| t + BATCH_SYNC_INTERVAL)
    }

    fn check_identity(&self) -> Result<(), FileFailure> {
        match std::fs::metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.identity => Ok(()),
            Ok(_) => Err(FileFailure {
                message: "the path now names another file or directory: the log was replaced"
                    .into(),
                permanent: false,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FileFailure {
                message: "the log was removed or renamed".into(),
                permanent: false,
            }),
            Err(e) => Err(FileFailure {
                message: format!("cannot check the log: {e}"),
                permanent: false,
            }),
        }
    }
}

enum TailError {
    Io(io::Error),
    Corrupt(String),
}

impl From<io::Error> for TailError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

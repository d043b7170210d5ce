//! Request files in a directory: one `<name>.json` per request holding the
//! ApprovalRequest object exactly as the CRD has it.
//!
//! Every change is a read-modify-write under an exclusive lock on
//! `<dir>/.lock`, so the sidecar and a concurrent `approvals approve` never
//! lose each other's updates; the file is replaced atomically (temporary
//! file in the same directory, fsync, rename, fsync of the directory), so a
//! reader or a crash sees the old or the new request, never a mix. Each write
//! bumps `metadata.resourceVersion`.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cardgate_crds::approval::derive_status;
use cardgate_crds::approval::review::{ReviewRefusal, Reviewer, check_review, stamp};
use cardgate_crds::v1alpha1::{
    ApprovalRequest, ApprovalRequestStatus, Approvers, Decision, Review,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Resource;
use serde_json::Value;

use crate::approval::error::mask;
use crate::approval::lifecycle::check_use;
use crate::approval::object::{build, is_request_name, request_name, validate};
use crate::approval::{NewRequest, StoreError};

/// Name of the lock file; dot files are never requests.
const LOCK_FILE: &str = ".lock";
/// How long to wait for another process's read-modify-write (each takes
/// milliseconds; a stopped `approvals approve` must not hang the agent).
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts at a free random name before giving up.
const NAME_ATTEMPTS: usize = 16;

/// A request directory, checked when opened: it exists, is a directory, is
/// not writable by group or others (whoever can write it can approve), and
/// this user can write it.
#[derive(Clone, Debug)]
pub struct Directory {
    path: PathBuf,
}

/// A file in the directory that is not a readable request; reported, never
/// fatal for the others.
#[derive(Clone, Debug)]
pub struct FileProblem {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub error: StoreError,
}

/// Why a review was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The rules refuse it (self-approval, not an approver, decided…).
    #[error(transparent)]
    Refused(#[from] ReviewRefusal),
    /// The directory or the request cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Directory {
    /// Opens and checks the directory; see [`Directory`].
    pub fn open(path: impl AsRef<Path>) -> Result<Directory, StoreError> {
        let path = path.as_ref().to_path_buf();
        let shown = path.display();
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::unavailable(format!(
                    "approval directory {shown} does not exist (create it with: mkdir -m 700 {shown})"
                )));
            }
            Err(e) => {
                return Err(StoreError::unavailable(format!(
                    "cannot read approval directory {shown}: {e}"
                )));
            }
        };
        if !meta.is_dir() {
            return Err(StoreError::unavailable(format!(
                "approval directory {shown} is not a directory"
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(StoreError::unavailable(format!(
                "approval directory {shown} is writable by other users (mode {mode:o}); anyone who can write it can approve requests: chmod 700 {shown}"
            )));
        }
        let dir = Directory { path };
        dir.lock_file()?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file of a request; `None` for names that are not request names
    /// (and so could point outside the directory).
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        is_request_name(name).then(|| self.path.join(format!("{name}.json")))
    }

    fn lock_file(&self) -> Result<File, StoreError> {
        let path = self.path.join(LOCK_FILE);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| {
                StoreError::unavailable(format!(
                    "cannot write approval directory {}: {e}",
                    self.path.display()
                ))
            })
    }

    /// Takes the directory lock; released when the file is dropped.
    fn lock(&self) -> Result<File, StoreError> {
        let file = self.lock_file()?;
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if start.elapsed() < LOCK_TIMEOUT => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(StoreError::unavailable(format!(
                        "{} is locked by another process for more than {}s",
                        self.path.join(LOCK_FILE).display(),
                        LOCK_TIMEOUT.as_secs()
                    )));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(StoreError::unavailable(format!(
                        "cannot lock {}: {e}",
                        self.path.join(LOCK_FILE).display()
                    )));
                }
            }
        }
    }

    /// Writes a new Pending request under a fresh name and returns it.
    pub fn create(&self, req: &NewRequest, now: Timestamp) -> Result<ApprovalRequest, StoreError> {
        validate(req)?;
        let _lock = self.lock()?;
        for _ in 0..NAME_ATTEMPTS {
            let name = request_name(&req.policy, &req.fingerprint);
            let Some(file) = self.file(&name) else {
                return Err(StoreError::invalid(format!(
                    "{name:?} is not a valid request name"
                )));
            };
            if file.exists() {
                continue;
            }
            let mut obj = build(req, &name, req.policy_namespace.as_deref(), now)?;
            obj.metadata.creation_timestamp = Some(Time(now));
            obj.metadata.resource_version = Some("1".into());
            obj.status = Some(ApprovalRequestStatus::default());
            // Stored as derived, so a read-modify-write that changes
            // nothing (a refused review) writes nothing.
            derive_phase(&mut obj, now);
            self.write(&name, &obj)?;
            return Ok(obj);
        }
        Err(StoreError::unavailable(format!(
            "no free request name for policy {} after {NAME_ATTEMPTS} attempts",
            req.policy
        )))
    }

    /// The request as stored, with its phase settled to `now` (not written).
    pub fn get(&self, name: &str, now: Timestamp) -> Result<ApprovalRequest, StoreError> {
        let mut obj = self.read(name)?;
        derive_phase(&mut obj, now);
        Ok(obj)
    }

    /// Read-modify-write under the lock: the request is settled to `now`,
    /// `change` applied, settled again and written if anything changed. If
    /// `change` fails, only the settling (e.g. Expired) is written.
    pub fn update<T, E: From<StoreError>>(
        &self,
        name: &str,
        now: Timestamp,
        change: impl FnOnce(&mut ApprovalRequest) -> Result<T, E>,
    ) -> Result<(ApprovalRequest, T), E> {
        let _lock = self.lock()?;
        let stored = self.read(name)?;
        let mut settled = stored.clone();
        derive_phase(&mut settled, now);
        let mut work = settled.clone();
        match change(&mut work) {
            Ok(out) => {
                derive_phase(&mut work, now);
                if changed(&work, &stored) {
                    bump_version(&mut work);
                    self.write(name, &work)?;
                }
                Ok((work, out))
            }
            Err(e) => {
                if changed(&settled, &stored) {
                    bump_version(&mut settled);
                    self.write(name, &settled)?;
                }
                Err(e)
            }
        }
    }

    /// Appends a review if the shared review rules admit it (the rules the
    /// admission webhook applies in a cluster); reviewer, groups and time
    /// are the caller's. The reason is checked as given, then stored
    /// trimmed and masked: the file can be read by anyone who reads the
    /// directory.
    pub fn review(
        &self,
        name: &str,
        approvers: &Approvers,
        reviewer: &Reviewer,
        decision: Decision,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Result<ApprovalRequest, ReviewError> {
        let (obj, ()) = self.update(name, now, |obj| {
            let reason = reason.map(str::trim).filter(|r| !r.is_empty());
            let body = Review {
                decision,
                reason: reason.map(str::to_owned),
                reviewer: None,
                groups: Vec::new(),
                time: None,
            };
            check_review(obj, approvers, reviewer, &body, now)?;
            let mut review = stamp(&body, reviewer, now);
            review.reason = reason.map(mask);
            obj.spec.reviews.push(review);
            Ok::<_, ReviewError>(())
        })?;
        Ok(obj)
    }

    /// Marks a Pending request withdrawn; a decided one is left alone.
    pub fn withdraw(&self, name: &str, now: Timestamp) -> Result<ApprovalRequest, StoreError> {
        let (obj, ()) = self.update(name, now, |obj| {
            let status = obj.status.get_or_insert_with(Default::default);
            if !status.phase.is_final() {
                status.withdrawn_at = Some(Time(now));
            }
            Ok::<_, StoreError>(())
        })?;
        Ok(obj)
    }

    /// Deletes a request, under the lock, if it is still at `version` (a
    /// request changed since it was read is left for the next look).
    /// Already gone is fine.
    pub fn remove(&self, name: &str, version: Option<&str>) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let Some(file) = self.file(name) else {
            return Err(StoreError::invalid(format!(
                "{name:?} is not a request name"
            )));
        };
        match self.read(name) {
            Ok(obj) if obj.metadata.resource_version.as_deref() != version => return Ok(()),
            Ok(_) => {}
            Err(_) if !file.exists() => return Ok(()),
            Err(e) => return Err(e),
        }
        fs::remove_file(&file).map_err(|e| {
            StoreError::unavailable(format!("cannot delete {}: {e}", file.display()))
        })?;
        self.sync_dir()
    }

    /// Takes one use of an approval, or says why it cannot be used.
    pub fn record_use(&self, name: &str, now: Timestamp) -> Result<ApprovalRequest, StoreError> {
        let (obj, ()) = self.update(name, now, |obj| {
            check_use(obj, now).map_err(StoreError::grant_unusable)?;
            obj.status.get_or_insert_with(Default::default).uses += 1;
            Ok::<_, StoreError>(())
        })?;
        Ok(obj)
    }

    /// Every request, settled to `now`, oldest first; files that cannot be
    /// read as requests are returned separately.
    pub fn list(
        &self,
        now: Timestamp,
    ) -> Result<(Vec<ApprovalRequest>, Vec<FileProblem>), StoreError> {
        let entries = fs::read_dir(&self.path).map_err(|e| {
            StoreError::unavailable(format!(
                "cannot list approval directory {}: {e}",
                self.path.display()
            ))
        })?;
        let mut requests = Vec::new();
        let mut problems = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| {
                StoreError::unavailable(format!(
                    "cannot list approval directory {}: {e}",
                    self.path.display()
                ))
            })?;
            let file_name = entry.file_name();
            let Some(stem) = file_name
                .to_str()
                .filter(|n| !n.starts_with('.'))
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if !is_request_name(stem) {
                problems.push(FileProblem {
                    file: entry.path(),
                    error: StoreError::unavailable(format!(
                        "{} is not named like a request (NAME.json, NAME a lowercase DNS name)",
                        entry.path().display()
                    )),
                });
                continue;
            }
            match self.read(stem) {
                Ok(mut obj) => {
                    derive_phase(&mut obj, now);
                    requests.push(obj);
                }
                Err(error) => problems.push(FileProblem {
                    file: entry.path(),
                    error,
                }),
            }
        }
        requests.sort_by(|a, b| {
            let key = |o: &ApprovalRequest| {
                (
                    o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    o.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok((requests, problems))
    }

    fn read(&self, name: &str) -> Result<ApprovalRequest, StoreError> {
        let file = self
            .file(name)
            .ok_or_else(|| StoreError::invalid(format!("{name:?} is not a valid request name")))?;
        let bytes = match fs::read(&file) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StoreError::not_found(name)),
            Err(e) => {
                return Err(StoreError::unavailable(format!(
                    "cannot read {}: {e}",
                    file.display()
                )));
            }
        };
        parse(&bytes, name).map_err(|why| {
            StoreError::unavailable(format!(
                "{} is not a valid ApprovalRequest: {why}",
                file.display()
            ))
        })
    }

    fn write(&self, name: &str, obj: &ApprovalRequest) -> Result<(), StoreError> {
        let file = self
            .file(name)
            .ok_or_else(|| StoreError::invalid(format!("{name:?} is not a valid request name")))?;
        let mut bytes = serde_json::to_vec_pretty(obj)
            .map_err(|e| StoreError::unavailable(format!("cannot encode request {name}: {e}")))?;
        bytes.push(b'\n');
        let tmp = self.path.join(format!(
            ".{name}.json.{}.{}.tmp",
            std::process::id(),
            rand::random::<u32>()
        ));
        let fail = |what: &str, e: std::io::Error| {
            let _ = fs::remove_file(&tmp);
            StoreError::unavailable(format!("cannot {what} {}: {e}", file.display()))
        };
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| fail("write", e))?;
        f.write_all(&bytes).map_err(|e| fail("write", e))?;
        f.sync_all().map_err(|e| fail("sync", e))?;
        drop(f);
        fs::rename(&tmp, &file).map_err(|e| fail("replace", e))?;
        self.sync_dir()
    }

    /// Makes a rename or removal in the directory durable.
    fn sync_dir(&self) -> Result<(), StoreError> {
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                StoreError::unavailable(format!("cannot sync {}: {e}", self.path.display()))
            })
    }
}

/// Parses a request file: an ApprovalRequest of our API version whose
/// `metadata.name` matches the file name (a renamed or copied file would
/// otherwise answer for a request it is not).
fn parse(bytes: &[u8], name: &str) -> Result<ApprovalRequest, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let api_version = ApprovalRequest::api_version(&());
    let kind = ApprovalRequest::kind(&());
    if value.get("apiVersion").and_then(Value::as_str) != Some(&api_version)
        || value.get("kind").and_then(Value::as_str) != Some(&kind)
    {
        return Err(format!("apiVersion must be {api_version} and kind {kind}"));
    }
    let obj: ApprovalRequest = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if obj.metadata.name.as_deref() != Some(name) {
        return Err(format!("metadata.name is not {name:?}"));
    }
    Ok(obj)
}

/// The phase derived afresh from the reviews and the clock, by the rules
/// the operator applies in a cluster; a phase edited into the file counts
/// for nothing.
fn derive_phase(obj: &mut ApprovalRequest, now: Timestamp) {
    let status = obj.status.take().unwrap_or_default();
    obj.status = Some(derive_status(&obj.spec, status, now));
}

/// Whether a write is needed (of the metadata, only annotations change).
fn changed(a: &ApprovalRequest, b: &ApprovalRequest) -> bool {
    a.spec != b.spec || a.status != b.status || a.metadata.annotations != b.metadata.annotations
}

fn bump_version(obj: &mut ApprovalRequest) {
    let current = obj
        .metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    obj.metadata.resource_version = Some((current + 1).to_string());
}

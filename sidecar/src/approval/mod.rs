//! Approval store: where statements held by a `requireApproval` rule wait for
//! a recorded human decision.
//!
//! Two implementations sit behind one [`Store`]: ApprovalRequest objects in
//! the Kubernetes API ([`KubeStore`], reviewed with `kubectl cardgate`) and a
//! directory of files in the same format for standalone mode ([`LocalStore`],
//! reviewed with `cardgate-sidecar approvals`). Both wait by change
//! notification, never by polling. Every failure is a [`StoreError`] whose
//! text can be sent to the agent: the caller denies the statement with it
//! (fail closed).
//!
//! The approval rules — the phase, who may review — are
//! `cardgate_crds::approval`, the operator's own; what a decision means for
//! the agent lives in [`lifecycle`], shared by both stores and the CLI.

pub mod cli;
mod error;
mod fingerprint;
mod kubernetes;
pub mod lifecycle;
mod local;
mod object;

use std::time::Duration;

use cardgate_crds::config::ApprovalConfig;
use cardgate_crds::v1alpha1::{ApprovalMode, Requester, StatementClass};

pub use error::{StoreError, StoreErrorKind};
pub use fingerprint::{fingerprint, keyed_fingerprint};
pub use kubernetes::{ClusterAccess, KubeStore};
pub use local::{Directory, FileProblem, LocalStore, ReviewError, auditor};
pub use object::{FIELD_MANAGER, LABEL_FINGERPRINT, LABEL_POLICY, is_request_name};

/// What the sidecar knows when it asks for approval; everything an approver
/// needs to decide, already masked.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRequest {
    /// The AccessPolicy (or standalone policy name) whose rule held the statement.
    pub policy: String,
    /// Its namespace; in the local store it becomes `metadata.namespace`.
    pub policy_namespace: Option<String>,
    /// The matched rule as shown to users, e.g. "rule 3 (writes)".
    pub rule: String,
    /// Target name.
    pub target: String,
    /// The statement after masking; the raw text never reaches the store.
    pub statement_masked: String,
    /// [`fingerprint`] of the raw statement, target and requester.
    pub fingerprint: String,
    /// Class the statement was parsed as.
    pub class: StatementClass,
    /// The authenticated agent and its pod.
    pub requester: Requester,
    /// `wait` or `deferred`.
    pub mode: ApprovalMode,
    /// Approvals needed (at least 1).
    pub quorum: i32,
    /// How long the request stays open.
    pub timeout: Duration,
    /// deferred: how long an approval covers the statement.
    pub grant_ttl: Duration,
    /// deferred: how many runs an approval allows; pass 1 in wait mode.
    pub max_uses: i32,
}

/// The final answer for a request, as the agent is told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Enough approvals; `reviewers` made the decision.
    Approved {
        name: String,
        reviewers: Vec<String>,
    },
    /// The first denial decides; `reason` is masked.
    Denied {
        name: String,
        reviewer: String,
        reason: String,
    },
    /// Nobody decided before `expiresAt`.
    Expired { name: String },
    /// The agent went away before a decision.
    Withdrawn { name: String },
}

/// A live deferred-mode approval for a statement fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The approved request.
    pub name: String,
    /// Runs left before the approval is used up.
    pub uses_left: i32,
}

/// Either store, chosen by `approval.store` in the configuration. Cloning is
/// cheap and clones share the connection or the directory watch.
#[derive(Clone)]
pub enum Store {
    /// A directory of request files (standalone mode).
    Local(LocalStore),
    /// ApprovalRequest objects through the API server.
    Kubernetes(KubeStore),
}

impl Store {
    /// Opens the configured store: the directory must exist and be writable
    /// by this user only; the Kubernetes store uses the pod's own
    /// service-account token and the cluster CA (see [`ClusterAccess::in_pod`]).
    pub async fn from_config(cfg: &ApprovalConfig) -> Result<Store, StoreError> {
        match (&cfg.store.kubernetes, &cfg.store.directory) {
            (Some(k), None) => Ok(Store::Kubernetes(
                KubeStore::connect(&ClusterAccess::in_pod(), &k.namespace)?.with_service_account(
                    crate::identity::PodIdentity::from_env().service_account_subject(),
                ),
            )),
            (None, Some(dir)) => Ok(Store::Local(LocalStore::open(dir)?)),
            _ => Err(StoreError::invalid(
                "approval.store needs exactly one of kubernetes or directory",
            )),
        }
    }

    /// Records a new Pending request and returns its name.
    pub async fn create(&self, req: &NewRequest) -> Result<String, StoreError> {
        match self {
            Store::Local(s) => s.create(req).await,
            Store::Kubernetes(s) => s.create(req).await,
        }
    }

    /// Waits by change notification until the request is decided or its
    /// `expiresAt` passes.
    pub async fn wait(&self, name: &str) -> Result<Resolution, StoreError> {
        match self {
            Store::Local(s) => s.wait(name).await,
            Store::Kubernetes(s) => s.wait(name).await,
        }
    }

    /// Reports that the agent went away; a decided request is left as it is.
    pub async fn withdraw(&self, name: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.withdraw(name).await,
            Store::Kubernetes(s) => s.withdraw(name).await,
        }
    }

    /// deferred mode: a live approval of this fingerprint (Approved, grant
    /// not expired, uses left), the one that expires first.
    pub async fn find_grant(&self, fingerprint: &str) -> Result<Option<Grant>, StoreError> {
        match self {
            Store::Local(s) => s.find_grant(fingerprint).await,
            Store::Kubernetes(s) => s.find_grant(fingerprint).await,
        }
    }

    /// Takes one use of an approval. Call it *before* running the statement:
    /// an error (used up, expired, store unreachable) means do not run it.
    pub async fn record_use(&self, name: &str) -> Result<(), StoreError> {
        match self {
            Store::Local(s) => s.record_use(name).await,
            Store::Kubernetes(s) => s.record_use(name).await,
        }
    }
}

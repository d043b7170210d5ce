//! ApprovalRequest objects through the Kubernetes API, as the sidecar's own
//! service account (a projected token only the sidecar container mounts).
//!
//! The contract with the operator: objects are named
//! `<policy>-<8 hex of fingerprint>-<4 letters>` and labelled
//! `cardgate.dev/policy` and `cardgate.dev/fingerprint` (63 hex); the sidecar
//! writes nothing but the object at creation and, in the status subresource
//! by server-side apply as field manager `cardgate-sidecar`, `withdrawnAt`
//! and `uses`. Phases are the operator's; the sidecar watches for them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::approval::derive_status;
use cardgate_crds::pod::{API_CA_FILE, API_TOKEN_FILE};
use cardgate_crds::v1alpha1::ApprovalRequest;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::json;

use super::lifecycle::{check_use, earliest_grant, resolution};
use super::object::{
    FIELD_MANAGER, LABEL_FINGERPRINT, build, fingerprint_label, request_name, validate,
};
use super::{Grant, NewRequest, Resolution, StoreError};

/// The API server inside a cluster when the service environment is absent.
const DEFAULT_URL: &str = "https://kubernetes.default.svc";
/// Bound on each single API call (the watch has its own idle timeout): an
/// API server that stops answering must not hold the agent forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts at a free name, and at a `uses` update racing another replica.
const ATTEMPTS: usize = 5;

/// Where the API server is and how the sidecar proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterAccess {
    /// API server URL.
    pub url: String,
    /// Bearer token file; re-read about every minute, so rotation of the
    /// projected token is picked up.
    pub token_file: PathBuf,
    /// PEM bundle of the cluster CA; re-read too.
    pub ca_file: PathBuf,
}

impl ClusterAccess {
    /// Inside the pod: `KUBERNETES_SERVICE_HOST`/`PORT` when set (as every
    /// client does), else `https://kubernetes.default.svc`; the token and CA
    /// the injection mounts for the sidecar only.
    pub fn in_pod() -> ClusterAccess {
        ClusterAccess::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`ClusterAccess::in_pod`] with any variable source.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> ClusterAccess {
        let get = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let url = match (
            get("KUBERNETES_SERVICE_HOST"),
            get("KUBERNETES_SERVICE_PORT"),
        ) {
            (Some(host), Some(port)) if host.contains(':') => format!("https://[{host}]:{port}"),
            (Some(host), Some(port)) => format!("https://{host}:{port}"),
            _ => DEFAULT_URL.to_owned(),
        };
        ClusterAccess {
            url,
            token_file: API_TOKEN_FILE.into(),
            ca_file: API_CA_FILE.into(),
        }
    }
}

/// ApprovalRequests in one namespace. Clones share the connection.
#[derive(Clone)]
pub struct KubeStore {
    inner: Arc<Inner>,
}

struct Inner {
    api: Api<ApprovalRequest>,
    namespace: String,
    service_account: Option<String>,
}

impl KubeStore {
    /// Connects with the token and CA of `access`. Must run inside a Tokio
    /// runtime; fails if the token or CA cannot be read.
    pub fn connect(access: &ClusterAccess, namespace: &str) -> Result<KubeStore, StoreError> {
        let url = access.url.parse::<http::Uri>().map_err(|e| {
            StoreError::invalid(format!("API server URL {:?} is invalid: {e}", access.url))
        })?;
        let pem = std::fs::read(&access.ca_file).map_err(|e| {
            StoreError::unavailable(format!(
                "cannot read the cluster CA {}: {e}",
                access.ca_file.display()
            ))
        })?;
        let certs = rustls_pemfile::certs(&mut pem.as_slice())
            .map(|c| c.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                StoreError::unavailable(format!(
                    "cannot parse the cluster CA {}: {e}",
                    access.ca_file.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(StoreError::unavailable(format!(
                "the cluster CA {} holds no certificate",
                access.ca_file.display()
            )));
        }
        let mut config = kube::Config::new(url);
        config.default_namespace = namespace.to_owned();
        config.root_cert = Some(certs);
        config.root_cert_file = Some(access.ca_file.clone());
        config.auth_info.token_file = Some(access.token_file.display().to_string());
        let client = Client::try_from(config).map_err(|e| {
            StoreError::unavailable(format!(
                "cannot set up the Kubernetes client ({}): {}",
                access.token_file.display(),
                chain(&e)
            ))
        })?;
        Ok(KubeStore::with_client(client, namespace))
    }

    /// A store over any client (tests hand in a mocked API server).
    pub fn with_client(client: Client, namespace: &str) -> KubeStore {
        KubeStore {
            inner: Arc::new(Inner {
                api: Api::namespaced(client, namespace),
                namespace: namespace.to_owned(),
                service_account: None,
            }),
        }
    }

    /// Stamps `spec.requester.serviceAccount` with the pod's service
    /// account: the identity the token authenticates as, which the admission
    /// webhook requires the requester to be.
    pub fn with_service_account(self, username: Option<String>) -> KubeStore {
        KubeStore {
            inner: Arc::new(Inner {
                api: self.inner.api.clone(),
                namespace: self.inner.namespace.clone(),
                service_account: username,
            }),
        }
    }

    /// Creates a Pending request; a name collision draws a new suffix.
    pub async fn create(&self, req: &NewRequest) -> Result<String, StoreError> {
        validate(req)?;
        let mut req = req.clone();
        if let Some(sa) = &self.inner.service_account {
            req.requester.service_account = sa.clone();
        }
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        for _ in 0..ATTEMPTS {
            let name = request_name(&req.policy, &req.fingerprint);
            let obj = build(&req, &name, Some(&self.inner.namespace), Timestamp::now())?;
            match timed(self.inner.api.create(&params, &obj)).await {
                Ok(created) => return Ok(created.metadata.name.unwrap_or(name)),
                Err(Failure::Api(e)) if status_code(&e) == Some(409) => continue,
                Err(e) => return Err(self.fail(e, "create ApprovalRequests")),
            }
        }
        Err(StoreError::unavailable(format!(
            "no free ApprovalRequest name for policy {} after {ATTEMPTS} attempts",
            req.policy
        )))
    }

    /// Watches the object until the operator sets a final phase, resuming
    /// after disconnects. At `expiresAt` the object is read once more: a
    /// decision that just landed counts, anything else is Expired.
    pub async fn wait(&self, name: &str) -> Result<Resolution, StoreError> {
        let current = self.get(name).await?;
        if let Some(done) = resolution(&current) {
            return Ok(done);
        }
        let deadline = deadline(&current);
        let mut events = watcher::watch_object(self.inner.api.clone(), name)
            .default_backoff()
            .boxed();
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(Some(obj))) => {
                        if let Some(done) = resolution(&reviewed(obj, Timestamp::now())) {
                            return Ok(done);
                        }
                    }
                    Some(Ok(None)) => {
                        return Err(StoreError::unavailable(format!(
                            "ApprovalRequest {}/{name} was deleted before a decision",
                            self.inner.namespace
                        )));
                    }
                    Some(Err(e)) => {
                        if let Some(err) = self.permanent(&e, name) {
                            return Err(err);
                        }
                        tracing::warn!(request = name, error = %chain(&e), "approval watch interrupted; resuming");
                    }
                    None => {
                        return Err(StoreError::unavailable(format!(
                            "the watch on ApprovalRequest {}/{name} ended",
                            self.inner.namespace
                        )));
                    }
                },
                () = tokio::time::sleep_until(deadline) => {
                    let last = self.get(name).await?;
                    return Ok(resolution(&last).unwrap_or(Resolution::Expired { name: name.to_owned() }));
                }
            }
        }
    }

    /// Reports `status.withdrawnAt` unless the request is already decided.
    pub async fn withdraw(&self, name: &str) -> Result<(), StoreError> {
        let current = self.get(name).await?;
        if current.status.is_some_and(|s| s.phase.is_final()) {
            return Ok(());
        }
        let body = json!({
            "apiVersion": ApprovalRequest::api_version(&()),
            "kind": ApprovalRequest::kind(&()),
            "metadata": {"name": name},
            "status": {"withdrawnAt": Time(Timestamp::now())},
        });
        self.apply_status(name, &body).await
    }

    /// Lists by fingerprint label, then compares the full fingerprint.
    pub async fn find_grant(&self, fingerprint: &str) -> Result<Option<Grant>, StoreError> {
        let selector = format!("{LABEL_FINGERPRINT}={}", fingerprint_label(fingerprint));
        let list = timed(
            self.inner
                .api
                .list(&ListParams::default().labels(&selector)),
        )
        .await
        .map_err(|e| self.fail(e, "list ApprovalRequests"))?;
        let now = Timestamp::now();
        let items: Vec<ApprovalRequest> =
            list.items.into_iter().map(|r| reviewed(r, now)).collect();
        Ok(earliest_grant(&items, fingerprint, now))
    }

    /// Reports one more use in `status.uses`, guarded by the object's
    /// resourceVersion so two replicas cannot both take the last use.
    pub async fn record_use(&self, name: &str) -> Result<(), StoreError> {
        for _ in 0..ATTEMPTS {
            let current = self.get(name).await?;
            check_use(&current, Timestamp::now()).map_err(StoreError::grant_unusable)?;
            let uses = current.status.as_ref().map_or(0, |s| s.uses) + 1;
            let body = json!({
                "apiVersion": ApprovalRequest::api_version(&()),
                "kind": ApprovalRequest::kind(&()),
                "metadata": {"name": name, "resourceVersion": current.metadata.resource_version},
                "status": {"uses": uses},
            });
            match self.apply_status_raw(name, &body).await {
                Ok(()) => return Ok(()),
                Err(Failure::Api(e)) if status_code(&e) == Some(409) => continue,
                Err(e) => return Err(self.fail(e, "patch ApprovalRequest status")),
            }
        }
        Err(StoreError::unavailable(format!(
            "ApprovalRequest {}/{name} kept changing while recording a use",
            self.inner.namespace
        )))
    }

    /// Reads a request, its phase derived (see [`reviewed`]).
    async fn get(&self, name: &str) -> Result<ApprovalRequest, StoreError> {
        match timed(self.inner.api.get(name)).await {
            Ok(obj) => Ok(reviewed(obj, Timestamp::now())),
            Err(Failure::Api(e)) if status_code(&e) == Some(404) => Err(StoreError::not_found(
                &format!("{}/{name}", self.inner.namespace),
            )),
            Err(e) => Err(self.fail(e, "get ApprovalRequests")),
        }
    }

    async fn apply_status(&self, name: &str, body: &serde_json::Value) -> Result<(), StoreError> {
        self.apply_status_raw(name, body)
            .await
            .map_err(|e| self.fail(e, "patch ApprovalRequest status"))
    }

    async fn apply_status_raw(&self, name: &str, body: &serde_json::Value) -> Result<(), Failure> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        timed(
            self.inner
                .api
                .patch_status(name, &params, &Patch::Apply(body)),
        )
        .await
        .map(drop)
    }

    /// Errors a retry cannot fix end the wait: no permission, token
    /// rejected, resource not installed.
    fn permanent(&self, e: &watcher::Error, name: &str) -> Option<StoreError> {
        let code = match e {
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => status_code(e)?,
            watcher::Error::WatchError(s) => s.code,
            watcher::Error::NoResourceVersion => return None,
        };
        matches!(code, 401 | 403 | 404)
            .then(|| self.describe(code, &chain(e), &format!("watch ApprovalRequest {name}")))
    }

    fn fail(&self, failure: Failure, what: &str) -> StoreError {
        match failure {
            Failure::Timeout => StoreError::unavailable(format!(
                "the API server did not answer within {}s (trying to {what} in namespace {})",
                REQUEST_TIMEOUT.as_secs(),
                self.inner.namespace
            )),
            Failure::Api(e) => match status_code(&e) {
                Some(code) => self.describe(code, &chain(&e), what),
                None => StoreError::unavailable(format!(
                    "cannot reach the API server to {what}: {}",
                    chain(&e)
                )),
            },
        }
    }

    fn describe(&self, code: u16, detail: &str, what: &str) -> StoreError {
        let ns = &self.inner.namespace;
        StoreError::unavailable(match code {
            401 => format!(
                "the API server did not accept the sidecar's service-account token (401) to {what}: {detail}"
            ),
            403 => format!(
                "the sidecar's service account may not {what} in namespace {ns} (403 Forbidden; it needs create, get, list, watch on approvalrequests and patch on approvalrequests/status): {detail}"
            ),
            404 => format!(
                "the ApprovalRequest resource is not served in namespace {ns} (404; is the cardgate CRD installed?): {detail}"
            ),
            _ => format!("the API server refused to {what} in namespace {ns} ({code}): {detail}"),
        })
    }
}

/// A call that failed or took longer than [`REQUEST_TIMEOUT`].
enum Failure {
    Api(kube::Error),
    Timeout,
}

async fn timed<T>(call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, Failure> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(r) => r.map_err(Failure::Api),
        Err(_) => Err(Failure::Timeout),
    }
}

/// The request with its phase derived from its webhook-stamped reviews,
/// its quorum and the clock, exactly as the operator derives it; only what
/// sidecars report (uses, withdrawal) is read from the status. Whoever holds
/// the agents' service-account token may patch statuses in the namespace,
/// so a phase written there never approves anything on its own.
fn reviewed(mut req: ApprovalRequest, now: Timestamp) -> ApprovalRequest {
    let status = req.status.take().unwrap_or_default();
    req.status = Some(derive_status(&req.spec, status, now));
    req
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) if s.code != 0 => Some(s.code),
        _ => None,
    }
}

/// An error with its sources ("cannot connect: tcp connect error: refused").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// `expiresAt` as a Tokio instant (now if already past).
fn deadline(req: &ApprovalRequest) -> tokio::time::Instant {
    let left = req.spec.expires_at.0.duration_since(Timestamp::now());
    tokio::time::Instant::now() + Duration::try_from(left).unwrap_or(Duration::ZERO)
}

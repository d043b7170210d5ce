//! The AccessPolicy, MaskingRule and ApprovalRequest controllers: shared
//! context, errors and retry policy, and the watches that wake them.
//!
//! All run only on the replica holding the leader Lease ([`run`] returns
//! when its shutdown token fires, so the leader loop can stop and restart
//! them).

pub mod access_policy;
pub mod approval_request;
#[cfg(test)]
mod approval_tests;
pub mod conditions;
pub mod masking_rule;
#[cfg(test)]
pub(crate) mod mock;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardgate_crds::pod;
use cardgate_crds::v1alpha1::{AccessPolicy, ApprovalRequest, MaskActionType, MaskingRule};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::approval::notify::{Notifier, NotifySettings};
use crate::audit::AuditLog;
use crate::metrics::{ControllerName, Metrics};
use crate::render::config::RenderSettings;
use crate::render::meta::{LABEL_MANAGED_BY, LABEL_POLICY, LABEL_POLICY_NAMESPACE, MANAGED_BY};

/// Shortest retry after a failed reconcile.
pub const MIN_BACKOFF: Duration = Duration::from_secs(2);
/// Longest retry after repeated failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Retry of a policy or rule its owner has to fix; watches usually wake it
/// sooner (a created Service, a fixed MaskingRule).
pub const DEGRADED_RETRY: Duration = Duration::from_secs(60);
/// Periodic re-check of healthy objects, for drift no watch reports (the
/// API server's addresses).
pub const RESYNC: Duration = Duration::from_secs(300);

/// Why a reconcile failed; the controller retries with backoff. Problems the
/// object's owner must fix are not errors: they end up in conditions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        /// What the operator was doing, e.g. `apply ConfigMap payments/cardgate-x`.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A namespaced object arrived without a namespace (never from a real
    /// API server).
    #[error("{0} has no namespace")]
    NoNamespace(String),
    /// An audit record could not be written; the action it records waits.
    #[error("cannot write the audit record: {0}")]
    Audit(#[source] std::io::Error),
    /// An object could not be serialized for a patch.
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        /// The object.
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Closed-set label for the errors metric: the API status reason
    /// (`Conflict`, `Forbidden`…) or the error kind.
    pub fn metric_reason(&self) -> String {
        match self {
            Self::Kube {
                source: kube::Error::Api(s),
                ..
            } if !s.reason.is_empty() => s.reason.clone(),
            Self::Kube {
                source: kube::Error::Api(s),
                ..
            } => format!("Http{}", s.code),
            Self::Kube { .. } => "Transport".into(),
            Self::NoNamespace(_) => "NoNamespace".into(),
            Self::Serialize { .. } => "Serialize".into(),
            Self::Audit(_) => "Audit".into(),
        }
    }
}

/// Wraps a client error with what was being done.
pub(crate) fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let action = action.into();
    move |source| Error::Kube { action, source }
}

/// Everything a reconcile needs.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Process-wide metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events about policies and rules.
    pub recorder: Recorder,
    /// Rendering settings (the collector CA is filled in per reconcile).
    pub render: RenderSettings,
    /// The collector's CA as currently known.
    pub collector_ca: watch::Receiver<Option<String>>,
    /// Clock for condition times and approval expiry; fixed in tests.
    pub now: fn() -> jiff::Timestamp,
    /// The operator's audit trail (reviews, decisions, retention).
    pub audit: Arc<AuditLog>,
    /// Announcements of new ApprovalRequests.
    pub approvals: approval_request::Announcements,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context reporting Events as `cardgate-operator` from `instance`,
    /// auditing to stdout.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        instance: &str,
        render: RenderSettings,
        collector_ca: watch::Receiver<Option<String>>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGED_BY.into(),
                instance: Some(instance.into()),
            },
        );
        let audit = Arc::new(AuditLog::stdout(&render.operator_namespace, instance));
        Self {
            client,
            metrics,
            recorder,
            render,
            collector_ca,
            now: jiff::Timestamp::now,
            audit,
            approvals: approval_request::Announcements::new(Notifier::new(
                NotifySettings::default(),
            )),
            failures: Mutex::default(),
        }
    }

    /// Rendering settings with the collector CA known right now.
    pub fn render_settings(&self) -> RenderSettings {
        RenderSettings {
            collector_ca: self.collector_ca.borrow().clone(),
            ..self.render.clone()
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        self.failures().remove(key);
    }

    /// Counts a failure of `key` and returns how long to wait before the
    /// next attempt: doubling from [`MIN_BACKOFF`] up to [`MAX_BACKOFF`].
    pub fn failed(&self, key: &str) -> Duration {
        let mut f = self.failures();
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(*n)
    }
}

/// Wait before attempt `n + 1` after `n` consecutive failures.
pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    MIN_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

/// Identifies an object in the failure counts.
pub(crate) fn object_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

/// Shared `error_policy`: count the error and retry with backoff.
fn error_policy<K: Resource<DynamicType = ()>>(
    controller: ControllerName,
    obj: &K,
    error: &Error,
    ctx: &Context,
) -> Action {
    ctx.metrics
        .reconcile_error(controller, &error.metric_reason());
    let wait = ctx.failed(&object_key(obj));
    tracing::warn!(
        controller = controller.as_str(),
        object = %object_key(obj),
        error = %error,
        retry_in_seconds = wait.as_secs(),
        "reconcile failed"
    );
    Action::requeue(wait)
}

/// The policy a generated object belongs to, from its labels.
fn policy_of_labels<K: Resource>(obj: &K) -> Option<ObjectRef<AccessPolicy>> {
    let labels = obj.meta().labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let ns = labels.get(LABEL_POLICY_NAMESPACE)?;
    let name = labels.get(LABEL_POLICY)?;
    Some(ObjectRef::new(name).within(ns))
}

/// Policies in `ns` matching `pred`.
fn policies_where(
    store: &Store<AccessPolicy>,
    pred: impl Fn(&AccessPolicy) -> bool,
) -> Vec<ObjectRef<AccessPolicy>> {
    store
        .state()
        .into_iter()
        .filter(|p| pred(p))
        .map(|p| ObjectRef::from_obj(&*p))
        .collect()
}

/// Policies that list the MaskingRule `rule`.
pub fn policies_using_rule(
    store: &Store<AccessPolicy>,
    rule: &MaskingRule,
) -> Vec<ObjectRef<AccessPolicy>> {
    let (ns, name) = (rule.namespace(), rule.name_any());
    policies_where(store, |p| {
        p.namespace() == ns && p.spec.masking_rules.contains(&name)
    })
}

/// Policies whose targets name the Service `ns/name`.
pub fn policies_using_service(
    store: &Store<AccessPolicy>,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<AccessPolicy>> {
    policies_where(store, |p| {
        let own = p.namespace().unwrap_or_default();
        p.spec.targets.iter().any(|t| {
            t.service
                .as_ref()
                .is_some_and(|s| s.name == name && s.namespace.as_deref().unwrap_or(&own) == ns)
        })
    })
}

/// Policies that may mount the Secret `ns/name`: through a target's
/// credentials or CA, or through their MaskingRules' HMAC key (MaskingRules
/// are not cached here, so every policy of the namespace with MaskingRules
/// is woken; reconciling one more policy costs little).
pub fn policies_using_secret(
    store: &Store<AccessPolicy>,
    rules: &Store<MaskingRule>,
    ns: &str,
    name: &str,
) -> Vec<ObjectRef<AccessPolicy>> {
    let hmac_rules: Vec<String> = rules
        .state()
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| {
            r.spec.action.kind == MaskActionType::Hmac
                && r.spec
                    .action
                    .hmac_key_secret_ref
                    .as_ref()
                    .is_some_and(|k| k.name == name)
        })
        .map(|r| r.name_any())
        .collect();
    policies_where(store, |p| {
        p.namespace().as_deref() == Some(ns)
            && (p.spec.targets.iter().any(|t| {
                t.credentials_secret_ref
                    .as_ref()
                    .is_some_and(|c| c.name == name)
                    || t.tls
                        .as_ref()
                        .and_then(|tls| tls.ca_secret_ref.as_ref())
                        .is_some_and(|c| c.name == name)
            }) || p.spec.masking_rules.iter().any(|r| hmac_rules.contains(r)))
    })
}

/// A stream that yields once per change of the collector CA.
fn changes<T: Send + Sync + 'static>(rx: watch::Receiver<T>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    })
}

/// Runs the controllers until `shutdown` fires, then lets running
/// reconciles finish.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let managed = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let all = watcher::Config::default;

    let rules_controller = Controller::new(Api::<MaskingRule>::all(client.clone()), all());
    let rule_store = rules_controller.store();

    let policies = Controller::new(Api::<AccessPolicy>::all(client.clone()), all());
    let store = policies.store();
    let policies = {
        let (s1, s2, s3) = (store.clone(), store.clone(), store);
        let rules = rule_store.clone();
        policies
            .watches(Api::<MaskingRule>::all(client.clone()), all(), move |r| {
                policies_using_rule(&s1, &r)
            })
            .watches(
                Api::<PartialObjectMeta<Service>>::all(client.clone()),
                all(),
                move |s| {
                    policies_using_service(
                        &s2,
                        s.namespace().as_deref().unwrap_or_default(),
                        &s.name_any(),
                    )
                },
            )
            .watches(
                Api::<PartialObjectMeta<Secret>>::all(client.clone()),
                all(),
                move |s| {
                    policies_using_secret(
                        &s3,
                        &rules,
                        s.namespace().as_deref().unwrap_or_default(),
                        &s.name_any(),
                    )
                },
            )
            .watches(
                Api::<PartialObjectMeta<Pod>>::all(client.clone()),
                all().labels(pod::LABEL_PROXIED),
                |p| {
                    let policy = p.labels().get(pod::LABEL_PROXIED).cloned();
                    let ns = p.namespace();
                    policy
                        .zip(ns)
                        .map(|(name, ns)| ObjectRef::new(&name).within(&ns))
                },
            )
            .watches(
                Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
                managed.clone(),
                |o| policy_of_labels(&o),
            )
            .watches(
                Api::<PartialObjectMeta<NetworkPolicy>>::all(client.clone()),
                managed.clone(),
                |o| policy_of_labels(&o),
            )
            .watches(
                Api::<PartialObjectMeta<Role>>::all(client.clone()),
                managed.clone(),
                |o| policy_of_labels(&o),
            )
            .watches(
                Api::<PartialObjectMeta<RoleBinding>>::all(client.clone()),
                managed,
                |o| policy_of_labels(&o),
            )
            .reconcile_all_on(changes(ctx.collector_ca.clone()))
            .graceful_shutdown_on(shutdown.clone().cancelled_owned())
            .run(
                access_policy::reconcile,
                |p, e, ctx| error_policy(ControllerName::AccessPolicy, &*p, e, &ctx),
                ctx.clone(),
            )
            .for_each(|_| async {})
    };

    let approvals = Controller::new(Api::<ApprovalRequest>::all(client.clone()), all())
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            approval_request::reconcile,
            |r, e, ctx| error_policy(ControllerName::ApprovalRequest, &*r, e, &ctx),
            ctx.clone(),
        )
        .for_each(|_| async {});

    let rules = rules_controller
        .watches(Api::<AccessPolicy>::all(client), all(), move |p| {
            // Every rule of the policy's namespace: a rule the policy stopped
            // listing must drop it from usedBy too.
            let ns = p.namespace();
            rule_store
                .state()
                .into_iter()
                .filter(|r| r.namespace() == ns)
                .map(|r| ObjectRef::from_obj(&*r))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(
            masking_rule::reconcile,
            |r, e, ctx| error_policy(ControllerName::MaskingRule, &*r, e, &ctx),
            ctx,
        )
        .for_each(|_| async {});
    futures::join!(policies, rules, approvals);
}

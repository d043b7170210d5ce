//! Names, labels and ownership of the objects generated for a policy.
//!
//! Every generated object carries the same labels, so the operator can find
//! its objects again (to prune what a policy no longer needs, and to clean up
//! the ones in other namespaces that owner references cannot reach) and
//! people can see where an object comes from.

use std::collections::BTreeMap;

use cardgate_crds::v1alpha1::AccessPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "cardgate-operator";
/// `app.kubernetes.io/managed-by` value on generated objects.
pub const MANAGED_BY: &str = "cardgate-operator";
/// Standard label naming the tool that manages an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Name of the AccessPolicy an object was generated for.
pub const LABEL_POLICY: &str = "cardgate.dev/policy";
/// Namespace of that AccessPolicy (objects may live in other namespaces).
pub const LABEL_POLICY_NAMESPACE: &str = "cardgate.dev/policy-namespace";
/// Target an ingress NetworkPolicy protects.
pub const LABEL_TARGET: &str = "cardgate.dev/target";
/// Finalizer held while a policy has objects in other namespaces, which
/// garbage collection cannot remove (owner references never cross
/// namespaces).
pub const FINALIZER: &str = "cardgate.dev/cross-namespace-cleanup";
/// Well-known namespace label set by the API server on every namespace.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";

/// Labels of every object generated for `policy`.
pub fn labels(policy: &AccessPolicy) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_POLICY.to_string(), policy.name_any()),
        (
            LABEL_POLICY_NAMESPACE.to_string(),
            policy.namespace().unwrap_or_default(),
        ),
    ])
}

/// Label selector (`k=v,k=v`) matching every object generated for `policy`,
/// in any namespace.
pub fn selector(policy: &AccessPolicy) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_POLICY_NAMESPACE}={},{LABEL_POLICY}={}",
        policy.namespace().unwrap_or_default(),
        policy.name_any()
    )
}

/// The controller owner reference to `policy`: garbage collection deletes
/// the object with the policy.
pub fn owner(policy: &AccessPolicy) -> OwnerReference {
    OwnerReference {
        api_version: AccessPolicy::api_version(&()).into_owned(),
        kind: AccessPolicy::kind(&()).into_owned(),
        name: policy.name_any(),
        uid: policy.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of an object generated for `policy` in `namespace`; objects in
/// the policy's own namespace are owned by it, others only labelled.
pub fn object_meta(policy: &AccessPolicy, name: String, namespace: &str) -> ObjectMeta {
    let same_namespace = policy.namespace().as_deref() == Some(namespace);
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels(policy)),
        owner_references: same_namespace.then(|| vec![owner(policy)]),
        ..ObjectMeta::default()
    }
}

/// Ingress NetworkPolicy protecting `target`. A policy in another namespace
/// also names the agent namespace, so two policies of the same name in
/// different namespaces never share one.
pub fn ingress_policy_name(policy: &AccessPolicy, target: &str, namespace: &str) -> String {
    let ns = policy.namespace().unwrap_or_default();
    if ns == namespace {
        format!("cardgate-{}-{target}", policy.name_any())
    } else {
        format!("cardgate-{ns}-{}-{target}", policy.name_any())
    }
}

/// Egress NetworkPolicy for the governed pods.
pub fn egress_policy_name(policy: &AccessPolicy) -> String {
    format!("cardgate-{}-egress", policy.name_any())
}

/// Role and RoleBinding for the governed pods' service accounts.
pub fn sidecar_role_name(policy: &AccessPolicy) -> String {
    format!("cardgate-{}-sidecar", policy.name_any())
}

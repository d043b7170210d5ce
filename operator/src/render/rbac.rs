//! The Role and RoleBinding that let the governed pods' sidecars work with
//! ApprovalRequests in their namespace, and nothing else.

use std::collections::BTreeSet;

use cardgate_crds::GROUP;
use cardgate_crds::v1alpha1::AccessPolicy;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::ResourceExt;

use super::meta;

/// The sidecar's rights: create ApprovalRequests and watch their decisions,
/// and mark a request consumed in its status.
pub fn sidecar_role(policy: &AccessPolicy) -> Role {
    let ns = policy.namespace().unwrap_or_default();
    let rule = |resource: &str, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![GROUP.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    Role {
        metadata: meta::object_meta(policy, meta::sidecar_role_name(policy), &ns),
        rules: Some(vec![
            rule("approvalrequests", &["create", "get", "list", "watch"]),
            rule("approvalrequests/status", &["patch"]),
        ]),
    }
}

/// Binds [`sidecar_role`] to the service accounts of the governed pods
/// (none yet: a binding without subjects grants nothing).
pub fn sidecar_role_binding(
    policy: &AccessPolicy,
    service_accounts: &BTreeSet<String>,
) -> RoleBinding {
    let ns = policy.namespace().unwrap_or_default();
    RoleBinding {
        metadata: meta::object_meta(policy, meta::sidecar_role_name(policy), &ns),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: meta::sidecar_role_name(policy),
        },
        subjects: Some(
            service_accounts
                .iter()
                .map(|sa| Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.clone(),
                    namespace: Some(ns.clone()),
                    api_group: None,
                })
                .collect(),
        ),
    }
}

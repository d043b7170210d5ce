//! The pod the sidecar runs in, from the downward-API environment the
//! operator's injection sets.

use cardgate_crds::audit::Origin;
use cardgate_crds::pod::{
    ENV_NODE_NAME, ENV_POD_NAME, ENV_POD_NAMESPACE, ENV_POD_SERVICE_ACCOUNT, ENV_POD_UID,
};

/// The pod this sidecar runs in; every field is `None` when standalone.
/// It goes on every audit record, so a record names the workload even when
/// the agent's own identity is what failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    /// Pod namespace.
    pub namespace: Option<String>,
    /// Pod name.
    pub pod: Option<String>,
    /// Pod UID: tells apart pods that reuse a name.
    pub pod_uid: Option<String>,
    /// The pod's service account.
    pub service_account: Option<String>,
    /// The node the pod runs on.
    pub node: Option<String>,
}

impl PodIdentity {
    /// Reads the downward-API variables of this process.
    pub fn from_env() -> PodIdentity {
        PodIdentity::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the identity from any variable source; empty values count as
    /// unset, since a downward-API field that is missing renders as "".
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> PodIdentity {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        PodIdentity {
            namespace: get(ENV_POD_NAMESPACE),
            pod: get(ENV_POD_NAME),
            pod_uid: get(ENV_POD_UID),
            service_account: get(ENV_POD_SERVICE_ACCOUNT),
            node: get(ENV_NODE_NAME),
        }
    }

    /// The Kubernetes username of the pod's own service account
    /// (`system:serviceaccount:NS:NAME`), which `podServiceAccount` subject
    /// matches compare against.
    pub fn service_account_subject(&self) -> Option<String> {
        match (&self.namespace, &self.service_account) {
            (Some(ns), Some(sa)) => Some(format!("system:serviceaccount:{ns}:{sa}")),
            _ => None,
        }
    }

    /// The audit record's origin for this sidecar; the caller adds the
    /// client address and session.
    pub fn origin(&self) -> Origin {
        Origin {
            component: "sidecar".into(),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
            pod_uid: self.pod_uid.clone(),
            service_account: self.service_account.clone(),
            node: self.node.clone(),
            // Outside a pod, the host names where the records come from.
            host: if self.pod.is_none() {
                host_name()
            } else {
                None
            },
            ..Origin::default()
        }
    }
}

/// This machine's host name, for records written outside Kubernetes.
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> PodIdentity {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodIdentity::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn reads_every_downward_api_variable() {
        let pod = env(&[
            (ENV_POD_NAMESPACE, "payments"),
            (ENV_POD_NAME, "agent-7f9"),
            (ENV_POD_UID, "0b9c-11"),
            (ENV_POD_SERVICE_ACCOUNT, "report-agent"),
            (ENV_NODE_NAME, "node-a"),
        ]);
        assert_eq!(pod.namespace.as_deref(), Some("payments"));
        assert_eq!(pod.pod.as_deref(), Some("agent-7f9"));
        assert_eq!(pod.pod_uid.as_deref(), Some("0b9c-11"));
        assert_eq!(pod.node.as_deref(), Some("node-a"));
        assert_eq!(
            pod.service_account_subject().as_deref(),
            Some("system:serviceaccount:payments:report-agent")
        );
        let origin = pod.origin();
        assert_eq!(origin.component, "sidecar");
        assert_eq!(origin.pod_uid.as_deref(), Some("0b9c-11"));
    }

    #[test]
    fn standalone_has_no_pod_and_no_service_account_subject() {
        let pod = env(&[(ENV_POD_NAMESPACE, ""), (ENV_POD_SERVICE_ACCOUNT, "  ")]);
        assert_eq!(pod, PodIdentity::default());
        assert_eq!(pod.service_account_subject(), None);
    }
}

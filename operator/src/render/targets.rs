//! Resolves each target to where the sidecar connects and, for in-cluster
//! Services, to the pods and port the NetworkPolicies must name.

use std::collections::BTreeMap;

use cardgate_crds::v1alpha1::{AccessPolicy, Target};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::observed::{Observed, Problem, Reason};

/// A target with everything the rendering needs from the cluster.
#[derive(Debug, Clone)]
pub struct ResolvedTarget<'a> {
    /// Position in `spec.targets`, for messages.
    pub index: usize,
    /// The target as written in the policy.
    pub spec: &'a Target,
    /// Host the sidecar connects to.
    pub host: String,
    /// Port the sidecar connects to.
    pub port: u16,
    /// Addresses that identify the target in transparent mode (ClusterIPs
    /// and external CIDRs).
    pub addresses: Vec<String>,
    /// Set for in-cluster Services.
    pub in_cluster: Option<InCluster>,
}

/// The pods behind a target's Service.
#[derive(Debug, Clone, PartialEq)]
pub struct InCluster {
    /// Namespace of the Service and its pods.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// The Service's selector: the pods that serve the target.
    pub selector: BTreeMap<String, String>,
    /// The port on those pods (the Service port's `targetPort`; may be a
    /// container port name).
    pub pod_port: IntOrString,
    /// TCP, UDP or SCTP.
    pub protocol: String,
}

/// Resolves every target; a problem for each target that cannot be.
pub fn resolve<'a>(
    policy: &'a AccessPolicy,
    observed: &Observed,
) -> Result<Vec<ResolvedTarget<'a>>, Vec<Problem>> {
    let ns = policy.namespace().unwrap_or_default();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (index, t) in policy.spec.targets.iter().enumerate() {
        let field = format!("spec.targets[{index}]");
        let port = t
            .port()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0);
        let Some(port) = port else {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!("{field}: needs a port between 1 and 65535"),
            ));
            continue;
        };
        if let Some(ext) = &t.external {
            out.push(ResolvedTarget {
                index,
                spec: t,
                host: ext.host.clone(),
                port,
                addresses: ext.cidrs.clone(),
                in_cluster: None,
            });
            continue;
        }
        let Some(svc_ref) = &t.service else {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!("{field}: needs exactly one of service or external"),
            ));
            continue;
        };
        let svc_ns = svc_ref.namespace.clone().unwrap_or_else(|| ns.clone());
        let key = (svc_ns.clone(), svc_ref.name.clone());
        let Some(Some(svc)) = observed.services.get(&key) else {
            problems.push(Problem::new(
                Reason::ServiceNotFound,
                format!(
                    "{field}.service: Service {svc_ns}/{} not found",
                    svc_ref.name
                ),
            ));
            continue;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let selector = spec.selector.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") || selector.is_empty() {
            problems.push(Problem::new(
                Reason::ServiceWithoutSelector,
                format!(
                    "{field}.service: Service {svc_ns}/{} selects no pods by label, so no NetworkPolicy can keep agents from reaching its backends directly; use an external target with cidrs instead",
                    svc_ref.name
                ),
            ));
            continue;
        }
        let ports = spec.ports.clone().unwrap_or_default();
        let Some(sp) = ports.iter().find(|p| p.port == i32::from(port)) else {
            let known: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
            problems.push(Problem::new(
                Reason::ServicePortNotFound,
                format!(
                    "{field}.service.port: Service {svc_ns}/{} has no port {port} (ports: {})",
                    svc_ref.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
            continue;
        };
        let addresses = spec
            .cluster_ips
            .clone()
            .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
            .unwrap_or_default()
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .collect();
        out.push(ResolvedTarget {
            index,
            spec: t,
            host: format!("{}.{svc_ns}.svc", svc_ref.name),
            port,
            addresses,
            in_cluster: Some(InCluster {
                namespace: svc_ns,
                service: svc_ref.name.clone(),
                selector,
                pod_port: sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port)),
                protocol: sp.protocol.clone().unwrap_or_else(|| "TCP".into()),
            }),
        });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

impl ResolvedTarget<'_> {
    /// Whether connections to this target are intercepted with iptables.
    pub fn transparent(&self, policy_default: bool) -> bool {
        self.spec.transparent.unwrap_or(policy_default)
    }

    /// The loopback port the sidecar listens on for this target.
    pub fn listen_port(&self) -> u16 {
        self.spec
            .listen_port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
            .unwrap_or(self.port)
    }
}

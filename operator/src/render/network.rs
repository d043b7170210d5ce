//! The NetworkPolicies that leave the targets reachable only through the
//! sidecar.
//!
//! Ingress: for every in-cluster target, a policy on the Service's pods that
//! admits the target port only from pods governed by this AccessPolicy and
//! from the `allowedClients` the policy lists. Selecting those pods makes
//! them isolated for ingress: every other port of theirs is closed too,
//! unless another NetworkPolicy opens it (NetworkPolicies add up; the
//! operator never widens access beyond what it was asked for).
//!
//! Egress (`spec.egress.restrict`): a policy on the governed pods allowing
//! only cluster DNS, the targets, the audit collector (when one is
//! configured) and the API server.

use std::collections::BTreeMap;

use cardgate_crds::pod;
use cardgate_crds::v1alpha1::AccessPolicy;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::config::RenderSettings;
use super::meta::{self, LABEL_NAMESPACE_NAME, LABEL_TARGET};
use super::observed::ApiServerEndpoint;
use super::targets::ResolvedTarget;

fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        match_expressions: None,
    }
}

fn namespace_selector(namespace: &str) -> LabelSelector {
    match_labels(BTreeMap::from([(
        LABEL_NAMESPACE_NAME.to_string(),
        namespace.to_string(),
    )]))
}

/// Pods governed by `policy`: labelled by the injection webhook.
pub fn governed_pods(policy: &AccessPolicy) -> LabelSelector {
    match_labels(BTreeMap::from([(
        pod::LABEL_PROXIED.to_string(),
        policy.name_any(),
    )]))
}

fn port(protocol: &str, port: IntOrString) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_string()),
        port: Some(port),
        end_port: None,
    }
}

/// One ingress NetworkPolicy per in-cluster target, in the target's
/// namespace.
pub fn ingress_policies(
    policy: &AccessPolicy,
    targets: &[ResolvedTarget<'_>],
) -> Vec<NetworkPolicy> {
    let policy_ns = policy.namespace().unwrap_or_default();
    let mut out = Vec::new();
    for t in targets {
        let Some(c) = &t.in_cluster else { continue };
        let mut governed = NetworkPolicyPeer {
            pod_selector: Some(governed_pods(policy)),
            ..NetworkPolicyPeer::default()
        };
        if c.namespace != policy_ns {
            governed.namespace_selector = Some(namespace_selector(&policy_ns));
        }
        let mut from = vec![governed];
        from.extend(t.spec.allowed_clients.iter().map(|a| NetworkPolicyPeer {
            pod_selector: a.pod_selector.clone(),
            namespace_selector: a.namespace_selector.clone(),
            ip_block: None,
        }));
        let mut metadata = meta::object_meta(
            policy,
            meta::ingress_policy_name(policy, &t.spec.name, &c.namespace),
            &c.namespace,
        );
        metadata
            .labels
            .get_or_insert_default()
            .insert(LABEL_TARGET.to_string(), t.spec.name.clone());
        out.push(NetworkPolicy {
            metadata,
            spec: Some(NetworkPolicySpec {
                pod_selector: Some(match_labels(c.selector.clone())),
                policy_types: Some(vec!["Ingress".into()]),
                ingress: Some(vec![NetworkPolicyIngressRule {
                    from: Some(from),
                    ports: Some(vec![port(&c.protocol, c.pod_port.clone())]),
                }]),
                egress: None,
            }),
        });
    }
    out
}

/// The egress NetworkPolicy for the governed pods, and warnings about what
/// it cannot allow.
pub fn egress_policy(
    policy: &AccessPolicy,
    targets: &[ResolvedTarget<'_>],
    api_server: &[ApiServerEndpoint],
    settings: &RenderSettings,
) -> (NetworkPolicy, Vec<String>) {
    let mut warnings = Vec::new();
    let dns_peer = NetworkPolicyPeer {
        namespace_selector: Some(namespace_selector(&settings.dns_namespace)),
        pod_selector: Some(match_labels(settings.dns_pod_labels.clone())),
        ip_block: None,
    };
    let mut rules = vec![NetworkPolicyEgressRule {
        to: Some(vec![dns_peer]),
        ports: Some(vec![
            port("UDP", IntOrString::Int(53)),
            port("TCP", IntOrString::Int(53)),
        ]),
    }];
    for t in targets {
        match &t.in_cluster {
            Some(c) => rules.push(NetworkPolicyEgressRule {
                to: Some(vec![NetworkPolicyPeer {
                    namespace_selector: Some(namespace_selector(&c.namespace)),
                    pod_selector: Some(match_labels(c.selector.clone())),
                    ip_block: None,
                }]),
                ports: Some(vec![port(&c.protocol, c.pod_port.clone())]),
            }),
            None if t.addresses.is_empty() => warnings.push(format!(
                "spec.targets[{}].external.cidrs is empty, so the egress policy cannot allow {}:{} (NetworkPolicies match addresses, not host names); list the address ranges it resolves into",
                t.index, t.host, t.port
            )),
            None => rules.push(NetworkPolicyEgressRule {
                to: Some(
                    t.addresses
                        .iter()
                        .map(|cidr| NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: as_cidr(cidr),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        })
                        .collect(),
                ),
                ports: Some(vec![port("TCP", IntOrString::Int(i32::from(t.port)))]),
            }),
        }
    }
    if let Some(collector) = &settings.collector {
        rules.push(NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(namespace_selector(&collector.namespace)),
                pod_selector: Some(match_labels(collector.pod_labels.clone())),
                ip_block: None,
            }]),
            ports: Some(vec![port(
                "TCP",
                IntOrString::Int(i32::from(collector.port)),
            )]),
        });
    }
    if api_server.is_empty() {
        warnings.push(
            "the API server's endpoints are unknown (no EndpointSlice for default/kubernetes), so the egress policy cannot allow it; the sidecars cannot fetch service-account keys or create ApprovalRequests".to_string(),
        );
    } else {
        let mut by_port: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
        for e in api_server {
            by_port.entry(e.port).or_default().push(&e.address);
        }
        for (p, addresses) in by_port {
            rules.push(NetworkPolicyEgressRule {
                to: Some(
                    addresses
                        .into_iter()
                        .map(|a| NetworkPolicyPeer {
                            ip_block: Some(IPBlock {
                                cidr: as_cidr(a),
                                except: None,
                            }),
                            ..NetworkPolicyPeer::default()
                        })
                        .collect(),
                ),
                ports: Some(vec![port("TCP", IntOrString::Int(p))]),
            });
        }
    }
    for s in &policy.spec.subjects {
        if let Some(o) = &s.oidc {
            warnings.push(format!(
                "spec.egress.restrict: the egress policy does not allow the OIDC issuer {:?} (NetworkPolicies cannot name hosts), so its tokens are refused until another NetworkPolicy allows the sidecar to fetch its keys",
                o.issuer
            ));
        }
    }
    let ns = policy.namespace().unwrap_or_default();
    let np = NetworkPolicy {
        metadata: meta::object_meta(policy, meta::egress_policy_name(policy), &ns),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(governed_pods(policy)),
            policy_types: Some(vec!["Egress".into()]),
            ingress: None,
            egress: Some(rules),
        }),
    };
    (np, warnings)
}

/// An address or range as a CIDR: bare addresses become /32 or /128.
fn as_cidr(a: &str) -> String {
    if a.contains('/') {
        a.to_string()
    } else if a.contains(':') {
        format!("{a}/128")
    } else {
        format!("{a}/32")
    }
}

/// Warnings for in-cluster targets without `allowedClients`: their own
/// applications lose access unless listed.
pub fn allowed_clients_warnings(targets: &[ResolvedTarget<'_>]) -> Vec<String> {
    targets
        .iter()
        .filter_map(|t| {
            let c = t.in_cluster.as_ref()?;
            t.spec.allowed_clients.is_empty().then(|| {
                format!(
                    "spec.targets[{}].allowedClients is empty: only pods governed by this policy can now reach Service {}/{} on port {}; list the applications that use it directly or they lose access",
                    t.index, c.namespace, c.service, t.port
                )
            })
        })
        .collect()
}

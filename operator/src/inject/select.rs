//! Which AccessPolicy governs a pod.

use std::collections::BTreeMap;

use cardgate_crds::v1alpha1::AccessPolicy;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

/// The policies of a pod's namespace whose `agentSelector` picks the pod.
#[derive(Debug, Clone)]
pub enum Selection<'a> {
    /// No policy selects the pod: it is not an agent.
    None,
    /// Exactly one policy governs the pod.
    One(&'a AccessPolicy),
    /// Several policies select the pod; it cannot be governed by two.
    Ambiguous(Vec<&'a AccessPolicy>),
    /// A policy's selector cannot be evaluated, so whether the pod is an agent
    /// is unknown (the caller fails closed).
    Invalid {
        /// The policy with the broken selector.
        policy: &'a AccessPolicy,
        /// What is wrong with it.
        error: String,
    },
}

impl Selection<'_> {
    /// The message for an admission that cannot go ahead, if any.
    pub fn problem(&self) -> Option<String> {
        match self {
            Selection::None | Selection::One(_) => None,
            Selection::Ambiguous(policies) => {
                let names: Vec<String> = policies.iter().map(|p| p.name_any()).collect();
                Some(format!(
                    "cardgate: the pod is selected by AccessPolicies {}; a pod may be governed by one policy only — change the policies' agentSelector or the pod's labels so exactly one matches",
                    names.join(" and ")
                ))
            }
            Selection::Invalid { policy, error } => Some(format!(
                "cardgate: AccessPolicy {:?} has an invalid agentSelector ({error}), so cardgate cannot tell whether this pod is a governed agent; fix spec.agentSelector",
                policy.name_any()
            )),
        }
    }
}

/// Evaluates every policy's `agentSelector` (policies of the pod's namespace)
/// against the pod's labels.
pub fn select<'a>(
    labels: &BTreeMap<String, String>,
    policies: impl IntoIterator<Item = &'a AccessPolicy>,
) -> Selection<'a> {
    let mut hits = Vec::new();
    for policy in policies {
        match Selector::try_from(policy.spec.agent_selector.clone()) {
            Ok(selector) if selector.matches(labels) => hits.push(policy),
            Ok(_) => {}
            Err(e) => {
                return Selection::Invalid {
                    policy,
                    error: e.to_string(),
                };
            }
        }
    }
    hits.sort_by_key(|p| p.name_any());
    match hits.len() {
        0 => Selection::None,
        1 => Selection::One(hits[0]),
        _ => Selection::Ambiguous(hits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, selector: serde_json::Value) -> AccessPolicy {
        serde_json::from_value(json!({
            "apiVersion": "cardgate.dev/v1alpha1",
            "kind": "AccessPolicy",
            "metadata": {"name": name, "namespace": "payments"},
            "spec": {
                "agentSelector": selector,
                "targets": [{"name": "db", "external": {"host": "db", "port": 5432},
                             "credentialsSecretRef": {"name": "db"}}]
            }
        }))
        .expect("valid policy")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_both_count() {
        let a = policy("a", json!({"matchLabels": {"app": "agent"}}));
        let b = policy(
            "b",
            json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["ai"]}]}),
        );
        let pols = [a, b];
        let name = |s: Selection<'_>| match s {
            Selection::One(p) => p.name_any(),
            other => format!("{other:?}"),
        };
        assert_eq!(name(select(&labels(&[("app", "agent")]), &pols)), "a");
        assert_eq!(name(select(&labels(&[("tier", "ai")]), &pols)), "b");
        assert!(matches!(
            select(&labels(&[("app", "web")]), &pols),
            Selection::None
        ));
        let both = select(&labels(&[("app", "agent"), ("tier", "ai")]), &pols);
        assert!(matches!(&both, Selection::Ambiguous(p) if p.len() == 2));
        let msg = both.problem().unwrap();
        assert!(msg.contains("AccessPolicies a and b"), "{msg}");
    }

    #[test]
    fn broken_selector_fails_closed() {
        let bad = policy(
            "bad",
            json!({"matchExpressions": [{"key": "app", "operator": "Like", "values": ["x"]}]}),
        );
        let sel = select(&labels(&[("app", "x")]), [&bad]);
        assert!(matches!(sel, Selection::Invalid { .. }));
        assert!(sel.problem().unwrap().contains("invalid agentSelector"));
    }
}

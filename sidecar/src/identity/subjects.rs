//! The `identity.subjects` allow-list: which authenticated identities may
//! open a session at all (the policy's rules then decide what they may do).

use cardgate_crds::config::SubjectMatch;

use super::{Identity, PodIdentity};

/// True when `identity` satisfies any entry; an empty list admits every
/// valid token. Within an entry every field given must match.
pub(crate) fn is_allowed(rules: &[SubjectMatch], pod: &PodIdentity, identity: &Identity) -> bool {
    rules.is_empty() || rules.iter().any(|rule| matches(rule, pod, identity))
}

fn matches(rule: &SubjectMatch, pod: &PodIdentity, id: &Identity) -> bool {
    let issuer_ok = rule.issuer.as_ref().is_none_or(|i| *i == id.issuer);
    let subject_ok = rule.subject.as_ref().is_none_or(|s| *s == id.subject);
    let group_ok = rule.group.as_ref().is_none_or(|g| id.groups.contains(g));
    let pod_sa_ok = !rule.pod_service_account
        || pod
            .service_account_subject()
            .is_some_and(|sa| sa == id.subject);
    // An entry with no condition at all never matches (validate() refuses
    // it too): admitting everyone must be said with an empty list.
    let has_condition = rule.subject.is_some() || rule.group.is_some() || rule.pod_service_account;
    has_condition && issuer_ok && subject_ok && group_ok && pod_sa_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(subject: &str, groups: &[&str]) -> Identity {
        Identity {
            subject: subject.into(),
            issuer: "https://k8s".into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            expires_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn pod(ns: &str, sa: &str) -> PodIdentity {
        PodIdentity {
            namespace: Some(ns.into()),
            service_account: Some(sa.into()),
            ..PodIdentity::default()
        }
    }

    #[test]
    fn empty_list_admits_any_valid_identity() {
        assert!(is_allowed(&[], &PodIdentity::default(), &id("anyone", &[])));
    }

    #[test]
    fn every_given_field_must_match() {
        let rules = [SubjectMatch {
            issuer: Some("https://k8s".into()),
            group: Some("payments-agents".into()),
            ..SubjectMatch::default()
        }];
        let standalone = PodIdentity::default();
        assert!(is_allowed(
            &rules,
            &standalone,
            &id("a", &["payments-agents"])
        ));
        assert!(!is_allowed(&rules, &standalone, &id("a", &["other"])));
        let mut other_issuer = id("a", &["payments-agents"]);
        other_issuer.issuer = "https://elsewhere".into();
        assert!(!is_allowed(&rules, &standalone, &other_issuer));
    }

    #[test]
    fn any_entry_may_admit() {
        let rules = [
            SubjectMatch {
                subject: Some("alice".into()),
                ..SubjectMatch::default()
            },
            SubjectMatch {
                subject: Some("bob".into()),
                ..SubjectMatch::default()
            },
        ];
        let p = PodIdentity::default();
        assert!(is_allowed(&rules, &p, &id("bob", &[])));
        assert!(!is_allowed(&rules, &p, &id("bobby", &[])));
    }

    #[test]
    fn pod_service_account_matches_only_the_pods_own_account() {
        let rules = [SubjectMatch {
            pod_service_account: true,
            ..SubjectMatch::default()
        }];
        let me = id("system:serviceaccount:payments:report-agent", &[]);
        assert!(is_allowed(&rules, &pod("payments", "report-agent"), &me));
        assert!(!is_allowed(&rules, &pod("payments", "other"), &me));
        assert!(!is_allowed(&rules, &PodIdentity::default(), &me));
    }

    #[test]
    fn an_entry_without_conditions_admits_nobody() {
        let rules = [SubjectMatch {
            issuer: Some("https://k8s".into()),
            ..SubjectMatch::default()
        }];
        assert!(!is_allowed(&rules, &PodIdentity::default(), &id("a", &[])));
    }
}

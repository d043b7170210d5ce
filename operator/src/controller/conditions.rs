//! Status conditions following the Kubernetes API conventions: a condition's
//! `lastTransitionTime` moves only when its status changes, so re-applying an
//! unchanged status is a no-op and `kubectl wait` sees real transitions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// `Ready`: the object is fully in effect.
pub const READY: &str = "Ready";
/// `NetworkPoliciesApplied`: the generated NetworkPolicies are in place.
pub const NETWORK_POLICIES_APPLIED: &str = "NetworkPoliciesApplied";
/// `Degraded`: something the owner must fix keeps the object from taking
/// effect.
pub const DEGRADED: &str = "Degraded";

/// Longest condition message the API server accepts.
const MAX_MESSAGE: usize = 32 * 1024;

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    const MARK: &str = " …(truncated)";
    let mut end = max.saturating_sub(MARK.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &s[..end])
}

/// Builds condition `type_`, keeping the transition time of the same
/// condition in `previous` when its status is unchanged.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: jiff::Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    condition_with(type_, status, reason, message, generation, previous, now)
}

/// Like [`condition`], with any status: `True`, `False` or `Unknown`
/// (e.g. while an outcome is still being found out).
pub fn condition_with(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: jiff::Timestamp,
) -> Condition {
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: truncate(message, MAX_MESSAGE),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The condition `type_` in `conditions`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether condition `type_` is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let first = condition(READY, true, "Reconciled", "ok", Some(1), &[], t0);
        let same = condition(
            READY,
            true,
            "Reconciled",
            "still ok",
            Some(2),
            std::slice::from_ref(&first),
            t1,
        );
        assert_eq!(same.last_transition_time, Time(t0));
        let flipped = condition(
            READY,
            false,
            "ServiceNotFound",
            "gone",
            Some(2),
            &[same],
            t1,
        );
        assert_eq!(flipped.last_transition_time, Time(t1));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(40_000);
        let t = truncate(&s, MAX_MESSAGE);
        assert!(t.len() <= MAX_MESSAGE);
        assert!(t.ends_with("(truncated)"));
        assert_eq!(truncate("short", 10), "short");
    }
}

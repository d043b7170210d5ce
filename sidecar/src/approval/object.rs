//! From a [`NewRequest`] to the ApprovalRequest object both stores write:
//! the name and labels the operator relies on, the spec, and the checks that
//! keep a malformed request out of the store.

use std::collections::BTreeMap;

use cardgate_crds::v1alpha1::{ApprovalRequest, ApprovalRequestSpec, StatementRef, preview};
use cardgate_crds::validation::is_dns_label;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use rand::Rng;

use super::error::mask;
use super::{NewRequest, StoreError};

/// Label naming the policy whose rule held the statement.
pub const LABEL_POLICY: &str = "cardgate.dev/policy";
/// Label with the first 63 hex characters of the fingerprint (the longest a
/// label value can be), so grants are found by a label selector; the full
/// fingerprint in the spec is compared after.
pub const LABEL_FINGERPRINT: &str = "cardgate.dev/fingerprint";
/// Field manager of everything the sidecar writes to the API server.
pub const FIELD_MANAGER: &str = "cardgate-sidecar";

/// `<policy>-<first 8 hex of fingerprint>-<4 random lowercase letters>`.
pub(crate) fn request_name(policy: &str, fingerprint: &str) -> String {
    let mut rng = rand::rng();
    let suffix: String = (0..4)
        .map(|_| char::from(rng.random_range(b'a'..=b'z')))
        .collect();
    format!("{policy}-{}-{suffix}", &fingerprint[..8])
}

/// The label value for a fingerprint.
pub(crate) fn fingerprint_label(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(63)]
}

/// Whether `s` can name a request: a DNS subdomain (lowercase letters,
/// digits, '-' and '.', at most 253, alphanumeric at both ends). Also what
/// keeps a name given on the command line from leaving the directory.
pub fn is_request_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Refuses what would be rejected later or make a request nobody can
/// decide: the policy must be usable as a label, the fingerprint must be a
/// SHA-256 hex string, quorum and maxUses at least 1, timeout positive.
pub(crate) fn validate(req: &NewRequest) -> Result<(), StoreError> {
    if !is_dns_label(&req.policy) {
        return Err(StoreError::invalid(format!(
            "policy name {:?} cannot label an approval request (lowercase letters, digits and '-', at most 63)",
            req.policy
        )));
    }
    let fp = &req.fingerprint;
    if fp.len() != 64
        || !fp
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(StoreError::invalid(
            "statement fingerprint must be 64 lowercase hex characters",
        ));
    }
    if req.quorum < 1 || req.max_uses < 1 {
        return Err(StoreError::invalid(format!(
            "quorum ({}) and maxUses ({}) must be at least 1",
            req.quorum, req.max_uses
        )));
    }
    if req.timeout.is_zero() {
        return Err(StoreError::invalid("approval timeout must be positive"));
    }
    Ok(())
}

/// The object as created: Pending (no status), labelled, expiring
/// `timeout` after `now`, statement masked.
pub(crate) fn build(
    req: &NewRequest,
    name: &str,
    namespace: Option<&str>,
    now: Timestamp,
) -> Result<ApprovalRequest, StoreError> {
    let expires_at = SignedDuration::try_from(req.timeout)
        .ok()
        .and_then(|d| now.checked_add(d).ok())
        .ok_or_else(|| StoreError::invalid("approval timeout is too large"))?;
    // The caller masks with the configured rules; masking again with the
    // built-in ones is idempotent and keeps a forgotten call from storing a
    // raw card number (or cutting one in half in the preview).
    let text = mask(&req.statement_masked);
    let spec = ApprovalRequestSpec {
        requester: req.requester.clone(),
        policy: req.policy.clone(),
        rule: req.rule.clone(),
        target: req.target.clone(),
        statement: StatementRef {
            preview: preview(&text),
            text,
            fingerprint: req.fingerprint.clone(),
            class: req.class,
        },
        mode: req.mode,
        quorum: req.quorum,
        expires_at: Time(expires_at),
        grant_ttl: req.grant_ttl.into(),
        max_uses: req.max_uses,
        reviews: Vec::new(),
    };
    let mut obj = ApprovalRequest::new(name, spec);
    obj.metadata.namespace = namespace.map(str::to_owned);
    obj.metadata.labels = Some(BTreeMap::from([
        (LABEL_POLICY.to_owned(), req.policy.clone()),
        (
            LABEL_FINGERPRINT.to_owned(),
            fingerprint_label(&req.fingerprint).to_owned(),
        ),
    ]));
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_operator_contract() {
        let fp = "0123456789abcdef".repeat(4);
        let name = request_name("payments", &fp);
        let (head, suffix) = name.rsplit_once('-').unwrap();
        assert_eq!(head, "payments-01234567");
        assert_eq!(suffix.len(), 4);
        assert!(suffix.bytes().all(|b| b.is_ascii_lowercase()));
        assert!(is_request_name(&name));
        assert_eq!(fingerprint_label(&fp).len(), 63);
    }

    #[test]
    fn request_names_cannot_escape_a_directory() {
        for bad in ["", "../x", "a/b", ".hidden", "x.", "A", "a b", "-a"] {
            assert!(!is_request_name(bad), "{bad:?}");
        }
        assert!(is_request_name("payments-01234567-abcd"));
    }
}

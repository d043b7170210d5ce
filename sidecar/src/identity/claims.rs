//! From verified claims to an [`Identity`]: time window, audience, and the
//! mapping of claims to a subject and groups (including Kubernetes
//! service-account tokens). Pure: the caller passes the clock.

use cardgate_crds::audit::Actor;
use cardgate_crds::config::IssuerConfig;
use serde_json::{Map, Value};

use super::AuthError;

/// Group every Kubernetes service account belongs to.
pub const SERVICE_ACCOUNTS_GROUP: &str = "system:serviceaccounts";
/// Prefix of a service account's Kubernetes username.
pub const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// An authenticated agent: what policies, approvals and audit records name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The subject, e.g. `system:serviceaccount:payments:report-agent`.
    pub subject: String,
    /// The issuer that vouched for it, exactly as configured.
    pub issuer: String,
    /// Groups from the token (or the service-account groups).
    pub groups: Vec<String>,
    /// When the token expires; a session may outlive it, but a new one
    /// needs a new token.
    pub expires_at: jiff::Timestamp,
}

impl Identity {
    /// The audit record's actor for this identity.
    pub fn actor(&self) -> Actor {
        Actor {
            subject: self.subject.clone(),
            issuer: Some(self.issuer.clone()),
            groups: self.groups.clone(),
        }
    }
}

/// Checks the time window and audience of claims whose signature already
/// verified, then maps them to an identity. `now` is unix seconds.
pub(crate) fn validate(
    claims: &Map<String, Value>,
    issuer: &IssuerConfig,
    now: i64,
    leeway_seconds: u32,
) -> Result<Identity, AuthError> {
    let leeway = i64::from(leeway_seconds);
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == issuer.issuer => {}
        Some(Value::String(_)) => return Err(AuthError::IssuerNotTrusted),
        Some(_) => return Err(AuthError::InvalidClaim("iss".into())),
        None => return Err(AuthError::MissingClaim("iss".into())),
    }
    let exp = numeric_date(claims, "exp")?.ok_or_else(|| AuthError::MissingClaim("exp".into()))?;
    if now >= exp.saturating_add(leeway) {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now.saturating_add(leeway) < nbf
    {
        return Err(AuthError::NotYetValid);
    }
    check_audience(claims.get("aud"), &issuer.audiences)?;

    let (subject, groups) = if issuer.kubernetes {
        service_account(claims, &issuer.subject_claim)?
    } else {
        (
            subject(claims, &issuer.subject_claim)?,
            groups(claims, &issuer.groups_claim)?,
        )
    };
    Ok(Identity {
        subject,
        issuer: issuer.issuer.clone(),
        groups,
        expires_at: jiff::Timestamp::from_second(exp).unwrap_or(jiff::Timestamp::MAX),
    })
}

/// A JWT NumericDate: seconds, possibly fractional, never negative.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, AuthError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = || AuthError::InvalidClaim(name.into());
    if let Some(i) = v.as_i64() {
        return if i >= 0 { Ok(Some(i)) } else { Err(invalid()) };
    }
    match v.as_f64() {
        Some(f) if (0.0..9.0e15).contains(&f) => Ok(Some(f.floor() as i64)),
        _ => Err(invalid()),
    }
}

fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), AuthError> {
    let ok = |a: &str| accepted.iter().any(|x| x == a);
    match aud {
        None => Err(AuthError::MissingClaim("aud".into())),
        Some(Value::String(a)) if ok(a) => Ok(()),
        Some(Value::String(_)) => Err(AuthError::WrongAudience),
        Some(Value::Array(items)) => {
            if items.iter().any(|a| !a.is_string()) {
                Err(AuthError::InvalidClaim("aud".into()))
            } else if items.iter().filter_map(Value::as_str).any(ok) {
                Ok(())
            } else {
                Err(AuthError::WrongAudience)
            }
        }
        Some(_) => Err(AuthError::InvalidClaim("aud".into())),
    }
}

fn subject(claims: &Map<String, Value>, claim: &str) -> Result<String, AuthError> {
    match claims.get(claim) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(AuthError::MissingClaim(claim.into())),
        Some(_) => Err(AuthError::InvalidClaim(claim.into())),
    }
}

/// Groups from a list of strings or a single string; absent means none.
fn groups(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, AuthError> {
    match claims.get(claim) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|g| {
                g.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| AuthError::InvalidClaim(claim.into()))
            })
            .collect(),
        Some(_) => Err(AuthError::InvalidClaim(claim.into())),
    }
}

/// Maps a Kubernetes service-account token to its username and groups, as
/// the API server does. Projected tokens carry both `sub`
/// (`system:serviceaccount:NS:NAME`) and the `kubernetes.io` claim
/// (`namespace`, `serviceaccount.name`, plus the bound pod); when both are
/// present they must agree.
fn service_account(
    claims: &Map<String, Value>,
    subject_claim: &str,
) -> Result<(String, Vec<String>), AuthError> {
    let from_sub = match claims.get(subject_claim) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            Some(parse_service_account(s).ok_or(AuthError::NotServiceAccount)?)
        }
        Some(_) => return Err(AuthError::InvalidClaim(subject_claim.into())),
    };
    let from_claim = match claims.get("kubernetes.io") {
        None => None,
        Some(k8s) => {
            let ns = k8s.get("namespace").and_then(Value::as_str);
            let name = k8s
                .get("serviceaccount")
                .and_then(|sa| sa.get("name"))
                .and_then(Value::as_str);
            match (ns, name) {
                (Some(ns), Some(name)) if valid_name(ns) && valid_name(name) => {
                    Some((ns.to_string(), name.to_string()))
                }
                _ => return Err(AuthError::InvalidClaim("kubernetes.io".into())),
            }
        }
    };
    let (ns, name) = match (from_sub, from_claim) {
        (Some(a), Some(b)) if a != b => {
            return Err(AuthError::InvalidClaim("kubernetes.io".into()));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(AuthError::NotServiceAccount),
    };
    let groups = vec![
        SERVICE_ACCOUNTS_GROUP.to_string(),
        format!("{SERVICE_ACCOUNTS_GROUP}:{ns}"),
    ];
    Ok((format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{name}"), groups))
}

fn parse_service_account(sub: &str) -> Option<(String, String)> {
    let rest = sub.strip_prefix(SERVICE_ACCOUNT_PREFIX)?;
    let (ns, name) = rest.split_once(':')?;
    (valid_name(ns) && valid_name(name)).then(|| (ns.to_string(), name.to_string()))
}

/// Namespace and service-account names are DNS subdomains at most.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn issuer(kubernetes: bool) -> IssuerConfig {
        serde_json::from_value(json!({
            "issuer": "https://issuer.example",
            "audiences": ["cardgate", "db"],
            "kubernetes": kubernetes,
        }))
        .unwrap()
    }

    fn claims(extra: Value) -> Map<String, Value> {
        let mut c = json!({
            "iss": "https://issuer.example",
            "aud": "cardgate",
            "sub": "agent-1",
            "exp": NOW + 600,
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.as_object().unwrap().clone()
    }

    fn check(extra: Value) -> Result<Identity, AuthError> {
        validate(&claims(extra), &issuer(false), NOW, 30)
    }

    #[test]
    fn maps_subject_groups_and_expiry() {
        let id = check(json!({"groups": ["payments-agents", "ci"]})).unwrap();
        assert_eq!(id.subject, "agent-1");
        assert_eq!(id.issuer, "https://issuer.example");
        assert_eq!(id.groups, ["payments-agents", "ci"]);
        assert_eq!(id.expires_at.as_second(), NOW + 600);
        assert_eq!(id.actor().issuer.as_deref(), Some("https://issuer.example"));
        assert_eq!(check(json!({"groups": "solo"})).unwrap().groups, ["solo"]);
    }

    #[test]
    fn configured_claims_name_subject_and_groups() {
        let mut cfg = issuer(false);
        cfg.subject_claim = "email".into();
        cfg.groups_claim = "roles".into();
        let c = claims(json!({"email": "bot@example.com", "roles": ["reader"], "groups": ["x"]}));
        let id = validate(&c, &cfg, NOW, 30).unwrap();
        assert_eq!(id.subject, "bot@example.com");
        assert_eq!(id.groups, ["reader"]);
        let err = validate(&claims(json!({})), &cfg, NOW, 30).unwrap_err();
        assert_eq!(err.to_string(), "token has no email claim");
    }

    #[test]
    fn time_window_honours_leeway() {
        assert_eq!(
            check(json!({"exp": NOW - 31})).unwrap_err(),
            AuthError::Expired
        );
        assert!(check(json!({"exp": NOW - 29})).is_ok());
        assert_eq!(
            check(json!({"nbf": NOW + 31})).unwrap_err(),
            AuthError::NotYetValid
        );
        assert!(check(json!({"nbf": NOW + 29})).is_ok());
        assert!(check(json!({"exp": (NOW + 60) as f64 + 0.5})).is_ok());
        assert_eq!(
            check(json!({"exp": null})).unwrap_err().to_string(),
            "token has no exp claim"
        );
        assert_eq!(
            check(json!({"exp": "tomorrow"})).unwrap_err(),
            AuthError::InvalidClaim("exp".into())
        );
        assert_eq!(
            check(json!({"nbf": -5})).unwrap_err(),
            AuthError::InvalidClaim("nbf".into())
        );
    }

    #[test]
    fn audience_must_be_one_of_the_issuers() {
        assert!(check(json!({"aud": ["other", "db"]})).is_ok());
        assert_eq!(
            check(json!({"aud": "other"})).unwrap_err(),
            AuthError::WrongAudience
        );
        assert_eq!(
            check(json!({"aud": []})).unwrap_err(),
            AuthError::WrongAudience
        );
        assert_eq!(
            check(json!({"aud": null})).unwrap_err(),
            AuthError::MissingClaim("aud".into())
        );
        assert_eq!(
            check(json!({"aud": [1]})).unwrap_err(),
            AuthError::InvalidClaim("aud".into())
        );
    }

    #[test]
    fn issuer_must_match_exactly() {
        assert_eq!(
            check(json!({"iss": "https://issuer.example/"})).unwrap_err(),
            AuthError::IssuerNotTrusted
        );
        assert_eq!(
            check(json!({"iss": ["https://issuer.example"]})).unwrap_err(),
            AuthError::InvalidClaim("iss".into())
        );
    }

    #[test]
    fn subject_and_groups_must_be_strings() {
        assert_eq!(
            check(json!({"sub": ""})).unwrap_err(),
            AuthError::InvalidClaim("sub".into())
        );
        assert_eq!(
            check(json!({"sub": 5})).unwrap_err(),
            AuthError::InvalidClaim("sub".into())
        );
        assert_eq!(
            check(json!({"groups": ["a", 1]})).unwrap_err(),
            AuthError::InvalidClaim("groups".into())
        );
    }

    /// The claims of a real projected token (kubectl create token, 1.30),
    /// times moved to the test clock.
    fn projected_sa_token() -> Value {
        json!({
            "aud": ["cardgate"],
            "exp": NOW + 3600,
            "iat": NOW,
            "iss": "https://issuer.example",
            "jti": "5c3a44f0-2d3f-4f59-9a3c-8d3c9b8a2f10",
            "kubernetes.io": {
                "namespace": "payments",
                "node": {"name": "kind-worker", "uid": "7d0e2a6e-0a5b-4c7e-9a51-1f6d1e0f3b11"},
                "pod": {"name": "report-agent-6d5f7", "uid": "0b9c5f3e-7c1a-4d8e-b2f4-9c1d2e3f4a5b"},
                "serviceaccount": {"name": "report-agent", "uid": "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
                "warnafter": NOW + 3000
            },
            "nbf": NOW,
            "sub": "system:serviceaccount:payments:report-agent"
        })
    }

    #[test]
    fn kubernetes_tokens_map_to_service_account_username_and_groups() {
        let c = projected_sa_token();
        let id = validate(c.as_object().unwrap(), &issuer(true), NOW, 30).unwrap();
        assert_eq!(id.subject, "system:serviceaccount:payments:report-agent");
        assert_eq!(
            id.groups,
            ["system:serviceaccounts", "system:serviceaccounts:payments"]
        );
    }

    #[test]
    fn kubernetes_mapping_needs_a_consistent_service_account() {
        let mut only_claim = projected_sa_token();
        only_claim.as_object_mut().unwrap().remove("sub");
        let id = validate(only_claim.as_object().unwrap(), &issuer(true), NOW, 30).unwrap();
        assert_eq!(id.subject, "system:serviceaccount:payments:report-agent");

        let mut only_sub = projected_sa_token();
        only_sub.as_object_mut().unwrap().remove("kubernetes.io");
        assert!(validate(only_sub.as_object().unwrap(), &issuer(true), NOW, 30).is_ok());

        let mut disagree = projected_sa_token();
        disagree["sub"] = json!("system:serviceaccount:payments:admin");
        assert_eq!(
            validate(disagree.as_object().unwrap(), &issuer(true), NOW, 30).unwrap_err(),
            AuthError::InvalidClaim("kubernetes.io".into())
        );

        for sub in [
            "agent-1",
            "system:serviceaccount:payments",
            "system:serviceaccount:a:b:c",
        ] {
            let mut user = only_sub.clone();
            user["sub"] = json!(sub);
            assert_eq!(
                validate(user.as_object().unwrap(), &issuer(true), NOW, 30).unwrap_err(),
                AuthError::NotServiceAccount,
                "{sub}"
            );
        }
    }
}

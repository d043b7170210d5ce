//! A plain-language summary of a sidecar configuration: what it allows,
//! masks, holds for approval and denies. Policy authors read it to check that
//! the YAML says what they meant.

use std::fmt::Write;

use crate::config::{AuditSinkType, SidecarConfig};
use crate::v1alpha1::{
    ApprovalMode, DEFAULT_REDACTION, DetectorType, MaskAction, MaskActionType, PolicyRule,
    RuleAction,
};

/// Renders the summary as text, one section per concern.
pub fn summarize(c: &SidecarConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Policy {}", c.policy);

    let _ = writeln!(s, "\nWho may connect");
    for iss in &c.identity.issuers {
        let keys = match (&iss.jwks_file, &iss.jwks_url) {
            (Some(f), _) => format!("keys from {f}"),
            (_, Some(u)) => format!("keys from {u}"),
            _ => "keys by OIDC discovery".to_string(),
        };
        let algs: Vec<String> = iss.algorithms.iter().map(|a| format!("{a:?}")).collect();
        let _ = writeln!(
            s,
            "  tokens issued by {} for audience {} ({keys}; {})",
            iss.issuer,
            iss.audiences.join(" or "),
            algs.join(", ")
        );
    }
    if c.identity.subjects.is_empty() {
        let _ = writeln!(s, "  any subject with a valid token");
    }
    for m in &c.identity.subjects {
        let mut parts = Vec::new();
        if let Some(x) = &m.subject {
            parts.push(format!("subject {x}"));
        }
        if let Some(x) = &m.group {
            parts.push(format!("group {x}"));
        }
        if m.pod_service_account {
            parts.push("the pod's own service account".to_string());
        }
        let _ = writeln!(s, "  {}", parts.join(" and "));
    }

    let _ = writeln!(s, "\nTargets");
    for t in &c.targets {
        let listen = t.listen.as_deref().unwrap_or("(transparent only)");
        let db = t
            .database
            .as_deref()
            .map(|d| format!(", database {d}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:<14} {} on {listen} -> {}:{}{db}, upstream TLS {}{}",
            t.name,
            wire_name(&t.protocol),
            t.upstream.host,
            t.upstream.port,
            wire_name(&t.tls.mode),
            if t.transparent {
                ", transparent interception"
            } else {
                ""
            }
        );
    }

    let _ = writeln!(s, "\nRules (first match wins)");
    for (i, r) in c.rules.iter().enumerate() {
        let _ = writeln!(s, "  {:>2}. {}", i + 1, describe_rule(c, r));
        if let Some(d) = &r.description {
            let _ = writeln!(s, "      {d}");
        }
    }
    let _ = writeln!(s, "      otherwise: {}", verb(c.default_action, c));

    let l = &c.limits;
    if l.max_rows.is_some() || l.max_bytes.is_some() {
        let mut parts = Vec::new();
        if let Some(r) = l.max_rows {
            parts.push(format!("{r} rows"));
        }
        if let Some(b) = l.max_bytes {
            parts.push(format!("{b} bytes"));
        }
        let _ = writeln!(
            s,
            "\nLimits\n  a statement returning more than {} is stopped",
            parts.join(" or ")
        );
    }

    let _ = writeln!(s, "\nMasking (everything returned, logged or recorded)");
    let pan_rule = c
        .masking
        .rules
        .iter()
        .find(|r| r.spec.detectors.iter().any(|d| d.kind == DetectorType::Pan));
    let _ = writeln!(
        s,
        "  card numbers: {}",
        pan_rule
            .map(|r| describe_action(&r.spec.action))
            .unwrap_or_else(|| "first 6 and last 4 digits shown (built-in)".into())
    );
    let _ = writeln!(
        s,
        "  sensitive authentication data (track data, CVV, PIN blocks): always redacted"
    );
    for r in &c.masking.rules {
        for d in &r.spec.detectors {
            let what = match d.kind {
                DetectorType::Pan | DetectorType::Sad => continue,
                DetectorType::Column => {
                    let mut all = d.columns.clone();
                    all.extend(d.json_paths.iter().cloned());
                    format!("columns {}", all.join(", "))
                }
                DetectorType::Regex => {
                    format!("text matching /{}/", d.pattern.as_deref().unwrap_or(""))
                }
            };
            let _ = writeln!(
                s,
                "  {what}: {} (rule {})",
                describe_action(&r.spec.action),
                r.name
            );
        }
    }

    let _ = writeln!(s, "\nAudit");
    for sink in &c.audit.sinks {
        let line = match sink.kind {
            AuditSinkType::Stdout => "JSON lines on stdout".to_string(),
            AuditSinkType::File => format!(
                "hash-chained file {} (fsync {})",
                sink.path.as_deref().unwrap_or("?"),
                wire_name(&sink.fsync)
            ),
            AuditSinkType::Collector => {
                format!("collector {}", sink.url.as_deref().unwrap_or("?"))
            }
        };
        let _ = writeln!(s, "  {line}");
    }
    if let Some(dir) = &c.audit.recordings_dir {
        let _ = writeln!(s, "  session recordings in {dir}");
    }
    s
}

/// The name a value has in the configuration file (`verifyFull`, `postgres`).
fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn describe_rule(c: &SidecarConfig, r: &PolicyRule) -> String {
    let m = &r.matches;
    let classes = if m.classes.is_empty() {
        "any statement".to_string()
    } else {
        m.classes
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut what = classes;
    if !m.tables.is_empty() {
        let joiner = if r.action == RuleAction::Allow {
            " only on "
        } else {
            " touching "
        };
        what.push_str(joiner);
        what.push_str(&m.tables.join(", "));
    }
    if !m.methods.is_empty() || !m.paths.is_empty() {
        let methods: Vec<String> = m
            .methods
            .iter()
            .map(|x| format!("{x:?}").to_uppercase())
            .collect();
        let _ = write!(what, " HTTP {} {}", methods.join("|"), m.paths.join(" "));
    }
    if !m.targets.is_empty() {
        let _ = write!(what, " on {}", m.targets.join(", "));
    }
    let name = r
        .name
        .as_ref()
        .map(|n| format!("  [{n}]"))
        .unwrap_or_default();
    format!("{:<42} {}{name}", what, verb(r.action, c))
}

fn verb(action: RuleAction, c: &SidecarConfig) -> String {
    match action {
        RuleAction::Allow => "ALLOW".into(),
        RuleAction::Deny => "DENY".into(),
        RuleAction::RequireApproval => match &c.approval {
            Some(a) => {
                let st = &a.settings;
                let who: Vec<String> = st
                    .approvers
                    .users
                    .iter()
                    .map(|u| format!("user {u}"))
                    .chain(st.approvers.groups.iter().map(|g| format!("group {g}")))
                    .collect();
                format!(
                    "HOLD FOR APPROVAL by {} ({} approval{}, {}, expires after {})",
                    who.join(" or "),
                    st.quorum,
                    if st.quorum == 1 { "" } else { "s" },
                    match st.mode {
                        ApprovalMode::Wait => "agent waits",
                        ApprovalMode::Deferred => "agent retries once approved",
                    },
                    st.timeout
                )
            }
            None => "HOLD FOR APPROVAL".into(),
        },
    }
}

fn describe_action(a: &MaskAction) -> String {
    match a.kind {
        MaskActionType::Truncate => {
            let t = a.truncate.clone().unwrap_or_default();
            format!(
                "first {} and last {} digits shown",
                t.leading_digits, t.trailing_digits
            )
        }
        MaskActionType::Last4 => "last 4 digits shown".into(),
        MaskActionType::Redact => format!(
            "replaced by {}",
            a.replacement.as_deref().unwrap_or(DEFAULT_REDACTION)
        ),
        MaskActionType::Hmac => "replaced by a keyed token tok_… (same value, same token)".into(),
        MaskActionType::Null => "returned as NULL".into(),
    }
}

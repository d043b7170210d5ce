//! Renders an AccessPolicy and its MaskingRules into the sidecar
//! configuration file (`SidecarConfig`), with the paths the injection
//! webhook mounts things at.

use std::collections::BTreeMap;

use cardgate_crds::config::{
    self, AdminConfig, ApprovalConfig, ApprovalStore, AuditConfig, AuditSink, AuditSinkType,
    CredentialsConfig, FsyncPolicy, IdentityConfig, IssuerConfig, KubernetesStore, MaskingConfig,
    NamedMaskingRule, PolicyName, ProxySettings, SidecarConfig, SubjectMatch, TargetConfig,
    Upstream, UpstreamTlsConfig,
};
use cardgate_crds::pod;
use cardgate_crds::v1alpha1::{AccessPolicy, MaskActionType, MaskingRule, SecretKeyRef, TlsMode};
use kube::ResourceExt;

use super::observed::{Problem, Reason};
use super::targets::ResolvedTarget;

/// Key of the audit collector's CA bundle in the rendered ConfigMap.
pub const COLLECTOR_CA_KEY: &str = "collector-ca.crt";
/// Where the sidecar finds the collector's CA bundle: the rendered ConfigMap
/// is mounted at [`pod::CONFIG_DIR`], so its second key lands next to the
/// configuration.
pub const COLLECTOR_CA_FILE: &str = "/etc/cardgate/collector-ca.crt";
/// Directory (under [`pod::CREDENTIALS_DIR`]) of the HMAC masking key.
pub const HMAC_DIR: &str = "hmac";
/// Audience of OIDC subjects that name none.
pub const DEFAULT_OIDC_AUDIENCE: &str = "cardgate";

/// Cluster facts and operator settings the rendering depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSettings {
    /// Issuer (`iss`) of the cluster's service-account tokens.
    pub cluster_issuer: String,
    /// Where the sidecar fetches the service-account signing keys.
    pub cluster_jwks_url: String,
    /// Where sidecars ship audit records besides stdout; without one they
    /// audit to stdout only, for the cluster's log pipeline.
    pub collector: Option<Collector>,
    /// PEM CA bundle that signed the collector's certificate, as last read.
    pub collector_ca: Option<String>,
    /// Namespace the operator runs in (its own audit trail names it).
    pub operator_namespace: String,
    /// Namespace of the cluster DNS pods.
    pub dns_namespace: String,
    /// Labels of the cluster DNS pods.
    pub dns_pod_labels: BTreeMap<String, String>,
}

/// An audit collector implementing the contract in docs/operations.md.
#[derive(Debug, Clone, PartialEq)]
pub struct Collector {
    /// URL the sidecars POST records to.
    pub url: String,
    /// Namespace of the collector's pods (egress NetworkPolicy).
    pub namespace: String,
    /// Labels of the collector's pods (egress NetworkPolicy).
    pub pod_labels: BTreeMap<String, String>,
    /// Port the collector's pods listen on (egress NetworkPolicy).
    pub port: u16,
}

/// Path of a per-target file the injection webhook mounts.
fn credentials_file(target: &str, file: &str) -> String {
    format!("{}/{target}/{file}", pod::CREDENTIALS_DIR)
}

/// Path of the HMAC key the injection webhook mounts when a rule needs it.
pub fn hmac_key_file() -> String {
    credentials_file(HMAC_DIR, "key")
}

/// The one HMAC key Secret the policy's MaskingRules use, if any; a sidecar
/// mounts one key file, so rules naming different keys are a problem.
pub fn hmac_key(rules: &[(String, &MaskingRule)]) -> Result<Option<SecretKeyRef>, Problem> {
    let mut found: Option<(&str, &SecretKeyRef)> = None;
    for (name, rule) in rules {
        let a = &rule.spec.action;
        if a.kind != MaskActionType::Hmac {
            continue;
        }
        let Some(r) = &a.hmac_key_secret_ref else {
            continue;
        };
        match found {
            None => found = Some((name, r)),
            Some((first, f)) if f != r => {
                return Err(Problem::new(
                    Reason::HmacKeyConflict,
                    format!(
                        "spec.maskingRules: MaskingRules {first:?} and {name:?} use different HMAC keys ({}/{} and {}/{}); the rules of one policy share one key",
                        f.name, f.key, r.name, r.key
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(_, r)| r.clone()))
}

/// The sidecar configuration for `policy`. `rules` are its MaskingRules in
/// `spec.maskingRules` order. The result still has to pass
/// `SidecarConfig::validate()`.
pub fn render(
    policy: &AccessPolicy,
    targets: &[ResolvedTarget<'_>],
    rules: &[(String, &MaskingRule)],
    settings: &RenderSettings,
) -> Result<SidecarConfig, Vec<Problem>> {
    let ns = policy.namespace().unwrap_or_default();
    let spec = &policy.spec;
    let mut problems = Vec::new();
    let identity = match identity(policy, settings) {
        Ok(i) => Some(i),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    let hmac = hmac_key(rules).unwrap_or_else(|p| {
        problems.push(p);
        None
    });
    if hmac.is_some()
        && let Some(t) = spec.targets.iter().position(|t| t.name == HMAC_DIR)
    {
        problems.push(Problem::new(
            Reason::InvalidSpec,
            format!("spec.targets[{t}].name: {HMAC_DIR:?} is reserved for the HMAC masking key's directory while a MaskingRule uses hmac; rename the target"),
        ));
    }
    let (Some(identity), true) = (identity, problems.is_empty()) else {
        return Err(problems);
    };

    let targets: Vec<TargetConfig> = targets
        .iter()
        .map(|t| target_config(t, spec.transparent))
        .collect();
    let transparent = targets.iter().any(|t| t.transparent);

    let mut sinks = vec![AuditSink {
        kind: AuditSinkType::Stdout,
        path: None,
        fsync: FsyncPolicy::default(),
        url: None,
        ca_file: None,
        token_file: None,
    }];
    if let (Some(collector), Some(_)) = (&settings.collector, &settings.collector_ca) {
        sinks.push(AuditSink {
            kind: AuditSinkType::Collector,
            path: None,
            fsync: FsyncPolicy::default(),
            url: Some(collector.url.clone()),
            ca_file: Some(COLLECTOR_CA_FILE.to_string()),
            token_file: Some(pod::COLLECTOR_TOKEN_FILE.to_string()),
        });
    }
    let record = spec.audit.as_ref().is_none_or(|a| a.record_sessions);

    Ok(SidecarConfig {
        api_version: config::API_VERSION.to_string(),
        kind: config::KIND.to_string(),
        policy: PolicyName {
            namespace: Some(ns.clone()),
            name: policy.name_any(),
        },
        identity,
        targets,
        rules: spec.rules.clone(),
        default_action: spec.default_action,
        limits: spec.limits.clone().unwrap_or_default(),
        approval: spec.approval.clone().map(|settings| ApprovalConfig {
            settings,
            store: ApprovalStore {
                kubernetes: Some(KubernetesStore { namespace: ns }),
                directory: None,
            },
        }),
        masking: MaskingConfig {
            rules: rules
                .iter()
                .map(|(name, r)| NamedMaskingRule {
                    name: name.clone(),
                    spec: r.spec.clone(),
                })
                .collect(),
            hmac_key_file: hmac.map(|_| hmac_key_file()),
        },
        audit: AuditConfig {
            sinks,
            recordings_dir: record.then(|| format!("{}/recordings", pod::STATE_DIR)),
        },
        proxy: ProxySettings {
            transparent_listen: transparent.then(|| format!("0.0.0.0:{}", pod::TRANSPARENT_PORT)),
            ..ProxySettings::default()
        },
        admin: AdminConfig {
            listen: format!("0.0.0.0:{}", pod::ADMIN_PORT),
        },
    })
}

fn target_config(t: &ResolvedTarget<'_>, policy_transparent: bool) -> TargetConfig {
    let name = &t.spec.name;
    let tls = match &t.spec.tls {
        Some(tls) => UpstreamTlsConfig {
            mode: tls.mode,
            ca_file: tls
                .ca_secret_ref
                .as_ref()
                .map(|_| credentials_file(name, "ca.crt")),
            server_name: tls.server_name.clone(),
        },
        None if t.in_cluster.is_some() => UpstreamTlsConfig::default(),
        None => UpstreamTlsConfig {
            mode: TlsMode::VerifyFull,
            ca_file: None,
            server_name: None,
        },
    };
    TargetConfig {
        name: name.clone(),
        protocol: t.spec.protocol,
        listen: Some(format!("127.0.0.1:{}", t.listen_port())),
        upstream: Upstream {
            host: t.host.clone(),
            port: t.port,
            addresses: t.addresses.clone(),
        },
        database: t.spec.database.clone(),
        tls,
        credentials: t
            .spec
            .credentials_secret_ref
            .as_ref()
            .map(|_| CredentialsConfig {
                username: None,
                username_file: Some(credentials_file(name, "username")),
                password_file: credentials_file(name, "password"),
            }),
        transparent: t.transparent(policy_transparent),
    }
}

/// Issuers and subject matches: the cluster's own issuer for service-account
/// subjects (and for the default, the pod's own service account), one issuer
/// per OIDC issuer URL.
fn identity(
    policy: &AccessPolicy,
    settings: &RenderSettings,
) -> Result<IdentityConfig, Vec<Problem>> {
    let ns = policy.namespace().unwrap_or_default();
    let subjects = &policy.spec.subjects;
    let mut problems = Vec::new();
    let mut issuers: Vec<IssuerConfig> = Vec::new();
    let mut matches = Vec::new();
    let cluster = IssuerConfig {
        issuer: settings.cluster_issuer.clone(),
        audiences: vec![pod::AGENT_TOKEN_AUDIENCE.to_string()],
        jwks_file: None,
        jwks_url: Some(settings.cluster_jwks_url.clone()),
        ca_file: Some(pod::API_CA_FILE.to_string()),
        bearer_token_file: Some(pod::API_TOKEN_FILE.to_string()),
        subject_claim: "sub".into(),
        groups_claim: "groups".into(),
        algorithms: vec![
            config::JwtAlgorithm::RS256,
            config::JwtAlgorithm::ES256,
            config::JwtAlgorithm::EdDSA,
        ],
        kubernetes: true,
    };
    if subjects.is_empty() {
        issuers.push(cluster);
        matches.push(SubjectMatch {
            issuer: Some(settings.cluster_issuer.clone()),
            pod_service_account: true,
            ..SubjectMatch::default()
        });
        return Ok(IdentityConfig {
            issuers,
            subjects: matches,
            leeway_seconds: 30,
        });
    }
    let any_subject_only = subjects.iter().all(|s| {
        s.oidc
            .as_ref()
            .is_some_and(|o| o.subject.is_none() && o.group.is_none())
    });
    for (i, s) in subjects.iter().enumerate() {
        let field = format!("spec.subjects[{i}]");
        if let Some(sa) = &s.service_account {
            if !issuers.iter().any(|x| x.issuer == cluster.issuer) {
                issuers.push(cluster.clone());
            }
            let sa_ns = sa.namespace.clone().unwrap_or_else(|| ns.clone());
            matches.push(SubjectMatch {
                issuer: Some(settings.cluster_issuer.clone()),
                subject: Some(format!("system:serviceaccount:{sa_ns}:{}", sa.name)),
                ..SubjectMatch::default()
            });
        }
        let Some(o) = &s.oidc else { continue };
        if o.issuer == settings.cluster_issuer {
            problems.push(Problem::new(
                Reason::InvalidSpec,
                format!("{field}.oidc.issuer: {:?} is the cluster's own service-account issuer; name the service account with a serviceAccount subject", o.issuer),
            ));
            continue;
        }
        let audience = o
            .audience
            .clone()
            .unwrap_or_else(|| DEFAULT_OIDC_AUDIENCE.to_string());
        let groups_claim = o.groups_claim.clone().unwrap_or_else(|| "groups".into());
        match issuers.iter_mut().find(|x| x.issuer == o.issuer) {
            Some(existing) => {
                if existing.groups_claim != groups_claim {
                    problems.push(Problem::new(
                        Reason::InvalidSpec,
                        format!(
                            "{field}.oidc.groupsClaim: {groups_claim:?} differs from {:?} used by another subject of issuer {:?}; one issuer has one groups claim",
                            existing.groups_claim, o.issuer
                        ),
                    ));
                }
                if !existing.audiences.contains(&audience) {
                    existing.audiences.push(audience);
                }
            }
            None => issuers.push(IssuerConfig {
                issuer: o.issuer.clone(),
                audiences: vec![audience],
                jwks_file: None,
                jwks_url: None,
                ca_file: None,
                bearer_token_file: None,
                subject_claim: "sub".into(),
                groups_claim,
                algorithms: cluster.algorithms.clone(),
                kubernetes: false,
            }),
        }
        if o.subject.is_none() && o.group.is_none() {
            if !any_subject_only {
                problems.push(Problem::new(
                    Reason::InvalidSpec,
                    format!("{field}.oidc: names neither subject nor group, so it would admit every token of {:?}; that is only possible when every subject of the policy does so", o.issuer),
                ));
            }
            continue;
        }
        matches.push(SubjectMatch {
            issuer: Some(o.issuer.clone()),
            subject: o.subject.clone(),
            group: o.group.clone(),
            pod_service_account: false,
        });
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(IdentityConfig {
        issuers,
        subjects: matches,
        leeway_seconds: 30,
    })
}

/// The configuration as the YAML text the sidecar reads, and its SHA-256
/// (hex), which pods carry to tell which configuration they started with.
pub fn to_text(config: &SidecarConfig) -> Result<(String, String), Problem> {
    use sha2::{Digest, Sha256};
    let text = serde_saphyr::to_string(config).map_err(|e| {
        Problem::new(
            Reason::ConfigInvalid,
            format!("the rendered configuration cannot be written as YAML: {e}"),
        )
    })?;
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    Ok((text, hash))
}

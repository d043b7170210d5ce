//! Realistic policies and cluster objects shared by the tests: the payments
//! sample from `config/samples` (same-namespace Service, egress restricted)
//! and a fraud-analysis agent whose database lives in another namespace
//! (transparent mode, OIDC subjects, HMAC tokens, an external HTTPS target).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cardgate_crds::v1alpha1::{AccessPolicy, MaskingRule};
use k8s_openapi::api::core::v1::Service;
use serde::de::DeserializeOwned;

use crate::render::config::{Collector, RenderSettings};
use crate::render::observed::{ApiServerEndpoint, GovernedPods, Observed};

/// Repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Parses one YAML document.
pub fn yaml<T: DeserializeOwned>(text: &str) -> T {
    serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("fixture YAML: {e}\n{text}"))
}

fn sample<T: DeserializeOwned>(file: &str) -> T {
    let path = repo().join("config/samples").join(file);
    yaml(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Gives an object the metadata the API server adds.
fn served<K: kube::Resource>(mut obj: K, uid: &str, generation: i64) -> K {
    let m = obj.meta_mut();
    m.uid = Some(uid.into());
    m.generation = Some(generation);
    m.resource_version = Some("4711".into());
    m.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-11-20T09:00:00Z".parse().unwrap(),
    ));
    obj
}

/// Rendering settings of an operator in `cardgate-system` whose sidecars
/// also ship audit records to a collector.
pub fn settings() -> RenderSettings {
    RenderSettings {
        cluster_issuer: "https://kubernetes.default.svc.cluster.local".into(),
        cluster_jwks_url: "https://kubernetes.default.svc/openid/v1/jwks".into(),
        collector: Some(Collector {
            url: "https://cardgate-audit-collector.cardgate-system.svc:8443/v1/audit".into(),
            namespace: "cardgate-system".into(),
            pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".into(),
                "cardgate-audit-collector".into(),
            )]),
            port: 8443,
        }),
        collector_ca: Some(
            "-----BEGIN CERTIFICATE-----\nMIIBfixture\n-----END CERTIFICATE-----\n".into(),
        ),
        operator_namespace: "cardgate-system".into(),
        dns_namespace: "kube-system".into(),
        dns_pod_labels: BTreeMap::from([("k8s-app".into(), "kube-dns".into())]),
    }
}

/// `config/samples/accesspolicy.yaml`, as served.
pub fn payments_policy() -> AccessPolicy {
    served(
        sample("accesspolicy.yaml"),
        "5c3e1f0a-2b4d-4e6f-8a9b-0c1d2e3f4a5b",
        2,
    )
}

/// The sample MaskingRules, as served.
pub fn payments_rules() -> Vec<MaskingRule> {
    vec![
        served(
            sample("maskingrule-card-numbers.yaml"),
            "0f9e8d7c-1111-4222-8333-944455566677",
            1,
        ),
        served(
            sample("maskingrule-card-verification-values.yaml"),
            "0f9e8d7c-2222-4333-8444-955566677788",
            1,
        ),
    ]
}

/// The payments database as the Bitnami PostgreSQL chart creates its
/// Service: a named targetPort.
pub fn payments_db_service() -> Service {
    yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: payments-db
  namespace: payments
  uid: 7a7a7a7a-0000-4000-8000-000000000001
  resourceVersion: "812"
  labels:
    app.kubernetes.io/name: postgresql
    app.kubernetes.io/instance: payments-db
spec:
  type: ClusterIP
  clusterIP: 10.96.40.12
  clusterIPs: [10.96.40.12]
  selector:
    app.kubernetes.io/name: postgresql
    app.kubernetes.io/instance: payments-db
    app.kubernetes.io/component: primary
  ports:
    - name: tcp-postgresql
      port: 5432
      protocol: TCP
      targetPort: tcp-postgresql
"#,
    )
}

/// What the reconciler reads for [`payments_policy`].
pub fn payments_observed() -> Observed {
    let rules = payments_rules();
    Observed {
        masking_rules: vec![
            ("card-numbers".into(), Some(rules[0].clone())),
            ("card-verification-values".into(), Some(rules[1].clone())),
        ],
        services: BTreeMap::from([(
            ("payments".into(), "payments-db".into()),
            Some(payments_db_service()),
        )]),
        secrets: BTreeMap::from([(
            "payments-db-agent-credentials".into(),
            Some(BTreeSet::from(["password".into(), "username".into()])),
        )]),
        api_server: vec![ApiServerEndpoint {
            address: "172.18.0.2".into(),
            port: 6443,
        }],
        governed: GovernedPods {
            running: 2,
            service_accounts: BTreeSet::from(["support-agent".into()]),
        },
    }
}

/// An agent in `agents` reading a ledger database in `data` and looking
/// cards up in an external vault.
pub fn fraud_policy() -> AccessPolicy {
    served(
        yaml(
            r#"
apiVersion: cardgate.dev/v1alpha1
kind: AccessPolicy
metadata:
  name: fraud-analyst
  namespace: agents
spec:
  agentSelector:
    matchLabels:
      app: fraud-analyst
  subjects:
    - serviceAccount:
        name: fraud-analyst
    - oidc:
        issuer: https://login.example.com
        group: fraud-team
        groupsClaim: roles
  transparent: true
  targets:
    - name: ledger
      service:
        name: ledger-db
        namespace: data
        port: 5432
      database: ledger
      credentialsSecretRef:
        name: ledger-agent
        usernameKey: user
        passwordKey: pass
    - name: card-vault
      protocol: http
      external:
        host: vault.payments.example.com
        port: 443
        cidrs: [203.0.113.0/24]
      tls:
        mode: verifyFull
        caSecretRef:
          name: vault-ca
          key: ca.crt
      transparent: false
      listenPort: 18443
  rules:
    - name: read-ledger
      action: allow
      match:
        targets: [ledger]
        classes: [read, control]
    - name: vault-lookups
      action: allow
      match:
        targets: [card-vault]
        methods: [GET]
        paths: [/v1/cards/*]
  defaultAction: deny
  maskingRules: [card-tokens]
  audit:
    recordSessions: false
  egress:
    restrict: true
"#,
        ),
        "9b1c2d3e-4f50-4617-8829-3a4b5c6d7e8f",
        3,
    )
}

/// Card numbers as keyed tokens, so analysts can join on them.
pub fn card_tokens_rule() -> MaskingRule {
    served(
        yaml(
            r#"
apiVersion: cardgate.dev/v1alpha1
kind: MaskingRule
metadata:
  name: card-tokens
  namespace: agents
spec:
  detectors:
    - type: pan
  action:
    type: hmac
    hmacKeySecretRef:
      name: masking-key
      key: key
"#,
        ),
        "0f9e8d7c-3333-4444-8555-966677788899",
        1,
    )
}

/// The ledger database's Service: numeric targetPort, two selector labels.
pub fn ledger_service() -> Service {
    yaml(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: ledger-db
  namespace: data
  uid: 7a7a7a7a-0000-4000-8000-000000000002
  resourceVersion: "913"
spec:
  type: ClusterIP
  clusterIP: 10.96.12.7
  clusterIPs: [10.96.12.7]
  selector:
    app.kubernetes.io/name: ledger
    role: primary
  ports:
    - name: postgres
      port: 5432
      protocol: TCP
      targetPort: 5432
"#,
    )
}

/// What the reconciler reads for [`fraud_policy`].
pub fn fraud_observed() -> Observed {
    Observed {
        masking_rules: vec![("card-tokens".into(), Some(card_tokens_rule()))],
        services: BTreeMap::from([(("data".into(), "ledger-db".into()), Some(ledger_service()))]),
        secrets: BTreeMap::from([
            (
                "ledger-agent".into(),
                Some(BTreeSet::from(["pass".into(), "user".into()])),
            ),
            ("vault-ca".into(), Some(BTreeSet::from(["ca.crt".into()]))),
            ("masking-key".into(), Some(BTreeSet::from(["key".into()]))),
        ]),
        api_server: vec![
            ApiServerEndpoint {
                address: "172.18.0.2".into(),
                port: 6443,
            },
            ApiServerEndpoint {
                address: "172.18.0.3".into(),
                port: 6443,
            },
        ],
        governed: GovernedPods {
            running: 1,
            service_accounts: BTreeSet::from(["fraud-analyst".into()]),
        },
    }
}

//! Real-cluster suite for the operator: installs CRDs and the operator from
//! `config/default`, runs PostgreSQL and an agent pod, and checks that the
//! sidecar is injected, card numbers come back masked through it, a
//! forbidden statement is denied, and a pod that is not governed cannot
//! reach the database while an allowed client still can.
//!
//! Needs a kind/k3d cluster in KUBECONFIG whose CNI enforces
//! NetworkPolicies, with the images loaded (docs/install.md). Skipped
//! without a cluster; `CARDGATE_E2E_REQUIRE_CLUSTER=1` (`make e2e`) turns
//! that into a failure.

use std::time::Duration;

use cardgate_crds::pod;
use cardgate_crds::v1alpha1::AccessPolicy;
use cardgate_e2e::cluster::{apply, client_or_skip, documents};
use cardgate_e2e::operator::{delete_namespace, eventually, exec, install};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

const NS: &str = "cardgate-e2e";
const POLICY: &str = "e2e-agent";
const PAN: &str = "4111111111111111";
const PG_IMAGE: &str = "postgres:16-alpine";

fn fixtures() -> Vec<Value> {
    let init_sql = format!(
        "CREATE ROLE cardgate_agent LOGIN PASSWORD 'agent-e2e';\n\
         CREATE TABLE public.cards (id int PRIMARY KEY, holder text, pan text);\n\
         INSERT INTO public.cards VALUES (1, 'Ada Lovelace', '{PAN}');\n\
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.cards TO cardgate_agent;\n"
    );
    let sleeper = |name: &str, labels: Value| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {
                "serviceAccountName": name,
                "containers": [{
                    "name": "agent", "image": PG_IMAGE,
                    "command": ["sleep", "infinity"],
                    "securityContext": {"runAsUser": 70, "runAsNonRoot": true, "allowPrivilegeEscalation": false}
                }]
            }
        })
    };
    let sa = |name: &str| json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": NS}});
    vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {pod::LABEL_NAMESPACE_INJECTION: "enabled"}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "payments-db-agent-credentials", "namespace": NS},
               "stringData": {"username": "cardgate_agent", "password": "agent-e2e"}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "payments-db-init", "namespace": NS},
               "data": {"init.sql": init_sql}}),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "payments-db", "namespace": NS},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "payments-db"}},
                "template": {
                    "metadata": {"labels": {"app": "payments-db"}},
                    "spec": {"containers": [{
                        "name": "postgres", "image": PG_IMAGE,
                        "env": [
                            {"name": "POSTGRES_PASSWORD", "value": "admin-e2e"},
                            {"name": "POSTGRES_DB", "value": "payments"}
                        ],
                        "ports": [{"name": "postgres", "containerPort": 5432}],
                        "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "postgres"]}, "periodSeconds": 2},
                        "volumeMounts": [{"name": "init", "mountPath": "/docker-entrypoint-initdb.d"}]
                    }],
                    "volumes": [{"name": "init", "configMap": {"name": "payments-db-init"}}]}
                }
            }
        }),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments-db", "namespace": NS},
               "spec": {"selector": {"app": "payments-db"}, "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]}}),
        json!({
            "apiVersion": "cardgate.dev/v1alpha1", "kind": "MaskingRule",
            "metadata": {"name": "card-numbers", "namespace": NS},
            "spec": {"detectors": [{"type": "pan"}], "action": {"type": "truncate"}}
        }),
        json!({
            "apiVersion": "cardgate.dev/v1alpha1", "kind": "AccessPolicy",
            "metadata": {"name": POLICY, "namespace": NS},
            "spec": {
                "agentSelector": {"matchLabels": {"app": "e2e-agent"}},
                "targets": [{
                    "name": "payments-db",
                    "service": {"name": "payments-db", "port": 5432},
                    "database": "payments",
                    "credentialsSecretRef": {"name": "payments-db-agent-credentials"},
                    "allowedClients": [{"podSelector": {"matchLabels": {"app": "payments-api"}}}]
                }],
                "rules": [
                    {"name": "session-control", "action": "allow", "match": {"classes": ["control"]}},
                    {"name": "read-cards", "action": "allow", "match": {"classes": ["read"], "tables": ["public.cards"]}},
                    {"name": "no-writes", "action": "deny", "match": {"classes": ["write", "ddl", "dangerous"]}}
                ],
                "defaultAction": "deny",
                "maskingRules": ["card-numbers"]
            }
        }),
        sa("e2e-agent"),
        sa("intruder"),
        sa("payments-api"),
        sleeper("e2e-agent", json!({"app": "e2e-agent"})),
        sleeper("intruder", json!({"app": "intruder"})),
        sleeper("payments-api", json!({"app": "payments-api"})),
    ]
}

async fn wait_operator(client: &Client) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "cardgate-system");
    eventually(
        "the operator Deployment to be available",
        Duration::from_secs(180),
        || {
            let d = deployments.clone();
            async move {
                let dep = d
                    .get("cardgate-operator")
                    .await
                    .map_err(|e| e.to_string())?;
                let ready = dep
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                if ready >= 1 {
                    Ok(())
                } else {
                    Err(format!("{ready} ready replicas"))
                }
            }
        },
    )
    .await;
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    eventually(
        &format!("pod {name} to run"),
        Duration::from_secs(240),
        || {
            let pods = pods.clone();
            let name = name.to_string();
            async move {
                let p = pods.get(&name).await.map_err(|e| e.to_string())?;
                let status = p.status.clone().unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                if ready {
                    Ok(p)
                } else {
                    Err(format!("phase {:?}", status.phase))
                }
            }
        },
    )
    .await
}

#[tokio::test]
async fn operator_governs_an_agent_end_to_end() {
    let Some(client) = client_or_skip().await else {
        return;
    };
    for doc in documents("config/crd/bases/cardgate.dev_accesspolicies.yaml")
        .into_iter()
        .chain(documents("config/crd/bases/cardgate.dev_maskingrules.yaml"))
        .chain(documents(
            "config/crd/bases/cardgate.dev_approvalrequests.yaml",
        ))
    {
        apply(&client, &doc).await.expect("CRD applies");
    }
    install(&client).await;
    wait_operator(&client).await;
    delete_namespace(&client, NS).await;

    let docs = fixtures();
    let (setup, pods_to_start) = docs.split_at(docs.len() - 3);
    for doc in setup {
        apply(&client, doc)
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", doc["metadata"]["name"]));
    }

    // The operator renders the policy once the Service and Secret exist.
    let policies: Api<AccessPolicy> = Api::namespaced(client.clone(), NS);
    let hash = eventually(
        "the AccessPolicy to be Ready",
        Duration::from_secs(120),
        || {
            let policies = policies.clone();
            async move {
                let p = policies.get(POLICY).await.map_err(|e| e.to_string())?;
                let status = p.status.unwrap_or_default();
                let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
                match (ready, status.config_hash) {
                    (Some(c), Some(h)) if c.status == "True" => Ok(h),
                    (c, _) => Err(format!("{c:?}")),
                }
            }
        },
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let cm = cms.get(&pod::config_map_name(POLICY)).await.unwrap();
    assert_eq!(cm.annotations()[pod::ANNOTATION_CONFIG_HASH], hash);
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), NS);
    let np = nps
        .get(&format!("cardgate-{POLICY}-payments-db"))
        .await
        .unwrap();
    assert_eq!(np.owner_references()[0].kind, "AccessPolicy");

    for doc in pods_to_start {
        apply(&client, doc)
            .await
            .unwrap_or_else(|e| panic!("apply {}: {e}", doc["metadata"]["name"]));
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let agent = wait_running(&pods, "e2e-agent").await;
    wait_running(&pods, "intruder").await;
    wait_running(&pods, "payments-api").await;
    let deployment_db = wait_db(&client).await;
    assert!(deployment_db >= 1);

    // Injection: the sidecar runs next to the agent, which holds no
    // service-account token and no database credential.
    assert_eq!(
        agent.labels().get(pod::LABEL_PROXIED).map(String::as_str),
        Some(POLICY)
    );
    assert_eq!(
        agent.annotations().get(pod::ANNOTATION_CONFIG_HASH),
        Some(&hash)
    );
    let spec = agent.spec.clone().unwrap();
    let injected = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .any(|c| c.name == pod::SIDECAR_CONTAINER);
    assert!(
        injected,
        "no {} container in {spec:?}",
        pod::SIDECAR_CONTAINER
    );
    assert_eq!(spec.automount_service_account_token, Some(false));
    let (ok, out, _) = exec(
        NS,
        "e2e-agent",
        "agent",
        "ls /var/run/secrets/kubernetes.io/serviceaccount 2>&1; ls /var/run/cardgate/credentials 2>&1",
    );
    assert!(
        !out.contains("token") && !out.contains("payments-db"),
        "the agent sees secrets ({ok}): {out}"
    );

    // Masking through the sidecar.
    let psql = |sql: &str| {
        format!(
            "PGPASSWORD=\"$(cat \"${}\")\" psql \"host=127.0.0.1 port=5432 dbname=payments user=e2e-agent sslmode=disable connect_timeout=10\" -At -v VERBOSITY=verbose -c \"{sql}\"",
            pod::ENV_AGENT_TOKEN_FILE
        )
    };
    let (ok, out, err) = exec(
        NS,
        "e2e-agent",
        "agent",
        &psql("SELECT pan FROM public.cards WHERE id = 1"),
    );
    assert!(ok, "the read failed: {err}");
    assert!(
        !out.contains(PAN) && !err.contains(PAN),
        "raw PAN returned: {out}"
    );
    assert!(
        out.trim().starts_with("411111") && out.trim().ends_with("1111"),
        "expected a truncated PAN, got {out:?}"
    );

    // A denial, with PostgreSQL's insufficient-privilege code.
    let (ok, out, err) = exec(NS, "e2e-agent", "agent", &psql("DELETE FROM public.cards"));
    assert!(!ok, "DELETE was not refused: {out}");
    assert!(err.contains("42501"), "expected SQLSTATE 42501: {err}");

    // The NetworkPolicy: an allowed client reaches the database, a pod that
    // is neither governed nor listed does not, even with the password.
    let (ok, _, err) = exec(
        NS,
        "payments-api",
        "agent",
        "pg_isready -h payments-db -p 5432 -t 10",
    );
    assert!(ok, "the allowed client cannot reach the database: {err}");
    let (ok, out, _) = exec(
        NS,
        "intruder",
        "agent",
        "PGPASSWORD=agent-e2e psql \"host=payments-db port=5432 dbname=payments user=cardgate_agent connect_timeout=5\" -Atc 'SELECT pan FROM public.cards'",
    );
    assert!(
        !ok && !out.contains(PAN),
        "a pod that is not governed reached the database: {out}"
    );

    let governed = eventually(
        "status.governedPods to count the agent",
        Duration::from_secs(60),
        || {
            let policies = policies.clone();
            async move {
                let n = policies
                    .get(POLICY)
                    .await
                    .map_err(|e| e.to_string())?
                    .status
                    .unwrap_or_default()
                    .governed_pods;
                if n >= 1 { Ok(n) } else { Err(format!("{n}")) }
            }
        },
    )
    .await;
    assert_eq!(governed, 1);

    delete_namespace(&client, NS).await;
}

async fn wait_db(client: &Client) -> i32 {
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    eventually("PostgreSQL to be ready", Duration::from_secs(240), || {
        let d = d.clone();
        async move {
            let dep = d.get("payments-db").await.map_err(|e| e.to_string())?;
            match dep.status.and_then(|s| s.ready_replicas) {
                Some(n) if n >= 1 => Ok(n),
                n => Err(format!("{n:?} ready")),
            }
        }
    })
    .await
}

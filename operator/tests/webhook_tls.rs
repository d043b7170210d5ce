//! Webhook TLS: bootstrap and renewal of the shared Secret against a mocked
//! API server (asserting the exact requests), caBundle maintenance, and hot
//! reload of the serving certificate as a TLS client observes it.

mod webhook_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cardgate_operator::tls::certs::{WebhookCerts, issue_all, observe, reissue_serving};
use cardgate_operator::tls::rotation::Lifetimes;
use cardgate_operator::tls::{
    CaBundleTargets, CertResolver, MountedCerts, SecretStore, SelfManaged, service_dns_names,
};
use cardgate_operator::webhook::server::{Router, run};
use jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use webhook_support::{mock_client, post, status};

const NS: &str = "cardgate-system";
const SECRET: &str = "cardgate-webhook-tls";
const SECRETS_PATH: &str = "/api/v1/namespaces/cardgate-system/secrets";

fn dns() -> Vec<String> {
    service_dns_names("cardgate-operator", NS)
}

fn store(client: Client) -> SecretStore {
    SecretStore {
        api: Api::namespaced(client, NS),
        name: SECRET.into(),
        dns_names: dns(),
        lifetimes: Lifetimes::default(),
    }
}

fn issued(days_ago: i64) -> WebhookCerts {
    let at = Timestamp::now() - SignedDuration::from_hours(24 * days_ago);
    issue_all(at, &dns(), Lifetimes::default(), None).unwrap()
}

fn secret_json(certs: &WebhookCerts, resource_version: &str) -> Value {
    let data: BTreeMap<String, String> = certs
        .to_data()
        .into_iter()
        .map(|(k, v)| (k, STANDARD.encode(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NS, "resourceVersion": resource_version},
        "type": "kubernetes.io/tls",
        "data": data,
    })
}

/// The certificates in a Secret body the code under test sent.
fn certs_in(body: &Value) -> WebhookCerts {
    let data: BTreeMap<String, Vec<u8>> = body["data"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), STANDARD.decode(v.as_str().unwrap()).unwrap()))
        .collect();
    WebhookCerts::from_data(&data).expect("all keys present")
}

fn spawn_ensure(
    client: Client,
) -> tokio::task::JoinHandle<Result<WebhookCerts, cardgate_operator::tls::TlsError>> {
    tokio::spawn(async move { store(client).ensure(Timestamp::now()).await })
}

#[tokio::test]
async fn an_absent_secret_is_created_with_a_fresh_ca_and_serving_certificate() {
    let (client, mut api) = mock_client();
    let task = spawn_ensure(client);
    let get = api
        .expect(
            404,
            status(
                404,
                "NotFound",
                "secrets \"cardgate-webhook-tls\" not found",
            ),
        )
        .await;
    assert_eq!(
        (get.method.as_str(), get.path.as_str()),
        ("GET", &*format!("{SECRETS_PATH}/{SECRET}"))
    );
    let (client_body, created) = {
        let seen = api.expect(201, Value::Null).await;
        assert_eq!(
            (seen.method.as_str(), seen.path.as_str()),
            ("POST", SECRETS_PATH)
        );
        (seen.body.clone(), certs_in(&seen.body))
    };
    assert_eq!(client_body["type"], "kubernetes.io/tls");
    assert_eq!(client_body["metadata"]["name"], SECRET);
    let certs = task.await.unwrap().unwrap();
    assert_eq!(certs, created, "serves exactly what it stored");
    assert!(certs.previous_ca_cert.is_none());
    let o = observe(&certs, &dns()).unwrap();
    assert!(o.names_match && o.signed_by_ca);
    api.expect_nothing().await;
}

#[tokio::test]
async fn a_valid_secret_is_reused_without_writing() {
    let (client, mut api) = mock_client();
    let existing = issued(1);
    let task = spawn_ensure(client);
    api.expect(200, secret_json(&existing, "7")).await;
    assert_eq!(task.await.unwrap().unwrap(), existing);
    api.expect_nothing().await;
}

#[tokio::test]
async fn losing_the_creation_race_adopts_the_winners_ca() {
    let (client, mut api) = mock_client();
    let winner = issued(0);
    let task = spawn_ensure(client);
    api.expect(404, status(404, "NotFound", "not found")).await;
    let post = api
        .expect(
            409,
            status(
                409,
                "AlreadyExists",
                "secrets \"cardgate-webhook-tls\" already exists",
            ),
        )
        .await;
    assert_eq!(post.method, "POST");
    let reread = api.expect(200, secret_json(&winner, "1")).await;
    assert_eq!(reread.method, "GET");
    assert_eq!(task.await.unwrap().unwrap(), winner);
    api.expect_nothing().await;
}

#[tokio::test]
async fn a_serving_certificate_past_two_thirds_is_renewed_from_the_same_ca() {
    let (client, mut api) = mock_client();
    let old = issued(70);
    let task = spawn_ensure(client);
    api.expect(200, secret_json(&old, "42")).await;
    let put = api.expect(200, Value::Null).await;
    assert_eq!(
        (put.method.as_str(), put.path.as_str()),
        ("PUT", &*format!("{SECRETS_PATH}/{SECRET}"))
    );
    assert_eq!(
        put.body["metadata"]["resourceVersion"], "42",
        "optimistic concurrency"
    );
    let written = certs_in(&put.body);
    assert_eq!(written.ca_cert, old.ca_cert);
    assert_eq!(written.ca_key, old.ca_key);
    assert_ne!(written.cert, old.cert);
    assert!(observe(&written, &dns()).unwrap().signed_by_ca);
    assert_eq!(task.await.unwrap().unwrap(), written);
}

#[tokio::test]
async fn ca_rotation_keeps_the_previous_ca_trusted() {
    let (client, mut api) = mock_client();
    let old = issued(4 * 365);
    let task = spawn_ensure(client);
    api.expect(200, secret_json(&old, "9")).await;
    let put = api.expect(200, Value::Null).await;
    let written = certs_in(&put.body);
    assert_ne!(written.ca_cert, old.ca_cert);
    assert_eq!(
        written.previous_ca_cert.as_deref(),
        Some(old.ca_cert.as_str())
    );
    let bundle = written.ca_bundle(Timestamp::now());
    assert!(bundle.contains(&written.ca_cert) && bundle.contains(&old.ca_cert));
    assert!(observe(&written, &dns()).unwrap().signed_by_ca);
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_conflicting_renewal_rereads_and_takes_the_other_replicas_certificates() {
    let (client, mut api) = mock_client();
    let old = issued(70);
    let renewed_elsewhere =
        reissue_serving(Timestamp::now(), &dns(), Lifetimes::default(), &old).unwrap();
    let task = spawn_ensure(client);
    api.expect(200, secret_json(&old, "42")).await;
    let put = api
        .expect(409, status(409, "Conflict", "the object has been modified"))
        .await;
    assert_eq!(put.method, "PUT");
    api.expect(200, secret_json(&renewed_elsewhere, "43")).await;
    assert_eq!(task.await.unwrap().unwrap(), renewed_elsewhere);
    api.expect_nothing().await;
}

fn webhook_config(kind: &str, name: &str, bundle: Option<&str>) -> Value {
    let mut hook = json!({
        "name": "pods.cardgate.dev",
        "clientConfig": {"service": {"name": "cardgate-operator", "namespace": NS, "path": "/validate/pods", "port": 443}},
        "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail"
    });
    if let Some(b) = bundle {
        hook["clientConfig"]["caBundle"] = json!(STANDARD.encode(b));
    }
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": kind,
           "metadata": {"name": name}, "webhooks": [hook]})
}

fn targets(client: Client) -> CaBundleTargets {
    CaBundleTargets {
        client,
        mutating: vec!["cardgate-pod-injector".into()],
        validating: vec!["cardgate-pod-validator".into(), "not-installed".into()],
    }
}

#[tokio::test]
async fn ca_bundles_are_patched_only_where_they_differ() {
    let (client, mut api) = mock_client();
    let bundle = issued(0).ca_bundle(Timestamp::now());
    let b = bundle.clone();
    let task = tokio::spawn(async move { targets(client).ensure(&b).await });
    const BASE: &str = "/apis/admissionregistration.k8s.io/v1";
    let get = api
        .expect(
            200,
            webhook_config(
                "MutatingWebhookConfiguration",
                "cardgate-pod-injector",
                None,
            ),
        )
        .await;
    assert_eq!(
        get.path,
        format!("{BASE}/mutatingwebhookconfigurations/cardgate-pod-injector")
    );
    let patch = api
        .expect(
            200,
            webhook_config(
                "MutatingWebhookConfiguration",
                "cardgate-pod-injector",
                Some(&bundle),
            ),
        )
        .await;
    assert_eq!(patch.method, "PATCH");
    assert_eq!(patch.content_type, "application/strategic-merge-patch+json");
    assert_eq!(
        patch.body,
        json!({"webhooks": [{"name": "pods.cardgate.dev", "clientConfig": {"caBundle": STANDARD.encode(&bundle)}}]})
    );
    let get = api
        .expect(
            200,
            webhook_config(
                "ValidatingWebhookConfiguration",
                "cardgate-pod-validator",
                Some(&bundle),
            ),
        )
        .await;
    assert_eq!(
        get.path,
        format!("{BASE}/validatingwebhookconfigurations/cardgate-pod-validator")
    );
    let missing = api.expect(404, status(404, "NotFound", "not found")).await;
    assert_eq!(
        missing.path,
        format!("{BASE}/validatingwebhookconfigurations/not-installed")
    );
    task.await.unwrap().unwrap();
    api.expect_nothing().await;
}

#[tokio::test]
async fn a_replica_serves_its_certificate_only_after_the_ca_bundle_trusts_it() {
    let (client, mut api) = mock_client();
    let manager = SelfManaged {
        store: store(client.clone()),
        targets: CaBundleTargets {
            client,
            mutating: vec!["cardgate-pod-injector".into()],
            validating: vec![],
        },
    };
    let resolver = CertResolver::new();
    let r = resolver.clone();
    let task = tokio::spawn(async move { manager.tick(&r, Timestamp::now()).await });
    api.expect(404, status(404, "NotFound", "not found")).await;
    let created = certs_in(&api.expect(201, Value::Null).await.body);
    api.expect(
        200,
        webhook_config(
            "MutatingWebhookConfiguration",
            "cardgate-pod-injector",
            None,
        ),
    )
    .await;
    assert!(
        !resolver.is_loaded(),
        "served before the caBundle was updated"
    );
    let bundle = created.ca_bundle(Timestamp::now());
    let patch = api
        .expect(
            200,
            webhook_config(
                "MutatingWebhookConfiguration",
                "cardgate-pod-injector",
                Some(&bundle),
            ),
        )
        .await;
    assert_eq!(
        patch.body["webhooks"][0]["clientConfig"]["caBundle"],
        STANDARD.encode(&bundle)
    );
    task.await.unwrap().unwrap();
    assert!(resolver.is_loaded());
}

/// A server whose only job is to present the resolver's certificate.
async fn tls_server(resolver: Arc<CertResolver>) -> (std::net::SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(run(listener, resolver, Arc::new(Router::new()), async {
        stopped.await.ok();
    }));
    (addr, stop)
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let first = issued(70);
    let second = reissue_serving(Timestamp::now(), &dns(), Lifetimes::default(), &first).unwrap();
    let resolver = CertResolver::new();
    resolver.install(first.certified_key().unwrap());
    let (addr, _stop) = tls_server(resolver.clone()).await;
    let seen = post(addr, &first.ca_cert, "/", Vec::new(), false).await;
    assert_eq!(seen.peer_cert.as_ref(), der(&first.cert));
    assert!(resolver.install(second.certified_key().unwrap()));
    assert!(
        !resolver.install(second.certified_key().unwrap()),
        "same certificate twice"
    );
    let seen = post(addr, &first.ca_cert, "/", Vec::new(), true).await;
    assert_eq!(seen.peer_cert.as_ref(), der(&second.cert));
}

#[tokio::test]
async fn cert_manager_files_are_reloaded_when_they_change() {
    let dir = std::env::temp_dir().join(format!("cardgate-certs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |c: &WebhookCerts| {
        // The kubelet swaps the files atomically; so does this test.
        for (name, content) in [("tls.crt", &c.cert), ("tls.key", &c.key)] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, content).unwrap();
            std::fs::rename(&tmp, dir.join(name)).unwrap();
        }
    };
    let first = issued(0);
    let second = reissue_serving(Timestamp::now(), &dns(), Lifetimes::default(), &first).unwrap();
    write(&first);
    let mounted = MountedCerts { dir: dir.clone() };
    let resolver = CertResolver::new();
    assert!(mounted.load(&resolver).unwrap());
    let (addr, _stop) = tls_server(resolver.clone()).await;
    let (stop_reload, reload_stopped) = oneshot::channel::<()>();
    tokio::spawn(
        mounted.run(resolver.clone(), Duration::from_millis(50), async {
            reload_stopped.await.ok();
        }),
    );
    assert_eq!(
        post(addr, &first.ca_cert, "/", Vec::new(), false)
            .await
            .peer_cert
            .as_ref(),
        der(&first.cert)
    );
    write(&second);
    let mut served = Vec::new();
    for _ in 0..100 {
        served = post(addr, &first.ca_cert, "/", Vec::new(), false)
            .await
            .peer_cert
            .to_vec();
        if served == der(&second.cert) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        served,
        der(&second.cert),
        "the renewed certificate was never served"
    );
    // A broken write keeps the previous certificate in service.
    std::fs::write(dir.join("tls.key"), "not a key").unwrap();
    assert!(mounted_load_fails(&dir, &resolver));
    assert_eq!(
        post(addr, &first.ca_cert, "/", Vec::new(), false)
            .await
            .peer_cert
            .as_ref(),
        der(&second.cert)
    );
    stop_reload.send(()).ok();
    std::fs::remove_dir_all(&dir).ok();
}

fn mounted_load_fails(dir: &std::path::Path, resolver: &CertResolver) -> bool {
    MountedCerts {
        dir: dir.to_path_buf(),
    }
    .load(resolver)
    .is_err()
}

#[test]
fn unusable_stored_certificates_are_detected() {
    let good = issued(0);
    let swapped = WebhookCerts {
        key: issued(0).key,
        ..good.clone()
    };
    assert!(
        observe(&swapped, &dns()).is_err(),
        "key of another certificate"
    );
    let foreign = WebhookCerts {
        cert: issued(0).cert,
        key: good.key.clone(),
        ..good.clone()
    };
    assert!(observe(&foreign, &dns()).is_err());
    let other_ca = issued(0);
    let signed_elsewhere = WebhookCerts {
        cert: other_ca.cert.clone(),
        key: other_ca.key.clone(),
        ..good.clone()
    };
    assert!(!observe(&signed_elsewhere, &dns()).unwrap().signed_by_ca);
    let renamed = observe(&good, &service_dns_names("other", NS)).unwrap();
    assert!(!renamed.names_match);
}

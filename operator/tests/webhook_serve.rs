//! `webhook::serve` wired to a mocked API server: it creates the
//! certificate Secret, loads its caches, reports ready, answers admissions
//! over HTTPS with the certificate it stored, and stops on shutdown.

mod webhook_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cardgate_operator::webhook::{WebhookMetrics, WebhookSettings, serve};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use webhook_support::{mock_client, post, status};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    webhook: WebhookSettings,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn list(kind: &str) -> Value {
    json!({"apiVersion": "cardgate.dev/v1alpha1", "kind": kind,
           "metadata": {"resourceVersion": "1"}, "items": []})
}

#[tokio::test]
async fn serve_bootstraps_tls_and_caches_then_answers_until_shutdown() {
    let port = free_port();
    let settings =
        Cli::try_parse_from(["op", "--webhook-bind-address", &format!("127.0.0.1:{port}")])
            .unwrap()
            .webhook;

    let (client, api) = mock_client();
    let stored: Arc<Mutex<Option<Value>>> = Arc::default();
    let secret = stored.clone();
    let secrets = "/api/v1/namespaces/cardgate-system/secrets";
    api.serve_requests(move |method, path, query, body| {
        let watching = query.contains("watch=true");
        Some(match (method, path) {
            ("GET", p) if p == format!("{secrets}/cardgate-webhook-tls") => {
                match secret.lock().unwrap().clone() {
                    Some(s) => (200, s),
                    None => (404, status(404, "NotFound", "not found")),
                }
            }
            ("POST", p) if p == secrets => {
                *secret.lock().unwrap() = Some(body.clone());
                (201, body.clone())
            }
            ("GET", p) if p.contains("webhookconfigurations/") => {
                (404, status(404, "NotFound", "not installed"))
            }
            ("GET", _) if watching => return None,
            ("GET", "/apis/cardgate.dev/v1alpha1/accesspolicies") => {
                (200, list("AccessPolicyList"))
            }
            ("GET", "/apis/cardgate.dev/v1alpha1/maskingrules") => (200, list("MaskingRuleList")),
            other => panic!("unexpected request {other:?}"),
        })
    });

    let (ready_tx, mut ready) = watch::channel(false);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        settings,
        client,
        WebhookMetrics::default(),
        ready_tx,
        async {
            stopped.await.ok();
        },
    ));
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("never became ready")
        .unwrap();

    let created = stored
        .lock()
        .unwrap()
        .clone()
        .expect("the Secret was created");
    let ca = String::from_utf8(
        STANDARD
            .decode(created["data"]["ca.crt"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "c0ffee00-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "agents", "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "web", "namespace": "agents"},
                       "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
            "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    for path in ["/mutate/pods", "/validate/pods"] {
        let ex = post(addr, &ca, path, serde_json::to_vec(&review).unwrap(), false).await;
        let v: Value = serde_json::from_slice(&ex.body).unwrap();
        assert_eq!(v["response"]["uid"], "c0ffee00-0000-4000-8000-000000000001");
        assert_eq!(
            v["response"]["allowed"], true,
            "{path}: no policy governs this pod"
        );
    }

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("serve did not stop")
        .unwrap()
        .unwrap();
    assert!(!*ready.borrow(), "not ready once shut down");
}

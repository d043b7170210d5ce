//! Announcing new ApprovalRequests to a chat webhook
//! (`spec.approval.notify.url` of the AccessPolicy): Slack-compatible JSON
//! (`text` for clients that show only that, `blocks` for the rest) saying
//! who asks, the masked statement, the target, the rule and how to approve.
//!
//! Delivery runs off the reconcile path with retries and backoff; the
//! controller records the outcome in the `Notified` condition. Incoming
//! webhook URLs carry their secret in the path, so messages name the host
//! only.

use std::sync::Arc;
use std::time::Duration;

use cardgate_crds::v1alpha1::ApprovalRequest;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use kube::ResourceExt;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::lifecycle::show;

/// Longest statement text put in a message (Slack sections hold 3000).
const MAX_STATEMENT: usize = 2800;
/// Largest answer body read (and ignored).
const MAX_ANSWER: usize = 64 * 1024;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct NotifySettings {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Pause after the first failure; doubles after each further one.
    pub backoff: Duration,
    /// Time one attempt may take (connect, TLS, answer).
    pub timeout: Duration,
}

impl Default for NotifySettings {
    /// Five attempts over about half a minute.
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why an announcement was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("announcement to {host} failed after {attempts} attempt(s): {last}")]
pub struct NotifyError {
    /// Host of the webhook URL.
    pub host: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last attempt's problem.
    pub last: String,
}

/// Sends announcements over HTTP(S) (HTTPS verified against the system
/// trust store).
#[derive(Clone)]
pub struct Notifier {
    settings: NotifySettings,
    tls: TlsConnector,
}

impl Notifier {
    /// A notifier trusting the system's certificate authorities.
    pub fn new(settings: NotifySettings) -> Self {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            settings,
            tls: TlsConnector::from(Arc::new(config)),
        }
    }

    /// POSTs `body` to `url` until a 2xx answer, retrying transport errors,
    /// 5xx, 408 and 429 with backoff. Returns the number of attempts used.
    pub async fn send(&self, url: &str, body: &Value) -> Result<u32, NotifyError> {
        let host = host_of(url);
        let bytes = Bytes::from(serde_json::to_vec(body).unwrap_or_default());
        let mut backoff = self.settings.backoff;
        let attempts = self.settings.attempts.max(1);
        let mut last = String::new();
        for attempt in 1..=attempts {
            let result =
                tokio::time::timeout(self.settings.timeout, self.post(url, bytes.clone())).await;
            let retry = match result {
                Ok(Ok(status)) if (200..300).contains(&status) => return Ok(attempt),
                Ok(Ok(status)) => {
                    last = format!("HTTP {status}");
                    status >= 500 || status == 408 || status == 429
                }
                Ok(Err(e)) => {
                    last = e;
                    true
                }
                Err(_) => {
                    last = format!("no answer within {} s", self.settings.timeout.as_secs_f32());
                    true
                }
            };
            tracing::warn!(host, attempt, error = %last, "approval announcement failed");
            if !retry {
                return Err(NotifyError {
                    host,
                    attempts: attempt,
                    last,
                });
            }
            if attempt < attempts {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(NotifyError {
            host,
            attempts,
            last,
        })
    }

    /// One POST; the answer's status code.
    async fn post(&self, url: &str, body: Bytes) -> Result<u16, String> {
        let uri: Uri = url.parse().map_err(|_| "not a URL".to_string())?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http(s) URL".into()),
        };
        let (Some(authority), Some(host)) = (uri.authority(), uri.host()) else {
            return Err("the URL has no host".into());
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::post(path)
            .header(HOST, authority.as_str())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("cardgate-operator/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        if https {
            let name = ServerName::try_from(host.to_string())
                .map_err(|_| format!("{host:?} is not a valid server name"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS failed: {e}"))?;
            exchange(TokioIo::new(tls), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
    }
}

/// Sends `request` on a fresh HTTP/1.1 connection and reads the answer.
async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP failed: {e}"))?;
    let connection = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP failed: {e}"))?;
        let status = response.status().as_u16();
        // Read the answer so the server sees a clean exchange; its content
        // does not matter.
        let _ = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await;
        Ok(status)
    }
    .await;
    connection.abort();
    result
}

/// The host of `url`, for messages (the path may hold a secret).
pub fn host_of(url: &str) -> String {
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| "an invalid URL".into())
}

/// Escapes the three characters Slack's mrkdwn treats as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cuts `s` to `max` characters, marking the cut.
fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The command that approves `request`.
pub fn approve_command(request: &ApprovalRequest) -> String {
    format!(
        "kubectl cardgate approve {} -n {}",
        request.name_any(),
        request.namespace().unwrap_or_default()
    )
}

/// The announcement of `request`.
pub fn payload(request: &ApprovalRequest) -> Value {
    let spec = &request.spec;
    let ns = request.namespace().unwrap_or_default();
    let name = request.name_any();
    let approve = approve_command(request);
    let deny = format!("kubectl cardgate deny {name} -n {ns} --reason …");
    let requester = &spec.requester;
    let text = format!(
        "Approval needed: {} wants to run `{}` on {} ({}). Approve with `{approve}`",
        escape(&requester.subject),
        escape(&spec.statement.preview),
        escape(&spec.target),
        escape(&spec.rule),
    );
    let field = |label: &str, value: &str| json!({"type": "mrkdwn", "text": format!("*{label}*\n{}", escape(&cut(value, 1900)))});
    let quorum = match spec.quorum {
        1 => "1 approval".to_string(),
        n => format!("{n} approvals"),
    };
    json!({
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(&format!("Approval needed: {ns}/{name}"), 150)}},
            {"type": "section", "fields": [
                field("Requester", &format!("{} (pod {})", requester.subject, requester.pod)),
                field("Target", &spec.target),
                field("Rule", &format!("{} of AccessPolicy {}", spec.rule, spec.policy)),
                field("Needs", &format!("{quorum}; expires at {}", show(spec.expires_at.0))),
            ]},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!(
                "*Statement* ({}, masked)\n```{}```",
                serde_json::to_value(spec.statement.class)
                    .ok()
                    .and_then(|c| c.as_str().map(str::to_string))
                    .unwrap_or_default(),
                escape(&cut(&spec.statement.text, MAX_STATEMENT))
            )}},
            {"type": "section", "text": {"type": "mrkdwn", "text": format!(
                "*Approve*\n`{approve}`\n*Deny*\n`{deny}`"
            )}},
        ]
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use hyper::Response;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A chat webhook on localhost: answers the statuses in `script` in
    /// turn (then 200) and keeps every body it received.
    pub(crate) struct ChatServer {
        pub(crate) url: String,
        pub(crate) bodies: Arc<Mutex<Vec<Value>>>,
    }

    impl ChatServer {
        pub(crate) async fn start(script: Vec<u16>) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!(
                "http://{}/services/T000/B000/secret-token",
                listener.local_addr().unwrap()
            );
            let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
            let script = Arc::new(Mutex::new(script.into_iter()));
            let seen = bodies.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let (seen, script) = (seen.clone(), script.clone());
                    tokio::spawn(async move {
                        let service = service_fn(move |req: hyper::Request<Incoming>| {
                            let (seen, script) = (seen.clone(), script.clone());
                            async move {
                                assert_eq!(req.method(), "POST");
                                assert_eq!(req.uri().path(), "/services/T000/B000/secret-token");
                                assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                seen.lock()
                                    .unwrap()
                                    .push(serde_json::from_slice(&body).unwrap());
                                let status = script.lock().unwrap().next().unwrap_or(200);
                                let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
                                *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
            Self { url, bodies }
        }
    }

    fn fast() -> Notifier {
        Notifier::new(NotifySettings {
            attempts: 3,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        })
    }

    #[tokio::test]
    async fn server_errors_are_retried_until_delivered() {
        let chat = ChatServer::start(vec![503, 500]).await;
        let body = json!({"text": "hello"});
        assert_eq!(fast().send(&chat.url, &body).await, Ok(3));
        assert_eq!(*chat.bodies.lock().unwrap(), vec![body.clone(); 3]);
    }

    #[tokio::test]
    async fn failures_name_the_host_but_never_the_secret_path() {
        let chat = ChatServer::start(vec![500, 500, 500, 500]).await;
        let err = fast().send(&chat.url, &json!({})).await.unwrap_err();
        assert_eq!(err.attempts, 3);
        assert_eq!(
            err.to_string(),
            "announcement to 127.0.0.1 failed after 3 attempt(s): HTTP 500"
        );
        // A permanent refusal is not retried.
        let chat = ChatServer::start(vec![404]).await;
        let err = fast().send(&chat.url, &json!({})).await.unwrap_err();
        assert_eq!(err.attempts, 1);
        assert!(!err.to_string().contains("secret-token"));
        // Nobody listening: transport errors are retried, then reported.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", closed.local_addr().unwrap());
        drop(closed);
        let err = fast().send(&url, &json!({})).await.unwrap_err();
        assert_eq!(err.attempts, 3);
        assert!(err.last.starts_with("cannot connect"), "{err}");
    }

    #[test]
    fn the_announcement_says_who_what_where_which_rule_and_how_to_approve() {
        let mut request: ApprovalRequest = crate::fixtures::yaml(
            &std::fs::read_to_string(
                crate::fixtures::repo().join("config/samples/approvalrequest.yaml"),
            )
            .unwrap(),
        );
        request.spec.statement.text = "UPDATE orders SET note = '<b>&</b>' WHERE id = 4711".into();
        let p = payload(&request);
        let text = p["text"].as_str().unwrap();
        assert_eq!(
            text,
            "Approval needed: system:serviceaccount:payments:support-agent wants to run `UPDATE orders SET status = 'refunded' WHERE id = 4711` on payments-db (rule 3 (writes-need-approval)). Approve with `kubectl cardgate approve support-agent-7f3c9a2e -n payments`"
        );
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(
            blocks[0]["text"]["text"],
            "Approval needed: payments/support-agent-7f3c9a2e"
        );
        let fields: Vec<&str> = blocks[1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["text"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "*Requester*\nsystem:serviceaccount:payments:support-agent (pod support-agent-6d5b8c7f9d-x2k4q)",
                "*Target*\npayments-db",
                "*Rule*\nrule 3 (writes-need-approval) of AccessPolicy support-agent",
                "*Needs*\n1 approval; expires at 2026-11-22T06:10:00Z",
            ]
        );
        assert_eq!(
            blocks[2]["text"]["text"],
            "*Statement* (write, masked)\n```UPDATE orders SET note = '&lt;b&gt;&amp;&lt;/b&gt;' WHERE id = 4711```"
        );
        assert_eq!(
            blocks[3]["text"]["text"],
            "*Approve*\n`kubectl cardgate approve support-agent-7f3c9a2e -n payments`\n*Deny*\n`kubectl cardgate deny support-agent-7f3c9a2e -n payments --reason …`"
        );
    }
}

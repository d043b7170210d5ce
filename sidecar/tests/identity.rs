//! Agent authentication against a real local HTTPS issuer: a tokio + hyper
//! server with a certificate from a test CA (passed as caFile), serving
//! OIDC discovery and a JWKS, counting every request it answers.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cardgate_crds::config::IdentityConfig;
use cardgate_sidecar::identity::dev::{DevAlgorithm, DevKey};
use cardgate_sidecar::identity::{
    AuthError, Authenticator, AuthenticatorOptions, IdentityError, PodIdentity,
};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const AUDIENCE: &str = "cardgate";

// ---------------------------------------------------------------- issuer

/// What the test issuer serves and what it has seen.
#[derive(Default)]
struct Served {
    jwks: Value,
    /// Answer every request with this status instead.
    fail_with: Option<StatusCode>,
    authorization: Vec<Option<String>>,
}

struct TestIssuer {
    url: String,
    ca_file: PathBuf,
    served: Arc<Mutex<Served>>,
    discovery_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// A CA and a server certificate for localhost signed by it.
fn test_pki(
    dir: &Path,
) -> (
    PathBuf,
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    (
        ca_file,
        vec![leaf.der().clone()],
        PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
}

impl TestIssuer {
    async fn start(keys: &[&DevKey]) -> TestIssuer {
        let dir = tempfile::tempdir().unwrap();
        let (ca_file, chain, key) = test_pki(dir.path());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().unwrap().port()
        );
        let served = Arc::new(Mutex::new(Served {
            jwks: jwks(keys),
            ..Served::default()
        }));
        let discovery_hits = Arc::new(AtomicUsize::new(0));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let handler = Handler {
            url: url.clone(),
            served: served.clone(),
            discovery_hits: discovery_hits.clone(),
            jwks_hits: jwks_hits.clone(),
        };
        let server = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(handler.handle(req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TestIssuer {
            url,
            ca_file,
            served,
            discovery_hits,
            jwks_hits,
            server,
            _dir: dir,
        }
    }

    fn set_keys(&self, keys: &[&DevKey]) {
        self.served.lock().unwrap().jwks = jwks(keys);
    }

    fn fail_with(&self, status: Option<StatusCode>) {
        self.served.lock().unwrap().fail_with = status;
    }

    /// Closes the listening socket: connections are refused from now on.
    async fn stop(&self) {
        self.server.abort();
        while !self.server.is_finished() {
            tokio::task::yield_now().await;
        }
    }

    fn hits(&self) -> (usize, usize) {
        (
            self.discovery_hits.load(Ordering::SeqCst),
            self.jwks_hits.load(Ordering::SeqCst),
        )
    }

    /// An identity configuration trusting this issuer through discovery.
    fn config(&self, extra: Value) -> IdentityConfig {
        let mut issuer = json!({
            "issuer": self.url,
            "audiences": [AUDIENCE],
            "caFile": self.ca_file,
        });
        merge(&mut issuer, extra);
        serde_json::from_value(json!({ "issuers": [issuer] })).unwrap()
    }
}

#[derive(Clone)]
struct Handler {
    url: String,
    served: Arc<Mutex<Served>>,
    discovery_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
}

impl Handler {
    fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let mut served = self.served.lock().unwrap();
        served.authorization.push(
            req.headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_string()),
        );
        let body = match req.uri().path() {
            "/.well-known/openid-configuration" => {
                self.discovery_hits.fetch_add(1, Ordering::SeqCst);
                json!({
                    "issuer": self.url,
                    "jwks_uri": format!("{}/openid/v1/jwks", self.url),
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                })
            }
            "/openid/v1/jwks" => {
                self.jwks_hits.fetch_add(1, Ordering::SeqCst);
                served.jwks.clone()
            }
            _ => return status(StatusCode::NOT_FOUND),
        };
        if let Some(code) = served.fail_with {
            return status(code);
        }
        Response::new(Full::new(Bytes::from(body.to_string())))
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
    *r.status_mut() = code;
    r
}

fn jwks(keys: &[&DevKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>() })
}

fn merge(base: &mut Value, extra: Value) {
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
}

// ---------------------------------------------------------------- tokens

fn es256() -> DevKey {
    DevKey::generate(DevAlgorithm::Es256).unwrap()
}

fn ed25519() -> DevKey {
    DevKey::generate(DevAlgorithm::EdDsa).unwrap()
}

/// RSA generation is slow in debug builds: one key for the whole run.
fn rsa() -> &'static DevKey {
    static KEY: OnceLock<DevKey> = OnceLock::new();
    KEY.get_or_init(|| DevKey::generate(DevAlgorithm::Rs256).unwrap())
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Standard agent claims for `issuer`, with `extra` merged in (null removes).
fn claims(issuer: &str, extra: Value) -> Value {
    let mut c = json!({
        "iss": issuer,
        "aud": AUDIENCE,
        "sub": "agent-7",
        "groups": ["payments-agents"],
        "iat": now(),
        "exp": now() + 300,
    });
    merge(&mut c, extra);
    c
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Asserts the refusal and that its text carries nothing of the token.
fn assert_refused(result: Result<impl std::fmt::Debug, AuthError>, token: &str, expected: &str) {
    let err = result.expect_err("the token must be refused");
    let text = err.to_string();
    assert_eq!(text, expected);
    let debug = format!("{err:?}");
    for part in token.split('.').filter(|p| p.len() >= 8) {
        assert!(
            !text.contains(part),
            "{text:?} contains a part of the token"
        );
        assert!(
            !debug.contains(part),
            "{debug:?} contains a part of the token"
        );
    }
}

async fn authenticator(cfg: &IdentityConfig) -> Authenticator {
    Authenticator::new(cfg, &PodIdentity::default())
        .await
        .unwrap()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn valid_token_via_discovery_and_keys_are_cached() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    assert_eq!(issuer.hits(), (0, 0), "keys are fetched on first use");

    let exp = now() + 300;
    let token = key
        .sign(&claims(
            &issuer.url,
            json!({"exp": exp, "groups": ["payments-agents", "ci"]}),
        ))
        .unwrap();
    let id = auth.authenticate(&token).await.unwrap();
    assert_eq!(id.subject, "agent-7");
    assert_eq!(id.issuer, issuer.url);
    assert_eq!(id.groups, ["payments-agents", "ci"]);
    assert_eq!(id.expires_at.as_second(), exp);
    assert_eq!(issuer.hits(), (1, 1));

    for _ in 0..5 {
        auth.authenticate(&token).await.unwrap();
    }
    assert_eq!(issuer.hits(), (1, 1), "cached keys are reused");
}

#[tokio::test]
async fn every_supported_key_type_verifies() {
    let (ec, ed, rs) = (es256(), ed25519(), rsa());
    let issuer = TestIssuer::start(&[&ec, &ed, rs]).await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    for key in [&ec, &ed, rs] {
        let token = key.sign(&claims(&issuer.url, json!({}))).unwrap();
        assert_eq!(auth.authenticate(&token).await.unwrap().subject, "agent-7");
    }
}

#[tokio::test]
async fn claims_are_checked_with_the_configured_leeway() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    let t = now();
    let cases = [
        (json!({"exp": t - 60}), "token expired"),
        (json!({"exp": null}), "token has no exp claim"),
        (json!({"nbf": t + 120}), "token not yet valid"),
        (json!({"aud": "another-service"}), "wrong audience"),
        (json!({"aud": ["a", "b"]}), "wrong audience"),
        (json!({"aud": null}), "token has no aud claim"),
        (json!({"sub": null}), "token has no sub claim"),
        // The issuer must match exactly: no trailing slash, no other host.
        (
            json!({"iss": format!("{}/", issuer.url)}),
            "issuer not trusted",
        ),
        (
            json!({"iss": "https://4111111111111111.example"}),
            "issuer not trusted",
        ),
        (json!({"iss": null}), "token has no iss claim"),
    ];
    for (extra, expected) in cases {
        let token = key.sign(&claims(&issuer.url, extra.clone())).unwrap();
        let result = auth.authenticate(&token).await;
        assert_refused(result.clone(), &token, expected);
        assert!(
            !result.unwrap_err().to_string().contains("4111111111111111"),
            "claim values never appear in the reason"
        );
    }
    // Within the default 30 s leeway.
    for extra in [json!({"exp": t - 10}), json!({"nbf": t + 10})] {
        let token = key.sign(&claims(&issuer.url, extra)).unwrap();
        auth.authenticate(&token).await.unwrap();
    }
    // A configured leeway of zero refuses what the default tolerated.
    let mut strict_cfg = issuer.config(json!({}));
    strict_cfg.leeway_seconds = 0;
    let strict = authenticator(&strict_cfg).await;
    let token = key
        .sign(&claims(&issuer.url, json!({"exp": t - 10})))
        .unwrap();
    assert_refused(strict.authenticate(&token).await, &token, "token expired");
}

#[tokio::test]
async fn unknown_kid_refreshes_and_picks_up_a_rotated_key() {
    let (old, new) = (es256(), ed25519());
    let issuer = TestIssuer::start(&[&old]).await;
    let options = AuthenticatorOptions {
        refresh_interval: Duration::from_millis(300),
        ..AuthenticatorOptions::default()
    };
    let auth =
        Authenticator::with_options(&issuer.config(json!({})), &PodIdentity::default(), options)
            .await
            .unwrap();
    let old_token = old.sign(&claims(&issuer.url, json!({}))).unwrap();
    auth.authenticate(&old_token).await.unwrap();
    assert_eq!(issuer.hits(), (1, 1));

    issuer.set_keys(&[&new]);
    let new_token = new.sign(&claims(&issuer.url, json!({}))).unwrap();
    // Within the refresh interval the issuer is not asked again.
    assert_refused(
        auth.authenticate(&new_token).await,
        &new_token,
        "unknown signing key",
    );
    assert_eq!(issuer.hits(), (1, 1));

    tokio::time::sleep(Duration::from_millis(350)).await;
    let id = auth.authenticate(&new_token).await.unwrap();
    assert_eq!(id.subject, "agent-7");
    assert_eq!(
        issuer.hits().1,
        2,
        "the unknown kid triggered one JWKS fetch"
    );

    // The withdrawn key no longer verifies anything.
    assert_refused(
        auth.authenticate(&old_token).await,
        &old_token,
        "unknown signing key",
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_issuer_one_fetch() {
    let (known, stranger) = (es256(), es256());
    let issuer = TestIssuer::start(&[&known]).await;
    let auth = Arc::new(authenticator(&issuer.config(json!({}))).await);
    let bogus: Vec<String> = (0..100)
        .map(|i| {
            // Each token names a different kid, signed by a key the issuer never had.
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.kid = Some(format!("bogus-{i}"));
            let valid = stranger.sign(&claims(&issuer.url, json!({}))).unwrap();
            let mut parts = valid.splitn(2, '.');
            let _ = parts.next();
            format!(
                "{}.{}",
                b64(&serde_json::to_value(&header).unwrap()),
                parts.next().unwrap()
            )
        })
        .collect();

    for round in 0..2 {
        let tasks: Vec<_> = bogus
            .iter()
            .cloned()
            .map(|t| {
                let auth = auth.clone();
                tokio::spawn(async move { (auth.authenticate(&t).await, t) })
            })
            .collect();
        for task in tasks {
            let (result, token) = task.await.unwrap();
            assert_refused(result, &token, "unknown signing key");
        }
        assert_eq!(
            issuer.hits(),
            (1, 1),
            "round {round}: one discovery, one JWKS fetch"
        );
    }
    let token = known.sign(&claims(&issuer.url, json!({}))).unwrap();
    auth.authenticate(&token).await.unwrap();
    assert_eq!(issuer.hits(), (1, 1));
}

#[tokio::test]
async fn issuer_down_fails_closed_with_the_reason() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let token = key.sign(&claims(&issuer.url, json!({}))).unwrap();

    issuer.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    let auth = authenticator(&issuer.config(json!({}))).await;
    assert_refused(
        auth.authenticate(&token).await,
        &token,
        &format!(
            "key set unavailable: {}/.well-known/openid-configuration answered HTTP 503 Service Unavailable",
            issuer.url
        ),
    );
    let failures = auth.warm_up().await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].0, issuer.url);

    issuer.stop().await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    let err = auth.authenticate(&token).await.unwrap_err();
    let port = issuer.url.rsplit(':').next().unwrap();
    assert!(
        err.to_string().starts_with(&format!(
            "key set unavailable: cannot connect to localhost:{port}"
        )),
        "{err}"
    );
    assert!(!err.to_string().contains(&token));
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_issuer_is_down() {
    let (key, stranger) = (es256(), es256());
    let issuer = TestIssuer::start(&[&key]).await;
    let options = AuthenticatorOptions {
        refresh_interval: Duration::ZERO,
        ..AuthenticatorOptions::default()
    };
    let auth =
        Authenticator::with_options(&issuer.config(json!({})), &PodIdentity::default(), options)
            .await
            .unwrap();
    assert!(auth.warm_up().await.is_empty());
    issuer.stop().await;

    let token = key.sign(&claims(&issuer.url, json!({}))).unwrap();
    auth.authenticate(&token).await.unwrap();
    // A key the cache does not hold cannot be checked: refused, with why.
    let unknown = stranger.sign(&claims(&issuer.url, json!({}))).unwrap();
    let err = auth.authenticate(&unknown).await.unwrap_err();
    assert!(matches!(err, AuthError::KeySetUnavailable(_)), "{err}");
}

#[tokio::test]
async fn an_issuer_certificate_from_another_ca_is_refused() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_pki(other.path());
    let auth = authenticator(&issuer.config(json!({"caFile": other_ca}))).await;
    let token = key.sign(&claims(&issuer.url, json!({}))).unwrap();
    let err = auth.authenticate(&token).await.unwrap_err().to_string();
    assert!(
        err.starts_with("key set unavailable: TLS with localhost:"),
        "{err}"
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert_eq!(issuer.hits(), (0, 0));
}

#[tokio::test]
async fn jwks_url_skips_discovery() {
    let key = ed25519();
    let issuer = TestIssuer::start(&[&key]).await;
    let cfg = issuer.config(json!({"jwksUrl": format!("{}/openid/v1/jwks", issuer.url)}));
    let auth = authenticator(&cfg).await;
    let token = key.sign(&claims(&issuer.url, json!({}))).unwrap();
    auth.authenticate(&token).await.unwrap();
    assert_eq!(issuer.hits(), (0, 1));
}

#[tokio::test]
async fn none_and_hmac_key_confusion_tokens_are_refused() {
    let rs = rsa();
    let issuer = TestIssuer::start(&[rs]).await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    let body = claims(&issuer.url, json!({}));

    // alg none, with and without a signature.
    for sig in ["", "c2lnbmF0dXJl"] {
        let token = format!("{}.{}.{sig}", b64(&json!({"alg": "none"})), b64(&body));
        assert_refused(
            auth.authenticate(&token).await,
            &token,
            "algorithm not allowed: none",
        );
    }
    // HS256 "signed" with the issuer's RSA public key in every form an
    // attacker might try as the HMAC secret.
    let jwk = rs.public_jwk();
    let n = URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let secrets: Vec<Vec<u8>> = vec![
        jwk.to_string().into_bytes(),
        n,
        jwk["n"].as_str().unwrap().as_bytes().to_vec(),
    ];
    for secret in secrets {
        for alg in [
            jsonwebtoken::Algorithm::HS256,
            jsonwebtoken::Algorithm::HS512,
        ] {
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = Some(rs.kid());
            let token = jsonwebtoken::encode(
                &header,
                &body,
                &jsonwebtoken::EncodingKey::from_secret(&secret),
            )
            .unwrap();
            let expected = format!("algorithm not allowed: {alg:?}");
            assert_refused(auth.authenticate(&token).await, &token, &expected);
        }
    }
    assert_eq!(issuer.hits(), (0, 0), "refused before any key was fetched");

    // An asymmetric algorithm the issuer does not list is refused too.
    let rs_only = authenticator(&issuer.config(json!({"algorithms": ["RS256"]}))).await;
    let ec_token = es256().sign(&body).unwrap();
    assert_refused(
        rs_only.authenticate(&ec_token).await,
        &ec_token,
        "algorithm not allowed: ES256",
    );
    let rs_token = rs.sign(&body).unwrap();
    rs_only.authenticate(&rs_token).await.unwrap();
}

#[tokio::test]
async fn tampered_tokens_are_refused() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    let token = key.sign(&claims(&issuer.url, json!({}))).unwrap();
    let (header, rest) = token.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();

    // One character of the signature changed.
    let mut sig: Vec<u8> = signature.bytes().collect();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!("{header}.{payload}.{}", String::from_utf8(sig).unwrap());
    assert_refused(auth.authenticate(&flipped).await, &flipped, "bad signature");

    // Claims rewritten (another subject) under the original signature.
    let forged_claims = b64(&claims(&issuer.url, json!({"sub": "admin"})));
    let forged = format!("{header}.{forged_claims}.{signature}");
    assert_refused(auth.authenticate(&forged).await, &forged, "bad signature");

    // The signature of another key under this key's kid.
    let other = es256().sign(&claims(&issuer.url, json!({}))).unwrap();
    let swapped = format!("{header}.{payload}.{}", other.rsplit('.').next().unwrap());
    assert_refused(auth.authenticate(&swapped).await, &swapped, "bad signature");

    auth.authenticate(&token).await.unwrap();
}

#[tokio::test]
async fn malformed_tokens_are_refused_without_contacting_the_issuer() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let auth = authenticator(&issuer.config(json!({}))).await;
    let valid = key.sign(&claims(&issuer.url, json!({}))).unwrap();
    let two_parts = valid.rsplit_once('.').unwrap().0.to_string();
    let huge = format!("{valid}{}", "A".repeat(4 * 1024 * 1024));
    let cases = [
        (
            "correct horse battery staple".to_string(),
            "malformed token: not a JWT (characters outside base64url)",
        ),
        (
            two_parts,
            "malformed token: not a JWT (expected three dot-separated parts)",
        ),
        (
            "....".to_string(),
            "malformed token: encrypted tokens (JWE) are not supported",
        ),
        (
            "e30.e30.e30".to_string(),
            "malformed token: header has no alg",
        ),
        (
            "Zm9v.YmFy.YmF6".to_string(),
            "malformed token: header is not base64url-encoded JSON",
        ),
        (huge, "malformed token: longer than 16384 bytes"),
        (
            String::new(),
            "malformed token: empty; send the JWT as the password",
        ),
    ];
    for (token, expected) in cases {
        assert_refused(auth.authenticate(&token).await, &token, expected);
    }
    assert_eq!(issuer.hits(), (0, 0));
}

#[tokio::test]
async fn subject_allow_list() {
    let key = es256();
    let issuer = TestIssuer::start(&[&key]).await;
    let mut cfg = issuer.config(json!({}));
    cfg.subjects = serde_json::from_value(json!([
        {"group": "payments-agents"},
        {"subject": "auditor-1", "issuer": issuer.url},
    ]))
    .unwrap();
    let auth = authenticator(&cfg).await;
    let allowed = [json!({}), json!({"sub": "auditor-1", "groups": null})];
    for extra in allowed {
        let token = key.sign(&claims(&issuer.url, extra)).unwrap();
        auth.authenticate(&token).await.unwrap();
    }
    let refused = [
        json!({"groups": ["other-team"]}),
        json!({"groups": null}),
        json!({"sub": "auditor-10", "groups": null}),
    ];
    for extra in refused {
        let token = key.sign(&claims(&issuer.url, extra)).unwrap();
        assert_refused(
            auth.authenticate(&token).await,
            &token,
            "subject not allowed",
        );
    }
}

/// Claims of a projected service-account token as the API server issues
/// them (`kubectl create token report-agent --audience cardgate`, bound to
/// a pod).
fn service_account_claims(issuer: &str, ns: &str, sa: &str) -> Value {
    json!({
        "aud": [AUDIENCE],
        "exp": now() + 3600,
        "iat": now(),
        "nbf": now(),
        "iss": issuer,
        "jti": "7c1c3e2a-3d1e-4a43-9b7a-2f0e5f1d9c11",
        "kubernetes.io": {
            "namespace": ns,
            "node": {"name": "kind-worker", "uid": "5f7d8c9e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"},
            "pod": {"name": format!("{sa}-6d5f7c9b8-x2x7k"), "uid": "0b9c5f3e-7c1a-4d8e-b2f4-9c1d2e3f4a5b"},
            "serviceaccount": {"name": sa, "uid": "a3f1c2d4-5e6f-4a7b-8c9d-0e1f2a3b4c5d"},
            "warnafter": now() + 3000
        },
        "sub": format!("system:serviceaccount:{ns}:{sa}")
    })
}

#[tokio::test]
async fn kubernetes_service_account_tokens_map_to_their_username() {
    let rs = rsa();
    let issuer = TestIssuer::start(&[rs]).await;
    let dir = tempfile::tempdir().unwrap();
    let bearer = dir.path().join("token");
    std::fs::write(&bearer, "sidecar-sa-token\n").unwrap();
    let mut cfg = issuer.config(json!({"kubernetes": true, "bearerTokenFile": bearer}));
    cfg.subjects = serde_json::from_value(json!([{"podServiceAccount": true}])).unwrap();
    let pod = PodIdentity {
        namespace: Some("payments".into()),
        pod: Some("report-agent-6d5f7c9b8-x2x7k".into()),
        service_account: Some("report-agent".into()),
        ..PodIdentity::default()
    };
    let auth = Authenticator::new(&cfg, &pod).await.unwrap();

    let token = rs
        .sign(&service_account_claims(
            &issuer.url,
            "payments",
            "report-agent",
        ))
        .unwrap();
    let id = auth.authenticate(&token).await.unwrap();
    assert_eq!(id.subject, "system:serviceaccount:payments:report-agent");
    assert_eq!(
        id.groups,
        ["system:serviceaccounts", "system:serviceaccounts:payments"]
    );
    // Discovery and JWKS requests carried the sidecar's own bearer token,
    // as the API server's discovery endpoints require.
    let seen = issuer.served.lock().unwrap().authorization.clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|a| a.as_deref() == Some("Bearer sidecar-sa-token")),
        "{seen:?}"
    );

    // Another service account of the same namespace is not this pod's.
    let other = rs
        .sign(&service_account_claims(
            &issuer.url,
            "payments",
            "admin-agent",
        ))
        .unwrap();
    assert_refused(
        auth.authenticate(&other).await,
        &other,
        "subject not allowed",
    );

    // A token whose sub and kubernetes.io claim disagree is refused.
    let mut mixed = service_account_claims(&issuer.url, "payments", "report-agent");
    mixed["sub"] = json!("system:serviceaccount:kube-system:admin");
    let mixed = rs.sign(&mixed).unwrap();
    assert_refused(
        auth.authenticate(&mixed).await,
        &mixed,
        "claim kubernetes.io is not valid",
    );

    // A user token from the same issuer is not a service account.
    let user = rs.sign(&claims(&issuer.url, json!({}))).unwrap();
    assert_refused(
        auth.authenticate(&user).await,
        &user,
        "not a Kubernetes service-account token",
    );
}

#[tokio::test]
async fn static_jwks_file_for_standalone_use() {
    let (key, rotated) = (es256(), ed25519());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(&[&key]).to_string()).unwrap();
    let cfg: IdentityConfig = serde_json::from_value(json!({
        "issuers": [{"issuer": "https://dev.cardgate.local", "audiences": [AUDIENCE], "jwksFile": file}],
    }))
    .unwrap();
    let options = AuthenticatorOptions {
        refresh_interval: Duration::ZERO,
        ..AuthenticatorOptions::default()
    };
    let auth = Authenticator::with_options(&cfg, &PodIdentity::default(), options)
        .await
        .unwrap();
    let token = key
        .sign(&claims("https://dev.cardgate.local", json!({})))
        .unwrap();
    assert_eq!(auth.authenticate(&token).await.unwrap().subject, "agent-7");

    // Replacing the file rotates the key: an unknown kid re-reads it.
    std::fs::write(&file, jwks(&[&rotated]).to_string()).unwrap();
    let new_token = rotated
        .sign(&claims("https://dev.cardgate.local", json!({})))
        .unwrap();
    auth.authenticate(&new_token).await.unwrap();
    assert_refused(
        auth.authenticate(&token).await,
        &token,
        "unknown signing key",
    );
}

#[tokio::test]
async fn unusable_static_jwks_files_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = |file: &Path| -> IdentityConfig {
        serde_json::from_value(json!({
            "issuers": [{"issuer": "https://dev.cardgate.local", "audiences": [AUDIENCE], "jwksFile": file}],
        }))
        .unwrap()
    };
    let missing = dir.path().join("missing.json");
    let err = Authenticator::new(&config(&missing), &PodIdentity::default())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, IdentityError::Read { .. }), "{err}");

    let symmetric = dir.path().join("oct.json");
    std::fs::write(
        &symmetric,
        json!({"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]}).to_string(),
    )
    .unwrap();
    let err = Authenticator::new(&config(&symmetric), &PodIdentity::default())
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("symmetric keys are never accepted"),
        "{err}"
    );
}

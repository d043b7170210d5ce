//! The development tools as `make demo` uses them: `dev keygen` writes a key
//! pair, `dev token` mints a token with it, and the built binary's output
//! is accepted by the Authenticator configured with the written JWKS.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use cardgate_crds::config::IdentityConfig;
use cardgate_sidecar::identity::{Authenticator, PodIdentity};
use serde_json::json;

const ISSUER: &str = "https://dev.cardgate.local";

fn sidecar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cardgate-sidecar"))
        .args(args)
        .output()
        .expect("run cardgate-sidecar")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test]
async fn keygen_and_token_round_trip_through_the_authenticator() {
    for alg in ["ES256", "EdDSA", "RS256"] {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("state");
        let printed = ok(sidecar(&[
            "dev",
            "keygen",
            "--dir",
            path(&keys),
            "--alg",
            alg,
        ]));
        assert!(printed.starts_with("DEVELOPMENT ONLY"), "{printed}");

        let key_file = keys.join("dev-signing-key.pem");
        let jwks_file = keys.join("dev-jwks.json");
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{alg}: the private key is owner-only");
        let jwks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&jwks_file).unwrap()).unwrap();
        let jwk = &jwks["keys"][0];
        assert_eq!(jwk["alg"], alg);
        assert!(
            jwk.get("d").is_none(),
            "{alg}: the JWKS holds no private part"
        );
        assert!(jwk["kid"].as_str().is_some_and(|k| !k.is_empty()));

        let token = ok(sidecar(&[
            "dev",
            "token",
            "--key",
            path(&key_file),
            "--issuer",
            ISSUER,
            "--audience",
            "cardgate",
            "--subject",
            "demo-agent",
            "--group",
            "payments-agents",
            "--group",
            "demo",
            "--ttl",
            "10m",
        ]));
        let token = token.trim_end();
        assert_eq!(token.lines().count(), 1, "only the token on stdout");

        let cfg: IdentityConfig = serde_json::from_value(json!({
            "issuers": [{
                "issuer": ISSUER,
                "audiences": ["cardgate"],
                "jwksFile": jwks_file,
                "algorithms": ["ES256", "EdDSA", "RS256"],
            }],
            "subjects": [{"group": "payments-agents"}],
        }))
        .unwrap();
        let auth = Authenticator::new(&cfg, &PodIdentity::default())
            .await
            .unwrap();
        let id = auth.authenticate(token).await.unwrap();
        assert_eq!(id.subject, "demo-agent", "{alg}");
        assert_eq!(id.groups, ["payments-agents", "demo"]);
        let ttl = id.expires_at.as_second() - jiff::Timestamp::now().as_second();
        assert!((590..=600).contains(&ttl), "{alg}: ttl {ttl}");
    }
}

#[test]
fn keygen_never_overwrites_a_key_silently() {
    let dir = tempfile::tempdir().unwrap();
    let d = path(dir.path());
    ok(sidecar(&["dev", "keygen", "--dir", d]));
    let key_file = dir.path().join("dev-signing-key.pem");
    let before = std::fs::read(&key_file).unwrap();

    let refused = sidecar(&["dev", "keygen", "--dir", d, "--alg", "EdDSA"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already exists; pass --force"), "{stderr}");
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        before,
        "the key is untouched"
    );

    ok(sidecar(&[
        "dev", "keygen", "--dir", d, "--alg", "EdDSA", "--force",
    ]));
    assert_ne!(std::fs::read(&key_file).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn token_refuses_bad_input_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    ok(sidecar(&["dev", "keygen", "--dir", path(dir.path())]));
    let key = dir.path().join("dev-signing-key.pem");
    let base = |ttl: &str, key: &Path| {
        sidecar(&[
            "dev",
            "token",
            "--key",
            path(key),
            "--issuer",
            ISSUER,
            "--audience",
            "cardgate",
            "--subject",
            "a",
            "--ttl",
            ttl,
        ])
    };
    let long = base("25h", &key);
    assert!(!long.status.success());
    assert!(String::from_utf8_lossy(&long.stderr).contains("between 1s and 24h"));
    let vague = base("soon", &key);
    assert!(!vague.status.success());
    assert!(String::from_utf8_lossy(&vague.stderr).contains("not a duration like 10m"));

    let not_a_key = dir.path().join("dev-jwks.json");
    let wrong = base("10m", &not_a_key);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("not a P-256, Ed25519 or RSA private key"),
        "{stderr}"
    );
    assert!(wrong.stdout.is_empty());
}

#[test]
fn dev_tools_say_they_are_for_development_only() {
    let help = ok(sidecar(&["dev", "--help"]));
    assert!(help.contains("DEVELOPMENT ONLY"), "{help}");
    for sub in ["keygen", "token"] {
        let help = ok(sidecar(&["dev", sub, "--help"]));
        assert!(help.contains("DEVELOPMENT ONLY"), "{sub}: {help}");
    }
}

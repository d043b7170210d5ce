//! Real ServiceAccount tokens: the sidecar's authenticator accepts a token
//! the real API server issued through TokenRequest for the policy's
//! audience, finding the keys through the server's OIDC discovery and
//! `/openid/v1/jwks` as it does in a pod, and refuses a token the same
//! server issued for another audience.

use cardgate_crds::config::IdentityConfig;
use cardgate_e2e::cluster::apply;
use cardgate_e2e::controlplane::ControlPlane;
use cardgate_sidecar::identity::{Authenticator, PodIdentity};
use serde_json::json;

const NS: &str = "tokens";
const AUDIENCE: &str = "cardgate.dev/payments-db";

#[tokio::test]
async fn sidecar_verifies_real_service_account_tokens_with_the_servers_published_keys() {
    let Some(cp) = ControlPlane::shared() else {
        return;
    };
    let admin = cp.admin().await;
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    apply(&admin, &ns).await.expect("namespace");

    // The sidecar reads discovery and keys with its own pod's token, as the
    // API server requires (system:service-account-issuer-discovery).
    let own = cp.token(NS, "sidecar", &[], 600).await;
    let own_file = cp.dir().join("tokens-sidecar.token");
    std::fs::write(&own_file, own).unwrap();
    let cfg: IdentityConfig = serde_json::from_value(json!({
        "issuers": [{
            "issuer": cp.server(),
            "audiences": [AUDIENCE],
            "caFile": cp.dir().join("ca.crt"),
            "bearerTokenFile": own_file,
            "kubernetes": true
        }]
    }))
    .expect("identity config");
    let auth = Authenticator::new(&cfg, &PodIdentity::default())
        .await
        .expect("authenticator");
    assert!(
        auth.warm_up().await.is_empty(),
        "keys from {}: {:?}",
        cp.server(),
        auth.warm_up().await
    );

    let token = cp.token(NS, "agent", &[AUDIENCE], 600).await;
    let identity = auth
        .authenticate(&token)
        .await
        .expect("a token the server issued for the policy's audience");
    assert_eq!(
        identity.subject,
        format!("system:serviceaccount:{NS}:agent")
    );
    assert_eq!(identity.issuer, cp.server());

    let other = cp.token(NS, "agent", &["some-other-service"], 600).await;
    let refused = auth.authenticate(&other).await;
    assert!(
        refused.is_err(),
        "a token for another audience must be refused: {refused:?}"
    );
}

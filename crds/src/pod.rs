//! Conventions shared by the operator's injection webhook and the sidecar at
//! run time: environment variables, mount paths, ports, labels. Both sides
//! use these constants, so a rename cannot break one side silently.

/// The UID the sidecar runs as; agent containers may never use it because the
/// pod's iptables rules exempt it from interception.
pub const SIDECAR_UID: i64 = 2102;
/// Name of the injected sidecar container.
pub const SIDECAR_CONTAINER: &str = "cardgate-sidecar";
/// Name of the injected init container that programs iptables.
pub const INIT_CONTAINER: &str = "cardgate-init";

/// Downward-API environment: pod name.
pub const ENV_POD_NAME: &str = "CARDGATE_POD_NAME";
/// Downward-API environment: pod namespace.
pub const ENV_POD_NAMESPACE: &str = "CARDGATE_POD_NAMESPACE";
/// Downward-API environment: pod UID.
pub const ENV_POD_UID: &str = "CARDGATE_POD_UID";
/// Downward-API environment: the pod's service account.
pub const ENV_POD_SERVICE_ACCOUNT: &str = "CARDGATE_POD_SERVICE_ACCOUNT";
/// Downward-API environment: the node the pod runs on.
pub const ENV_NODE_NAME: &str = "CARDGATE_NODE_NAME";

/// Directory of the rendered configuration (the ConfigMap mount).
pub const CONFIG_DIR: &str = "/etc/cardgate";
/// The rendered configuration file inside [`CONFIG_DIR`].
pub const CONFIG_FILE: &str = "/etc/cardgate/config.yaml";
/// Key of the configuration in the rendered ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Parent of one directory per target holding `username` and `password`
/// (the credentials Secret mounts).
pub const CREDENTIALS_DIR: &str = "/var/run/cardgate/credentials";
/// Projected service-account token for the Kubernetes API (ApprovalRequests
/// and OIDC discovery); sidecar container only.
pub const API_TOKEN_FILE: &str = "/var/run/cardgate/tokens/kube/token";
/// The cluster CA, projected next to [`API_TOKEN_FILE`].
pub const API_CA_FILE: &str = "/var/run/cardgate/tokens/kube/ca.crt";
/// Projected service-account token presented to the operator's audit
/// collector; sidecar container only.
pub const COLLECTOR_TOKEN_FILE: &str = "/var/run/cardgate/tokens/collector/token";
/// Audience of the collector token: accepted by the collector only.
pub const COLLECTOR_AUDIENCE: &str = "cardgate-collector";
/// Projected service-account token the agent presents to the sidecar as its
/// password. Its audience is accepted by the sidecar only: neither the API
/// server nor the collector take it.
pub const AGENT_TOKEN_FILE: &str = "/var/run/cardgate/agent/token";
/// Audience of the agent token.
pub const AGENT_TOKEN_AUDIENCE: &str = "cardgate-sidecar";
/// Environment variable telling agent containers where their token is.
pub const ENV_AGENT_TOKEN_FILE: &str = "CARDGATE_TOKEN_FILE";
/// Name of the ConfigMap rendered for a policy: `cardgate-<policy>`.
pub fn config_map_name(policy: &str) -> String {
    format!("cardgate-{policy}")
}
/// Writable scratch directory (emptyDir) for recordings and spooled audit.
pub const STATE_DIR: &str = "/var/run/cardgate/state";

/// Admin port of the sidecar: `/metrics`, `/healthz`, `/readyz`.
pub const ADMIN_PORT: u16 = 9102;
/// Port for connections redirected by iptables (transparent mode).
pub const TRANSPARENT_PORT: u16 = 15001;

/// Pod label set on governed pods: the name of the governing AccessPolicy.
/// Generated NetworkPolicies admit traffic from pods carrying it.
pub const LABEL_PROXIED: &str = "cardgate.dev/proxied";
/// Pod label that opts a pod out of injection (`"false"`).
pub const LABEL_INJECT: &str = "cardgate.dev/inject";
/// Namespace label that enables injection (`"enabled"`).
pub const LABEL_NAMESPACE_INJECTION: &str = "cardgate.dev/injection";
/// Pod annotation: hash of the rendered configuration the pod started with.
pub const ANNOTATION_CONFIG_HASH: &str = "cardgate.dev/config-hash";

//! The real Kubernetes control plane the cluster suites run against:
//! `cardgate-controlplane` (e2e/controlplane, built by `make deps` through
//! e2e/scripts/controlplane.sh) runs etcd, kube-apiserver and
//! kube-controller-manager on loopback, with kubectl and helm built from the
//! same modules next to it.
//!
//! [`ControlPlane::shared`] starts one per test binary on first use; the
//! process holds the write end of the control plane's stdin, so the control
//! plane and its state directory go away when the test binary exits, however
//! it exits. [`ControlPlane::private`] starts one a test owns alone.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Environment variable that turns a missing control plane into a failure.
pub const REQUIRE_CLUSTER: &str = "CARDGATE_E2E_REQUIRE_CLUSTER";
/// Overrides the directory holding `cardgate-controlplane`, `kubectl` and
/// `helm` (default: `target/controlplane/current`).
pub const BIN_DIR_VAR: &str = "CARDGATE_CONTROLPLANE_BIN";

/// A running control plane. Stopped when dropped (private ones) or when the
/// test binary exits (the shared one).
pub struct ControlPlane {
    bin: PathBuf,
    dir: PathBuf,
    server: String,
    child: Child,
    /// Closing it (drop, or process exit) stops the control plane.
    lifeline: Option<ChildStdin>,
}

impl ControlPlane {
    /// The test binary's control plane, started on first use, or `None`
    /// (test skipped) when the binaries are not built.
    pub fn shared() -> Option<&'static ControlPlane> {
        static SHARED: OnceLock<Option<ControlPlane>> = OnceLock::new();
        SHARED.get_or_init(Self::private).as_ref()
    }

    /// A control plane of its own, or `None` (test skipped) when the
    /// binaries are not built.
    pub fn private() -> Option<ControlPlane> {
        let bin = bin_dir();
        if !bin.join("cardgate-controlplane").is_file() {
            crate::skip_or_fail(
                REQUIRE_CLUSTER,
                &format!(
                    "{} has no control plane binaries (make deps builds them)",
                    bin.display()
                ),
            );
            return None;
        }
        Some(Self::start(bin))
    }

    fn start(bin: PathBuf) -> ControlPlane {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cardgate-controlplane-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut child = Command::new(bin.join("cardgate-controlplane"))
            .args(["up", "--stdin-lifeline", "--ephemeral", "--dir"])
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start cardgate-controlplane: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("control plane stdout");
        let Some(server) = line.trim().strip_prefix("ready ") else {
            let status = child.wait();
            panic!(
                "the control plane did not start ({status:?}); logs in {}",
                dir.display()
            );
        };
        let lifeline = child.stdin.take();
        ControlPlane {
            bin,
            server: server.to_string(),
            dir,
            child,
            lifeline,
        }
    }

    /// The API server's URL (`https://127.0.0.1:PORT`), which is also the
    /// service-account issuer.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The state directory (certificates, kubeconfigs, component logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubeconfig of `user`: `admin` (system:masters), `alice` (group
    /// payments-oncall) or `bob`, or one written by [`Self::service_account`].
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.kubeconfig"))
    }

    /// The cluster CA certificate (PEM) clients verify the server with.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.crt")).expect("ca.crt")
    }

    /// A client acting as `user` (see [`Self::kubeconfig`]).
    pub async fn client(&self, user: &str) -> Client {
        let path = self.kubeconfig(user);
        let kc = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        Client::try_from(config).expect("client")
    }

    /// The admin client.
    pub async fn admin(&self) -> Client {
        self.client("admin").await
    }

    /// Runs the built `kubectl` as `user` in the repository root.
    pub fn kubectl(&self, user: &str, args: &[&str]) -> Output {
        self.tool("kubectl", user, args)
    }

    /// Runs the built `helm` as `user` in the repository root.
    pub fn helm(&self, user: &str, args: &[&str]) -> Output {
        self.tool("helm", user, args)
    }

    /// The path of a tool built next to the control plane (`kubectl`, `helm`).
    pub fn tool_path(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    fn tool(&self, tool: &str, user: &str, args: &[&str]) -> Output {
        Command::new(self.tool_path(tool))
            .args(args)
            .env("KUBECONFIG", self.kubeconfig(user))
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .current_dir(crate::repo_root())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool} {args:?}: {e}"))
    }

    /// Creates ServiceAccount `ns/name` (if missing), asks the API server for
    /// a token for it through TokenRequest, and writes a kubeconfig named
    /// `<ns>.<name>` that acts as it. Returns the kubeconfig's user name for
    /// [`Self::client`] and [`Self::kubectl`].
    pub async fn service_account(&self, ns: &str, name: &str) -> String {
        let token = self.token(ns, name, &[], 3600).await;
        let user = format!("{ns}.{name}");
        let admin = std::fs::read_to_string(self.kubeconfig("admin")).expect("admin kubeconfig");
        let mut kc: serde_json::Value = serde_saphyr::from_str(&admin).expect("admin kubeconfig");
        kc["users"] = serde_json::json!([{"name": user, "user": {"token": token}}]);
        kc["contexts"][0]["context"]["user"] = user.clone().into();
        kc["contexts"][0]["context"]["namespace"] = ns.into();
        std::fs::write(self.kubeconfig(&user), serde_json::to_vec(&kc).unwrap())
            .expect("write kubeconfig");
        user
    }

    /// A token for ServiceAccount `ns/name` (created if missing) from
    /// TokenRequest, for `audiences` (empty: the API server's own).
    pub async fn token(&self, ns: &str, name: &str, audiences: &[&str], seconds: i64) -> String {
        let admin = self.admin().await;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, ns);
        let sa = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {ns}/{name}: {e}"),
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!audiences.is_empty())
                    .then(|| audiences.iter().map(|a| a.to_string()).collect()),
                expiration_seconds: Some(seconds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{name}: {e}"));
        answer
            .status
            .and_then(|s| s.token)
            .expect("TokenRequest gives a token")
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.lifeline.take());
        let _ = self.child.wait();
    }
}

fn bin_dir() -> PathBuf {
    std::env::var_os(BIN_DIR_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/controlplane/current"))
}

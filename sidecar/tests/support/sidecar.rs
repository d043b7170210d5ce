//! A real sidecar (`runtime::start`) in front of the shared test PostgreSQL,
//! configured like `config/standalone/cardgate.yaml`, with a development key
//! pair for agent tokens and every file it writes in one temp directory.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cardgate_e2e::pg::{PROXY_PASSWORD, PROXY_USER, Postgres};
use cardgate_sidecar::identity::dev::{DevAlgorithm, DevKey, keygen};
use cardgate_sidecar::runtime::{self, Sidecar};

/// Issuer of the test tokens.
pub const ISSUER: &str = "https://dev.cardgate.test";

/// A running sidecar and its files.
pub struct Running {
    pub sidecar: Option<Sidecar>,
    pub dir: PathBuf,
    pub addr: SocketAddr,
    key: DevKey,
}

impl Running {
    /// Starts a sidecar with `rules_yaml` (the `rules:` section and anything
    /// after it) in front of `pg`.
    pub async fn start(pg: &Postgres, extra_yaml: &str) -> Running {
        Self::start_with(pg, "", extra_yaml, |_| {}).await
    }

    /// Like [`Running::start`], with `target_yaml` added to the target's
    /// settings (indented like them) and `prepare` run on the directory
    /// first (to place certificates).
    pub async fn start_with(
        pg: &Postgres,
        target_yaml: &str,
        extra_yaml: &str,
        prepare: impl FnOnce(&Path),
    ) -> Running {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cardgate-sidecar-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        keygen(&dir, DevAlgorithm::Es256, false).unwrap();
        let key =
            DevKey::from_pem(&std::fs::read_to_string(dir.join("dev-signing-key.pem")).unwrap())
                .unwrap();
        std::fs::write(dir.join("upstream-password"), format!("{PROXY_PASSWORD}\n")).unwrap();
        std::fs::create_dir(dir.join("approvals")).unwrap();
        prepare(&dir);
        std::fs::set_permissions(
            dir.join("approvals"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let config = format!(
            r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {{name: test-policy, namespace: payments}}
identity:
  issuers:
    - issuer: {ISSUER}
      audiences: [cardgate]
      jwksFile: dev-jwks.json
  subjects:
    - group: payments-agents
targets:
  - name: payments-db
    listen: 127.0.0.1:0
    upstream: {{host: 127.0.0.1, port: {port}}}
    database: payments
    credentials: {{username: {PROXY_USER}, passwordFile: upstream-password}}
{target_yaml}
audit:
  sinks: [{{type: file, path: audit.log, fsync: batch}}]
  recordingsDir: recordings
admin: {{listen: "127.0.0.1:0"}}
{extra_yaml}
"#,
            port = pg.port
        );
        let path = dir.join("cardgate.yaml");
        std::fs::write(&path, config).unwrap();
        let sidecar = runtime::start(&path)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let addr = sidecar.listeners[0].1;
        Running {
            sidecar: Some(sidecar),
            dir,
            addr,
            key,
        }
    }

    /// A valid token for `subject` in `groups`.
    pub fn token(&self, subject: &str, groups: &[&str]) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        self.key
            .mint(ISSUER, "cardgate", subject, &groups, 600)
            .unwrap()
    }

    /// A token of an allowed agent.
    pub fn agent_token(&self) -> String {
        self.token("agent-7", &["payments-agents"])
    }

    /// tokio-postgres config for the sidecar with `token`.
    pub fn config(&self, token: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user("agent-7")
            .password(token)
            .dbname("payments");
        c
    }

    /// Connects with a valid token.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = self
            .config(&self.agent_token())
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect through the sidecar");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }

    /// The audit log's path.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Audit records written so far (parsed).
    pub fn records(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops the sidecar (closing the audit trail).
    pub async fn stop(&mut self) {
        if let Some(s) = self.sidecar.take() {
            s.shutdown().await.unwrap();
        }
    }

    /// Every file under the sidecar's directory except the inputs.
    pub fn written_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(&self.dir, &mut out);
        out.retain(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !matches!(
                name.as_ref(),
                "cardgate.yaml" | "upstream-password" | "dev-signing-key.pem" | "dev-jwks.json"
            )
        });
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

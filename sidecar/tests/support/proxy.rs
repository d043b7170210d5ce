//! A protocol-level harness: the real relay in front of the real PostgreSQL
//! test server, with a [`FixedGuard`] whose answers are fixed, so protocol
//! behaviour is tested apart from policy and masking decisions.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cardgate_e2e::pg::{PROXY_PASSWORD, PROXY_USER, Postgres};
use cardgate_sidecar::gate::{
    Access, ClientInfo, Completion, Guard, Held, Protocol, Resolved, RowLimits, SessionSummary,
    Verdict,
};
use cardgate_sidecar::postgres::cancel::CancelRegistry;
use cardgate_sidecar::postgres::guard::{ColumnOutput, PgGuard, SessionRecorder};
use cardgate_sidecar::postgres::server::TargetProxy;
use cardgate_sidecar::postgres::upstream::{Credential, UpstreamSettings};

/// The only token [`FixedGuard`] accepts.
pub const TOKEN: &str = "good-token";

/// Answers: token [`TOKEN`] is valid; statements containing DROP and
/// FunctionCalls are denied; runs of 13+ digits keep only their last four;
/// columns named `cvv` become NULL.
#[derive(Default)]
pub struct FixedGuard {
    pub limits: RowLimits,
    pub events: Mutex<Vec<String>>,
    pub outcomes: Mutex<Vec<(String, Completion)>>,
    /// Every byte the relay handed to recorders, as one text.
    pub transcript: Arc<Mutex<Vec<u8>>>,
}

/// Appends everything recorded to one buffer, so tests can scan it.
pub struct Transcript(Arc<Mutex<Vec<u8>>>);

impl SessionRecorder for Transcript {
    fn query(&mut self, sql: &str) {
        self.0.lock().unwrap().extend_from_slice(sql.as_bytes());
    }
    fn columns(&mut self, columns: &[(&[u8], u32)]) {
        for (name, _) in columns {
            self.0.lock().unwrap().extend_from_slice(name);
        }
    }
    fn row(&mut self, body: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(body);
    }
    fn complete(&mut self, tag: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(tag);
    }
    fn report(&mut self, _error: bool, body: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(body);
    }
    fn idle(&mut self) {}
}

pub struct FixedSession {
    pub subject: String,
}

impl FixedGuard {
    fn log(&self, e: String) {
        self.events.lock().unwrap().push(e);
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    pub fn outcomes(&self) -> Vec<(String, Completion)> {
        self.outcomes.lock().unwrap().clone()
    }
}

impl Guard for FixedGuard {
    type Session = FixedSession;
    type Statement = String;
    type Hold = String;
    type Waiting = ();

    async fn authenticate(&self, token: &str, client: &ClientInfo) -> Result<FixedSession, String> {
        if token == TOKEN {
            self.log(format!("auth ok {}", client.user));
            Ok(FixedSession {
                subject: client.user.clone(),
            })
        } else {
            self.log("auth failed".into());
            Err("token expired".into())
        }
    }

    fn refused(&self, _client: &ClientInfo, reason: &str) {
        self.log(format!("refused {reason}"));
    }

    fn session_started(&self, s: &FixedSession) {
        self.log(format!("start {}", s.subject));
    }

    fn greeting(&self, s: &FixedSession) -> Option<String> {
        Some(format!("connected as {}", s.subject))
    }

    fn decide(&self, _s: &mut FixedSession, access: Access<'_>) -> Verdict<String, String> {
        let Access::Sql {
            text: sql,
            protocol,
            ..
        } = access;
        if protocol == Protocol::FunctionCall || sql.to_ascii_uppercase().contains("DROP") {
            self.log(format!("deny {sql}"));
            Verdict::Deny(format!(
                "cardgate: denied by AccessPolicy test/fixed rule 1 ({})",
                protocol.as_str()
            ))
        } else {
            Verdict::Allow(sql.to_string())
        }
    }

    fn statement_closed(&self, _s: &mut FixedSession, _name: &str) {}

    async fn hold(&self, sql: String) -> Held<String, ()> {
        Held::Now(Resolved::Deny(format!("no approvals here: {sql}")))
    }

    async fn await_decision(&self, _waiting: &()) -> Resolved<String> {
        Resolved::Deny("no approvals here".into())
    }

    async fn withdraw(&self, _waiting: (), _reason: &str) {}

    fn completed(&self, statement: &String, outcome: &Completion) {
        self.outcomes
            .lock()
            .unwrap()
            .push((statement.clone(), outcome.clone()));
    }

    fn session_ended(&self, s: FixedSession, summary: &SessionSummary) {
        self.log(format!("end {} {:?}", s.subject, summary.error));
    }

    fn mask_text(&self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut found = 0;
        let mut i = 0;
        let start_len = out.len();
        let mut last = 0;
        while i < input.len() {
            if input[i].is_ascii_digit() {
                let s = i;
                while i < input.len() && input[i].is_ascii_digit() {
                    i += 1;
                }
                if i - s >= 13 {
                    out.extend_from_slice(&input[last..s]);
                    out.extend(std::iter::repeat_n(b'*', i - s - 4));
                    out.extend_from_slice(&input[i - 4..i]);
                    last = i;
                    found += 1;
                }
            } else {
                i += 1;
            }
        }
        if found == 0 {
            out.truncate(start_len);
            return None;
        }
        out.extend_from_slice(&input[last..]);
        Some(found)
    }

    fn limits(&self) -> RowLimits {
        self.limits
    }

    fn policy_name(&self) -> &str {
        "test/fixed"
    }
}

impl PgGuard for FixedGuard {
    type ColumnRule = ();
    type Recorder = Transcript;

    fn recorder(&self, _s: &FixedSession) -> Option<Transcript> {
        Some(Transcript(Arc::clone(&self.transcript)))
    }

    fn has_column_rules(&self) -> bool {
        true
    }

    fn column_rule(&self, _schema: &str, _table: &str, column: &str) -> Option<()> {
        (column == "cvv").then_some(())
    }

    fn mask_column(
        &self,
        _rule: (),
        _value: &[u8],
        _text_like: bool,
        _out: &mut Vec<u8>,
    ) -> ColumnOutput {
        ColumnOutput::Null
    }
}

/// A running proxy in front of `pg`.
pub struct Proxy {
    pub addr: SocketAddr,
    pub guard: Arc<FixedGuard>,
    pub cancels: Arc<CancelRegistry>,
    _dir: tempdir::Dir,
    _task: tokio::task::JoinHandle<()>,
}

mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Proxy {
    /// Starts a proxy on an ephemeral port.
    pub async fn start(pg: &Postgres, guard: FixedGuard) -> Proxy {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "cardgate-proxy-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("password");
        std::fs::write(&pw, format!("{PROXY_PASSWORD}\n")).unwrap();
        let upstream = UpstreamSettings {
            host: "127.0.0.1".into(),
            port: pg.port,
            database: None,
            username: Credential::Value(PROXY_USER.into()),
            password_file: pw.display().to_string(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            max_message: 1 << 20,
        };
        let guard = Arc::new(guard);
        let cancels = Arc::new(CancelRegistry::default());
        let proxy = Arc::new(TargetProxy::new(
            "payments-db".into(),
            Arc::clone(&guard),
            upstream,
            None,
            Arc::clone(&cancels),
            Arc::new(tokio::sync::Semaphore::new(400)),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(proxy.serve(listener, std::future::pending()));
        Proxy {
            addr,
            guard,
            cancels,
            _dir: tempdir::Dir(dir),
            _task: task,
        }
    }

    /// A tokio-postgres config for the proxy with the good token.
    pub fn config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.addr.port())
            .user("agent")
            .password(TOKEN)
            .dbname("payments");
        c
    }

    /// Connects with tokio-postgres and drives the connection in a task.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) = self
            .config()
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect through the proxy");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

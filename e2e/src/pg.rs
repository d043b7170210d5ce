//! A real PostgreSQL server for tests: `initdb` in a temporary directory, a
//! free port on 127.0.0.1, a SCRAM role for the sidecar and a small payments
//! schema with card numbers. One shared server per test binary
//! ([`Postgres::shared`]); tests that stop or restart the server start their
//! own ([`Postgres::start`]). Servers are stopped and their directories
//! removed when dropped, and at process exit for the shared one.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server
//! runs as the `postgres` user that Debian's package creates.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Password of the sidecar's upstream role (`cardgate_proxy`, SCRAM).
pub const PROXY_PASSWORD: &str = "s3cr3t-upstream-Pa55";
/// Upstream role the sidecar logs in as.
pub const PROXY_USER: &str = "cardgate_proxy";
/// A role whose password is stored as md5, for old-server compatibility tests.
pub const MD5_USER: &str = "cardgate_md5";
/// Password of [`MD5_USER`].
pub const MD5_PASSWORD: &str = "md5-Pa55word";
/// Database with the payments schema.
pub const DATABASE: &str = "payments";

/// Card numbers stored in `public.cards` (all Luhn-valid test PANs); tests
/// scan every byte the sidecar produces for them.
pub const PANS: &[&str] = &[
    "4111111111111111",
    "5555555555554444",
    "378282246310005",
    "6011111111111117",
    "3530111333300000",
    "4012888888881881",
];

/// The payments schema and data every shared server starts with (the same
/// file `make demo` loads).
pub const SCHEMA: &str = include_str!("../../config/standalone/payments.sql");

/// Where a server listens, for servers that are not on 127.0.0.1 of this
/// network namespace.
#[derive(Debug, Clone)]
pub struct Listen {
    /// `listen_addresses`: comma-separated addresses.
    pub addresses: String,
    /// TCP port.
    pub port: u16,
    /// Network namespace (`ip netns`) the server runs in.
    pub netns: Option<String>,
    /// Client ranges admitted over TCP with a password (pg_hba `host` lines),
    /// besides loopback.
    pub clients: Vec<String>,
}

/// A running PostgreSQL server.
pub struct Postgres {
    /// TCP port (on 127.0.0.1 unless started with [`Postgres::start_on`]).
    pub port: u16,
    listen: Listen,
    dir: PathBuf,
    bin: PathBuf,
    child: Mutex<Option<Child>>,
    as_postgres_user: bool,
}

static SHARED: OnceLock<Postgres> = OnceLock::new();
static SHARED_PID: AtomicI32 = AtomicI32::new(0);
static SHARED_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn stop_shared_at_exit() {
    let pid = SHARED_PID.load(Ordering::SeqCst);
    if pid > 0 {
        // SIGQUIT: immediate shutdown, no checkpoint; the directory goes next.
        unsafe { libc::kill(pid, libc::SIGQUIT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && unsafe { libc::kill(pid, 0) } == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(dir) = SHARED_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

impl Postgres {
    /// The server shared by every test of this binary, started on first use.
    pub fn shared() -> &'static Postgres {
        SHARED.get_or_init(|| {
            let pg = Postgres::start();
            SHARED_PID.store(pg.pid(), Ordering::SeqCst);
            let _ = SHARED_DIR.set(pg.dir.clone());
            unsafe { libc::atexit(stop_shared_at_exit) };
            pg
        })
    }

    /// Starts a dedicated server with the payments schema.
    pub fn start() -> Postgres {
        let port = free_port();
        Self::start_on(Listen {
            addresses: "127.0.0.1".into(),
            port,
            netns: None,
            clients: Vec::new(),
        })
    }

    /// Starts a dedicated server with the payments schema on `listen`; the
    /// superuser still reaches it over its Unix socket from anywhere.
    pub fn start_on(listen: Listen) -> Postgres {
        let bin = bin_dir();
        let as_postgres_user = unsafe { libc::geteuid() } == 0;
        let dir = std::env::temp_dir().join(format!(
            "cardgate-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).expect("create temp dir");
        if as_postgres_user {
            chown_postgres(&dir);
            chown_postgres(&dir.join("sock"));
        }
        let pwfile = dir.join("superuser-pw");
        std::fs::write(&pwfile, "unused-superuser-pw\n").unwrap();
        if as_postgres_user {
            chown_postgres(&pwfile);
        }
        let data = dir.join("data");
        let out = run_as(
            as_postgres_user,
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth-local=trust", "--auth-host=md5"])
                .arg(format!("--pwfile={}", pwfile.display()))
                .args(["-E", "UTF8", "--locale=C", "--no-sync"]),
        )
        .output()
        .expect("run initdb (is the postgresql package installed?)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if !listen.clients.is_empty() {
            use std::io::Write;
            let mut hba = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("pg_hba.conf"))
                .expect("open pg_hba.conf");
            for c in &listen.clients {
                writeln!(hba, "host all all {c} md5").expect("write pg_hba.conf");
            }
        }
        let pg = Postgres {
            port: listen.port,
            listen,
            dir,
            bin,
            child: Mutex::new(None),
            as_postgres_user,
        };
        pg.spawn();
        pg.setup();
        pg
    }

    fn spawn(&self) {
        let log = std::fs::File::create(self.dir.join("postgres.log")).unwrap();
        if self.as_postgres_user {
            chown_postgres(&self.dir.join("postgres.log"));
        }
        let mut command = match &self.listen.netns {
            // `ip netns exec` must run as root; the server drops to the
            // postgres user after entering the namespace.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]);
                if self.as_postgres_user {
                    let (uid, gid) = postgres_ids();
                    c.args([
                        "setpriv",
                        "--reuid",
                        &uid.to_string(),
                        "--regid",
                        &gid.to_string(),
                    ]);
                    c.args(["--clear-groups", "--"]);
                }
                c.arg(self.bin.join("postgres")).env("HOME", "/tmp");
                c
            }
            None => {
                let mut c = Command::new(self.bin.join("postgres"));
                run_as(self.as_postgres_user, &mut c);
                c
            }
        };
        let child = command
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-h",
                &self.listen.addresses,
                "-k",
            ])
            .arg(self.dir.join("sock"))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "max_connections=400",
                "-c",
                "shared_buffers=32MB",
            ])
            .args(["-c", "password_encryption=scram-sha-256"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // Over the Unix socket: it works from any network namespace.
            let ok = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(self.dir.join("sock"))
                .args(["-p", &self.port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start: {}",
                std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn setup(&self) {
        self.psql(
            "postgres",
            &format!(
                "CREATE ROLE {PROXY_USER} LOGIN PASSWORD '{PROXY_PASSWORD}';
                 SET password_encryption = 'md5';
                 CREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';
                 CREATE DATABASE {DATABASE} OWNER {PROXY_USER};"
            ),
        );
        self.psql_as(DATABASE, PROXY_USER, SCHEMA);
        self.psql(
            DATABASE,
            &format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {MD5_USER};"),
        );
    }

    /// Runs SQL as the superuser over the Unix socket and returns stdout;
    /// panics with psql's stderr on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.psql_as(db, "postgres", sql)
    }

    /// Runs SQL as `user` (trusted over the Unix socket); statements run one
    /// by one, as in a script.
    pub fn psql_as(&self, db: &str, user: &str, sql: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.join("sock"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                user,
                "-d",
                db,
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run psql");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(sql.as_bytes())
            .expect("write SQL to psql");
        let out = child.wait_with_output().expect("wait for psql");
        assert!(
            out.status.success(),
            "psql failed: {}\n{sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Turns on TLS with the given PEM certificate chain and key (written
    /// into the data directory, readable by the server only) and reloads.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.dir.join("data");
        for (name, content) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if self.as_postgres_user {
                chown_postgres(&path);
            }
        }
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Directory with PostgreSQL's binaries (psql, pgbench, …).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// PID of the postmaster.
    pub fn pid(&self) -> i32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .map(|c| c.id() as i32)
            .unwrap_or(0)
    }

    /// Stops the server immediately (like a crash).
    pub fn stop(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGQUIT) };
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port after [`stop`](Self::stop).
    pub fn restart(&self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: AtomicI32 = AtomicI32::new(0);

fn run_as(as_postgres: bool, cmd: &mut Command) -> &mut Command {
    if as_postgres {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

fn postgres_ids() -> (u32, u32) {
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root but there is no `postgres` user: install Debian's postgresql package"
    );
    unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
}

fn chown_postgres(p: &Path) {
    let (uid, gid) = postgres_ids();
    std::os::unix::fs::chown(p, Some(uid), Some(gid)).expect("chown to postgres");
}

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// PostgreSQL's binary directory: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).collect())
            .unwrap_or_default();
        candidates.sort();
        if let Some(dir) = candidates.into_iter().rev().find(|d| d.join("postgres").exists()) {
            return dir;
        }
        let out = Command::new("pg_config").arg("--bindir").output();
        match out {
            Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
            _ => panic!("PostgreSQL server binaries not found: install Debian's postgresql package (make deps)"),
        }
    })
    .clone()
}

//! Transparent interception with real iptables in real network namespaces,
//! no Kubernetes: a "db" namespace runs PostgreSQL on its own addresses; an
//! "agent pod" namespace gets `cardgate-sidecar init` (as the init container
//! would run it), the sidecar as UID 2102, and an agent as UID 2200 that runs
//! psql against the database's own address.
//!
//! Skipped where `ip netns` is not permitted (not root, no iproute2 or
//! iptables); `CARDGATE_E2E_REQUIRE_NETNS=1` (set by CI) makes that a failure.
//! The addresses (198.18.0.0/24 and fd00:cafe::/64) live only on the veth
//! pair between the test's two namespaces, which have no route anywhere
//! else.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cardgate_crds::pod::SIDECAR_UID;
use cardgate_e2e::netns::{self, Guarded, Netns};
use cardgate_e2e::pg::{self, Listen, Postgres};

const REQUIRE: &str = "CARDGATE_E2E_REQUIRE_NETNS";
const AGENT_UID: u32 = 2200;
const DB_V4: &str = "198.18.0.1";
const POD_V4: &str = "198.18.0.2";
const DB_V6: &str = "fd00:cafe::1";
const POD_V6: &str = "fd00:cafe::2";
const ISSUER: &str = "https://dev.cardgate.local";

fn available() -> bool {
    match netns::unavailable() {
        None => true,
        Some(why) => cardgate_e2e::skip_or_fail(REQUIRE, &why),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory owned by the sidecar's UID, removed on drop.
struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Workdir {
        let dir = std::env::temp_dir().join(format!(
            "cardgate-transparent-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Workdir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Hands every file to the sidecar's UID (the agent's UID gets nothing).
    fn give_to_sidecar(&self) {
        let uid = SIDECAR_UID as u32;
        std::os::unix::fs::chown(&self.0, Some(uid), Some(uid)).unwrap();
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700)).unwrap();
        for e in std::fs::read_dir(&self.0).unwrap() {
            std::os::unix::fs::chown(e.unwrap().path(), Some(uid), Some(uid)).unwrap();
        }
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos().into())
        .unwrap_or(0)
}

fn config(audit: &Path) -> String {
    format!(
        r#"apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy:
  name: transparent-e2e
identity:
  issuers:
    - issuer: {ISSUER}
      audiences: [cardgate]
      jwksFile: dev-jwks.json
  subjects:
    - group: payments-agents
targets:
  - name: payments-db
    protocol: postgres
    transparent: true
    upstream:
      host: {DB_V4}
      port: 5432
      addresses: [{DB_V4}, "{DB_V6}"]
    database: {db}
    credentials:
      username: {user}
      passwordFile: upstream-password
rules:
  - name: session-control
    action: allow
    match:
      classes: [control]
  - name: read-payments
    action: allow
    match:
      classes: [read]
      tables: [public.customers, public.orders, public.cards]
  - name: no-ddl
    action: deny
    match:
      classes: [ddl, dangerous, unparseable]
defaultAction: deny
masking:
  rules:
    - name: card-numbers
      spec:
        detectors:
          - type: pan
          - type: column
            columns: ["*.pan"]
        action:
          type: truncate
audit:
  sinks:
    - type: file
      path: {audit}
      fsync: never
proxy:
  transparentListen: 0.0.0.0:15001
admin:
  listen: 127.0.0.1:9102
"#,
        db = pg::DATABASE,
        user = pg::PROXY_USER,
        audit = audit.display(),
    )
}

/// Both families' tables as `*-save` prints them, without the timestamp
/// comments.
fn saved(pod: &Netns) -> String {
    let mut all = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let out = pod.command(tool).output().unwrap();
        assert!(out.status.success(), "{tool}: {}", text(&out));
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.starts_with('#') {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    all
}

/// The rule lines of [`saved`] output (chains declared empty are not rules).
fn rules(saved: &str) -> Vec<&str> {
    saved.lines().filter(|l| l.starts_with("-A")).collect()
}

/// psql as the agent (UID 2200) inside the pod, to `host`:`port` with
/// `token` as the password.
fn agent_psql(pod: &Netns, host: &str, port: u16, token: &str, sql: &str) -> Output {
    pod.command_as(AGENT_UID, pg::bin_dir().join("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .arg(format!(
            "host={host} port={port} dbname={} user=agent connect_timeout=3",
            pg::DATABASE
        ))
        .env("PGPASSWORD", token)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// A raw TCP connection from `uid` inside the pod, given a second (on a
/// veth pair a connection takes well under a millisecond; a dropped SYN never
/// gets an answer).
fn connects(pod: &Netns, uid: u32, addr: SocketAddr) -> bool {
    let target = match addr {
        SocketAddr::V4(a) => format!("/dev/tcp/{}/{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("/dev/tcp/{}/{}", a.ip(), a.port()),
    };
    pod.command_as(uid, "timeout")
        .args(["1", "bash", "-c", &format!("exec 3<>{target}")])
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// A listener in the db namespace that counts the connections it accepts.
fn counting_listener(db: &Netns, addr: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener: TcpListener = db.enter(|| TcpListener::bind(addr).unwrap());
    let local = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&count);
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (local, count)
}

fn ready(pod: &Netns) -> bool {
    pod.enter(|| {
        let Ok(mut s) = TcpStream::connect_timeout(
            &"127.0.0.1:9102".parse().unwrap(),
            Duration::from_millis(200),
        ) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply.starts_with("HTTP/1.1 200")
    })
}

#[test]
fn transparent_interception_in_network_namespaces() {
    if !available() {
        return;
    }
    let sidecar = netns::sidecar_binary();
    // Declared first, dropped last: every process below is gone by then.
    let db = Netns::create("db").unwrap();
    let pod = Netns::create("pod").unwrap();
    netns::link(
        &db,
        &[&format!("{DB_V4}/24"), &format!("{DB_V6}/64")],
        &pod,
        &[&format!("{POD_V4}/24"), &format!("{POD_V6}/64")],
    )
    .unwrap();
    let pg = Postgres::start_on(Listen {
        addresses: format!("{DB_V4},{DB_V6}"),
        port: 5432,
        netns: Some(db.name.clone()),
        clients: vec!["198.18.0.0/24".into(), "fd00:cafe::/64".into()],
    });

    let work = Workdir::new();
    let out = Command::new(&sidecar)
        .args(["dev", "keygen", "--dir"])
        .arg(&work.0)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(work.path("upstream-password"), pg::PROXY_PASSWORD).unwrap();
    let audit = work.path("audit.log");
    std::fs::write(work.path("config.yaml"), config(&audit)).unwrap();
    let token = |group: &str| {
        let out = Command::new(&sidecar)
            .args(["dev", "token", "--key"])
            .arg(work.path("dev-signing-key.pem"))
            .args(["--issuer", ISSUER, "--audience", "cardgate"])
            .args(["--subject", "report-agent", "--group", group])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let good = token("payments-agents");
    let outsider = token("marketing");
    work.give_to_sidecar();
    let config_file = work.path("config.yaml");

    // Before interception the database is one hop away for everyone.
    let before = saved(&pod);
    let db4: SocketAddr = format!("{DB_V4}:5432").parse().unwrap();
    assert!(connects(&pod, AGENT_UID, db4), "the veth pair works");

    // 1. init installs the rules, as root (the init container's UID).
    let out = pod
        .command(&sidecar)
        .args(["init", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "init failed: {}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains("# IPv4 rules installed with"), "{report}");
    assert!(report.contains("# IPv6 rules installed with"), "{report}");
    assert!(
        report.contains("-d 198.18.0.1/32 -p tcp -m tcp --dport 5432"),
        "{report}"
    );
    let installed = saved(&pod);
    for chain in ["CARDGATE_OUTPUT", "CARDGATE_REDIRECT", "CARDGATE_DROP"] {
        assert_eq!(
            installed.matches(&format!(":{chain} ")).count(),
            2,
            "{chain} in both families:\n{installed}"
        );
    }

    // 2. Running it again leaves exactly the same rules.
    let out = pod
        .command(&sidecar)
        .args(["init", "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "second init failed: {}", text(&out));
    assert_eq!(saved(&pod), installed, "a second init changed the rules");
    assert_eq!(installed.matches("-j CARDGATE_OUTPUT").count(), 2);
    assert_eq!(installed.matches("-j CARDGATE_DROP").count(), 2);

    // 3. The sidecar, as its own UID.
    let log_path = std::env::temp_dir().join(format!(
        "cardgate-transparent-sidecar-{}.log",
        std::process::id()
    ));
    let log = std::fs::File::create(&log_path).unwrap();
    let mut running = Guarded(
        pod.command_as(SIDECAR_UID as u32, &sidecar)
            .args(["run", "--config"])
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let up = netns::wait_until(Duration::from_secs(30), || {
        matches!(running.0.try_wait(), Ok(Some(_))) || ready(&pod)
    });
    assert!(
        up && matches!(running.0.try_wait(), Ok(None)),
        "sidecar not ready: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );

    // 4. The agent's unchanged psql, to the database's own address, lands at
    //    the sidecar: PANs masked…
    let out = agent_psql(
        &pod,
        DB_V4,
        5432,
        &good,
        "SELECT id, pan, note FROM cards ORDER BY id",
    );
    assert!(out.status.success(), "agent query failed: {}", text(&out));
    let rows = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(rows.lines().count(), 6, "{rows}");
    assert!(rows.contains("411111"), "truncated PANs keep BIN6: {rows}");
    for p in pg::PANS {
        assert!(!rows.contains(p), "raw PAN {p} reached the agent: {rows}");
    }
    // …over IPv6 too (ip6tables and the IPv6 listener)…
    let out = agent_psql(
        &pod,
        DB_V6,
        5432,
        &good,
        "SELECT pan FROM cards WHERE id = 1",
    );
    assert!(out.status.success(), "IPv6 query failed: {}", text(&out));
    assert!(!text(&out).contains("4111111111111111"), "{}", text(&out));
    // …identity enforced…
    let out = agent_psql(&pod, DB_V4, 5432, "not-a-token", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cardgate: authentication failed"),
        "{}",
        text(&out)
    );
    let out = agent_psql(&pod, DB_V4, 5432, &outsider, "SELECT 1");
    assert!(!out.status.success(), "a subject outside the policy got in");
    // …and DROP denied, the table still there.
    let out = agent_psql(&pod, DB_V4, 5432, &good, "DROP TABLE cards");
    assert!(!out.status.success(), "DROP was allowed: {}", text(&out));
    assert!(text(&out).contains("cardgate"), "{}", text(&out));
    assert_eq!(
        pg.psql(pg::DATABASE, "SELECT count(*) FROM cards").trim(),
        "6"
    );

    // 5. A connection to an address no target claims is refused and audited.
    let out = agent_psql(&pod, "127.0.0.1", 15001, &good, "SELECT 1");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("cardgate: no target for 127.0.0.1:15001"),
        "{}",
        text(&out)
    );

    // 6. Any other path from the agent to the database's address is
    //    dropped, while the sidecar's UID gets through: the same listener,
    //    the same address, another port.
    let (side_door, accepted) = counting_listener(&db, &format!("{DB_V4}:0"));
    assert!(
        !connects(&pod, AGENT_UID, side_door),
        "the agent reached {side_door} around the sidecar"
    );
    assert!(
        !connects(&pod, 0, side_door),
        "root without the sidecar's UID reached {side_door}"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert!(
        connects(&pod, SIDECAR_UID as u32, side_door),
        "the sidecar's UID is exempt"
    );
    assert!(netns::wait_until(Duration::from_secs(2), || accepted
        .load(Ordering::SeqCst)
        == 1));
    let (side_door6, accepted6) = counting_listener(&db, &format!("[{DB_V6}]:0"));
    assert!(!connects(&pod, AGENT_UID, side_door6));
    assert_eq!(accepted6.load(Ordering::SeqCst), 0);

    // 7. The agent cannot change the rules: no capability, whatever its UID.
    for (who, mut cmd) in [
        ("UID 2200", pod.command_as(AGENT_UID, "iptables")),
        (
            "UID 2200 (ip6tables)",
            pod.command_as(AGENT_UID, "ip6tables"),
        ),
        ("root without NET_ADMIN", {
            let mut c = pod.command("setpriv");
            c.args(["--bounding-set", "-all", "--inh-caps", "-all", "--"]);
            c.arg("iptables");
            c
        }),
    ] {
        let out = cmd.args(["-t", "nat", "-F"]).output().unwrap();
        assert!(!out.status.success(), "{who} flushed the nat table");
    }
    assert_eq!(saved(&pod), installed, "the rules changed");

    // 8. The audit trail has the sessions, the denial and the refusal, and
    //    no raw PAN.
    running.terminate(Duration::from_secs(30));
    let trail = std::fs::read_to_string(&audit).unwrap();
    assert!(trail.contains("no target for 127.0.0.1:15001"), "{trail}");
    assert!(trail.contains("DROP TABLE cards"), "{trail}");
    for p in pg::PANS {
        assert!(!trail.contains(p), "raw PAN {p} in the audit trail");
    }

    // 9. --cleanup removes exactly what init installed.
    let out = pod
        .command(&sidecar)
        .args(["init", "--cleanup"])
        .output()
        .unwrap();
    assert!(out.status.success(), "cleanup failed: {}", text(&out));
    let after = saved(&pod);
    assert!(!after.contains("CARDGATE"), "{after}");
    assert_eq!(rules(&after), rules(&before));
    assert!(connects(&pod, AGENT_UID, db4), "the agent is direct again");
    let _ = std::fs::remove_file(&log_path);
}

/// `*-save` of one backend, rule and chain lines only.
fn saved_with(pod: &Netns, tool: &str) -> String {
    let out = pod.command(tool).output().unwrap();
    assert!(out.status.success(), "{tool}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A") || l.starts_with(":CARDGATE"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn transparent_init_keeps_to_the_backend_already_in_use() {
    if !available() {
        return;
    }
    let sidecar = netns::sidecar_binary();
    let pod = Netns::create("legacy").unwrap();
    let work = Workdir::new();
    let config_file = work.path("config.yaml");
    std::fs::write(&config_file, config(&work.path("audit.log"))).unwrap();
    // Something in the pod (a CNI plugin, a mesh) already uses the legacy
    // x_tables interface: init must program the same one.
    let out = pod
        .command("iptables-legacy")
        .args(["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let foreign = saved_with(&pod, "iptables-legacy-save");

    let init = |args: &[&str]| {
        let out = pod
            .command(&sidecar)
            .arg("init")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "init {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let config_arg = config_file.to_str().unwrap();

    let dry = init(&["--config", config_arg, "--dry-run"]);
    assert!(dry.contains("dry run, not applied"), "{dry}");
    assert!(dry.contains("-j REDIRECT --to-ports 15001"), "{dry}");
    assert_eq!(saved_with(&pod, "iptables-legacy-save"), foreign);

    let report = init(&["--config", config_arg]);
    assert!(
        report.contains("# IPv4 rules installed with iptables-legacy"),
        "{report}"
    );
    let v4 = saved_with(&pod, "iptables-legacy-save");
    let v6 = saved_with(&pod, "ip6tables-legacy-save");
    assert!(v4.contains(":CARDGATE_DROP") && v6.contains(":CARDGATE_DROP"));
    assert!(v4.contains("-A INPUT -i lo -j ACCEPT"), "{v4}");
    assert!(
        !saved_with(&pod, "iptables-nft-save").contains("CARDGATE"),
        "rules went into both backends"
    );

    init(&["--config", config_arg]);
    assert_eq!(saved_with(&pod, "iptables-legacy-save"), v4);
    assert_eq!(saved_with(&pod, "ip6tables-legacy-save"), v6);

    let removed = init(&["--cleanup"]);
    assert!(
        removed.contains("rules removed from iptables-legacy"),
        "{removed}"
    );
    assert_eq!(saved_with(&pod, "iptables-legacy-save"), foreign);
    assert_eq!(saved_with(&pod, "ip6tables-legacy-save"), "");
    assert!(init(&["--cleanup"]).contains("no cardgate rules are installed"));
}

//! The driver matrix: agents' own drivers and ORMs, unchanged, through the
//! sidecar in front of the test PostgreSQL, with the demo's policy.
//!
//! Each driver program (e2e/drivers/, installed under target/drivers by
//! `make deps`) runs the same steps and prints one JSON line per step;
//! tokio-postgres runs in this process. Every step of every driver is
//! asserted, a failure names the driver and the step, and everything the
//! drivers printed, the audit log and the sidecar's log are scanned for raw
//! card numbers. A driver whose toolchain is missing is skipped with a
//! message, and fails the test when `CARDGATE_E2E_REQUIRE_DRIVERS=1`
//! (`.ci/run` sets it).

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cardgate_e2e::netns::{self, Guarded};
use cardgate_e2e::pg::{self, Postgres};

const REQUIRE: &str = "CARDGATE_E2E_REQUIRE_DRIVERS";
const ISSUER: &str = "https://dev.cardgate.local";
const AGENT: &str = "agent-7";

/// Steps whose fixes belong to issue 16 (masking of computed expressions,
/// binary arrays and bigint card numbers): reported, not yet asserted, and
/// what they print is left out of the raw-PAN scan (it shows the leak they
/// probe for). The scan covers every other step, the drivers' stderr, and
/// everything the sidecar wrote.
const AWAITING_ISSUE_16: &[&str] = &[
    "leak_computed_column",
    "leak_binary_array",
    "leak_bigint_pan",
];

/// The steps every driver runs; some drivers lack a feature (noted where
/// their list is built).
const STEPS: &[&str] = &[
    "connect",
    "simple_query",
    "masked_pan",
    "params_repeated",
    "transaction",
    "denied_then_usable",
    "server_cursor",
    "copy_out",
    "types",
    "enum_composite",
    "introspection",
    "held_write_approved",
    "leak_computed_column",
    "leak_binary_array",
    "leak_bigint_pan",
    "reconnect",
];

/// One step's outcome as a driver reported it.
#[derive(Debug, Clone)]
struct Step {
    ok: bool,
    detail: String,
}

/// A driver of the matrix: how to run it, and the steps it must report.
struct Driver {
    name: &'static str,
    /// The program and its arguments; `None` for the in-process driver.
    command: Option<Vec<String>>,
    /// What must exist for it to run.
    needs: Vec<PathBuf>,
    steps: Vec<&'static str>,
}

fn steps_without(skip: &[&str]) -> Vec<&'static str> {
    STEPS
        .iter()
        .copied()
        .filter(|s| !skip.contains(s))
        .collect()
}

fn drivers(dir: &Path) -> Vec<Driver> {
    let python = dir.join("venv/bin/python");
    let matrix_py = cardgate_e2e::repo_root().join("e2e/drivers/python/matrix.py");
    let py = |name: &'static str, skip: &[&str]| Driver {
        name,
        command: Some(vec![
            python.display().to_string(),
            matrix_py.display().to_string(),
            name.to_string(),
        ]),
        needs: vec![python.clone()],
        steps: steps_without(skip),
    };
    let node_dir = dir.join("node");
    let jar = dir.join("jdbc/postgresql.jar");
    let java_src = cardgate_e2e::repo_root().join("e2e/drivers/jdbc/Matrix.java");
    vec![
        // psycopg 3 text mode cannot read arrays in binary.
        py("psycopg", &["leak_binary_array"]),
        py("psycopg-binary", &[]),
        // psycopg2 has no binary protocol.
        py("psycopg2", &["leak_binary_array"]),
        py("asyncpg", &[]),
        // Through the ORM: no COPY, held writes or leak shapes of their own
        // (the drivers beneath run those).
        py(
            "sqlalchemy-psycopg",
            &[
                "copy_out",
                "held_write_approved",
                "leak_computed_column",
                "leak_binary_array",
                "leak_bigint_pan",
            ],
        ),
        py(
            "sqlalchemy-asyncpg",
            &[
                "copy_out",
                "held_write_approved",
                "leak_computed_column",
                "leak_binary_array",
                "leak_bigint_pan",
            ],
        ),
        Driver {
            name: "node-postgres",
            command: Some(vec![
                "node".into(),
                cardgate_e2e::repo_root()
                    .join("e2e/drivers/node/matrix.js")
                    .display()
                    .to_string(),
            ]),
            needs: vec![node_dir.join("node_modules/pg/package.json")],
            // node-postgres reads text only and has no COPY without an add-on.
            steps: steps_without(&["leak_binary_array", "copy_out"]),
        },
        Driver {
            name: "pgx",
            command: Some(vec![dir.join("bin/pgx-driver").display().to_string()]),
            needs: vec![dir.join("bin/pgx-driver")],
            steps: steps_without(&[]),
        },
        Driver {
            name: "pgjdbc",
            command: Some(vec![
                "java".into(),
                "-cp".into(),
                jar.display().to_string(),
                java_src.display().to_string(),
            ]),
            needs: vec![jar.clone()],
            steps: steps_without(&[]),
        },
        Driver {
            name: "tokio-postgres",
            command: None,
            needs: Vec::new(),
            steps: steps_without(&[]),
        },
    ]
}

/// The sidecar in front of the shared server, with the demo's policy.
struct Sidecar {
    work: tempdir::Dir,
    port: u16,
    token: String,
    config: PathBuf,
    binary: PathBuf,
    _process: Guarded,
}

mod tempdir {
    /// A scratch directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir()
                .join(format!("cardgate-drivers-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(dir.join("approvals")).unwrap();
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o700);
            std::fs::set_permissions(dir.join("approvals"), private).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn config(pg: &Postgres, port: u16, admin: u16) -> String {
    format!(
        r#"apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy:
  name: driver-matrix
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
    listen: 127.0.0.1:{port}
    upstream:
      host: 127.0.0.1
      port: {pg_port}
    database: {db}
    tls:
      mode: disable
    credentials:
      username: {user}
      passwordFile: upstream-password
rules:
  - name: session-control
    action: allow
    match:
      classes: [control]
  - name: read-order-data
    action: allow
    match:
      classes: [read]
      tables: [public.customers, public.orders, public.cards]
  - name: writes-need-approval
    action: requireApproval
    match:
      classes: [write]
  - name: no-ddl-or-side-effects
    action: deny
    match:
      classes: [ddl, dangerous, unparseable]
defaultAction: deny
approval:
  settings:
    approvers:
      users: [alice]
    quorum: 1
    mode: wait
    timeout: 5m
  store:
    directory: approvals
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
      path: audit.log
      fsync: never
admin:
  listen: 127.0.0.1:{admin}
"#,
        pg_port = pg.port,
        db = pg::DATABASE,
        user = pg::PROXY_USER,
    )
}

impl Sidecar {
    fn start(pg: &Postgres) -> Sidecar {
        let binary = netns::sidecar_binary();
        let work = tempdir::Dir::new();
        let path = |n: &str| work.0.join(n);
        let out = Command::new(&binary)
            .args(["dev", "keygen", "--dir"])
            .arg(&work.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let out = Command::new(&binary)
            .args(["dev", "token", "--key"])
            .arg(path("dev-signing-key.pem"))
            .args(["--issuer", ISSUER, "--audience", "cardgate"])
            .args(["--subject", AGENT, "--group", "payments-agents"])
            .args(["--ttl", "30m"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        std::fs::write(path("upstream-password"), pg::PROXY_PASSWORD).unwrap();
        let port = pg::free_port();
        let config = path("config.yaml");
        std::fs::write(&config, self::config(pg, port, pg::free_port())).unwrap();
        let child = Command::new(&binary)
            .args(["run", "--config"])
            .arg(&config)
            .stdout(std::fs::File::create(path("stdout.log")).unwrap())
            .stderr(std::fs::File::create(path("sidecar.log")).unwrap())
            .spawn()
            .unwrap();
        let process = Guarded(child);
        let ready = netns::wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            ready,
            "sidecar did not listen: {}",
            std::fs::read_to_string(path("sidecar.log")).unwrap_or_default()
        );
        Sidecar {
            work,
            port,
            token,
            config,
            binary,
            _process: process,
        }
    }

    /// Approves every request that appears in the store, as alice with the
    /// approvals CLI, until `stop` is set: the held-write step waits for it.
    fn approver(&self, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
        let dir = self.work.0.join("approvals");
        let (binary, config) = (self.binary.clone(), self.config.clone());
        std::thread::spawn(move || {
            let mut done = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                let names: Vec<String> = std::fs::read_dir(&dir)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .filter_map(|e| {
                                let name = e.file_name().into_string().ok()?;
                                name.strip_suffix(".json").map(str::to_owned)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let fresh: Vec<String> = names.into_iter().filter(|n| !done.contains(n)).collect();
                for name in fresh {
                    let out = Command::new(&binary)
                        .args(["approvals", "--config"])
                        .arg(&config)
                        .args(["approve", &name, "--as", "alice", "--reason", "matrix"])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        done.insert(name);
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            done.len()
        })
    }

    /// Everything the sidecar wrote: audit log, stdout, its log.
    fn written(&self) -> String {
        ["audit.log", "stdout.log", "sidecar.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.work.0.join(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Types the enum and composite steps decode (asyncpg, tokio-postgres and
/// pgx look them up in the catalog first).
const TYPES: &str = "
DO $$ BEGIN
  CREATE TYPE card_brand AS ENUM ('visa', 'mastercard', 'amex');
  CREATE TYPE money_amount AS (cents int4, currency text);
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
";

/// Parses a driver's JSON lines into step → outcome.
fn parse_steps(stdout: &str) -> BTreeMap<String, Step> {
    let mut steps = BTreeMap::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let (Some(step), Some(ok)) = (v["step"].as_str(), v["ok"].as_bool()) {
            let detail = v["detail"].as_str().unwrap_or_default().to_string();
            steps.insert(step.to_string(), Step { ok, detail });
        }
    }
    steps
}

fn run_program(cmd: &[String], dir: &Path, sidecar: &Sidecar, pg_last4: &str) -> (String, String) {
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("CARDGATE_DRIVERS_DIR", dir)
        .env("CARDGATE_HOST", "127.0.0.1")
        .env("CARDGATE_PORT", sidecar.port.to_string())
        .env("CARDGATE_USER", AGENT)
        .env("CARDGATE_TOKEN", &sidecar.token)
        .env("CARDGATE_DB", pg::DATABASE)
        .env("CARDGATE_PAN_LAST4", pg_last4)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", cmd[0]));
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn drivers_work_unchanged_through_the_sidecar() {
    let dir = std::env::var_os("CARDGATE_DRIVERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cardgate_e2e::repo_root().join("target/drivers"));
    let pg = Postgres::shared();
    pg.psql(pg::DATABASE, TYPES);
    let sidecar = Sidecar::start(pg);
    let last4: Vec<&str> = pg::PANS.iter().map(|p| &p[p.len() - 4..]).collect();
    let last4 = last4.join(",");

    let stop = Arc::new(AtomicBool::new(false));
    let approver = sidecar.approver(stop.clone());
    let mut results: BTreeMap<&str, (Vec<&str>, BTreeMap<String, Step>)> = BTreeMap::new();
    let mut printed = String::new();
    let mut skipped = Vec::new();
    for d in drivers(&dir) {
        if let Some(missing) = d.needs.iter().find(|p| !p.exists()) {
            skipped.push(format!(
                "{} ({} is missing; run make deps)",
                d.name,
                missing.display()
            ));
            continue;
        }
        let steps = match &d.command {
            Some(cmd) => {
                let (stdout, stderr) = run_program(cmd, &dir, &sidecar, &last4);
                printed.push_str(&stderr);
                let steps = parse_steps(&stdout);
                for line in stdout.lines() {
                    match parse_steps(line).keys().next() {
                        Some(step) if AWAITING_ISSUE_16.contains(&step.as_str()) => {}
                        _ => printed.push_str(line),
                    }
                }
                if steps.is_empty() {
                    eprintln!("{}: no steps reported; stderr:\n{stderr}", d.name);
                }
                steps
            }
            None => {
                let steps = tokio_postgres_steps(&sidecar, &last4);
                for (k, s) in &steps {
                    if !AWAITING_ISSUE_16.contains(&k.as_str()) {
                        printed.push_str(&format!("{k} {}\n", s.detail));
                    }
                }
                steps
            }
        };
        results.insert(d.name, (d.steps, steps));
    }
    stop.store(true, Ordering::SeqCst);
    let approved = approver.join().unwrap();

    // The matrix, as the closing note shows it.
    let mut failures = Vec::new();
    for (driver, (expected, got)) in &results {
        for step in expected {
            let outcome = got.get(*step);
            let mark = match outcome {
                Some(s) if s.ok => "pass",
                Some(_) => "FAIL",
                None => "MISSING",
            };
            let awaiting = AWAITING_ISSUE_16.contains(step);
            eprintln!(
                "matrix: {driver:<20} {step:<22} {mark}{}",
                if awaiting {
                    " (issue 16: not asserted)"
                } else {
                    ""
                }
            );
            if mark != "pass" && !awaiting {
                let detail = outcome.map(|s| s.detail.as_str()).unwrap_or("not reported");
                failures.push(format!("{driver}: {step}: {detail}"));
            }
        }
    }
    for s in &skipped {
        eprintln!("SKIPPED driver {s}");
    }
    eprintln!("matrix: {approved} held write(s) approved from the approvals CLI");

    let written = sidecar.written();
    for pan in pg::PANS {
        assert!(
            !printed.contains(pan),
            "a raw PAN reached a driver's output"
        );
        assert!(
            !written.contains(pan),
            "a raw PAN is in what the sidecar wrote"
        );
    }
    assert!(
        failures.is_empty(),
        "driver steps failed:\n{}",
        failures.join("\n")
    );
    if !skipped.is_empty() && cardgate_e2e::required(REQUIRE) {
        panic!("drivers skipped, and {REQUIRE}=1 requires them: {skipped:?}");
    }
}

/// tokio-postgres, in process: the same steps.
fn tokio_postgres_steps(sidecar: &Sidecar, last4: &str) -> BTreeMap<String, Step> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let last4: Vec<String> = last4.split(',').map(str::to_owned).collect();
    rt.block_on(tokio_pg::run(sidecar.port, &sidecar.token, &last4))
}

mod tokio_pg {
    use std::collections::BTreeMap;

    use tokio_postgres::types::{FromSql, Type};
    use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

    use super::{AGENT, Step};

    /// Any value, as its raw bytes: decoding a column of a type
    /// tokio-postgres does not know (an enum, a composite) still makes it
    /// look the type up in the catalog, which is what the step checks.
    struct Raw(Vec<u8>);

    impl<'a> FromSql<'a> for Raw {
        fn from_sql(
            _: &Type,
            raw: &'a [u8],
        ) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
            Ok(Raw(raw.to_vec()))
        }
        fn accepts(_: &Type) -> bool {
            true
        }
    }

    type R = Result<(bool, String), Box<dyn std::error::Error>>;

    async fn connect(port: u16, token: &str) -> Result<Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(port)
            .user(AGENT)
            .password(token)
            .dbname(cardgate_e2e::pg::DATABASE)
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }

    fn masked(values: &[String], last4: &[String]) -> (bool, String) {
        let ok = values.len() == last4.len()
            && values.iter().zip(last4).all(|(v, l)| {
                v.ends_with(l.as_str()) && v.chars().filter(char::is_ascii_digit).count() <= 10
            });
        (ok, format!("{values:?}"))
    }

    pub async fn run(port: u16, token: &str, last4: &[String]) -> BTreeMap<String, Step> {
        let mut out = BTreeMap::new();
        let mut c = match connect(port, token).await {
            Ok(c) => {
                put(&mut out, "connect", Ok((true, String::new())));
                c
            }
            Err(e) => {
                put(&mut out, "connect", Err(e.into()));
                return out;
            }
        };
        put(&mut out, "simple_query", simple(&c).await);
        put(
            &mut out,
            "masked_pan",
            pans(&c, "SELECT pan FROM cards ORDER BY id", last4).await,
        );
        put(&mut out, "params_repeated", params(&c).await);
        put(&mut out, "transaction", transaction(&c).await);
        put(&mut out, "denied_then_usable", denied(&c).await);
        put(&mut out, "server_cursor", cursor(&mut c).await);
        put(&mut out, "copy_out", copy_out(&c, last4).await);
        put(&mut out, "types", types(&c).await);
        put(&mut out, "enum_composite", enums(&c).await);
        put(&mut out, "introspection", introspection(&c).await);
        put(&mut out, "held_write_approved", held(&c).await);
        put(
            &mut out,
            "leak_computed_column",
            pans(&c, "SELECT pan || '' FROM cards ORDER BY id", last4).await,
        );
        put(&mut out, "leak_binary_array", array(&c, last4).await);
        put(&mut out, "leak_bigint_pan", bigint(&c, last4).await);
        drop(c);
        put(
            &mut out,
            "reconnect",
            async {
                let c = connect(port, token).await?;
                let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
                Ok::<_, Box<dyn std::error::Error>>((one == 1, String::new()))
            }
            .await,
        );
        out
    }

    fn put(out: &mut BTreeMap<String, Step>, name: &str, r: R) {
        let (ok, detail) = r.unwrap_or_else(|e| (false, format!("{e:?}")));
        out.insert(name.to_string(), Step { ok, detail });
    }

    async fn simple(c: &Client) -> R {
        let rows = c
            .simple_query("SELECT id, name FROM customers ORDER BY id")
            .await?;
        let n = rows
            .iter()
            .filter(|m| matches!(m, SimpleQueryMessage::Row(_)))
            .count();
        Ok((n == 3, format!("{n} rows")))
    }

    async fn pans(c: &Client, sql: &str, last4: &[String]) -> R {
        // Binary results: tokio-postgres always asks for them.
        let rows = c.query(sql, &[]).await?;
        let v = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(masked(&v, last4))
    }

    async fn params(c: &Client) -> R {
        let st = c
            .prepare("SELECT amount_cents FROM orders WHERE id = $1")
            .await?;
        let mut got = Vec::new();
        for i in 1..=12 {
            got.push(c.query_one(&st, &[&i]).await?.get::<_, i32>(0));
        }
        Ok((
            got == (1..=12).map(|i| i * 100).collect::<Vec<_>>(),
            format!("{got:?}"),
        ))
    }

    async fn transaction(c: &Client) -> R {
        c.batch_execute("BEGIN").await?;
        let n: i64 = c
            .query_one("SELECT count(*) FROM orders", &[])
            .await?
            .get(0);
        c.batch_execute("COMMIT").await?;
        Ok((n == 50, n.to_string()))
    }

    async fn denied(c: &Client) -> R {
        let err = match c.batch_execute("DROP TABLE cards").await {
            Ok(()) => return Ok((false, "DROP was not refused".into())),
            Err(e) => e,
        };
        let code = err.code().map(|s| s.code().to_string()).unwrap_or_default();
        let one: i32 = c.query_one("SELECT 1", &[]).await?.get(0);
        Ok((code == "42501" && one == 1, format!("{code} {err}")))
    }

    async fn cursor(c: &mut Client) -> R {
        let tx = c.transaction().await?;
        let st = tx.prepare("SELECT id FROM orders ORDER BY id").await?;
        let portal = tx.bind(&st, &[]).await?;
        let mut ids = Vec::new();
        loop {
            let rows = tx.query_portal(&portal, 7).await?;
            if rows.is_empty() {
                break;
            }
            ids.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        }
        tx.commit().await?;
        Ok((
            ids == (1..=50).collect::<Vec<_>>(),
            format!("{} rows", ids.len()),
        ))
    }

    async fn copy_out(c: &Client, last4: &[String]) -> R {
        use futures::TryStreamExt;
        let stream = c
            .copy_out("COPY (SELECT id, pan FROM cards ORDER BY id) TO STDOUT")
            .await?;
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
        let text = String::from_utf8(chunks.concat())?;
        let v: Vec<String> = text
            .lines()
            .filter_map(|l| l.split('\t').nth(1).map(str::to_owned))
            .collect();
        Ok(masked(&v, last4))
    }

    async fn types(c: &Client) -> R {
        let row = c
            .query_one(
                "SELECT ARRAY[1,2,3]::int4[], '\\xdeadbeef'::bytea, 12.50::numeric::text, \
                 '{\"a\": [1, 2]}'::jsonb::text",
                &[],
            )
            .await?;
        let arr: Vec<i32> = row.get(0);
        let raw: Vec<u8> = row.get(1);
        let num: String = row.get(2);
        let doc: String = row.get(3);
        let ok = arr == [1, 2, 3]
            && raw == [0xde, 0xad, 0xbe, 0xef]
            && num == "12.50"
            && doc == r#"{"a": [1, 2]}"#;
        Ok((ok, format!("{arr:?} {raw:?} {num} {doc}")))
    }

    async fn enums(c: &Client) -> R {
        let row = c
            .query_one(
                "SELECT 'visa'::card_brand, ROW(1250, 'EUR')::money_amount, ARRAY['amex']::card_brand[]",
                &[],
            )
            .await?;
        let brand: Raw = row.get(0);
        let amount: Raw = row.get(1);
        let _brands: Raw = row.get(2);
        Ok((brand.0 == b"visa" && !amount.0.is_empty(), String::new()))
    }

    async fn introspection(c: &Client) -> R {
        // The enum's labels, as tokio-postgres asks for them.
        let rows = c
            .query(
                "SELECT enumlabel FROM pg_catalog.pg_enum e JOIN pg_catalog.pg_type t \
                 ON t.oid = e.enumtypid WHERE t.typname = $1 ORDER BY enumsortorder",
                &[&"card_brand"],
            )
            .await?;
        let labels: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        Ok((
            labels == ["visa", "mastercard", "amex"],
            format!("{labels:?}"),
        ))
    }

    async fn held(c: &Client) -> R {
        let n = c
            .execute("UPDATE orders SET status = 'paid' WHERE id = 7", &[])
            .await?;
        Ok((n == 1, n.to_string()))
    }

    async fn array(c: &Client, last4: &[String]) -> R {
        let rows = c
            .query("SELECT ARRAY[pan] FROM cards ORDER BY id", &[])
            .await?;
        let v = rows
            .iter()
            .map(|r| r.try_get::<_, Vec<String>>(0).map(|a| a.concat()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(masked(&v, last4))
    }

    async fn bigint(c: &Client, last4: &[String]) -> R {
        let rows = c
            .query("SELECT pan_bigint FROM cards ORDER BY id", &[])
            .await?;
        let v: Vec<String> = rows
            .iter()
            .map(|r| match r.try_get::<_, i64>(0) {
                Ok(n) => n.to_string(),
                Err(e) => format!("error {e}"),
            })
            .collect();
        Ok(masked(&v, last4))
    }
}

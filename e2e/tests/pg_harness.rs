//! The PostgreSQL harness itself: a real server with the payments schema.

use cardgate_e2e::pg::{PANS, Postgres};

#[test]
fn shared_server_has_the_payments_schema() {
    let pg = Postgres::shared();
    let n = pg.psql("payments", "SELECT count(*) FROM cards");
    assert_eq!(n.trim(), PANS.len().to_string());
    let roles = pg.psql(
        "postgres",
        "SELECT rolname FROM pg_roles WHERE rolname LIKE 'cardgate%' ORDER BY 1",
    );
    assert_eq!(
        roles.split_whitespace().collect::<Vec<_>>(),
        ["cardgate_md5", "cardgate_proxy"]
    );
}

#[test]
fn a_dedicated_server_restarts_on_its_port() {
    let pg = Postgres::start();
    let port = pg.port;
    pg.restart();
    assert_eq!(pg.port, port);
    assert_eq!(pg.psql("payments", "SELECT 1").trim(), "1");
}

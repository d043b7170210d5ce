//! The classifier's corpus: one expectation (class, relations read, relations
//! written) per SQL string, as `cardgate-sidecar check` would report it in a
//! fresh session. Every bullet of the statement-policy contract has cases
//! here; a failure lists every mismatching string at once.

use cardgate_crds::v1alpha1::StatementClass::{self, *};
use cardgate_sidecar::policy::{Classifier, SqlSession};

struct Case {
    sql: &'static str,
    class: StatementClass,
    read: &'static [&'static str],
    write: &'static [&'static str],
}

macro_rules! cases {
    ($( $sql:expr => $class:ident [$($r:expr),*] [$($w:expr),*] ;)*) => {
        &[$(Case { sql: $sql, class: $class, read: &[$($r),*], write: &[$($w),*] }),*]
    };
}

const CASES: &[Case] = cases! {
    // ---- reads: joins, subqueries, CTEs, views by name, set operations
    "SELECT 1" => Read [] [];
    "SELECT * FROM orders" => Read ["public.orders"] [];
    "select o.id from payments.orders o join customers c on c.id = o.customer_id"
        => Read ["payments.orders", "public.customers"] [];
    "SELECT * FROM (SELECT * FROM (SELECT id FROM cards) a) b WHERE EXISTS (SELECT 1 FROM orders WHERE orders.card_id = b.id)"
        => Read ["public.cards", "public.orders"] [];
    "SELECT id, (SELECT max(total) FROM refunds r WHERE r.order_id = o.id) FROM orders o"
        => Read ["public.orders", "public.refunds"] [];
    "WITH recent AS (SELECT * FROM orders WHERE created_at > now() - interval '1 day') SELECT * FROM recent JOIN customers USING (customer_id)"
        => Read ["public.customers", "public.orders"] [];
    // A CTE's own body sees the real table of the same name.
    "WITH cards AS (SELECT * FROM cards) SELECT * FROM cards" => Read ["public.cards"] [];
    // Without RECURSIVE a CTE only sees the CTEs before it.
    "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a" => Read ["public.b"] [];
    "WITH a AS (SELECT 1), b AS (SELECT * FROM a) SELECT * FROM b" => Read [] [];
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT * FROM t" => Read [] [];
    // A CTE is visible only in its own query: the outer `cards` is the table.
    "SELECT * FROM (WITH cards AS (SELECT 1) SELECT * FROM cards) x, cards" => Read ["public.cards"] [];
    "SELECT * FROM reporting.daily_totals" => Read ["reporting.daily_totals"] [];
    "SELECT id FROM orders UNION SELECT id FROM refunds EXCEPT SELECT id FROM archive.orders"
        => Read ["archive.orders", "public.orders", "public.refunds"] [];
    "SELECT * FROM \"Payments\".\"Cards\"" => Read ["Payments.Cards"] [];
    "SELECT * FROM mydb.payments.cards" => Read ["payments.cards"] [];
    "SELECT lower(name), count(*) FROM customers GROUP BY 1 ORDER BY 2 DESC LIMIT 10" => Read ["public.customers"] [];
    "SELECT * FROM pg_class" => Metadata ["pg_catalog.pg_class"] [];
    "SELECT * FROM information_schema.tables" => Read ["information_schema.tables"] [];
    "SELECT * FROM orders o, LATERAL generate_series(1, o.qty) g" => Read ["public.orders"] [];
    "TABLE orders" => Read ["public.orders"] [];
    "VALUES (1), (2)" => Read [] [];
    "SELECT current_setting('search_path'), now(), version()" => Read [] [];
    "SELECT set_config('application_name', 'agent', false)" => Metadata [] [];
    "SELECT currval('orders_id_seq')" => Read [] [];
    "SELECT lo_get(42)" => Read ["pg_catalog.pg_largeobject"] [];
    "DECLARE c CURSOR WITH HOLD FOR SELECT * FROM cards" => Read ["public.cards"] [];
    "FETCH 10 FROM c" => Read [] [];
    "LISTEN payments" => Read [] [];
    // Comments and dollar quoting hide nothing and add nothing.
    "/* DROP TABLE cards; */ SELECT $$DROP TABLE cards$$ -- DELETE FROM orders" => Read [] [];
    "SELECT $x$ ; DELETE FROM orders; $x$ AS harmless" => Read [] [];
    "SELECT 'it''s; DROP TABLE x' FROM orders" => Read ["public.orders"] [];

    // ---- metadata: what drivers and ORMs send to set themselves up, verbatim
    "select pg_catalog.version()" => Metadata [] [];
    "select current_schema()" => Metadata [] [];
    // The keyword form is an SQL value function, not a call: a read of
    // nothing, as `SELECT 1`.
    "SELECT current_schema" => Read [] [];
    "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = 'hstore'"
        => Metadata ["pg_catalog.pg_namespace", "pg_catalog.pg_type"] [];
    "SELECT typname AS name, oid, typarray AS array_oid, oid::regtype::text AS regtype, typdelim AS delimiter FROM pg_type t WHERE t.oid = to_regtype($1) ORDER BY t.oid"
        => Metadata ["pg_catalog.pg_type"] [];
    "SELECT current_setting('jit') AS cur, set_config('jit', 'off', false) AS new" => Metadata [] [];
    "SELECT set_config('jit', $1, false)" => Metadata [] [];
    "SELECT t.typname, t.typtype, t.typelem, r.rngsubtype, t.typbasetype, n.nspname, t.typrelid FROM pg_catalog.pg_type t LEFT OUTER JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid INNER JOIN pg_catalog.pg_namespace n ON t.typnamespace = n.oid WHERE t.oid = $1"
        => Metadata ["pg_catalog.pg_namespace", "pg_catalog.pg_range", "pg_catalog.pg_type"] [];
    "SELECT enumlabel FROM pg_catalog.pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder" => Metadata ["pg_catalog.pg_enum"] [];
    "SELECT attname, atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND NOT attisdropped AND attnum > 0 ORDER BY attnum"
        => Metadata ["pg_catalog.pg_attribute"] [];
    "SELECT array_agg(ia.atttypid ORDER BY ia.attnum) FROM pg_attribute ia INNER JOIN pg_class c ON (ia.attrelid = c.oid) WHERE c.reltype = $1"
        => Metadata ["pg_catalog.pg_attribute", "pg_catalog.pg_class"] [];
    "WITH RECURSIVE typebases(oid, depth) AS (SELECT typbasetype, 0 FROM pg_type WHERE oid = $1 UNION ALL SELECT t2.typbasetype, tb.depth + 1 FROM pg_type t2, typebases tb WHERE tb.oid = t2.oid) SELECT oid::regtype::text FROM typebases"
        => Metadata ["pg_catalog.pg_type"] [];
    "SELECT typinput='pg_catalog.array_in'::regproc as is_array, typtype, typname, pg_type.oid FROM pg_catalog.pg_type LEFT JOIN (select ns.oid as nspoid, ns.nspname, r.r from pg_namespace as ns join ( select s.r, (current_schemas(false))[s.r] as nspname from generate_series(1, array_upper(current_schemas(false), 1)) as s(r) ) as r using ( nspname ) ) as sp ON sp.nspoid = typnamespace WHERE pg_type.oid = $1 ORDER BY sp.r, pg_type.oid DESC"
        => Metadata ["pg_catalog.pg_namespace", "pg_catalog.pg_type"] [];
    "DECLARE c CURSOR FOR SELECT typname FROM pg_type" => Metadata ["pg_catalog.pg_type"] [];
    "PREPARE m AS SELECT version()" => Metadata [] [];
    // …and where the line is: data, other catalogs, unreviewed or foreign
    // functions, settings that are not harmless, locks.
    "SELECT version(), pan FROM cards" => Read ["public.cards"] [];
    "SELECT typname FROM pg_type WHERE typname IN (SELECT pan FROM cards)" => Read ["pg_catalog.pg_type", "public.cards"] [];
    "SELECT * FROM pg_statistic" => Read ["pg_catalog.pg_statistic"] [];
    "SELECT rolpassword FROM pg_authid" => Read ["pg_catalog.pg_authid"] [];
    "SELECT * FROM public.pg_type" => Read ["public.pg_type"] [];
    "SELECT typname, now() FROM pg_type" => Read ["pg_catalog.pg_type"] [];
    "SELECT myschema.version()" => Read [] [];
    "SELECT evil.array_agg(typname) FROM pg_type" => Read ["pg_catalog.pg_type"] [];
    "SELECT current_setting('data_directory')" => Read [] [];
    "SELECT current_setting($1)" => Read [] [];
    "SELECT 1" => Read [] [];
    "SELECT ARRAY[1, 2]" => Read [] [];
    "SELECT typname FROM pg_type FOR UPDATE" => Write ["pg_catalog.pg_type"] ["pg_catalog.pg_type"];
    "SELECT * FROM pg_stat_get_activity(NULL)" => Dangerous [] [];
    "SELECT pid, query FROM pg_stat_activity" => Read ["pg_catalog.pg_stat_activity"] [];
    "SELECT pg_stat_get_backend_activity(1)" => Dangerous [] [];
    "SELECT set_config('default_transaction_read_only', 'off', false)" => Dangerous [] [];
    "SET default_transaction_read_only = off" => Dangerous [] [];
    "SELECT set_config('standard_conforming_strings', 'off', false) FROM pg_type" => Dangerous ["pg_catalog.pg_type"] [];
    "SET jit = off" => Control [] [];

    // ---- EXPLAIN: only ANALYZE executes
    "EXPLAIN SELECT * FROM cards" => Read ["public.cards"] [];
    "EXPLAIN DELETE FROM orders" => Read ["public.orders"] [];
    "EXPLAIN (ANALYZE false) DELETE FROM orders" => Read ["public.orders"] [];
    "EXPLAIN (ANALYZE off, COSTS off) UPDATE orders SET total = 0" => Read ["public.orders"] [];
    "EXPLAIN ANALYZE DELETE FROM orders" => Write [] ["public.orders"];
    "EXPLAIN (ANALYZE, BUFFERS) UPDATE orders SET total = 0 FROM refunds" => Write ["public.refunds"] ["public.orders"];
    "EXPLAIN ANALYZE VERBOSE INSERT INTO orders SELECT * FROM staging.orders" => Write ["staging.orders"] ["public.orders"];
    "EXPLAIN ANALYZE CREATE TABLE t2 AS SELECT * FROM orders" => Ddl ["public.orders"] ["public.t2"];
    // Planning does not run functions, but the list fails closed.
    "EXPLAIN SELECT pg_read_file('/etc/passwd')" => Dangerous [] [];

    // ---- writes
    "INSERT INTO orders (id) VALUES (1)" => Write [] ["public.orders"];
    "INSERT INTO archive.orders SELECT * FROM orders WHERE created_at < now() - interval '1 year'"
        => Write ["public.orders"] ["archive.orders"];
    "INSERT INTO orders (id, total) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET total = excluded.total"
        => Write [] ["public.orders"];
    "UPDATE orders SET status = 'x' FROM customers c WHERE c.id = orders.customer_id"
        => Write ["public.customers"] ["public.orders"];
    "DELETE FROM orders USING customers WHERE customers.id = orders.customer_id AND customers.banned"
        => Write ["public.customers"] ["public.orders"];
    "DELETE FROM orders WHERE id IN (SELECT order_id FROM refunds) RETURNING *"
        => Write ["public.refunds"] ["public.orders"];
    "MERGE INTO orders o USING staging.orders s ON o.id = s.id WHEN MATCHED THEN UPDATE SET total = s.total WHEN NOT MATCHED THEN INSERT VALUES (s.id, s.total)"
        => Write ["staging.orders"] ["public.orders"];
    "MERGE INTO orders o USING (SELECT * FROM refunds) r ON o.id = r.order_id WHEN MATCHED THEN DELETE"
        => Write ["public.refunds"] ["public.orders"];
    "TRUNCATE orders, payments.refunds" => Write [] ["payments.refunds", "public.orders"];
    "TRUNCATE orders CASCADE" => Dangerous [] ["public.orders"];
    // Writable CTEs count as what they execute.
    "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d" => Write [] ["public.orders"];
    "WITH moved AS (DELETE FROM orders RETURNING *) INSERT INTO archive.orders SELECT * FROM moved"
        => Write [] ["archive.orders", "public.orders"];
    "SELECT * FROM (WITH u AS (UPDATE orders SET total = 0 RETURNING id) SELECT * FROM u) s" => Write [] ["public.orders"];
    // Row locks: PostgreSQL refuses them in read-only transactions.
    "SELECT * FROM orders WHERE id = 1 FOR UPDATE" => Write ["public.orders"] ["public.orders"];
    "SELECT * FROM orders o JOIN customers c USING (id) FOR SHARE OF o"
        => Write ["public.customers", "public.orders"] ["public.customers", "public.orders"];
    "COPY orders FROM STDIN" => Write [] ["public.orders"];
    "COPY orders (id, total) FROM STDIN WITH (FORMAT csv)" => Write [] ["public.orders"];
    "COPY (SELECT id FROM orders) TO STDOUT" => Read ["public.orders"] [];
    "COPY (DELETE FROM orders RETURNING id) TO STDOUT" => Write [] ["public.orders"];
    "NOTIFY payments, 'paid'" => Write [] [];
    "SELECT pg_notify('payments', 'paid')" => Write [] [];
    "SELECT nextval('orders_id_seq')" => Write [] ["public.orders_id_seq"];
    "SELECT nextval('orders_id_seq'::regclass)" => Write [] ["public.orders_id_seq"];
    "SELECT setval('payments.\"Order_Seq\"', 1)" => Write [] ["payments.Order_Seq"];
    "SELECT lo_unlink(42)" => Write [] ["pg_catalog.pg_largeobject"];
    "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE" => Write [] ["public.orders"];
    "REFRESH MATERIALIZED VIEW reporting.daily" => Write [] ["reporting.daily"];

    // ---- ddl
    "CREATE TABLE t (id int PRIMARY KEY)" => Ddl [] ["public.t"];
    "CREATE TABLE t2 AS SELECT * FROM orders" => Ddl ["public.orders"] ["public.t2"];
    "SELECT * INTO t2 FROM orders" => Ddl ["public.orders"] ["public.t2"];
    "CREATE MATERIALIZED VIEW mv AS SELECT * FROM orders" => Ddl ["public.orders"] ["public.mv"];
    "CREATE VIEW v AS SELECT * FROM cards" => Ddl ["public.cards"] ["public.v"];
    "ALTER TABLE orders ADD COLUMN note text" => Ddl [] ["public.orders"];
    "ALTER TABLE orders RENAME TO orders_old" => Ddl [] ["public.orders"];
    "DROP TABLE orders, payments.cards" => Ddl [] ["payments.cards", "public.orders"];
    "DROP INDEX IF EXISTS orders_idx" => Ddl [] ["public.orders_idx"];
    "DROP VIEW reporting.daily" => Ddl [] ["reporting.daily"];
    "CREATE INDEX ON orders (created_at)" => Ddl [] ["public.orders"];
    "VACUUM ANALYZE orders" => Ddl [] ["public.orders"];
    "COMMENT ON TABLE orders IS 'orders'" => Ddl [] [];
    "CREATE SCHEMA reporting" => Ddl [] [];
    "CREATE SEQUENCE s" => Ddl [] ["public.s"];
    "DROP FUNCTION f()" => Ddl [] [];
    "CREATE TYPE mood AS ENUM ('ok', 'sad')" => Ddl [] [];

    // ---- dangerous: listed functions wherever they appear
    "SELECT pg_read_file('/etc/passwd')" => Dangerous [] [];
    "SELECT pg_catalog.pg_read_binary_file('/etc/passwd')" => Dangerous [] [];
    "SELECT PG_READ_FILE('/etc/passwd')" => Dangerous [] [];
    "SELECT \"pg_read_file\"('/etc/passwd')" => Dangerous [] [];
    "SELECT * FROM pg_ls_dir('.')" => Dangerous [] [];
    "SELECT pg_stat_file('postgresql.conf')" => Dangerous [] [];
    "SELECT lo_import('/etc/passwd')" => Dangerous [] [];
    "SELECT lo_export(42, '/tmp/cards')" => Dangerous [] [];
    "SELECT * FROM dblink('host=elsewhere', 'SELECT 1') AS t(x int)" => Dangerous [] [];
    "SELECT dblink_exec('host=elsewhere', 'DROP TABLE x')" => Dangerous [] [];
    "SELECT pg_terminate_backend(4242)" => Dangerous [] [];
    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity" => Dangerous ["pg_catalog.pg_stat_activity"] [];
    "SELECT pg_reload_conf()" => Dangerous [] [];
    "SELECT set_config('role', 'postgres', false)" => Dangerous [] [];
    "SELECT set_config('search_path', 'elsewhere', false)" => Dangerous [] [];
    "SELECT set_config(name, 'x', false) FROM settings" => Dangerous ["public.settings"] [];
    "SELECT pg_sleep(10)" => Dangerous [] [];
    "SELECT query_to_xml('SELECT * FROM cards', true, true, '')" => Dangerous [] [];
    "SELECT table_to_xml('cards', true, false, '')" => Dangerous [] [];
    "SELECT * FROM crosstab('SELECT * FROM cards') AS ct(a text)" => Dangerous [] [];
    "SELECT * FROM pg_logical_slot_get_changes('s', NULL, NULL)" => Dangerous [] [];
    "SELECT get_raw_page('cards', 0)" => Dangerous [] [];
    "SELECT nextval(seqname) FROM seqs" => Dangerous ["public.seqs"] [];
    "SELECT * FROM orders WHERE id = (SELECT length(pg_read_file('x')))" => Dangerous ["public.orders"] [];
    "SELECT id FROM orders GROUP BY id HAVING pg_sleep(1) IS NULL" => Dangerous ["public.orders"] [];
    "SELECT * FROM orders JOIN refunds ON pg_sleep(0) IS NOT NULL" => Dangerous ["public.orders", "public.refunds"] [];
    "SELECT count(*) FILTER (WHERE pg_sleep(0) IS NULL) FROM orders" => Dangerous ["public.orders"] [];
    "SELECT * FROM orders ORDER BY pg_sleep(0)" => Dangerous ["public.orders"] [];
    "WITH f AS (SELECT pg_read_file('x') AS c) SELECT * FROM f" => Dangerous [] [];
    "SELECT CASE WHEN true THEN pg_read_file('x') END" => Dangerous [] [];
    "SELECT ARRAY[pg_ls_dir('.')]" => Dangerous [] [];
    "INSERT INTO orders (note) VALUES (pg_read_file('/etc/passwd'))" => Dangerous [] ["public.orders"];
    "UPDATE orders SET note = (SELECT string_agg(x, ',') FROM pg_ls_dir('.') x)" => Dangerous [] ["public.orders"];
    "DELETE FROM orders RETURNING pg_sleep(1)" => Dangerous [] ["public.orders"];
    "CREATE TABLE t (a text DEFAULT pg_read_file('x'))" => Dangerous [] ["public.t"];
    "ALTER TABLE orders ALTER COLUMN note SET DEFAULT pg_ls_dir('.')" => Dangerous [] ["public.orders"];
    "ALTER TABLE orders ADD COLUMN leak text DEFAULT pg_read_file('x')" => Dangerous [] ["public.orders"];
    "CREATE INDEX ON orders ((pg_read_file(note)))" => Dangerous [] ["public.orders"];
    "CREATE TABLE t (a text CHECK (pg_sleep(1) IS NULL))" => Dangerous [] ["public.t"];
    // COPY: files, programs, whole-table export.
    "COPY orders TO STDOUT" => Dangerous ["public.orders"] [];
    "COPY orders (id, total) TO STDOUT WITH (FORMAT csv)" => Dangerous ["public.orders"] [];
    "COPY orders TO '/tmp/orders.csv'" => Dangerous ["public.orders"] [];
    "COPY orders FROM '/tmp/orders.csv'" => Dangerous [] ["public.orders"];
    "COPY orders FROM PROGRAM 'curl http://elsewhere'" => Dangerous [] ["public.orders"];
    "COPY (SELECT 1) TO PROGRAM 'id'" => Dangerous [] [];
    // Code, privileges, roles, extensions, server state.
    "DO $$BEGIN PERFORM 1; END$$" => Dangerous [] [];
    "CALL process_orders()" => Dangerous [] [];
    "ALTER SYSTEM SET work_mem = '1GB'" => Dangerous [] [];
    "SET ROLE postgres" => Dangerous [] [];
    "SET LOCAL ROLE postgres" => Dangerous [] [];
    "RESET ROLE" => Dangerous [] [];
    "SET SESSION AUTHORIZATION postgres" => Dangerous [] [];
    "SET SESSION AUTHORIZATION DEFAULT" => Dangerous [] [];
    "GRANT SELECT ON cards TO agent" => Dangerous [] ["public.cards"];
    "REVOKE ALL ON cards FROM PUBLIC" => Dangerous [] ["public.cards"];
    "GRANT pg_read_server_files TO agent" => Dangerous [] [];
    "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO agent" => Dangerous [] [];
    "CREATE ROLE x LOGIN" => Dangerous [] [];
    "ALTER ROLE agent WITH SUPERUSER" => Dangerous [] [];
    "ALTER USER agent PASSWORD 'secret'" => Dangerous [] [];
    "DROP ROLE agent" => Dangerous [] [];
    "CREATE EXTENSION dblink" => Dangerous [] [];
    "DROP EXTENSION pgcrypto" => Dangerous [] [];
    "LOAD 'auto_explain'" => Dangerous [] [];
    "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'" => Dangerous [] [];
    "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1" => Dangerous [] [];
    "CREATE PROCEDURE p() LANGUAGE sql AS $$ DELETE FROM orders $$" => Dangerous [] [];
    "CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()" => Dangerous [] ["public.orders"];
    "CREATE RULE r AS ON INSERT TO orders DO ALSO NOTIFY payments" => Dangerous [] ["public.orders"];
    "CREATE OPERATOR ### (PROCEDURE = pg_read_file, RIGHTARG = text)" => Dangerous [] [];
    "CREATE CAST (text AS int) WITH FUNCTION f(text)" => Dangerous [] [];
    "ALTER TABLE orders DISABLE TRIGGER ALL" => Dangerous [] ["public.orders"];
    "ALTER TABLE orders OWNER TO agent" => Dangerous [] ["public.orders"];
    "ALTER TABLE cards DISABLE ROW LEVEL SECURITY" => Dangerous [] ["public.cards"];
    "DROP POLICY p ON cards" => Dangerous [] [];
    "DROP TRIGGER audit ON orders" => Dangerous [] [];
    "CREATE POLICY p ON cards USING (true)" => Dangerous [] ["public.cards"];
    "SECURITY LABEL ON TABLE cards IS 'x'" => Dangerous [] [];
    "REASSIGN OWNED BY a TO b" => Dangerous [] [];
    "DROP OWNED BY a" => Dangerous [] [];
    "CHECKPOINT" => Dangerous [] [];
    "CREATE DATABASE copy_of_payments" => Dangerous [] [];
    "DROP DATABASE payments" => Dangerous [] [];
    "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host 'elsewhere')" => Dangerous [] [];
    "CREATE USER MAPPING FOR agent SERVER s OPTIONS (user 'x', password 'y')" => Dangerous [] [];
    "IMPORT FOREIGN SCHEMA public FROM SERVER s INTO remote" => Dangerous [] [];
    "CREATE PUBLICATION p FOR ALL TABLES" => Dangerous [] [];
    "CREATE SUBSCRIPTION sub CONNECTION 'host=elsewhere' PUBLICATION p" => Dangerous [] [];
    "CREATE TABLESPACE t LOCATION '/tmp'" => Dangerous [] [];
    "CREATE SCHEMA s CREATE TABLE t (id int) GRANT SELECT ON t TO PUBLIC" => Dangerous [] ["s.t"];
    // Settings that change how later messages are decoded, and anything
    // not on the harmless list.
    "SET client_encoding = 'SJIS'" => Dangerous [] [];
    "SET NAMES 'LATIN1'" => Dangerous [] [];
    "RESET client_encoding" => Dangerous [] [];
    "SET standard_conforming_strings = off" => Dangerous [] [];
    "SET backslash_quote = on" => Dangerous [] [];
    "SET escape_string_warning = off" => Dangerous [] [];
    "SET work_mem = '4GB'" => Dangerous [] [];
    "SET row_security = off" => Dangerous [] [];
    // Two-phase commit outlives the session.
    "PREPARE TRANSACTION 'x'" => Dangerous [] [];
    "COMMIT PREPARED 'x'" => Dangerous [] [];
    "ROLLBACK PREPARED 'x'" => Dangerous [] [];

    // ---- control
    "BEGIN" => Control [] [];
    "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY" => Control [] [];
    "COMMIT" => Control [] [];
    "COMMIT AND CHAIN" => Control [] [];
    "END" => Control [] [];
    "ROLLBACK" => Control [] [];
    "ABORT" => Control [] [];
    "SAVEPOINT a" => Control [] [];
    "RELEASE SAVEPOINT a" => Control [] [];
    "ROLLBACK TO SAVEPOINT a" => Control [] [];
    "SET application_name = 'agent'" => Control [] [];
    "SET TIME ZONE 'UTC'" => Control [] [];
    "SET statement_timeout = '5s'" => Control [] [];
    "SET LOCAL lock_timeout = 1000" => Control [] [];
    "SET search_path TO payments, public" => Control [] [];
    "SET datestyle = ISO" => Control [] [];
    "SET extra_float_digits = 3" => Control [] [];
    "SET client_min_messages TO warning" => Control [] [];
    "SET TRANSACTION READ ONLY" => Control [] [];
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED" => Control [] [];
    "SET CONSTRAINTS ALL DEFERRED" => Control [] [];
    "SHOW search_path" => Control [] [];
    "SHOW ALL" => Control [] [];
    "RESET ALL" => Control [] [];
    "RESET statement_timeout" => Control [] [];
    "DISCARD ALL" => Control [] [];
    "DISCARD PLANS" => Control [] [];
    "DEALLOCATE ALL" => Control [] [];
    "DEALLOCATE q" => Control [] [];
    "UNLISTEN *" => Control [] [];
    "CLOSE ALL" => Control [] [];
    "" => Control [] [];
    "   \n\t " => Control [] [];
    "-- only a comment" => Control [] [];
    "/* nothing */" => Control [] [];
    ";" => Control [] [];

    // ---- unparseable: never allowed
    "SELEC 1" => Unparseable [] [];
    "SELECT * FROM" => Unparseable [] [];
    "DROP TABLE" => Unparseable [] [];
    "SELECT 'unterminated" => Unparseable [] [];
    "SELECT $$ unterminated" => Unparseable [] [];
    "SELECT 1; SELEC 2" => Unparseable [] [];
    "\\d cards" => Unparseable [] [];
    "SELECT 1\u{0}; DROP TABLE orders" => Unparseable [] [];

    // ---- batches: decided by the most restrictive part
    "SELECT 1; SELECT * FROM orders" => Read ["public.orders"] [];
    "BEGIN; DELETE FROM orders; COMMIT" => Write [] ["public.orders"];
    "SELECT * FROM orders; DROP TABLE orders" => Ddl ["public.orders"] ["public.orders"];
    "SET application_name = 'x'; SELECT pg_read_file('y')" => Dangerous [] [];
    "CREATE TABLE t (a int); GRANT ALL ON t TO PUBLIC" => Dangerous [] ["public.t"];
    "SELECT 1; SELECT 'x;y'; SELECT \"a;b\" FROM \"c;d\"" => Read ["public.c;d"] [];

    // ---- search_path within one string
    "SET search_path = payments; SELECT * FROM cards" => Read ["payments.cards"] [];
    "SELECT * FROM cards; SET search_path = payments; SELECT * FROM cards" => Read ["payments.cards", "public.cards"] [];
    "SET search_path = \"$user\", pg_catalog, \"Pay\"; SELECT * FROM cards, pg_class" => Read ["Pay.cards", "pg_catalog.pg_class"] [];
    "SET search_path = ''; SELECT * FROM cards" => Read ["pg_catalog.cards"] [];
    "SET LOCAL search_path = payments; SELECT * FROM cards" => Read ["payments.cards"] [];

    // ---- PREPARE takes the class of its body; EXECUTE inherits it
    "PREPARE q(int) AS SELECT * FROM cards WHERE id = $1" => Read ["public.cards"] [];
    "PREPARE d AS DELETE FROM orders WHERE id = $1" => Write [] ["public.orders"];
    "PREPARE q AS SELECT * FROM cards; EXECUTE q" => Read ["public.cards"] [];
    "PREPARE q(text) AS SELECT $1; EXECUTE q(pg_read_file('x'))" => Dangerous [] [];
    "PREPARE c AS SELECT * FROM orders; CREATE TABLE t AS EXECUTE c" => Ddl ["public.orders"] ["public.t"];
    "EXECUTE nope" => Unparseable [] [];
    "PREPARE q AS SELECT 1; DEALLOCATE q; EXECUTE q" => Unparseable [] [];
};

fn describe(class: StatementClass, read: &[String], write: &[String]) -> String {
    format!("{class} read={read:?} write={write:?}")
}

#[test]
fn every_case_classifies_as_expected() {
    let classifier = Classifier::new(1024);
    let mut failures = Vec::new();
    for case in CASES {
        let c = SqlSession::new().effective(classifier.classify(case.sql));
        let want_read: Vec<String> = case.read.iter().map(|s| s.to_string()).collect();
        let want_write: Vec<String> = case.write.iter().map(|s| s.to_string()).collect();
        if c.class != case.class || c.reads != want_read || c.writes != want_write {
            failures.push(format!(
                "{:?}\n    want {}\n    got  {}{}",
                case.sql,
                describe(case.class, &want_read, &want_write),
                describe(c.class, &c.reads, &c.writes),
                c.error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn statement_counts_and_errors() {
    let classifier = Classifier::new(16);
    assert_eq!(classifier.classify("").statements, 0);
    assert_eq!(classifier.classify("-- x").statements, 0);
    assert_eq!(classifier.classify("SELECT 1; SELECT 2;").statements, 2);
    let bad = classifier.classify("SELEC 1");
    assert_eq!(bad.class, Unparseable);
    assert!(
        bad.error.as_deref().unwrap().contains("syntax error"),
        "{bad:?}"
    );
    assert!(classifier.classify("SELECT 1").error.is_none());
}

#[test]
fn parser_errors_never_quote_a_card_number() {
    let c = Classifier::new(0).classify("SELECT 1 FROM cards WHERE pan = 4111 1111 1111 1111");
    assert_eq!(c.class, Unparseable);
    let error = c.error.clone().unwrap();
    assert!(error.contains("syntax error"), "{error}");
    assert!(!error.contains("4111 1111"), "{error}");
    let c = Classifier::new(0).classify("SELECT 4111111111111111abc FROM x WHERE");
    assert!(!c.error.as_deref().unwrap().contains("4111111111111111"));
}

/// Nesting is bounded (about 45 chained operators or 20 nested subqueries):
/// deeper statements are unparseable, never a crash or a stack overflow.
#[test]
fn deep_nesting_is_refused_not_crashed() {
    let classifier = Classifier::new(0);
    let expr = |depth: usize| format!("SELECT {}1{}", "1 + (".repeat(depth), ")".repeat(depth));
    let select =
        |depth: usize| format!("SELECT {}1{}", "(SELECT ".repeat(depth), ")".repeat(depth));
    assert_eq!(classifier.classify(&expr(20)).class, Read);
    assert_eq!(classifier.classify(&select(10)).class, Read);
    for sql in [
        expr(60),
        expr(200),
        expr(100_000),
        select(30),
        select(5_000),
    ] {
        let c = classifier.classify(&sql);
        assert_eq!(c.class, Unparseable, "{}", &sql[..40]);
        assert!(c.error.is_some());
    }
    assert_eq!(
        classifier.classify(&expr(60)).error.as_deref(),
        Some("statement is nested too deeply to classify")
    );
}

#[test]
fn notes_explain_what_raised_the_class() {
    let c = Classifier::new(0).classify("SELECT pg_read_file('/etc/passwd')");
    assert_eq!(
        c.notes,
        ["pg_read_file: reads or writes files on the database server"]
    );
    let c = Classifier::new(0).classify("COPY cards TO STDOUT");
    assert_eq!(
        c.notes,
        ["COPY of a whole table to the client is a bulk export"]
    );
    assert!(Classifier::new(0).classify("SELECT 1").notes.is_empty());
}

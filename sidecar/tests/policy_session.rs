//! Per-session SQL state: prepared statements run by EXECUTE, and the
//! search_path that qualifies unqualified names, with PostgreSQL's
//! transaction rules for settings.

use std::sync::Arc;

use cardgate_crds::v1alpha1::StatementClass::{self, *};
use cardgate_sidecar::policy::{Classification, Classifier, SessionEffect, SqlSession};

struct Session {
    classifier: Classifier,
    sql: SqlSession,
}

impl Session {
    fn new() -> Session {
        Session {
            classifier: Classifier::new(64),
            sql: SqlSession::new(),
        }
    }

    fn run(&mut self, sql: &str) -> Arc<Classification> {
        self.sql.effective(self.classifier.classify(sql))
    }

    fn class(&mut self, sql: &str) -> StatementClass {
        self.run(sql).class
    }

    fn reads(&mut self, sql: &str) -> Vec<String> {
        self.run(sql).reads.clone()
    }
}

#[test]
fn execute_inherits_the_prepared_class_and_relations() {
    let mut s = Session::new();
    assert_eq!(
        s.class("PREPARE q(int) AS SELECT * FROM cards WHERE id = $1"),
        Read
    );
    let c = s.run("EXECUTE q(1)");
    assert_eq!(c.class, Read);
    assert_eq!(c.reads, ["public.cards"]);

    assert_eq!(s.class("PREPARE d AS DELETE FROM orders"), Write);
    let c = s.run("EXECUTE d");
    assert_eq!(c.class, Write);
    assert_eq!(c.writes, ["public.orders"]);

    // Arguments are part of the EXECUTE and are checked too.
    assert_eq!(s.class("EXECUTE q(length(pg_read_file('x')))"), Dangerous);
}

#[test]
fn unknown_prepared_statements_are_never_allowed() {
    let mut s = Session::new();
    let c = s.run("EXECUTE never_prepared");
    assert_eq!(c.class, Unparseable);
    assert_eq!(
        c.error.as_deref(),
        Some("EXECUTE names unknown prepared statement \"never_prepared\"")
    );
    // Without the session, an EXECUTE cannot be known at all.
    let raw = Classifier::new(0).classify("EXECUTE q");
    assert_eq!(raw.class, Unparseable);
    assert!(
        raw.effects()
            .any(|e| matches!(e, SessionEffect::Execute { .. }))
    );
}

#[test]
fn deallocate_and_discard_all_forget_prepared_statements() {
    let mut s = Session::new();
    s.run("PREPARE a AS SELECT 1");
    s.run("PREPARE b AS SELECT 2");
    s.run("DEALLOCATE a");
    assert_eq!(s.class("EXECUTE a"), Unparseable);
    assert_eq!(s.class("EXECUTE b"), Read);
    s.run("PREPARE a AS SELECT 1");
    s.run("DEALLOCATE ALL");
    assert_eq!(s.class("EXECUTE a"), Unparseable);
    assert_eq!(s.class("EXECUTE b"), Unparseable);
    s.run("PREPARE c AS SELECT 1");
    s.run("SET search_path = payments");
    s.run("DISCARD ALL");
    assert_eq!(s.class("EXECUTE c"), Unparseable);
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
}

#[test]
fn a_second_prepare_of_the_same_name_keeps_the_first_like_postgres() {
    let mut s = Session::new();
    s.run("PREPARE q AS SELECT * FROM orders");
    // PostgreSQL answers "prepared statement q already exists".
    s.run("PREPARE q AS DELETE FROM orders");
    let c = s.run("EXECUTE q");
    assert_eq!(c.class, Read);
    assert_eq!(c.reads, ["public.orders"]);
}

#[test]
fn explain_execute_plans_and_explain_analyze_execute_runs() {
    let mut s = Session::new();
    s.run("PREPARE d AS DELETE FROM orders WHERE id = 1");
    let c = s.run("EXPLAIN EXECUTE d");
    assert_eq!(c.class, Read);
    assert_eq!(c.reads, ["public.orders"]);
    assert!(c.writes.is_empty());
    let c = s.run("EXPLAIN ANALYZE EXECUTE d");
    assert_eq!(c.class, Write);
    assert_eq!(c.writes, ["public.orders"]);
}

#[test]
fn create_table_as_execute_counts_as_the_body_and_the_new_table() {
    let mut s = Session::new();
    s.run("PREPARE q AS SELECT * FROM cards");
    let c = s.run("CREATE TABLE copy AS EXECUTE q");
    assert_eq!(c.class, Ddl);
    assert_eq!(c.reads, ["public.cards"]);
    assert_eq!(c.writes, ["public.copy"]);
}

#[test]
fn search_path_qualifies_later_statements() {
    let mut s = Session::new();
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
    assert_eq!(s.class("SET search_path TO payments, public"), Control);
    assert_eq!(s.reads("SELECT * FROM cards"), ["payments.cards"]);
    assert_eq!(s.reads("SELECT * FROM public.cards"), ["public.cards"]);
    assert_eq!(
        s.reads("SELECT * FROM pg_stat_activity"),
        ["pg_catalog.pg_stat_activity"]
    );
    s.run("SET search_path = \"$user\", \"Ledger\"");
    assert_eq!(s.reads("SELECT * FROM cards"), ["Ledger.cards"]);
    s.run("RESET search_path");
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
    s.run("SET search_path = payments");
    s.run("SET search_path TO DEFAULT");
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
    s.run("SET search_path = payments");
    s.run("RESET ALL");
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
}

#[test]
fn prepared_statements_resolve_names_when_executed() {
    // PostgreSQL re-analyzes a prepared statement when search_path changes.
    let mut s = Session::new();
    s.run("PREPARE q AS SELECT * FROM cards");
    s.run("SET search_path = payments");
    assert_eq!(s.reads("EXECUTE q"), ["payments.cards"]);
}

#[test]
fn rollback_undoes_set_and_commit_keeps_it() {
    let mut s = Session::new();
    s.run("BEGIN");
    s.run("SET search_path = payments");
    assert_eq!(s.reads("SELECT * FROM cards"), ["payments.cards"]);
    s.run("ROLLBACK");
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);

    s.run("BEGIN");
    s.run("SET search_path = payments");
    s.run("COMMIT");
    assert_eq!(s.reads("SELECT * FROM cards"), ["payments.cards"]);
}

#[test]
fn set_local_ends_with_the_transaction() {
    let mut s = Session::new();
    s.run("BEGIN");
    s.run("SET LOCAL search_path = ledger");
    assert_eq!(s.reads("SELECT * FROM cards"), ["ledger.cards"]);
    s.run("COMMIT");
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
    // Outside a transaction block, SET LOCAL lasts to the end of its string.
    assert_eq!(
        s.reads("SET LOCAL search_path = ledger; SELECT * FROM cards"),
        ["ledger.cards"]
    );
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
}

#[test]
fn savepoints_restore_the_path_they_saw() {
    let mut s = Session::new();
    s.run("BEGIN; SET search_path = a; SAVEPOINT one; SET search_path = b");
    assert_eq!(s.reads("SELECT * FROM t"), ["b.t"]);
    s.run("ROLLBACK TO SAVEPOINT one");
    assert_eq!(s.reads("SELECT * FROM t"), ["a.t"]);
    s.run("SET search_path = c; RELEASE SAVEPOINT one");
    assert_eq!(s.reads("SELECT * FROM t"), ["c.t"]);
    s.run("ROLLBACK");
    assert_eq!(s.reads("SELECT * FROM t"), ["public.t"]);
}

#[test]
fn commit_and_chain_starts_a_new_transaction() {
    let mut s = Session::new();
    s.run("BEGIN; SET search_path = a; COMMIT AND CHAIN");
    s.run("SET search_path = b");
    s.run("ROLLBACK");
    assert_eq!(s.reads("SELECT * FROM t"), ["a.t"]);
}

#[test]
fn undo_last_forgets_a_denied_or_failed_statement() {
    let mut s = Session::new();
    s.run("SET search_path = payments");
    s.sql.undo_last();
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
    s.run("PREPARE q AS SELECT 1");
    s.sql.undo_last();
    assert_eq!(s.class("EXECUTE q"), Unparseable);
    // A statement without effects leaves nothing to undo: the earlier SET stays.
    s.run("SET search_path = payments");
    s.run("SELECT 1");
    s.sql.undo_last();
    assert_eq!(s.reads("SELECT * FROM cards"), ["payments.cards"]);
}

#[test]
fn resolve_decides_without_recording() {
    let mut s = Session::new();
    let set = s
        .classifier
        .classify("SET search_path = payments; SELECT * FROM cards");
    assert_eq!(s.sql.resolve(&set).reads, ["payments.cards"]);
    assert_eq!(s.reads("SELECT * FROM cards"), ["public.cards"]);
}

#[test]
fn protocol_level_statements_are_visible_to_execute() {
    let mut s = Session::new();
    let body = s.classifier.classify("DELETE FROM orders WHERE id = $1");
    s.sql.protocol_prepared("stmt1", body);
    assert_eq!(s.class("EXECUTE stmt1(1)"), Write);
    s.sql.protocol_closed("stmt1");
    assert_eq!(s.class("EXECUTE stmt1(1)"), Unparseable);
    // A utility statement prepared at protocol level is not replayed: it
    // cannot be trusted as its class.
    let set = s.classifier.classify("SET search_path = payments");
    s.sql.protocol_prepared("set1", set);
    assert_eq!(s.class("EXECUTE set1"), Dangerous);
}

#[test]
fn the_default_path_can_come_from_the_server() {
    let mut sql = SqlSession::with_search_path(vec!["ledger".into(), "public".into()]);
    assert_eq!(sql.schema(), "ledger");
    let c = sql.effective(Classifier::new(0).classify("SELECT * FROM cards"));
    assert_eq!(c.reads, ["ledger.cards"]);
}

#[test]
fn statements_without_session_work_are_passed_through() {
    let classifier = Classifier::new(8);
    let mut sql = SqlSession::new();
    let raw = classifier.classify("SELECT * FROM cards");
    let effective = sql.effective(raw.clone());
    assert!(Arc::ptr_eq(&raw, &effective));
}

//! Rule evaluation: ordered rules, first match wins, then defaultAction;
//! table patterns (every relation for allow, one for deny/requireApproval);
//! target and class filters; statements that do not parse are never allowed;
//! HTTP-only rules never match SQL.

use cardgate_crds::config::{PolicyName, SidecarConfig};
use cardgate_crds::v1alpha1::RuleAction::{self, *};
use cardgate_sidecar::policy::{Classifier, Policy, RuleDecision, SqlSession};

/// A valid configuration with two postgres targets and the given rules.
fn config(rules: &str, default_action: &str) -> SidecarConfig {
    let text = format!(
        r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {{namespace: payments, name: agent-readonly}}
identity:
  issuers:
    - issuer: https://issuer.example
      audiences: [cardgate]
      jwksFile: jwks.json
targets:
  - name: payments-db
    listen: 127.0.0.1:15432
    upstream: {{host: 127.0.0.1, port: 5432}}
    credentials: {{username: proxy, passwordFile: pw}}
  - name: ledger-db
    listen: 127.0.0.1:15433
    upstream: {{host: 127.0.0.1, port: 5433}}
    credentials: {{username: proxy, passwordFile: pw}}
  - name: billing-api
    protocol: http
    listen: 127.0.0.1:18080
    upstream: {{host: 127.0.0.1, port: 8080}}
approval:
  settings:
    approvers: {{users: [alice]}}
  store: {{directory: approvals}}
rules:
{rules}
defaultAction: {default_action}
"#
    );
    SidecarConfig::from_text(&text, "test").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

struct Check {
    policy: Policy,
    classifier: Classifier,
}

impl Check {
    fn new(rules: &str, default_action: &str) -> Check {
        Check {
            policy: Policy::from_config(&config(rules, default_action)),
            classifier: Classifier::new(32),
        }
    }

    fn on(&self, target: &str, sql: &str) -> RuleDecision {
        let c = SqlSession::new().effective(self.classifier.classify(sql));
        self.policy.decide(target, &c)
    }

    fn decide(&self, sql: &str) -> RuleDecision {
        self.on("payments-db", sql)
    }

    fn action(&self, sql: &str) -> RuleAction {
        self.decide(sql).action
    }
}

#[test]
fn first_matching_rule_wins() {
    let p = Check::new(
        r#"
  - {name: reads, action: allow, match: {classes: [read]}}
  - {name: no-cards, action: deny, match: {tables: [cards]}}
  - {action: requireApproval, match: {classes: [read, write]}}
"#,
        "deny",
    );
    // Rule 1 matches before rule 2 can.
    let d = p.decide("SELECT * FROM cards");
    assert_eq!((d.action, d.rule), (Allow, Some(0)));
    assert_eq!(d.label, "rule 1 (reads)");
    // A write on cards: rule 2.
    let d = p.decide("DELETE FROM cards");
    assert_eq!((d.action, d.rule), (Deny, Some(1)));
    assert_eq!(d.label, "rule 2 (no-cards)");
    // A write elsewhere: rule 3, which has no name.
    let d = p.decide("DELETE FROM orders");
    assert_eq!((d.action, d.rule), (RequireApproval, Some(2)));
    assert_eq!(d.label, "rule 3");
    // Nothing matches: the default.
    let d = p.decide("DROP TABLE orders");
    assert_eq!((d.action, d.rule), (Deny, None));
    assert_eq!(d.label, "defaultAction");
}

#[test]
fn allow_needs_every_relation_listed() {
    let p = Check::new(
        r#"
  - {action: allow, match: {classes: [read], tables: [public.orders, "payments.*"]}}
"#,
        "deny",
    );
    assert_eq!(p.action("SELECT * FROM orders"), Allow);
    assert_eq!(
        p.action("SELECT * FROM payments.cards c JOIN orders o USING (id)"),
        Allow
    );
    // One unlisted relation, however it is reached, and the allow does not apply.
    assert_eq!(
        p.action("SELECT * FROM orders JOIN customers USING (id)"),
        Deny
    );
    assert_eq!(
        p.action("SELECT * FROM orders WHERE id IN (SELECT id FROM customers)"),
        Deny
    );
    assert_eq!(
        p.action("WITH c AS (SELECT * FROM customers) SELECT * FROM orders, c"),
        Deny
    );
    // A read that touches no relation is not held back by a table list…
    assert_eq!(p.action("SELECT 1"), Allow);
}

#[test]
fn table_lists_do_not_allow_what_names_no_relation() {
    // An allow rule without classes, bounded only by tables.
    let p = Check::new(
        r#"
  - {action: allow, match: {tables: ["public.*"]}}
"#,
        "deny",
    );
    assert_eq!(p.action("DELETE FROM orders"), Allow);
    assert_eq!(p.action("SELECT 1"), Allow);
    assert_eq!(p.action("SHOW search_path"), Allow);
    // …but statements whose reach no table list bounds are not allowed by one.
    assert_eq!(p.action("SELECT pg_read_file('/etc/passwd')"), Deny);
    assert_eq!(
        p.action("DO $$BEGIN DELETE FROM payments.cards; END$$"),
        Deny
    );
    assert_eq!(p.action("SET ROLE postgres"), Deny);
    assert_eq!(p.action("NOTIFY payments"), Deny);
}

#[test]
fn deny_needs_one_relation_listed() {
    let p = Check::new(
        r#"
  - {name: no-cards, action: deny, match: {tables: [cards]}}
  - {action: allow, match: {classes: [read]}}
"#,
        "deny",
    );
    assert_eq!(p.action("SELECT * FROM orders"), Allow);
    // A pattern without schema matches the table in any schema.
    assert_eq!(p.action("SELECT * FROM payments.cards"), Deny);
    // Joining an unlisted table cannot dodge the deny.
    assert_eq!(p.action("SELECT * FROM orders JOIN cards USING (id)"), Deny);
    assert_eq!(
        p.action("SELECT * FROM orders WHERE EXISTS (SELECT 1 FROM (SELECT * FROM cards) x)"),
        Deny
    );
    assert_eq!(p.decide("SELECT * FROM cards").label, "rule 1 (no-cards)");
}

#[test]
fn require_approval_also_needs_only_one_relation() {
    let p = Check::new(
        r#"
  - {action: requireApproval, match: {classes: [write], tables: ["payments.*"]}}
  - {action: allow, match: {classes: [write]}}
"#,
        "deny",
    );
    assert_eq!(p.action("UPDATE orders SET total = 0"), Allow);
    assert_eq!(
        p.action(
            "WITH d AS (DELETE FROM payments.cards RETURNING id) INSERT INTO orders SELECT * FROM d"
        ),
        RequireApproval
    );
}

#[test]
fn tables_match_the_qualified_name_the_session_resolves() {
    let p = Check::new(
        r#"
  - {action: allow, match: {classes: [read, control], tables: ["payments.*"]}}
"#,
        "deny",
    );
    let mut session = SqlSession::new();
    let mut decide = |sql: &str| {
        let c = session.effective(p.classifier.classify(sql));
        p.policy.decide("payments-db", &c).action
    };
    assert_eq!(decide("SELECT * FROM cards"), Deny);
    assert_eq!(decide("SET search_path = payments"), Allow);
    assert_eq!(decide("SELECT * FROM cards"), Allow);
    assert_eq!(decide("SELECT * FROM public.cards"), Deny);
}

#[test]
fn targets_filter_rules() {
    let p = Check::new(
        r#"
  - {action: allow, match: {targets: [ledger-db], classes: [write]}}
  - {action: allow, match: {classes: [read]}}
"#,
        "deny",
    );
    assert_eq!(p.on("ledger-db", "DELETE FROM entries").action, Allow);
    assert_eq!(p.on("payments-db", "DELETE FROM entries").action, Deny);
    // No targets listed: every target.
    assert_eq!(p.on("ledger-db", "SELECT 1").action, Allow);
    assert_eq!(p.on("payments-db", "SELECT 1").action, Allow);
}

#[test]
fn empty_classes_match_every_class_and_default_action_applies() {
    let p = Check::new(
        r#"
  - {action: requireApproval, match: {tables: [orders]}}
"#,
        "allow",
    );
    assert_eq!(p.action("SELECT * FROM orders"), RequireApproval);
    assert_eq!(p.action("DROP TABLE orders"), RequireApproval);
    let d = p.decide("SELECT * FROM customers");
    assert_eq!(
        (d.action, d.rule, d.label.as_str()),
        (Allow, None, "defaultAction")
    );
    let p = Check::new("  []", "requireApproval");
    assert_eq!(p.action("SELECT 1"), RequireApproval);
}

/// Driver setup queries are allowed when no rule matches them, whatever the
/// defaultAction; a rule that matches them decides instead, so they stay
/// deniable. Before the metadata class, SQLAlchemy's hstore lookup was a
/// read of an unlisted table and denied by the defaultAction.
#[test]
fn metadata_is_allowed_unless_a_rule_matches_it() {
    let rules = r#"
  - {action: allow, match: {classes: [read], tables: [orders]}}
"#;
    let p = Check::new(rules, "deny");
    let hstore = "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid WHERE typname = 'hstore'";
    let d = p.decide(hstore);
    assert_eq!(
        (d.action, d.rule, d.label.as_str()),
        (Allow, None, "built-in metadata allowance")
    );
    assert_eq!(p.action("select pg_catalog.version()"), Allow);
    // The same catalogs read beside data, or catalogs that hold data, are not
    // metadata and meet the defaultAction.
    assert_eq!(p.action("SELECT typname, pan FROM pg_type, cards"), Deny);
    assert_eq!(p.action("SELECT * FROM pg_statistic"), Deny);
    assert_eq!(p.action("SELECT pid, query FROM pg_stat_activity"), Deny);

    let p = Check::new(
        r#"
  - {name: no-metadata, action: deny, match: {classes: [metadata]}}
"#,
        "allow",
    );
    let d = p.decide(hstore);
    assert_eq!((d.action, d.rule), (Deny, Some(0)));
    // An allow with a table list passes metadata that names no relation, as
    // it passes `SELECT 1`; one that names catalogs must list them.
    let p = Check::new(
        r#"
  - {action: allow, match: {classes: [metadata], tables: [orders]}}
  - {action: deny, match: {classes: [metadata]}}
"#,
        "deny",
    );
    assert_eq!(p.action("SELECT version()"), Allow);
    assert_eq!(p.action(hstore), Deny);
}

#[test]
fn unparseable_is_never_allowed() {
    // An allow rule without conditions does not match what does not parse…
    let p = Check::new(
        r#"
  - {action: allow}
"#,
        "allow",
    );
    assert_eq!(p.action("SELECT 1"), Allow);
    let d = p.decide("SELEC 1");
    // …and an allow defaultAction becomes deny.
    assert_eq!((d.action, d.rule), (Deny, None));
    assert_eq!(d.class.as_str(), "unparseable");
    // The policy may hold it for approval instead.
    let p = Check::new(
        r#"
  - {action: allow, match: {classes: [read]}}
  - {action: allow}
  - {action: requireApproval, match: {classes: [unparseable]}}
"#,
        "allow",
    );
    let d = p.decide("SELECT * FROM");
    assert_eq!((d.action, d.rule), (RequireApproval, Some(2)));
    // An unknown EXECUTE is unparseable too.
    assert_eq!(p.action("EXECUTE never_prepared"), RequireApproval);
}

#[test]
fn http_conditions_never_match_sql() {
    let p = Check::new(
        r#"
  - {action: deny, match: {methods: [DELETE]}}
  - {action: allow, match: {paths: ["/v1/*"]}}
  - {action: allow, match: {classes: [read]}}
"#,
        "requireApproval",
    );
    assert_eq!(p.decide("SELECT 1").rule, Some(2));
    assert_eq!(p.action("DELETE FROM orders"), RequireApproval);
}

#[test]
fn denial_message_names_policy_rule_and_class() {
    let p = Check::new(
        r#"
  - {action: allow, match: {classes: [read]}}
  - {action: deny, match: {classes: [write]}}
  - {name: no-ddl, action: deny, match: {classes: [ddl]}}
"#,
        "deny",
    );
    let policy = PolicyName {
        namespace: Some("payments".into()),
        name: "agent-readonly".into(),
    };
    assert_eq!(
        p.decide("DROP TABLE cards").denial_message(&policy),
        "cardgate: denied by AccessPolicy payments/agent-readonly rule 3 no-ddl (ddl)"
    );
    assert_eq!(
        p.decide("DELETE FROM cards").denial_message(&policy),
        "cardgate: denied by AccessPolicy payments/agent-readonly rule 2 (write)"
    );
    let standalone = PolicyName {
        namespace: None,
        name: "demo".into(),
    };
    assert_eq!(
        p.decide("SELECT pg_read_file('/etc/passwd')")
            .denial_message(&standalone),
        "cardgate: denied by AccessPolicy demo defaultAction (dangerous)"
    );
}

#[test]
fn batches_are_decided_by_their_most_restrictive_part() {
    let p = Check::new(
        r#"
  - {action: allow, match: {classes: [read, control]}}
"#,
        "deny",
    );
    assert_eq!(p.action("BEGIN; SELECT * FROM orders; COMMIT"), Allow);
    let d = p.decide("SELECT * FROM orders; DELETE FROM orders");
    assert_eq!((d.action, d.class.as_str()), (Deny, "write"));
}

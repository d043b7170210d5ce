//! What deciding a statement costs on the data path: libpg_query's parse
//! alone, a cold classification (parse + walk), a cache hit, and the
//! per-statement session and rule work that follows either.

use std::hint::black_box;

use cardgate_crds::config::SidecarConfig;
use cardgate_sidecar::policy::{Classifier, Policy, SqlSession, classify};
use criterion::{Criterion, criterion_group, criterion_main};

const STATEMENTS: [(&str, &str); 3] = [
    (
        "point",
        "SELECT id, total, status FROM orders WHERE id = $1",
    ),
    (
        "join",
        "SELECT o.id, o.total, c.name, k.pan FROM orders o JOIN customers c ON c.id = o.customer_id \
         JOIN cards k ON k.id = o.card_id WHERE o.created_at > now() - interval '7 days' \
         AND c.country = 'DE' ORDER BY o.created_at DESC LIMIT 50",
    ),
    (
        "cte_write",
        "WITH moved AS (DELETE FROM orders WHERE created_at < now() - interval '1 year' RETURNING *) \
         INSERT INTO archive.orders SELECT m.*, (SELECT count(*) FROM refunds r WHERE r.order_id = m.id) \
         FROM moved m",
    ),
];

const CONFIG: &str = r#"
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {name: bench}
identity:
  issuers: [{issuer: https://issuer.example, audiences: [cardgate], jwksFile: jwks.json}]
targets:
  - name: db
    listen: 127.0.0.1:15432
    upstream: {host: 127.0.0.1, port: 5432}
    credentials: {username: proxy, passwordFile: pw}
rules:
  - {action: allow, match: {classes: [control]}}
  - {action: deny, match: {tables: ["secret.*"]}}
  - {action: allow, match: {classes: [read], tables: [public.orders, public.customers, public.cards]}}
defaultAction: deny
"#;

fn bench(c: &mut Criterion) {
    for (name, sql) in STATEMENTS {
        // libpg_query alone, to show what the walk adds.
        c.bench_function(&format!("classify/parse_only/{name}"), |b| {
            b.iter(|| pg_query::parse(black_box(sql), pg_query::ParserOptions::DEFAULT))
        });
        c.bench_function(&format!("classify/cold/{name}"), |b| {
            b.iter(|| classify(black_box(sql)))
        });
        let classifier = Classifier::new(4096);
        classifier.classify(sql);
        c.bench_function(&format!("classify/cached/{name}"), |b| {
            b.iter(|| classifier.classify(black_box(sql)))
        });
    }

    // Everything the proxy does per statement on a hit: cache, session, rules.
    let config = SidecarConfig::from_text(CONFIG, "bench").expect("valid bench config");
    let policy = Policy::from_config(&config);
    let classifier = Classifier::new(4096);
    let mut session = SqlSession::new();
    let sql = STATEMENTS[1].1;
    classifier.classify(sql);
    c.bench_function("decide/cached/join", |b| {
        b.iter(|| {
            let effective = session.effective(classifier.classify(black_box(sql)));
            policy.decide("db", &effective)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

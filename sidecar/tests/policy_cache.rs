//! The shared classification cache: bounded by entries and by bytes of
//! text, least recently used first out, safe to share between sessions.

use std::sync::Arc;
use std::thread;

use cardgate_sidecar::policy::{Classifier, MAX_CACHED_BYTES, MAX_CACHED_TEXT};

#[test]
fn holds_at_most_capacity_and_evicts_the_least_recently_used() {
    let cache = Classifier::new(3);
    let a = cache.classify("SELECT a");
    let b = cache.classify("SELECT b");
    cache.classify("SELECT c");
    // A hit refreshes "SELECT a" and returns the very same result.
    assert!(Arc::ptr_eq(&a, &cache.classify("SELECT a")));
    cache.classify("SELECT d");
    assert_eq!(cache.len(), 3);
    // "SELECT b" was least recently used: it was evicted and is parsed anew.
    assert!(!Arc::ptr_eq(&b, &cache.classify("SELECT b")));
    assert!(Arc::ptr_eq(&a, &cache.classify("SELECT a")));
    for i in 0..100 {
        cache.classify(&format!("SELECT c{i} FROM orders"));
        assert!(cache.len() <= 3);
    }
}

#[test]
fn statements_differing_only_in_numbers_share_an_entry() {
    let cache = Classifier::new(8);
    let a = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 17");
    let b = cache.classify("SELECT abalance FROM pgbench_accounts WHERE aid = 90210");
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.len(), 1);
    // Strings are part of the key: they can change the class.
    let harmless = cache.classify("SELECT set_config('application_name', 'x', false)");
    let role = cache.classify("SELECT set_config('role', 'x', false)");
    assert!(!Arc::ptr_eq(&harmless, &role));
    assert_eq!(role.class.as_str(), "dangerous");
    // Numbers inside identifiers are kept.
    assert!(!Arc::ptr_eq(
        &cache.classify("SELECT * FROM t1"),
        &cache.classify("SELECT * FROM t2")
    ));
}

#[test]
fn keys_are_the_exact_text() {
    let cache = Classifier::new(8);
    let a = cache.classify("SELECT 1");
    assert!(!Arc::ptr_eq(&a, &cache.classify("select 1")));
    assert!(!Arc::ptr_eq(&a, &cache.classify("SELECT 1 ")));
    assert_eq!(cache.len(), 3);
}

#[test]
fn capacity_zero_disables_caching() {
    let cache = Classifier::new(0);
    let a = cache.classify("SELECT 1");
    assert!(!Arc::ptr_eq(&a, &cache.classify("SELECT 1")));
    assert!(cache.is_empty());
}

#[test]
fn long_statements_are_not_cached() {
    let cache = Classifier::new(8);
    let long = format!("SELECT '{}'", "x".repeat(MAX_CACHED_TEXT));
    let a = cache.classify(&long);
    assert_eq!(a.class.as_str(), "read");
    assert!(!Arc::ptr_eq(&a, &cache.classify(&long)));
    assert!(cache.is_empty());
}

#[test]
fn text_bytes_are_bounded_too() {
    let cache = Classifier::new(100_000);
    let filler = "x".repeat(MAX_CACHED_TEXT - 64);
    let n = MAX_CACHED_BYTES / MAX_CACHED_TEXT + 64;
    for i in 0..n {
        cache.classify(&format!("SELECT c{i}, '{filler}'"));
    }
    let most = MAX_CACHED_BYTES / (MAX_CACHED_TEXT - 64);
    assert!(cache.len() <= most, "{} > {most}", cache.len());
    assert!(cache.len() >= most / 2, "{} entries", cache.len());
}

#[test]
fn shared_between_threads() {
    let cache = Arc::new(Classifier::new(64));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let cache = cache.clone();
            thread::spawn(move || {
                for i in 0..200 {
                    let c = cache.classify(&format!("DELETE FROM orders WHERE id = {}", i % 80));
                    assert_eq!(c.class.as_str(), "write", "thread {t}");
                    assert_eq!(c.writes, ["public.orders"]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(cache.len() <= 64);
}

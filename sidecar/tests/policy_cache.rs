//! The shared classification cache: bounded by entries and by bytes of
//! text, least recently used first out, safe to share between sessions.

use std::sync::Arc;
use std::thread;

use cardgate_sidecar::policy::{Classifier, MAX_CACHED_BYTES, MAX_CACHED_TEXT};

#[test]
fn holds_at_most_capacity_and_evicts_the_least_recently_used() {
    let cache = Classifier::new(3);
    let a = cache.classify("SELECT 1");
    let b = cache.classify("SELECT 2");
    cache.classify("SELECT 3");
    // A hit refreshes "SELECT 1" and returns the very same result.
    assert!(Arc::ptr_eq(&a, &cache.classify("SELECT 1")));
    cache.classify("SELECT 4");
    assert_eq!(cache.len(), 3);
    // "SELECT 2" was least recently used: it was evicted and is parsed anew.
    assert!(!Arc::ptr_eq(&b, &cache.classify("SELECT 2")));
    assert!(Arc::ptr_eq(&a, &cache.classify("SELECT 1")));
    for i in 0..100 {
        cache.classify(&format!("SELECT {i} FROM orders"));
        assert!(cache.len() <= 3);
    }
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
        cache.classify(&format!("SELECT {i}, '{filler}'"));
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

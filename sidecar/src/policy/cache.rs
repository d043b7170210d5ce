//! The classification cache shared by all sessions.
//!
//! Parsing is the expensive part of deciding a statement, and applications
//! send the same statement texts again and again. Results are kept by exact
//! text in a least-recently-used cache bounded both in entries and in bytes of
//! text, so hostile or huge statements cannot grow it past its budget.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;

use super::classify::{Classification, classify};

/// Statements longer than this are classified every time, never cached.
pub const MAX_CACHED_TEXT: usize = 8 << 10;

/// Bytes of statement text the cache holds at most.
pub const MAX_CACHED_BYTES: usize = 4 << 20;

/// Shared by all sessions: bounded LRU cache keyed by exact statement text.
#[derive(Debug)]
pub struct Classifier {
    cache: Option<Mutex<Cache>>,
}

#[derive(Debug)]
struct Cache {
    entries: LruCache<Box<str>, Arc<Classification>>,
    bytes: usize,
}

impl Classifier {
    /// A classifier caching at most `capacity` statements (0 disables the
    /// cache).
    pub fn new(capacity: usize) -> Classifier {
        Classifier {
            cache: NonZeroUsize::new(capacity).map(|n| {
                Mutex::new(Cache {
                    entries: LruCache::new(n),
                    bytes: 0,
                })
            }),
        }
    }

    /// The classification of `sql`; cheap on a cache hit.
    pub fn classify(&self, sql: &str) -> Arc<Classification> {
        let Some(cache) = &self.cache else {
            return Arc::new(classify(sql));
        };
        // Statements that differ only in numbers share one entry (see
        // `literals`): values sent inline must not defeat the cache.
        let normalized = super::literals::without_numbers(sql);
        if let Some(hit) = lock(cache).entries.get(normalized.as_ref()) {
            return hit.clone();
        }
        // Parse outside the lock: other sessions keep hitting the cache.
        let result = Arc::new(classify(sql));
        // A parser error quotes the text near it, numbers included: keep
        // errors under their exact text only.
        let key: &str = if result.error.is_some() {
            sql
        } else {
            &normalized
        };
        if key.len() <= MAX_CACHED_TEXT {
            let mut c = lock(cache);
            c.bytes += key.len();
            if let Some((old, _)) = c.entries.push(key.into(), result.clone()) {
                c.bytes -= old.len();
            }
            while c.bytes > MAX_CACHED_BYTES {
                match c.entries.pop_lru() {
                    Some((old, _)) => c.bytes -= old.len(),
                    None => break,
                }
            }
        }
        result
    }

    /// Statements cached now.
    pub fn len(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| lock(c).entries.len())
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Nothing that runs under the lock can leave the cache inconsistent for the
/// next user (at worst the byte count is off), so a poisoned lock is used as
/// is rather than failing every later statement.
fn lock(m: &Mutex<Cache>) -> std::sync::MutexGuard<'_, Cache> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

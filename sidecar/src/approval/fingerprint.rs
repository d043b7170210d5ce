//! The fingerprint that binds an approval to one exact statement, target and
//! requester: a reviewer approves *that* statement for *that* agent, and a
//! deferred grant covers nothing else.
//!
//! Each part is length-prefixed (8 bytes, big endian) after a domain tag, so
//! no two different triples encode to the same bytes ("ab"+"c" vs "a"+"bc").

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Separates these hashes from any other SHA-256 the project computes.
const DOMAIN: &[u8] = b"cardgate.dev/approval-fingerprint/v1\0";

/// SHA-256 (hex) of the statement, target and requester subject.
///
/// The statement is the raw text, which may hold a card number that the
/// stored, masked text shows truncated; with the rest of the statement
/// known, an unkeyed hash of it can be reversed by trying the hidden digits
/// (PCI DSS 3.5.1.1). Prefer [`keyed_fingerprint`] when a key is configured.
pub fn fingerprint(statement: &str, target: &str, requester_subject: &str) -> String {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    for part in [statement, target, requester_subject] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// HMAC-SHA-256 (hex) of the same encoding under `key` (e.g. the masking
/// key from `masking.hmacKeyFile`): cannot be reversed without the key.
/// Every sidecar that must honour the same grants needs the same key.
pub fn keyed_fingerprint(
    key: &[u8],
    statement: &str,
    target: &str,
    requester_subject: &str,
) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(DOMAIN);
    for part in [statement, target, requester_subject] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_64_lowercase_hex_and_stable() {
        let f = fingerprint("UPDATE t SET a = 1", "payments-db", "alice");
        assert_eq!(f.len(), 64);
        assert!(
            f.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_eq!(f, fingerprint("UPDATE t SET a = 1", "payments-db", "alice"));
    }

    #[test]
    fn every_part_counts_and_boundaries_do_not_blur() {
        let base = fingerprint("UPDATE t SET a = 1", "db", "alice");
        assert_ne!(base, fingerprint("UPDATE t SET a = 2", "db", "alice"));
        assert_ne!(base, fingerprint("UPDATE t SET a = 1", "db2", "alice"));
        assert_ne!(base, fingerprint("UPDATE t SET a = 1", "db", "bob"));
        assert_ne!(fingerprint("ab", "c", "d"), fingerprint("a", "bc", "d"));
        assert_ne!(fingerprint("a", "b", "cd"), fingerprint("a", "bc", "d"));
    }

    #[test]
    fn keyed_depends_on_the_key_and_differs_from_unkeyed() {
        let k1 = [1u8; 32];
        let k2 = [2u8; 32];
        let a = keyed_fingerprint(&k1, "DELETE FROM t", "db", "alice");
        assert_eq!(a.len(), 64);
        assert_eq!(a, keyed_fingerprint(&k1, "DELETE FROM t", "db", "alice"));
        assert_ne!(a, keyed_fingerprint(&k2, "DELETE FROM t", "db", "alice"));
        assert_ne!(a, fingerprint("DELETE FROM t", "db", "alice"));
        assert_ne!(
            keyed_fingerprint(&k1, "ab", "c", "d"),
            keyed_fingerprint(&k1, "a", "bc", "d")
        );
    }
}

//! Parsing a JWKS document into verification keys, each pinned to the
//! algorithms its key type can verify. Symmetric (`oct`) keys, encryption
//! keys, short RSA moduli and malformed entries are dropped with a reason,
//! so a key set can never turn a public key into an HMAC secret and a bad
//! entry cannot crash verification.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// Keys used from one set; more are ignored, so a token without `kid`
/// costs at most this many signature checks.
pub(crate) const MAX_KEYS: usize = 64;
/// Smallest RSA modulus accepted (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus the verifier supports.
const MAX_RSA_BITS: usize = 4096;

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One verification key.
#[derive(Debug)]
pub(crate) struct VerifyKey {
    /// The key id, matched exactly against the token's `kid`.
    pub kid: Option<String>,
    /// Algorithms this key may verify.
    pub algorithms: Vec<Algorithm>,
    /// The key material.
    pub key: DecodingKey,
}

/// The usable keys of one issuer.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    keys: Vec<VerifyKey>,
}

impl KeySet {
    /// Keys that may verify a token with this `kid` (exact match; a token
    /// without `kid` may be verified by any key) and algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.algorithms.contains(&alg) && kid.is_none_or(|kid| k.kid.as_deref() == Some(kid))
        })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Parses a JWKS document. Returns the usable keys and one line per key
/// that was dropped; fails when no key is usable.
pub(crate) fn parse(document: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let doc: Value = serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
    let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
        return Err("no \"keys\" array".into());
    };
    let mut keys = Vec::new();
    let mut dropped = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if keys.len() == MAX_KEYS {
            dropped.push(format!(
                "keys after the first {MAX_KEYS} usable ones are ignored"
            ));
            break;
        }
        match parse_key(entry) {
            Ok(k) => keys.push(k),
            Err(reason) => {
                let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("-");
                dropped.push(format!("key {i} (kid {kid:.64}): {reason}"));
            }
        }
    }
    if keys.is_empty() {
        return Err(match dropped.first() {
            Some(first) => format!("no usable signing key ({first})"),
            None => "no keys".into(),
        });
    }
    Ok((KeySet { keys }, dropped))
}

fn parse_key(jwk: &Value) -> Result<VerifyKey, String> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let s = text(name).ok_or_else(|| format!("no {name}"))?;
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("{name} is not base64url"))
    };
    if let Some(u) = jwk.get("use")
        && u != "sig"
    {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    if let Some(ops) = jwk.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
    {
        return Err("key_ops does not include verify".into());
    }
    let (family, key): (&[Algorithm], DecodingKey) = match text("kty") {
        Some("RSA") => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let bits = significant_bits(&n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})"
                ));
            }
            if e.is_empty() || e.len() > 8 || significant_bits(&e) < 2 {
                return Err("invalid RSA exponent".into());
            }
            (RSA_ALGORITHMS, DecodingKey::from_rsa_raw_components(&n, &e))
        }
        Some("EC") => {
            let (alg, size) = match text("crv") {
                Some("P-256") => (&[Algorithm::ES256][..], 32),
                Some("P-384") => (&[Algorithm::ES384][..], 48),
                _ => return Err("unsupported EC curve".into()),
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != size || y.len() != size {
                return Err("EC coordinates have the wrong length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (alg, DecodingKey::from_ec_der(&point))
        }
        Some("OKP") => {
            if text("crv") != Some("Ed25519") {
                return Err("unsupported OKP curve".into());
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err("Ed25519 key is not 32 bytes".into());
            }
            (&[Algorithm::EdDSA][..], DecodingKey::from_ed_der(&x))
        }
        Some("oct") => return Err("symmetric keys are never accepted".into()),
        _ => return Err("unsupported key type".into()),
    };
    let algorithms = match jwk.get("alg") {
        None => family.to_vec(),
        Some(Value::String(name)) => match family.iter().find(|a| alg_name(**a) == name) {
            Some(a) => vec![*a],
            None => return Err("alg does not fit the key type".into()),
        },
        Some(_) => return Err("alg is not a string".into()),
    };
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("kid is not a string".into()),
    };
    Ok(VerifyKey {
        kid,
        algorithms,
        key,
    })
}

fn significant_bits(be: &[u8]) -> usize {
    match be.iter().position(|b| *b != 0) {
        Some(i) => (be.len() - i) * 8 - be[i].leading_zeros() as usize,
        None => 0,
    }
}

/// The asymmetric algorithms and their JOSE names: the only ones a token
/// may use. HMAC and `none` are absent on purpose.
pub(crate) const ASYMMETRIC: [(&str, Algorithm); 9] = [
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// The JOSE name of an asymmetric algorithm.
pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    ASYMMETRIC
        .iter()
        .find(|(_, a)| *a == alg)
        .map_or("HMAC", |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa(bits: usize) -> Value {
        let mut n = vec![0xffu8; bits / 8];
        n[0] = 0xc1;
        json!({"kty": "RSA", "kid": "r", "n": b64(&n), "e": b64(&[1, 0, 1])})
    }

    fn ec() -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": b64(&[1; 32]), "y": b64(&[2; 32])})
    }

    fn ed() -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "d", "x": b64(&[3; 32])})
    }

    fn doc(keys: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn keys_are_pinned_to_their_family() {
        let (set, dropped) = parse(&doc(vec![rsa(2048), ec(), ed()])).unwrap();
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(set.len(), 3);
        let kids = |alg| {
            set.candidates(None, alg)
                .map(|k| k.kid.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(Algorithm::RS256), ["r"]);
        assert_eq!(kids(Algorithm::PS512), ["r"]);
        assert_eq!(kids(Algorithm::ES256), ["e"]);
        assert_eq!(kids(Algorithm::EdDSA), ["d"]);
        assert!(kids(Algorithm::HS256).is_empty());
        assert_eq!(set.candidates(Some("e"), Algorithm::ES256).count(), 1);
        assert_eq!(set.candidates(Some("e"), Algorithm::EdDSA).count(), 0);
        assert_eq!(set.candidates(Some("x"), Algorithm::ES256).count(), 0);
    }

    #[test]
    fn the_jwk_alg_narrows_the_family() {
        let mut k = rsa(2048);
        k["alg"] = json!("PS256");
        let (set, _) = parse(&doc(vec![k])).unwrap();
        assert_eq!(set.candidates(None, Algorithm::RS256).count(), 0);
        assert_eq!(set.candidates(None, Algorithm::PS256).count(), 1);
    }

    #[test]
    fn unusable_keys_are_dropped_with_a_reason() {
        let mut enc = ec();
        enc["use"] = json!("enc");
        let mut wrong_alg = ec();
        wrong_alg["alg"] = json!("HS256");
        let mut short_ed = ed();
        short_ed["x"] = json!(b64(&[3; 31]));
        let cases = vec![
            (
                json!({"kty": "oct", "k": b64(b"secret")}),
                "symmetric keys are never accepted",
            ),
            (rsa(1024), "RSA modulus of 1024 bits"),
            (rsa(8192), "RSA modulus of 8192 bits"),
            (enc, "not a signing key"),
            (wrong_alg, "alg does not fit the key type"),
            (short_ed, "Ed25519 key is not 32 bytes"),
            (
                json!({"kty": "EC", "crv": "P-521", "x": "", "y": ""}),
                "unsupported EC curve",
            ),
            (
                json!({"kty": "RSA", "n": "!!", "e": "AQAB"}),
                "n is not base64url",
            ),
        ];
        for (key, reason) in cases {
            let (set, dropped) = parse(&doc(vec![key.clone(), ed()])).unwrap();
            assert_eq!(set.len(), 1, "{key}");
            assert!(dropped[0].contains(reason), "{dropped:?} lacks {reason}");
            let only = parse(&doc(vec![key])).unwrap_err();
            assert!(only.starts_with("no usable signing key"), "{only}");
        }
    }

    #[test]
    fn refuses_documents_that_are_not_key_sets() {
        assert!(parse(b"<html>").unwrap_err().starts_with("not JSON"));
        assert_eq!(parse(b"{\"kys\": []}").unwrap_err(), "no \"keys\" array");
        assert_eq!(parse(b"{\"keys\": []}").unwrap_err(), "no keys");
    }

    #[test]
    fn caps_the_number_of_keys() {
        let (set, dropped) = parse(&doc(vec![ed(); MAX_KEYS + 5])).unwrap();
        assert_eq!(set.len(), MAX_KEYS);
        assert_eq!(dropped.len(), 1);
    }
}

//! Splitting a compact JWS into its parts before anything is trusted: size
//! and shape checks, the header's algorithm and key id, and the (still
//! unverified) claims that name the issuer whose keys must verify it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::AuthError;
use super::jwks::ASYMMETRIC;

/// Longest token accepted. Kubernetes service-account tokens are about
/// 1 KiB and OIDC tokens with many groups a few KiB; anything longer is
/// refused before it is decoded, so a huge password costs nothing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A token split into parts; only `signing_input` and `signature` are
/// trusted, and only after the signature verified.
#[derive(Debug)]
pub(crate) struct ParsedToken<'a> {
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
    /// The base64url signature.
    pub signature: &'a str,
    /// The header's algorithm (never `none` or HMAC).
    pub alg: Algorithm,
    /// The header's key id.
    pub kid: Option<String>,
    /// The claims, unverified until the signature is checked.
    pub claims: Map<String, Value>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<Value>,
    crit: Option<serde::de::IgnoredAny>,
}

/// Splits and decodes a compact JWS. Refuses `none` and HMAC here, before
/// any key is looked up, so a public key can never serve as an HMAC secret.
pub(crate) fn parse(token: &str) -> Result<ParsedToken<'_>, AuthError> {
    let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.is_empty() {
        return Err(AuthError::Malformed("empty; send the JWT as the password"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("longer than 16384 bytes"));
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthError::Malformed(
            "not a JWT (characters outside base64url)",
        ));
    }
    let dots = token.bytes().filter(|b| *b == b'.').count();
    if dots == 4 {
        return Err(AuthError::Malformed(
            "encrypted tokens (JWE) are not supported",
        ));
    }
    if dots != 2 {
        return Err(AuthError::Malformed(
            "not a JWT (expected three dot-separated parts)",
        ));
    }
    let (signing_input, signature) = token.rsplit_once('.').expect("two dots");
    let (header, payload) = signing_input.split_once('.').expect("one dot");

    let header: RawHeader = decode_json(header, "header is not base64url-encoded JSON")?;
    let alg = algorithm(header.alg.as_deref())?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed(
            "critical header extensions are not supported",
        ));
    }
    let kid = match header.kid {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(AuthError::Malformed("kid is not a string")),
    };
    let claims: Map<String, Value> =
        decode_json(payload, "claims are not a base64url-encoded JSON object")?;
    if signature.is_empty() {
        return Err(AuthError::Malformed("unsigned"));
    }
    Ok(ParsedToken {
        signing_input,
        signature,
        alg,
        kid,
        claims,
    })
}

fn decode_json<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &'static str,
) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed(what))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed(what))
}

/// Maps the header's `alg` to an asymmetric algorithm; names only
/// well-known algorithms in the error, never arbitrary header text.
fn algorithm(alg: Option<&str>) -> Result<Algorithm, AuthError> {
    const KNOWN_REFUSED: [&str; 8] = [
        "none", "HS256", "HS384", "HS512", "ES512", "ES256K", "Ed25519", "Ed448",
    ];
    let Some(alg) = alg else {
        return Err(AuthError::Malformed("header has no alg"));
    };
    match ASYMMETRIC.iter().find(|(name, _)| *name == alg) {
        Some((_, a)) => Ok(*a),
        None => Err(AuthError::AlgorithmNotAllowed(
            KNOWN_REFUSED.iter().copied().find(|k| *k == alg),
        )),
    }
}

/// What a token claims about itself, unverified: for the audit record of a
/// failed authentication ("who tried"), never for a decision. Values are
/// cut to 256 characters; the caller masks them like any other audit text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClaimedIdentity {
    /// The `iss` claim, if a string.
    pub issuer: Option<String>,
    /// The `sub` claim, if a string.
    pub subject: Option<String>,
}

/// Reads `iss` and `sub` from a token without verifying it; `None` when it
/// is not a JWT at all.
pub fn claimed_identity(token: &str) -> Option<ClaimedIdentity> {
    let token = token.trim_matches(|c: char| c.is_ascii_whitespace());
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    let claims: Map<String, Value> = decode_json(payload, "").ok()?;
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .map(|s| s.chars().take(256).collect::<String>())
    };
    Some(ClaimedIdentity {
        issuer: text("iss"),
        subject: text("sub"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    fn token(header: Value, claims: Value, sig: &str) -> String {
        format!("{}.{}.{sig}", b64(&header), b64(&claims))
    }

    #[test]
    fn splits_a_signed_token() {
        let t = token(
            json!({"alg": "ES256", "kid": "k1", "typ": "JWT"}),
            json!({"iss": "https://issuer", "sub": "a"}),
            "c2ln",
        );
        let p = parse(&t).unwrap();
        assert_eq!(p.alg, Algorithm::ES256);
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.claims["sub"], "a");
        assert_eq!(p.signature, "c2ln");
        assert_eq!(format!("{}.c2ln", p.signing_input), t);
    }

    #[test]
    fn trailing_newline_from_a_token_file_is_ignored() {
        let t = token(json!({"alg": "EdDSA"}), json!({}), "c2ln");
        assert!(parse(&format!("{t}\n")).is_ok());
    }

    #[test]
    fn refuses_none_and_hmac_before_any_key_lookup() {
        for alg in ["none", "HS256", "HS384", "HS512"] {
            let t = token(json!({"alg": alg}), json!({}), "c2ln");
            assert_eq!(
                parse(&t).unwrap_err(),
                AuthError::AlgorithmNotAllowed(Some(alg)),
                "{alg}"
            );
        }
        let unknown = token(json!({"alg": "XYZ-4111111111111111"}), json!({}), "c2ln");
        let err = parse(&unknown).unwrap_err();
        assert_eq!(err, AuthError::AlgorithmNotAllowed(None));
        assert_eq!(err.to_string(), "algorithm not allowed");
    }

    #[test]
    fn refuses_malformed_shapes() {
        let cases = [
            ("", "empty; send the JWT as the password"),
            (
                "hunter2 with spaces",
                "not a JWT (characters outside base64url)",
            ),
            ("abc.def", "not a JWT (expected three dot-separated parts)"),
            ("a.b.c.d", "not a JWT (expected three dot-separated parts)"),
            ("a.b.c.d.e", "encrypted tokens (JWE) are not supported"),
            ("!!!.b.c", "not a JWT (characters outside base64url)"),
            ("e30=.e30.c2ln", "not a JWT (characters outside base64url)"),
            (
                "bm90anNvbg.e30.c2ln",
                "header is not base64url-encoded JSON",
            ),
        ];
        for (input, reason) in cases {
            assert_eq!(
                parse(input).unwrap_err(),
                AuthError::Malformed(reason),
                "{input:?}"
            );
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        let err = parse(&huge).unwrap_err();
        assert_eq!(err, AuthError::Malformed("longer than 16384 bytes"));
        assert!(err.to_string().contains(&MAX_TOKEN_BYTES.to_string()));
        assert!(parse(&"a".repeat(MAX_TOKEN_BYTES)).is_err_and(|e| e != err));
    }

    #[test]
    fn refuses_bad_header_and_claims() {
        let crit = token(json!({"alg": "ES256", "crit": ["exp"]}), json!({}), "c2ln");
        assert!(matches!(parse(&crit), Err(AuthError::Malformed(_))));
        let kid = token(json!({"alg": "ES256", "kid": 7}), json!({}), "c2ln");
        assert_eq!(
            parse(&kid).unwrap_err(),
            AuthError::Malformed("kid is not a string")
        );
        let no_alg = token(json!({"typ": "JWT"}), json!({}), "c2ln");
        assert_eq!(
            parse(&no_alg).unwrap_err(),
            AuthError::Malformed("header has no alg")
        );
        let array = token(json!({"alg": "ES256"}), json!([1, 2]), "c2ln");
        assert_eq!(
            parse(&array).unwrap_err(),
            AuthError::Malformed("claims are not a base64url-encoded JSON object")
        );
        let unsigned = token(json!({"alg": "ES256"}), json!({}), "");
        assert_eq!(
            parse(&unsigned).unwrap_err(),
            AuthError::Malformed("unsigned")
        );
    }

    #[test]
    fn claimed_identity_reads_unverified_iss_and_sub() {
        let t = token(
            json!({"alg": "none"}),
            json!({"iss": "https://x", "sub": "s".repeat(1000)}),
            "",
        );
        let c = claimed_identity(&t).unwrap();
        assert_eq!(c.issuer.as_deref(), Some("https://x"));
        assert_eq!(c.subject.unwrap().len(), 256);
        assert_eq!(claimed_identity("password"), None);
    }
}

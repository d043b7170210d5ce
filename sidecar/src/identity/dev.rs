//! Development-only key pairs and tokens, for `make demo`, tests and trying
//! the sidecar on a laptop. A real deployment gets its tokens from an
//! identity provider or Kubernetes; these tools only exist so a standalone
//! sidecar can be exercised without one.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rand_core::{OsRng, RngCore};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// File name of the private key written by `dev keygen`.
pub const KEY_FILE: &str = "dev-signing-key.pem";
/// File name of the public key set written by `dev keygen`.
pub const JWKS_FILE: &str = "dev-jwks.json";
/// Longest lifetime `dev token` issues: development tokens stay short-lived.
pub const MAX_TTL_SECONDS: i64 = 24 * 3600;

/// Development-only tools: a local signing key and tokens signed with it.
#[derive(clap::Subcommand, Debug)]
pub enum DevCommand {
    /// DEVELOPMENT ONLY: write a signing key pair and its public JWKS.
    ///
    /// Writes DIR/dev-signing-key.pem (private, mode 0600) and
    /// DIR/dev-jwks.json (public, for an issuer's jwksFile). Never use these
    /// keys for real agents.
    Keygen {
        /// Directory to write the two files into (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Signature algorithm of the key.
        #[arg(long, value_enum, ignore_case = true, default_value = "ES256")]
        alg: DevAlgorithm,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// DEVELOPMENT ONLY: print a JWT signed with a key from `dev keygen`.
    ///
    /// The token goes in the PostgreSQL password field, e.g.
    /// PGPASSWORD=$(cardgate-sidecar dev token ...) psql ...
    Token {
        /// The private key written by `dev keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The `iss` claim; must equal the configured issuer.
        #[arg(long)]
        issuer: String,
        /// The `aud` claim; must be one of the issuer's audiences.
        #[arg(long)]
        audience: String,
        /// The `sub` claim.
        #[arg(long)]
        subject: String,
        /// A group (repeat for several).
        #[arg(long = "group", value_name = "GROUP")]
        groups: Vec<String>,
        /// Lifetime, e.g. 10m, 1h, 90s (at most 24h).
        #[arg(long, default_value = "10m", value_parser = parse_ttl)]
        ttl: i64,
    },
}

/// Algorithms `dev keygen` can create keys for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevAlgorithm {
    /// ECDSA P-256 (the default; small and fast).
    #[value(name = "ES256")]
    Es256,
    /// Ed25519.
    #[value(name = "EdDSA")]
    EdDsa,
    /// RSA 2048 with SHA-256 (slow to generate).
    #[value(name = "RS256")]
    Rs256,
}

/// Why a development tool failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// Refusing to overwrite a key.
    #[error("{} already exists; pass --force to replace it", .0.display())]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file is not a supported private key.
    #[error("{}: {reason}", path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating, encoding or signing failed.
    #[error("{0}")]
    Crypto(String),
}

/// A development signing key.
pub struct DevKey {
    secret: Secret,
}

enum Secret {
    P256(p256::SecretKey),
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl DevKey {
    /// A fresh random key.
    pub fn generate(alg: DevAlgorithm) -> Result<DevKey, DevError> {
        let secret = match alg {
            DevAlgorithm::Es256 => Secret::P256(p256::SecretKey::random(&mut OsRng)),
            DevAlgorithm::EdDsa => Secret::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
            DevAlgorithm::Rs256 => Secret::Rsa(Box::new(
                rsa::RsaPrivateKey::new(&mut OsRng, 2048)
                    .map_err(|e| DevError::Crypto(format!("RSA key generation failed: {e}")))?,
            )),
        };
        Ok(DevKey { secret })
    }

    /// Reads a PKCS#8 PEM private key (also PKCS#1 RSA and SEC1 EC keys);
    /// the key type decides the algorithm.
    pub fn from_pem(pem: &str) -> Result<DevKey, String> {
        let secret = if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
            Secret::P256(k)
        } else if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            Secret::P256(k)
        } else if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            Secret::Ed25519(k)
        } else if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_pem(pem) {
            Secret::Rsa(Box::new(k))
        } else if let Ok(k) = rsa::RsaPrivateKey::from_pkcs1_pem(pem) {
            Secret::Rsa(Box::new(k))
        } else {
            return Err(
                "not a P-256, Ed25519 or RSA private key in PEM (expected the file dev keygen writes)"
                    .into(),
            );
        };
        Ok(DevKey { secret })
    }

    /// The private key as PKCS#8 PEM.
    pub fn private_pem(&self) -> Result<String, DevError> {
        let lf = p256::pkcs8::LineEnding::LF;
        let pem = match &self.secret {
            Secret::P256(k) => p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(k, lf),
            Secret::Ed25519(k) => k.to_pkcs8_pem(lf),
            Secret::Rsa(k) => rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(k.as_ref(), lf),
        }
        .map_err(|e| DevError::Crypto(format!("cannot encode the key: {e}")))?;
        Ok(pem.to_string())
    }

    /// The JWS algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self.secret {
            Secret::P256(_) => Algorithm::ES256,
            Secret::Ed25519(_) => Algorithm::EdDSA,
            Secret::Rsa(_) => Algorithm::RS256,
        }
    }

    /// The members of the public JWK that identify the key, in the
    /// lexicographic order RFC 7638 hashes them in.
    fn public_members(&self) -> Vec<(&'static str, String)> {
        match &self.secret {
            Secret::P256(k) => {
                let point = k.public_key().to_encoded_point(false);
                vec![
                    ("crv", "P-256".into()),
                    ("kty", "EC".into()),
                    (
                        "x",
                        URL_SAFE_NO_PAD.encode(point.x().expect("uncompressed")),
                    ),
                    (
                        "y",
                        URL_SAFE_NO_PAD.encode(point.y().expect("uncompressed")),
                    ),
                ]
            }
            Secret::Ed25519(k) => vec![
                ("crv", "Ed25519".into()),
                ("kty", "OKP".into()),
                ("x", URL_SAFE_NO_PAD.encode(k.verifying_key().to_bytes())),
            ],
            Secret::Rsa(k) => vec![
                ("e", URL_SAFE_NO_PAD.encode(k.e().to_bytes_be())),
                ("kty", "RSA".into()),
                ("n", URL_SAFE_NO_PAD.encode(k.n().to_bytes_be())),
            ],
        }
    }

    /// The key id: the RFC 7638 thumbprint of the public key, so a token
    /// and its JWKS agree on it without any side file.
    pub fn kid(&self) -> String {
        let canonical = Value::Object(
            self.public_members()
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::String(v)))
                .collect(),
        );
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string()))
    }

    /// The public key as a JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> Value {
        let mut jwk: serde_json::Map<String, Value> = self
            .public_members()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        jwk.insert("kid".into(), self.kid().into());
        jwk.insert("alg".into(), super::jwks::alg_name(self.algorithm()).into());
        jwk.insert("use".into(), "sig".into());
        Value::Object(jwk)
    }

    /// Signs arbitrary claims with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> Result<String, DevError> {
        let crypto = |e: &dyn std::fmt::Display| DevError::Crypto(format!("cannot sign: {e}"));
        let key = match &self.secret {
            Secret::P256(k) => EncodingKey::from_ec_der(
                p256::pkcs8::EncodePrivateKey::to_pkcs8_der(k)
                    .map_err(|e| crypto(&e))?
                    .as_bytes(),
            ),
            Secret::Ed25519(k) => {
                EncodingKey::from_ed_der(k.to_pkcs8_der().map_err(|e| crypto(&e))?.as_bytes())
            }
            Secret::Rsa(k) => {
                EncodingKey::from_rsa_der(k.to_pkcs1_der().map_err(|e| crypto(&e))?.as_bytes())
            }
        };
        let mut header = Header::new(self.algorithm());
        header.kid = Some(self.kid());
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| crypto(&e))
    }

    /// A token with the standard claims for an agent: `iss`, `aud`, `sub`,
    /// `groups` (when any), `iat`, `nbf`, `exp` and a random `jti`.
    pub fn mint(
        &self,
        issuer: &str,
        audience: &str,
        subject: &str,
        groups: &[String],
        ttl_seconds: i64,
    ) -> Result<String, DevError> {
        let now = jiff::Timestamp::now().as_second();
        let mut jti = [0u8; 16];
        OsRng.fill_bytes(&mut jti);
        let mut claims = json!({
            "iss": issuer,
            "aud": audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_seconds,
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        if !groups.is_empty() {
            claims["groups"] = json!(groups);
        }
        self.sign(&claims)
    }
}

/// Parses a lifetime such as `10m`, `1h30m` or `90s`.
fn parse_ttl(s: &str) -> Result<i64, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10m, 1h or 90s"))?;
    let secs = d.as_secs();
    if secs <= 0 || secs > MAX_TTL_SECONDS {
        return Err(format!("{s:?} must be between 1s and 24h"));
    }
    Ok(secs)
}

/// Runs a `dev` subcommand, printing its result on stdout.
pub fn run(command: DevCommand) -> Result<(), DevError> {
    match command {
        DevCommand::Keygen { dir, alg, force } => {
            let (key_path, jwks_path, kid) = keygen(&dir, alg, force)?;
            let name = clap::ValueEnum::to_possible_value(&alg)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            println!(
                "DEVELOPMENT ONLY key pair ({name}, kid {kid}):\n  private key: {}\n  public JWKS: {}",
                key_path.display(),
                jwks_path.display()
            );
        }
        DevCommand::Token {
            key,
            issuer,
            audience,
            subject,
            groups,
            ttl,
        } => {
            let pem = std::fs::read_to_string(&key).map_err(|source| DevError::Io {
                path: key.clone(),
                source,
            })?;
            let dev_key = DevKey::from_pem(&pem).map_err(|reason| DevError::Key {
                path: key.clone(),
                reason,
            })?;
            println!(
                "{}",
                dev_key.mint(&issuer, &audience, &subject, &groups, ttl)?
            );
        }
    }
    Ok(())
}

/// Writes a new key pair into `dir`; returns the key path, the JWKS path
/// and the kid. Checks both targets before writing either, and writes each
/// through a temporary file, so a refusal or failure leaves no half pair.
pub fn keygen(
    dir: &Path,
    alg: DevAlgorithm,
    force: bool,
) -> Result<(PathBuf, PathBuf, String), DevError> {
    let key_path = dir.join(KEY_FILE);
    let jwks_path = dir.join(JWKS_FILE);
    if !force {
        for path in [&key_path, &jwks_path] {
            if path.exists() {
                return Err(DevError::Exists(path.clone()));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| DevError::Io {
        path: dir.into(),
        source,
    })?;
    let key = DevKey::generate(alg)?;
    let jwks = serde_json::to_string_pretty(&json!({ "keys": [key.public_jwk()] }))
        .map_err(|e| DevError::Crypto(e.to_string()))?;
    write_atomic(&key_path, key.private_pem()?.as_bytes(), 0o600)?;
    write_atomic(&jwks_path, format!("{jwks}\n").as_bytes(), 0o644)?;
    Ok((key_path, jwks_path, key.kid()))
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), DevError> {
    let io = |source| DevError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_short_human_durations() {
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("1h30m"), Ok(5400));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("2d").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 section 3.1: the example RSA key and its thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let members = [("e", "AQAB"), ("kty", "RSA"), ("n", n)];
        let canonical = Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect(),
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.to_string())),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn keys_survive_a_pem_round_trip() {
        for alg in [DevAlgorithm::Es256, DevAlgorithm::EdDsa] {
            let key = DevKey::generate(alg).unwrap();
            let again = DevKey::from_pem(&key.private_pem().unwrap()).unwrap();
            assert_eq!(key.kid(), again.kid());
            assert_eq!(key.algorithm(), again.algorithm());
        }
        assert!(DevKey::from_pem("-----BEGIN NOTHING-----").is_err());
    }
}

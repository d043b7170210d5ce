//! The [`Authenticator`]: one per sidecar, shared by every session, turning
//! the token an agent sends as its password into an [`Identity`] or a
//! precise refusal.

use std::path::Path;
use std::time::Duration;

use cardgate_crds::config::{IdentityConfig, IssuerConfig, JwtAlgorithm, SubjectMatch};
use jsonwebtoken::Algorithm;

use super::fetch::{HttpsClient, Trust};
use super::jwks::{self, KeySet, alg_name};
use super::keys::{IssuerKeys, RefreshPolicy, Source};
use super::{AuthError, Identity, IdentityError, PodIdentity, claims, subjects, token};

/// Tuning of key fetching; the defaults suit production.
#[derive(Clone, Copy, Debug)]
pub struct AuthenticatorOptions {
    /// Minimum time between two key fetches from one issuer: bounds what a
    /// flood of tokens with bogus key ids can cost the issuer.
    pub refresh_interval: Duration,
    /// Time allowed for one HTTPS fetch (connect, TLS, response).
    pub fetch_timeout: Duration,
    /// Fetched keys older than this are fetched again before use, so a key
    /// the issuer withdrew stops working even if no token names a new one.
    pub max_key_age: Duration,
}

impl Default for AuthenticatorOptions {
    fn default() -> Self {
        AuthenticatorOptions {
            refresh_interval: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(5),
            max_key_age: Duration::from_secs(3600),
        }
    }
}

/// Validates agent tokens against the configured issuers. `Send + Sync`:
/// build it once and share it through an `Arc`; keys are cached per issuer.
pub struct Authenticator {
    issuers: Vec<TrustedIssuer>,
    subjects: Vec<SubjectMatch>,
    leeway_seconds: u32,
    pod: PodIdentity,
}

struct TrustedIssuer {
    config: IssuerConfig,
    keys: IssuerKeys,
}

impl Authenticator {
    /// Builds the authenticator with default options. Static JWKS files
    /// are loaded now (a missing or unusable file is an error); remote keys
    /// are fetched on first use or by [`Authenticator::warm_up`].
    pub async fn new(
        cfg: &IdentityConfig,
        pod: &PodIdentity,
    ) -> Result<Authenticator, IdentityError> {
        Authenticator::with_options(cfg, pod, AuthenticatorOptions::default()).await
    }

    /// Builds the authenticator with explicit fetch tuning.
    pub async fn with_options(
        cfg: &IdentityConfig,
        pod: &PodIdentity,
        options: AuthenticatorOptions,
    ) -> Result<Authenticator, IdentityError> {
        let mut issuers = Vec::with_capacity(cfg.issuers.len());
        for issuer in &cfg.issuers {
            let keys = issuer_keys(issuer, options)?;
            if let Some(path) = &issuer.jwks_file {
                keys.store(load_jwks_file(issuer, Path::new(path))?);
            }
            issuers.push(TrustedIssuer {
                config: issuer.clone(),
                keys,
            });
        }
        Ok(Authenticator {
            issuers,
            subjects: cfg.subjects.clone(),
            leeway_seconds: cfg.leeway_seconds,
            pod: pod.clone(),
        })
    }

    /// Fetches the keys of every remote issuer that has none yet, so the
    /// first agent does not wait and problems show at start-up. Returns the
    /// issuers whose keys could not be loaded, with the reason; they keep
    /// failing closed until a later attempt succeeds.
    pub async fn warm_up(&self) -> Vec<(String, AuthError)> {
        let mut failures = Vec::new();
        for issuer in self.issuers.iter().filter(|i| i.config.jwks_file.is_none()) {
            if let Err(reason) = issuer.keys.load().await {
                failures.push((
                    issuer.config.issuer.clone(),
                    AuthError::KeySetUnavailable(reason),
                ));
            }
        }
        failures
    }

    /// Validates a token: shape, algorithm allow-list, trusted issuer,
    /// signature with the issuer's key, `exp`/`nbf` with leeway, audience,
    /// subject mapping and the subject allow-list, in that order. Only the
    /// signature check may contact the issuer (a rate-limited refresh).
    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        let parsed = token::parse(token)?;
        let issuer = match parsed.claims.get("iss") {
            None => return Err(AuthError::MissingClaim("iss".into())),
            Some(serde_json::Value::String(iss)) => self
                .issuers
                .iter()
                .find(|i| i.config.issuer == *iss)
                .ok_or(AuthError::IssuerNotTrusted)?,
            Some(_) => return Err(AuthError::InvalidClaim("iss".into())),
        };
        if !issuer
            .config
            .algorithms
            .iter()
            .any(|a| algorithm(*a) == parsed.alg)
        {
            return Err(AuthError::AlgorithmNotAllowed(Some(alg_name(parsed.alg))));
        }
        let keys = issuer
            .keys
            .lookup(parsed.kid.as_deref(), parsed.alg)
            .await?;
        let verified = keys.candidates(parsed.kid.as_deref(), parsed.alg).any(|k| {
            jsonwebtoken::crypto::verify(
                parsed.signature,
                parsed.signing_input.as_bytes(),
                &k.key,
                parsed.alg,
            )
            .unwrap_or(false)
        });
        if !verified {
            return Err(AuthError::BadSignature);
        }
        let now = jiff::Timestamp::now().as_second();
        let identity = claims::validate(&parsed.claims, &issuer.config, now, self.leeway_seconds)?;
        if !subjects::is_allowed(&self.subjects, &self.pod, &identity) {
            return Err(AuthError::SubjectNotAllowed);
        }
        Ok(identity)
    }
}

fn issuer_keys(
    issuer: &IssuerConfig,
    options: AuthenticatorOptions,
) -> Result<IssuerKeys, IdentityError> {
    let remote = RefreshPolicy {
        min_interval: options.refresh_interval,
        max_age: Some(options.max_key_age.max(options.refresh_interval)),
    };
    if let Some(path) = &issuer.jwks_file {
        let policy = RefreshPolicy {
            max_age: None,
            ..remote
        };
        return Ok(IssuerKeys::new(
            &issuer.issuer,
            Source::File(path.into()),
            policy,
        ));
    }
    if !issuer
        .jwks_url
        .as_deref()
        .unwrap_or(&issuer.issuer)
        .starts_with("https://")
    {
        return Err(IdentityError::Config {
            issuer: issuer.issuer.clone(),
            reason: "keys are fetched over HTTPS only; use jwksFile for a local key set".into(),
        });
    }
    let trust = match &issuer.ca_file {
        Some(path) => Trust::CaFile(Path::new(path)),
        None => Trust::System,
    };
    let client = HttpsClient::new(
        trust,
        issuer.bearer_token_file.as_ref().map(Into::into),
        options.fetch_timeout,
    )
    .map_err(|reason| match &issuer.ca_file {
        Some(path) => IdentityError::InvalidCa {
            issuer: issuer.issuer.clone(),
            path: path.into(),
            reason,
        },
        None => IdentityError::NoRoots {
            issuer: issuer.issuer.clone(),
            reason,
        },
    })?;
    let source = match &issuer.jwks_url {
        Some(url) => Source::Url(client, url.clone()),
        None => Source::Discovery(client, issuer.issuer.clone()),
    };
    Ok(IssuerKeys::new(&issuer.issuer, source, remote))
}

/// Reads a static key set at start-up, where a problem must stop the
/// sidecar rather than refuse every agent later.
fn load_jwks_file(issuer: &IssuerConfig, path: &Path) -> Result<KeySet, IdentityError> {
    let bytes = std::fs::read(path).map_err(|source| IdentityError::Read {
        issuer: issuer.issuer.clone(),
        path: path.into(),
        source,
    })?;
    let (keys, dropped) = jwks::parse(&bytes).map_err(|reason| IdentityError::InvalidJwks {
        issuer: issuer.issuer.clone(),
        path: path.into(),
        reason,
    })?;
    for d in dropped {
        tracing::warn!(issuer = %issuer.issuer, file = %path.display(), "ignoring a key: {d}");
    }
    Ok(keys)
}

/// The configuration's algorithm names map one to one; HMAC and `none`
/// have no configuration name, so they can never be allowed.
fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

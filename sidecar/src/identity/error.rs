//! Why authentication failed, and why the authenticator could not start.

use std::path::PathBuf;

/// Why a token was refused. `Display` is the reason sent to the client in
/// the 28P01 ErrorResponse and written to the audit record, so it names the
/// problem precisely but never contains the token or any value copied from
/// it (a claim could carry anything, a card number included).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// Not a signed JWT (compact JWS) at all, or a part of it does not decode.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The header names `none`, an HMAC algorithm, or one this issuer does not
    /// accept. Only well-known algorithm names are echoed.
    #[error("algorithm not allowed{}", .0.map(|a| format!(": {a}")).unwrap_or_default())]
    AlgorithmNotAllowed(Option<&'static str>),
    /// `iss` is not exactly one of the configured issuers.
    #[error("issuer not trusted")]
    IssuerNotTrusted,
    /// No key of the issuer matches the token's `kid` and algorithm, even
    /// after the key set was refreshed (or a refresh was rate-limited).
    #[error("unknown signing key")]
    UnknownSigningKey,
    /// The issuer's keys could not be loaded; authentication fails closed.
    #[error("key set unavailable: {0}")]
    KeySetUnavailable(String),
    /// The signature does not verify with the issuer's key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past, beyond the configured leeway.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future, beyond the configured leeway.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` names none of the issuer's configured audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is absent; holds the claim name from the
    /// configuration or the JWT spec, never from the token.
    #[error("token has no {0} claim")]
    MissingClaim(String),
    /// A claim has the wrong type or shape; holds the claim name.
    #[error("claim {0} is not valid")]
    InvalidClaim(String),
    /// The issuer is marked `kubernetes` but the token does not name a
    /// service account.
    #[error("not a Kubernetes service-account token")]
    NotServiceAccount,
    /// The token is valid but its subject is not in `identity.subjects`.
    #[error("subject not allowed")]
    SubjectNotAllowed,
}

impl AuthError {
    /// A stable, low-cardinality name for metrics labels and audit fields.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgorithmNotAllowed(_) => "algorithm",
            AuthError::IssuerNotTrusted => "issuer",
            AuthError::UnknownSigningKey => "unknown_key",
            AuthError::KeySetUnavailable(_) => "key_set_unavailable",
            AuthError::BadSignature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience => "audience",
            AuthError::MissingClaim(_) | AuthError::InvalidClaim(_) => "claims",
            AuthError::NotServiceAccount => "not_service_account",
            AuthError::SubjectNotAllowed => "subject",
        }
    }
}

/// Why the authenticator could not be built from the configuration: a
/// problem the operator must fix before the sidecar can accept anyone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file named in the configuration cannot be read.
    #[error("issuer {issuer}: cannot read {path}: {source}")]
    Read {
        /// The configured issuer.
        issuer: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The static JWKS file holds no usable signing key.
    #[error("issuer {issuer}: {path} is not a usable key set: {reason}")]
    InvalidJwks {
        /// The configured issuer.
        issuer: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The CA bundle cannot be used to verify the issuer.
    #[error("issuer {issuer}: CA bundle {path}: {reason}")]
    InvalidCa {
        /// The configured issuer.
        issuer: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No `caFile` and the system has no trusted root certificates.
    #[error(
        "issuer {issuer}: no caFile is set and the system trust store has no certificates ({reason}); set caFile"
    )]
    NoRoots {
        /// The configured issuer.
        issuer: String,
        /// What the system trust store reported.
        reason: String,
    },
    /// The issuer configuration cannot work (normally caught by the
    /// configuration's `validate()`).
    #[error("issuer {issuer}: {reason}")]
    Config {
        /// The configured issuer.
        issuer: String,
        /// What is wrong.
        reason: String,
    },
}

//! Agent identity: who is on the other end of a session.
//!
//! Agents send a JWT as their PostgreSQL password. The [`Authenticator`]
//! checks it against the configured issuers (static JWKS file, JWKS URL, or
//! OIDC discovery — Kubernetes service-account tokens included) and returns
//! an [`Identity`], or an [`AuthError`] whose text is safe to send to the
//! client and to audit. [`PodIdentity`] names the pod the sidecar runs in,
//! for every audit record. [`dev`] mints development keys and tokens.

mod authenticator;
mod claims;
pub mod dev;
mod error;
mod fetch;
mod jwks;
mod keys;
mod pod;
mod subjects;
mod token;

pub use authenticator::{Authenticator, AuthenticatorOptions};
pub use claims::{Identity, SERVICE_ACCOUNT_PREFIX, SERVICE_ACCOUNTS_GROUP};
pub use error::{AuthError, IdentityError};
pub use pod::PodIdentity;
pub use token::{ClaimedIdentity, MAX_TOKEN_BYTES, claimed_identity};

//! The key cache of one issuer: where its keys come from (a static file, a
//! JWKS URL, or OIDC discovery), when to refresh them (an unknown `kid`, or
//! keys older than the maximum age), and the rate limit that keeps a flood
//! of bogus key ids from hammering the issuer. Concurrent sessions that
//! need a refresh share one fetch.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::AuthError;
use super::fetch::HttpsClient;
use super::jwks::{self, KeySet};

/// Largest discovery document or key set read from an issuer.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// How often keys may be fetched and how long they are trusted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RefreshPolicy {
    /// Minimum time between two fetches of one issuer's keys.
    pub min_interval: Duration,
    /// Keys older than this are fetched again before use; `None` for
    /// static files, which are re-read only for an unknown key.
    pub max_age: Option<Duration>,
}

/// What to do with a lookup, decided from the cache state alone.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LookupAction {
    /// The cached keys hold a candidate.
    Use,
    /// Fetch the keys again.
    Refresh,
    /// Refuse without contacting the issuer.
    Fail(AuthError),
}

/// What the cache knows, for [`decide`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CacheView<'a> {
    /// A key set is cached.
    pub has_keys: bool,
    /// The cached set holds a key for the token's kid and algorithm.
    pub has_candidate: bool,
    /// Time since the cached set was fetched.
    pub age: Option<Duration>,
    /// Time since the last fetch attempt, successful or not.
    pub since_attempt: Option<Duration>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<&'a str>,
}

/// The refresh rule, as a pure function: use fresh keys when one fits;
/// otherwise fetch, unless the issuer was asked less than `min_interval`
/// ago, in which case refuse with the most precise reason known.
pub(crate) fn decide(view: CacheView<'_>, policy: RefreshPolicy) -> LookupAction {
    let fresh = view.has_keys
        && policy
            .max_age
            .is_none_or(|max| view.age.is_some_and(|age| age < max));
    if fresh && view.has_candidate {
        return LookupAction::Use;
    }
    if view
        .since_attempt
        .is_none_or(|since| since >= policy.min_interval)
    {
        return LookupAction::Refresh;
    }
    match (fresh, view.last_error) {
        (_, Some(e)) => LookupAction::Fail(AuthError::KeySetUnavailable(e.to_string())),
        (false, None) => LookupAction::Fail(AuthError::KeySetUnavailable(
            "keys expired and the issuer was asked too recently".into(),
        )),
        (true, None) => LookupAction::Fail(AuthError::UnknownSigningKey),
    }
}

/// Where an issuer's keys come from.
pub(crate) enum Source {
    /// A JWKS file on disk.
    File(PathBuf),
    /// A JWKS URL.
    Url(HttpsClient, String),
    /// `{issuer}/.well-known/openid-configuration` names the JWKS URL.
    Discovery(HttpsClient, String),
}

#[derive(Default)]
struct CacheState {
    keys: Option<Arc<KeySet>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// The JWKS URL found by discovery; forgotten when a fetch fails so
    /// the next refresh discovers again.
    jwks_uri: Option<String>,
}

/// The keys of one issuer.
pub(crate) struct IssuerKeys {
    issuer: String,
    source: Source,
    policy: RefreshPolicy,
    state: Mutex<CacheState>,
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl IssuerKeys {
    /// A cache that loads lazily, on first use.
    pub fn new(issuer: &str, source: Source, policy: RefreshPolicy) -> IssuerKeys {
        IssuerKeys {
            issuer: issuer.to_string(),
            source,
            policy,
            state: Mutex::new(CacheState::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    /// Installs keys read elsewhere (a static file at start-up).
    pub fn store(&self, keys: KeySet) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("key cache lock");
        state.keys = Some(Arc::new(keys));
        state.fetched_at = Some(now);
        state.last_attempt = Some(now);
    }

    /// Fetches the keys now; the error is the reason authentication would
    /// give.
    pub async fn load(&self) -> Result<usize, String> {
        let _single_flight = self.refresh.lock().await;
        self.fetch_and_store().await
    }

    /// The key set to verify a token with this `kid` and algorithm,
    /// refreshing it if needed and allowed.
    pub async fn lookup(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<KeySet>, AuthError> {
        if let Some(keys) = self.decide_now(kid, alg)? {
            return Ok(keys);
        }
        let _single_flight = self.refresh.lock().await;
        // Another session may have refreshed while this one waited.
        if let Some(keys) = self.decide_now(kid, alg)? {
            return Ok(keys);
        }
        if let Err(reason) = self.fetch_and_store().await {
            return Err(AuthError::KeySetUnavailable(reason));
        }
        let state = self.state.lock().expect("key cache lock");
        match &state.keys {
            Some(keys) if keys.candidates(kid, alg).next().is_some() => Ok(keys.clone()),
            _ => Err(AuthError::UnknownSigningKey),
        }
    }

    /// `Some(keys)` to use now, `None` to refresh, or the refusal.
    fn decide_now(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<Arc<KeySet>>, AuthError> {
        let now = Instant::now();
        let state = self.state.lock().expect("key cache lock");
        let view = CacheView {
            has_keys: state.keys.is_some(),
            has_candidate: state
                .keys
                .as_ref()
                .is_some_and(|k| k.candidates(kid, alg).next().is_some()),
            age: state.fetched_at.map(|t| now.duration_since(t)),
            since_attempt: state.last_attempt.map(|t| now.duration_since(t)),
            last_error: state.last_error.as_deref(),
        };
        match decide(view, self.policy) {
            LookupAction::Use => Ok(state.keys.clone()),
            LookupAction::Refresh => Ok(None),
            LookupAction::Fail(e) => Err(e),
        }
    }

    /// One fetch; the caller holds the refresh lock.
    async fn fetch_and_store(&self) -> Result<usize, String> {
        let cached_uri = self.state.lock().expect("key cache lock").jwks_uri.clone();
        let result = self.fetch(cached_uri).await;
        let now = Instant::now();
        let mut state = self.state.lock().expect("key cache lock");
        state.last_attempt = Some(now);
        match result {
            Ok((keys, jwks_uri, dropped)) => {
                for d in &dropped {
                    tracing::warn!(issuer = %self.issuer, "ignoring a key: {d}");
                }
                let count = keys.len();
                tracing::info!(issuer = %self.issuer, keys = count, "loaded signing keys");
                state.keys = Some(Arc::new(keys));
                state.fetched_at = Some(now);
                state.last_error = None;
                state.jwks_uri = jwks_uri;
                Ok(count)
            }
            Err(reason) => {
                tracing::warn!(issuer = %self.issuer, "cannot load signing keys: {reason}");
                state.last_error = Some(reason.clone());
                state.jwks_uri = None;
                Err(reason)
            }
        }
    }

    async fn fetch(
        &self,
        cached_uri: Option<String>,
    ) -> Result<(KeySet, Option<String>, Vec<String>), String> {
        let (document, jwks_uri) = match &self.source {
            Source::File(path) => {
                let bytes = tokio::fs::read(path)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                (bytes.into(), None)
            }
            Source::Url(client, url) => (client.get(url, MAX_DOCUMENT_BYTES).await?, None),
            Source::Discovery(client, issuer) => {
                let uri = match cached_uri {
                    Some(uri) => uri,
                    None => discover(client, issuer).await?,
                };
                (client.get(&uri, MAX_DOCUMENT_BYTES).await?, Some(uri))
            }
        };
        let (keys, dropped) = jwks::parse(&document).map_err(|e| match &self.source {
            Source::File(path) => format!("{}: {e}", path.display()),
            _ => format!(
                "key set from {}: {e}",
                jwks_uri.as_deref().unwrap_or(&self.issuer)
            ),
        })?;
        Ok((keys, jwks_uri, dropped))
    }
}

/// Finds the JWKS URL of an OIDC issuer. The document must name the same
/// issuer (OpenID Connect Discovery 1.0, section 4.3) and an https:// URL.
async fn discover(client: &HttpsClient, issuer: &str) -> Result<String, String> {
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = client.get(&url, MAX_DOCUMENT_BYTES).await?;
    let doc: Discovery = serde_json::from_slice(&body)
        .map_err(|e| format!("{url} is not an OpenID configuration: {e}"))?;
    if doc.issuer != issuer {
        return Err(format!(
            "{url} names issuer {:?}, not {issuer:?}",
            doc.issuer
        ));
    }
    if !doc.jwks_uri.starts_with("https://") {
        return Err(format!("{url} names a jwks_uri that is not https://"));
    }
    Ok(doc.jwks_uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    const REMOTE: RefreshPolicy = RefreshPolicy {
        min_interval: Duration::from_secs(30),
        max_age: Some(Duration::from_secs(3600)),
    };

    fn loaded(since: Duration) -> CacheView<'static> {
        CacheView {
            has_keys: true,
            has_candidate: false,
            age: Some(since),
            since_attempt: Some(since),
            last_error: None,
        }
    }

    #[test]
    fn first_use_fetches() {
        assert_eq!(decide(CacheView::default(), REMOTE), LookupAction::Refresh);
    }

    #[test]
    fn a_known_key_is_used_without_fetching() {
        let view = CacheView {
            has_candidate: true,
            ..loaded(SEC)
        };
        assert_eq!(decide(view, REMOTE), LookupAction::Use);
    }

    #[test]
    fn an_unknown_key_refreshes_at_most_once_per_interval() {
        assert_eq!(
            decide(loaded(29 * SEC), REMOTE),
            LookupAction::Fail(AuthError::UnknownSigningKey)
        );
        assert_eq!(decide(loaded(30 * SEC), REMOTE), LookupAction::Refresh);
    }

    #[test]
    fn a_failed_fetch_fails_closed_until_the_next_attempt() {
        let failed = CacheView {
            since_attempt: Some(SEC),
            last_error: Some("connection refused"),
            ..CacheView::default()
        };
        assert_eq!(
            decide(failed, REMOTE),
            LookupAction::Fail(AuthError::KeySetUnavailable("connection refused".into()))
        );
        let later = CacheView {
            since_attempt: Some(31 * SEC),
            ..failed
        };
        assert_eq!(decide(later, REMOTE), LookupAction::Refresh);
    }

    #[test]
    fn cached_keys_survive_a_failed_refresh_but_not_their_maximum_age() {
        let cached = CacheView {
            has_candidate: true,
            age: Some(600 * SEC),
            since_attempt: Some(SEC),
            last_error: Some("HTTP 503"),
            ..loaded(SEC)
        };
        assert_eq!(decide(cached, REMOTE), LookupAction::Use);
        let old = CacheView {
            age: Some(3601 * SEC),
            ..cached
        };
        assert_eq!(
            decide(old, REMOTE),
            LookupAction::Fail(AuthError::KeySetUnavailable("HTTP 503".into()))
        );
    }

    #[test]
    fn static_files_never_go_stale() {
        let file = RefreshPolicy {
            max_age: None,
            ..REMOTE
        };
        let view = CacheView {
            has_candidate: true,
            ..loaded(100_000 * SEC)
        };
        assert_eq!(decide(view, file), LookupAction::Use);
    }
}

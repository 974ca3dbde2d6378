//! The OAuth 2.0 JWT-bearer grant (RFC 7523) that turns the service
//! account's key into an access token for FCM, and the cache that keeps
//! one token until shortly before it expires.
//!
//! The assertion is a JWT signed RS256 with the key: header
//! `{"alg":"RS256","typ":"JWT","kid":<private_key_id>}`, claims `iss` (the
//! key's `client_email`), `scope` (FCM's), `aud` (the `token_uri` it is
//! posted to), `iat` and `exp` one hour later. `iat` is set 10 s in the
//! past, as Google's own libraries do, to allow for clock skew. These two
//! are wall-clock (Unix) times, because Google checks them.
//!
//! Expiry in the cache is measured on the loop's clock instead: every job
//! carries the `now` at which the loop admitted it, a token fetched for a
//! job expires at that `now` plus the reply's `expires_in`, and a token is
//! reused while `now + REFRESH_MARGIN` is before that. Under a
//! `ManualClock`, advancing the clock is what makes the next wake fetch a
//! new token. Measuring from admission (not from the fetch, which may come
//! later) errs on the early side.

use std::fmt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use data_encoding::BASE64URL_NOPAD;
use ring::rand::SystemRandom;
use ring::signature::RSA_PKCS1_SHA256;
use serde::{Deserialize, Serialize};
use ureq::Agent;

use super::credentials::ServiceAccountKey;
use super::http::{read_body, Cause};

/// The OAuth scope FCM's HTTP v1 API requires.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The grant type of RFC 7523.
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A cached token is replaced this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How long an assertion is valid (Google accepts at most one hour).
const ASSERTION_LIFETIME: u64 = 3600;

/// How far `iat` is set in the past, for clock skew.
const CLOCK_SKEW: u64 = 10;

/// The most of a token reply read. Google's access tokens are up to 2 KiB
/// today and documented as liable to grow; FCM's own replies get 4 KiB.
pub const TOKEN_REPLY_LIMIT: usize = 16 * 1024;

/// The longest `expires_in` believed (Google's is one hour).
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An OAuth access token. Its `Debug` shows no secret.
#[derive(Clone)]
pub(crate) struct AccessToken {
    value: String,
    expires_at: Instant,
}

impl AccessToken {
    /// The bearer value for the `Authorization` header.
    pub(crate) fn secret(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// At most one access token, and whether it is still good.
#[derive(Default)]
pub(crate) struct TokenCache {
    current: Option<AccessToken>,
}

impl TokenCache {
    /// The cached token if it is good until at least `now + REFRESH_MARGIN`.
    pub(crate) fn valid(&self, now: Instant) -> Option<&AccessToken> {
        self.current
            .as_ref()
            .filter(|token| now + REFRESH_MARGIN < token.expires_at)
    }

    pub(crate) fn store(&mut self, token: AccessToken) {
        self.current = Some(token);
    }

    /// Drops the token (FCM said it is not valid).
    pub(crate) fn invalidate(&mut self) {
        self.current = None;
    }
}

/// A failed token fetch: the endpoint's status if it answered, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FetchError {
    pub(crate) status: Option<u16>,
    pub(crate) cause: Cause,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

/// The assertion's claims.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The fields of a token reply push reads.
#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// The signed assertion for `key`, issued at Unix time `unix_now`.
pub(crate) fn assertion(key: &ServiceAccountKey, unix_now: u64) -> Result<String, Cause> {
    let header = Header {
        alg: "RS256",
        typ: "JWT",
        kid: key.key_id.as_deref(),
    };
    let iat = unix_now.saturating_sub(CLOCK_SKEW);
    let claims = Claims {
        iss: &key.client_email,
        scope: FCM_SCOPE,
        aud: key.token_uri.as_str(),
        iat,
        exp: iat + ASSERTION_LIFETIME,
    };
    let encode = |part: &[u8]| BASE64URL_NOPAD.encode(part);
    let header = serde_json::to_vec(&header).map_err(|_| Cause::Signing)?;
    let claims = serde_json::to_vec(&claims).map_err(|_| Cause::Signing)?;
    let signing_input = format!("{}.{}", encode(&header), encode(&claims));
    let mut signature = vec![0; key.signer.public().modulus_len()];
    key.signer
        .sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| Cause::Signing)?;
    Ok(format!("{signing_input}.{}", encode(&signature)))
}

/// Exchanges a fresh assertion for an access token at the key's
/// `token_uri`; `now` is the loop's time the token's expiry counts from.
pub(crate) fn fetch(
    agent: &Agent,
    key: &ServiceAccountKey,
    now: Instant,
) -> Result<AccessToken, FetchError> {
    let fail = |status, cause| FetchError { status, cause };
    let assertion = assertion(key, unix_now()).map_err(|cause| fail(None, cause))?;
    let mut response = agent
        .post(key.token_uri.as_str())
        .send_form([("grant_type", JWT_BEARER_GRANT), ("assertion", &assertion)])
        .map_err(|error| fail(None, Cause::of(&error)))?;
    let status = response.status().as_u16();
    let body = read_body(&mut response, TOKEN_REPLY_LIMIT);
    if !response.status().is_success() {
        return Err(fail(Some(status), Cause::Status));
    }
    parse_reply(&body, now).ok_or(fail(Some(status), Cause::BadReply))
}

/// The token in a 2xx reply, if it carries a usable one: a non-empty
/// bearer value of visible ASCII (it goes into a header) and a lifetime.
fn parse_reply(body: &[u8], now: Instant) -> Option<AccessToken> {
    let reply: TokenReply = serde_json::from_slice(body).ok()?;
    let value = reply.access_token?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let lifetime = Duration::from_secs(reply.expires_in?).min(MAX_LIFETIME);
    Some(AccessToken {
        value,
        expires_at: now + lifetime,
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(now: Instant, lifetime: u64) -> AccessToken {
        parse_reply(
            format!(r#"{{"access_token":"ya29.x","expires_in":{lifetime},"token_type":"Bearer"}}"#)
                .as_bytes(),
            now,
        )
        .unwrap()
    }

    #[test]
    fn cache_keeps_a_token_until_the_margin_before_expiry() {
        let t0 = Instant::now();
        let mut cache = TokenCache::default();
        assert!(cache.valid(t0).is_none());
        cache.store(token(t0, 3600));
        let last_good = t0 + Duration::from_secs(3600) - REFRESH_MARGIN - Duration::from_millis(1);
        assert!(cache.valid(last_good).is_some());
        assert!(cache.valid(last_good + Duration::from_millis(1)).is_none());
        cache.invalidate();
        assert!(cache.valid(t0).is_none());
    }

    #[test]
    fn a_reply_without_a_usable_token_is_refused() {
        let now = Instant::now();
        for body in [
            &br#"{"expires_in":3600}"#[..],
            br#"{"access_token":"","expires_in":3600}"#,
            br#"{"access_token":"a b","expires_in":3600}"#,
            br#"{"access_token":"a\r\nX: y","expires_in":3600}"#,
            br#"{"access_token":"abc"}"#,
            br#"{"access_token":"abc","expires_in":-1}"#,
            b"not json",
        ] {
            assert!(
                parse_reply(body, now).is_none(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_absurd_lifetime_is_capped() {
        let now = Instant::now();
        let token = token(now, u64::MAX);
        assert_eq!(token.expires_at, now + MAX_LIFETIME);
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", token(Instant::now(), 60));
        assert!(!shown.contains("ya29"), "{shown}");
    }
}

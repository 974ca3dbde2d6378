//! The `push_wake` object a binary sends (SPEC §5.3),
//! `{"platform":"fcm","token":"…"}`, checked at the loop before anything
//! is admitted, and the token's fingerprint: the only form of a device
//! token that may appear in a log line.

use std::fmt;

use ring::digest::{digest, SHA256};
use serde::Deserialize;

use super::admission::Refusal;

/// The longest device token accepted. FCM registration tokens are about
/// 150–200 bytes; anything near this bound is not one.
pub const MAX_TOKEN_LEN: usize = 4096;

/// A checked wake request: an FCM device token, never logged.
pub struct WakeRequest {
    /// The device token, sent to FCM in the request body only.
    pub(crate) token: String,
}

/// The wire shape; unknown fields are ignored, as the Go relay does.
#[derive(Deserialize)]
struct Wire {
    platform: Option<String>,
    token: Option<String>,
}

impl WakeRequest {
    /// Parses the raw JSON value of a `push_wake` key. Only `fcm` is a
    /// platform the relay sends to; the token must be non-empty and at
    /// most [`MAX_TOKEN_LEN`] bytes. The refusal names the reason only.
    pub fn parse(raw: &[u8]) -> Result<WakeRequest, Refusal> {
        // serde would also read a struct from an array: insist on an object.
        if raw.trim_ascii_start().first() != Some(&b'{') {
            return Err(Refusal::Malformed);
        }
        let wire: Wire = serde_json::from_slice(raw).map_err(|_| Refusal::Malformed)?;
        if wire.platform.as_deref() != Some("fcm") {
            return Err(Refusal::UnsupportedPlatform);
        }
        match wire.token {
            None => Err(Refusal::EmptyToken),
            Some(token) if token.is_empty() => Err(Refusal::EmptyToken),
            Some(token) if token.len() > MAX_TOKEN_LEN => Err(Refusal::TokenTooLong),
            Some(token) => Ok(WakeRequest { token }),
        }
    }

    /// The token's fingerprint, for log lines.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.token)
    }
}

/// The first 8 hex digits of a device token's SHA-256: stable per token,
/// one-way, and safe to log in its place.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 4]);

impl Fingerprint {
    /// The fingerprint of `token`.
    pub fn of(token: &str) -> Fingerprint {
        let sum = digest(&SHA256, token.as_bytes());
        let mut first = [0; 4];
        first.copy_from_slice(&sum.as_ref()[..4]);
        Fingerprint(first)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_fcm_with_a_token_and_ignores_other_fields() {
        let wake = WakeRequest::parse(br#"{"platform":"fcm","token":"abc","x":1}"#).unwrap();
        assert_eq!(wake.token, "abc");
    }

    #[test]
    fn refuses_other_platforms_empty_tokens_and_non_objects() {
        let cases: [(&[u8], Refusal); 10] = [
            (
                br#"{"platform":"apns","token":"t"}"#,
                Refusal::UnsupportedPlatform,
            ),
            (br#"{"token":"t"}"#, Refusal::UnsupportedPlatform),
            (
                br#"{"platform":"FCM","token":"t"}"#,
                Refusal::UnsupportedPlatform,
            ),
            (br#"{"platform":"fcm","token":""}"#, Refusal::EmptyToken),
            (br#"{"platform":"fcm"}"#, Refusal::EmptyToken),
            (br#"{"platform":"fcm","token":7}"#, Refusal::Malformed),
            (br#""fcm""#, Refusal::Malformed),
            (br#"["fcm","t"]"#, Refusal::Malformed),
            (b"null", Refusal::Malformed),
            (b"{", Refusal::Malformed),
        ];
        for (raw, why) in cases {
            let got = WakeRequest::parse(raw).err();
            assert_eq!(got, Some(why), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn refuses_a_token_over_the_bound() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        let raw = format!(r#"{{"platform":"fcm","token":"{long}"}}"#);
        assert_eq!(
            WakeRequest::parse(raw.as_bytes()).err(),
            Some(Refusal::TokenTooLong)
        );
        let just = format!(r#"{{"platform":"fcm","token":"{}"}}"#, &long[1..]);
        assert!(WakeRequest::parse(just.as_bytes()).is_ok());
    }

    #[test]
    fn fingerprint_is_the_first_8_hex_of_sha256() {
        // printf 'abc' | sha256sum → ba7816bf8f01cfea…
        assert_eq!(Fingerprint::of("abc").to_string(), "ba7816bf");
    }
}

//! Which URLs push may send its secrets to. An access token, a signed
//! assertion and device tokens travel to two URLs: the key's `token_uri`
//! and the FCM endpoint (`--fcm-endpoint`). Both must be `https://`; plain
//! `http://` is accepted only when the host is a loopback address literal
//! (`127.0.0.0/8` or `[::1]`), so tests and local fakes can run the whole
//! path without TLS while nothing can ever leave the machine in clear text.

use std::fmt;
use std::net::IpAddr;

use ureq::http::Uri;

/// The production FCM origin (`--fcm-endpoint` default).
pub const DEFAULT_FCM_ENDPOINT: &str = "https://fcm.googleapis.com";

/// An absolute URL that passed the rule above, kept as given (a token URI
/// is also the assertion's `aud`, which must match it exactly).
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint(String);

/// Why a URL was refused. Carries no part of the URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointError {
    /// Not an absolute `scheme://host…` URL.
    NotAUrl,
    /// A scheme other than `https` or `http`.
    Scheme,
    /// `http://` to a host that is not a loopback address literal.
    PlainHttpNotLoopback,
    /// `user:password@` in the URL: credentials belong in no URL here.
    UserInfo,
    /// A query or fragment, which the paths appended to it would break.
    QueryOrFragment,
}

impl Endpoint {
    /// Checks `url` against the rule in the module doc.
    pub fn parse(url: &str) -> Result<Endpoint, EndpointError> {
        if url.contains(['?', '#']) {
            return Err(EndpointError::QueryOrFragment);
        }
        let uri: Uri = url.parse().map_err(|_| EndpointError::NotAUrl)?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(EndpointError::NotAUrl);
        };
        if authority.as_str().contains('@') {
            return Err(EndpointError::UserInfo);
        }
        match scheme {
            "https" => {}
            "http" if is_loopback_literal(authority.host()) => {}
            "http" => return Err(EndpointError::PlainHttpNotLoopback),
            _ => return Err(EndpointError::Scheme),
        }
        Ok(Endpoint(url.to_owned()))
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// This URL without its trailing `/`, with `path` (starting with `/`)
    /// appended.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0.trim_end_matches('/'))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Endpoint").field(&self.0).finish()
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointError::NotAUrl => "not an absolute URL",
            EndpointError::Scheme => "the scheme must be https",
            EndpointError::PlainHttpNotLoopback => {
                "plain http is accepted only for a loopback address (127.0.0.0/8, [::1])"
            }
            EndpointError::UserInfo => "credentials in the URL are refused",
            EndpointError::QueryOrFragment => "a query or fragment is refused",
        })
    }
}

impl std::error::Error for EndpointError {}

/// Whether `host` (as in a URL: IPv6 in brackets) is a loopback IP literal.
/// Names, `localhost` included, are not: what they resolve to is not ours.
fn is_loopback_literal(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_anywhere_and_http_only_on_loopback() {
        for ok in [
            "https://fcm.googleapis.com",
            "https://oauth2.googleapis.com/token",
            "http://127.0.0.1:8080",
            "http://127.3.2.1/prefix/",
            "http://[::1]:9000/token",
        ] {
            assert!(Endpoint::parse(ok).is_ok(), "{ok}");
        }
        let refused = [
            (
                "http://fcm.googleapis.com",
                EndpointError::PlainHttpNotLoopback,
            ),
            ("http://localhost:8080", EndpointError::PlainHttpNotLoopback),
            ("http://10.0.0.1", EndpointError::PlainHttpNotLoopback),
            ("ftp://127.0.0.1", EndpointError::Scheme),
            ("fcm.googleapis.com", EndpointError::NotAUrl),
            ("/v1/projects", EndpointError::NotAUrl),
            ("https://user:pw@example.com", EndpointError::UserInfo),
            (
                "https://example.com/token?x=1",
                EndpointError::QueryOrFragment,
            ),
            ("https://example.com/#a", EndpointError::QueryOrFragment),
        ];
        for (url, why) in refused {
            assert_eq!(Endpoint::parse(url), Err(why), "{url}");
        }
    }

    #[test]
    fn join_appends_to_the_url_without_its_trailing_slash() {
        let base = Endpoint::parse("http://127.0.0.1:1/prefix/").unwrap();
        assert_eq!(base.join("/v1/x"), "http://127.0.0.1:1/prefix/v1/x");
    }
}

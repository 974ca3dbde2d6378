//! The outbound HTTP client the push workers share: `ureq` (blocking, so
//! it lives on worker threads, never on the loop) over rustls with the
//! ring provider and Mozilla's roots compiled in.
//!
//! Every call is bounded: one overall timeout per call (connect, request,
//! reply and body), no redirect followed (a 3xx is returned as it is, so
//! the bearer token and device token are never replayed to a second URL),
//! no proxy taken from the environment, and a reply body read only up to a
//! caller-given number of bytes. Failures are reduced to a [`Cause`]: a
//! fixed word, never the library's error text.

use std::io::{ErrorKind, Read};
use std::time::Duration;

use ureq::http::Response;
use ureq::{Agent, Body};

/// The most time one HTTP call may take, end to end.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a wake failed, as one word for the log line's `cause=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The endpoint answered with a status that is not 2xx.
    Status,
    /// The call took longer than its timeout.
    Timeout,
    /// The host could not be resolved or connected to.
    Connect,
    /// The TLS handshake or certificate check failed.
    Tls,
    /// The connection failed mid-call.
    Io,
    /// The endpoint spoke something that is not HTTP/1.1.
    Protocol,
    /// A 2xx reply without what it must carry (e.g. no access token).
    BadReply,
    /// Signing the OAuth assertion failed.
    Signing,
    /// Anything else the HTTP library reported.
    Other,
}

impl Cause {
    /// The `cause=` value of the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Status => "status",
            Cause::Timeout => "timeout",
            Cause::Connect => "connect",
            Cause::Tls => "tls",
            Cause::Io => "io",
            Cause::Protocol => "protocol",
            Cause::BadReply => "bad_reply",
            Cause::Signing => "signing",
            Cause::Other => "other",
        }
    }

    /// The cause of a failed call.
    pub(crate) fn of(error: &ureq::Error) -> Cause {
        use ureq::Error as E;
        match error {
            E::Timeout(_) => Cause::Timeout,
            E::HostNotFound | E::ConnectionFailed => Cause::Connect,
            E::Tls(_) | E::Pem(_) | E::Rustls(_) | E::TlsRequired => Cause::Tls,
            E::Io(io) => match io.kind() {
                ErrorKind::TimedOut => Cause::Timeout,
                ErrorKind::ConnectionRefused
                | ErrorKind::AddrNotAvailable
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable => Cause::Connect,
                _ => Cause::Io,
            },
            E::Protocol(_) | E::LargeResponseHeader(..) => Cause::Protocol,
            _ => Cause::Other,
        }
    }
}

/// The agent every worker shares (its connection pool keeps FCM's TLS
/// session warm between wakes).
pub(crate) fn agent(timeout: Duration) -> Agent {
    Agent::config_builder()
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .proxy(None)
        .user_agent(concat!("pyrycode-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

/// Reads at most `limit` bytes of a reply's body. A body cut short by the
/// limit or by an error is returned as far as it was read.
pub(crate) fn read_body(response: &mut Response<Body>, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut reader = response.body_mut().as_reader().take(limit as u64);
    let _partial_is_fine = reader.read_to_end(&mut body);
    body
}

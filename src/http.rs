//! The HTTP/1.1 side of a connection (SPEC §2): parsing the request head
//! with `httparse`, deciding what the request asks for, and the bytes of
//! every response the relay gives before (or instead of) a WebSocket.
//!
//! Nothing here touches sockets or the registry: [`parse_head`] turns bytes
//! into a [`Request`], [`check_upgrade`] applies the header gate and the
//! WebSocket header rules, and the `write_*` helpers format responses.

use std::net::IpAddr;

/// Most header lines a request head may carry.
const MAX_HEADERS: usize = 64;
/// The path prefix of ACME HTTP-01 challenge requests (RFC 8555 §8.3).
pub const ACME_CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// The routes of SPEC §2 (exact path, query ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v1/server`: a binary claims a server-id.
    Server,
    /// `GET /v1/client`: a phone dials a server-id.
    Client,
    /// `/healthz`, any method.
    Healthz,
    /// `/metrics`, served on the metrics listener only.
    Metrics,
    /// `/clock`: the manual clock's time (metrics listener, `--manual-clock`).
    Clock,
    /// `/clock/advance`: moves the manual clock (metrics listener,
    /// `--manual-clock`).
    ClockAdvance,
    /// Anything else.
    NotFound,
}

impl Route {
    /// The `endpoint` label of the upgrade metrics.
    pub fn endpoint(self) -> &'static str {
        match self {
            Route::Server => "server",
            Route::Client => "client",
            Route::Healthz => "healthz",
            Route::Metrics => "metrics",
            Route::Clock | Route::ClockAdvance => "clock",
            Route::NotFound => "other",
        }
    }
}

/// What the relay needs from a complete request head.
#[derive(Debug, Default)]
pub struct Request {
    pub route: Option<Route>,
    pub method_is_get: bool,
    pub method_is_post: bool,
    /// The text after `?` in the request target, if any.
    pub query: Option<String>,
    pub upgrade_websocket: bool,
    pub connection_upgrade: bool,
    pub ws_version: Option<String>,
    pub ws_key: Option<String>,
    pub server_id: Option<String>,
    pub pyrycode_version: Option<String>,
    pub token_present: bool,
    pub user_agent_present: bool,
    /// Rightmost address of the last `X-Forwarded-For` header, if it parses.
    pub forwarded_for: Option<IpAddr>,
    /// The `Host` header (the last one), for the `--domain` check (421).
    pub host: Option<String>,
    /// The path (query included), when it asks for an ACME HTTP-01
    /// challenge (`/.well-known/acme-challenge/…`); not kept otherwise.
    pub acme_challenge: Option<String>,
}

/// Result of looking at the bytes received so far.
#[derive(Debug)]
pub enum Head {
    /// More bytes are needed.
    Partial,
    /// The head is complete and `len` bytes long; bytes after it are the
    /// first bytes of the WebSocket stream.
    Complete { len: usize, request: Request },
    /// The head is larger than the limit (431).
    TooLarge,
    /// Not HTTP/1.x (400).
    Malformed,
}

/// Parses the request head at the start of `bytes`.
pub fn parse_head(bytes: &[u8], max_header_size: usize) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(bytes) {
        Ok(httparse::Status::Partial) if bytes.len() >= max_header_size => Head::TooLarge,
        Ok(httparse::Status::Partial) => Head::Partial,
        Ok(httparse::Status::Complete(len)) if len > max_header_size => Head::TooLarge,
        Ok(httparse::Status::Complete(len)) => Head::Complete {
            len,
            request: Request::from_parsed(&parsed),
        },
        Err(httparse::Error::TooManyHeaders) => Head::TooLarge,
        Err(_) => Head::Malformed,
    }
}

impl Request {
    fn from_parsed(parsed: &httparse::Request) -> Request {
        let target = parsed.path.unwrap_or("");
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_string())),
            None => (target, None),
        };
        let mut request = Request {
            acme_challenge: path
                .starts_with(ACME_CHALLENGE_PREFIX)
                .then(|| target.to_string()),
            route: Some(match path {
                "/v1/server" => Route::Server,
                "/v1/client" => Route::Client,
                "/healthz" => Route::Healthz,
                "/metrics" => Route::Metrics,
                "/clock" => Route::Clock,
                "/clock/advance" => Route::ClockAdvance,
                _ => Route::NotFound,
            }),
            method_is_get: parsed.method == Some("GET"),
            method_is_post: parsed.method == Some("POST"),
            query,
            ..Request::default()
        };
        for header in parsed.headers.iter() {
            request.take_header(header.name, header.value);
        }
        request
    }

    fn take_header(&mut self, name: &str, raw: &[u8]) {
        let value = std::str::from_utf8(raw).unwrap_or("").trim();
        let non_empty = || (!value.is_empty()).then(|| value.to_string());
        let name = name.to_ascii_lowercase();
        match name.as_str() {
            "upgrade" => self.upgrade_websocket |= value.eq_ignore_ascii_case("websocket"),
            "connection" => {
                self.connection_upgrade |= value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case("upgrade"))
            }
            "sec-websocket-version" => self.ws_version = Some(value.to_string()),
            "sec-websocket-key" => self.ws_key = non_empty(),
            "x-pyrycode-server" => self.server_id = non_empty(),
            "x-pyrycode-version" => self.pyrycode_version = non_empty(),
            "x-pyrycode-token" => self.token_present |= !value.is_empty(),
            "user-agent" => self.user_agent_present |= !value.is_empty(),
            "host" => self.host = Some(value.to_string()),
            "x-forwarded-for" => {
                self.forwarded_for = value
                    .rsplit(',')
                    .next()
                    .and_then(|last| last.trim().parse().ok())
            }
            _ => {}
        }
    }
}

/// Why an upgrade request is refused before the 101.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A required pyrycode header is missing or empty, or the server-id is
    /// not 1–128 bytes of `[A-Za-z0-9._:-]` (400, not logged).
    Headers,
    /// Not a valid WebSocket upgrade (400).
    BadUpgrade,
    /// `Sec-WebSocket-Version` is not 13 (426).
    Version,
}

/// A WebSocket upgrade that passed every check.
#[derive(Debug)]
pub struct Upgrade {
    pub server_id: String,
    pub accept_key: String,
}

/// Applies steps 3 and 4 of SPEC §2 (header gate, then WebSocket headers).
pub fn check_upgrade(route: Route, request: &Request) -> Result<Upgrade, Refusal> {
    let server_id = request.server_id.as_deref().unwrap_or("");
    let gate_passed = match route {
        Route::Server => request.pyrycode_version.is_some(),
        Route::Client => request.token_present,
        Route::Healthz | Route::Metrics | Route::Clock | Route::ClockAdvance | Route::NotFound => {
            false
        }
    } && request.user_agent_present
        && is_valid_server_id(server_id);
    if !gate_passed {
        return Err(Refusal::Headers);
    }
    if !request.method_is_get || !request.upgrade_websocket || !request.connection_upgrade {
        return Err(Refusal::BadUpgrade);
    }
    if request.ws_version.as_deref() != Some("13") {
        return Err(Refusal::Version);
    }
    let key = request.ws_key.as_deref().ok_or(Refusal::BadUpgrade)?;
    match data_encoding::BASE64.decode(key.as_bytes()) {
        Ok(nonce) if nonce.len() == 16 => {}
        _ => return Err(Refusal::BadUpgrade),
    }
    Ok(Upgrade {
        server_id: server_id.to_string(),
        accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
    })
}

/// A server-id is 1–128 bytes of `[A-Za-z0-9._:-]` (SPEC §2).
pub fn is_valid_server_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Appends the `101 Switching Protocols` answer: no subprotocol, no extension.
pub fn write_switching_protocols(out: &mut Vec<u8>, accept_key: &str) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends a complete response that ends the connection.
pub fn write_response(out: &mut Vec<u8>, status: u16, extra_headers: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

/// Counters shown by `/healthz`.
pub struct Health<'a> {
    pub version: &'a str,
    pub connected_binaries: usize,
    pub connected_phones: usize,
    pub uptime_seconds: u64,
}

/// Appends the `/healthz` response (SPEC §10, keys in this order).
pub fn write_healthz(out: &mut Vec<u8>, health: &Health) {
    let body = format!(
        "{{\"status\":\"ok\",\"version\":{},\"connected_binaries\":{},\"connected_phones\":{},\"uptime_seconds\":{}}}",
        serde_json::to_string(health.version).unwrap_or_else(|_| "\"\"".into()),
        health.connected_binaries,
        health.connected_phones,
        health.uptime_seconds
    );
    write_response(
        out,
        200,
        "Content-Type: application/json; charset=utf-8\r\nCache-Control: no-store\r\n",
        &body,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER_HEAD: &str = "GET /v1/server?x=1 HTTP/1.1\r\nHost: r\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Pyrycode-Server: abc-123\r\nX-Pyrycode-Version: 1.0\r\nUser-Agent: pyry\r\n\r\n";

    fn request(head: &str) -> Request {
        match parse_head(head.as_bytes(), 8192) {
            Head::Complete { request, .. } => request,
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn a_valid_binary_upgrade_passes_with_the_rfc_accept_key() {
        let request = request(SERVER_HEAD);
        assert_eq!(request.route, Some(Route::Server));
        let upgrade = check_upgrade(Route::Server, &request).unwrap();
        assert_eq!(upgrade.server_id, "abc-123");
        assert_eq!(upgrade.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn partial_heads_wait_and_oversized_heads_are_refused() {
        assert!(matches!(
            parse_head(&SERVER_HEAD.as_bytes()[..40], 8192),
            Head::Partial
        ));
        assert!(matches!(
            parse_head(&SERVER_HEAD.as_bytes()[..40], 40),
            Head::TooLarge
        ));
        assert!(matches!(
            parse_head(SERVER_HEAD.as_bytes(), 100),
            Head::TooLarge
        ));
        assert!(matches!(
            parse_head(b"\x16\x03\x01garbage\r\n\r\n", 8192),
            Head::Malformed
        ));
    }

    #[test]
    fn the_header_gate_comes_before_the_websocket_checks() {
        let no_version = SERVER_HEAD.replace("X-Pyrycode-Version: 1.0\r\n", "");
        let bad_ws = no_version.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
        assert_eq!(
            check_upgrade(Route::Server, &request(&bad_ws)).unwrap_err(),
            Refusal::Headers
        );
        let wrong_version =
            SERVER_HEAD.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
        assert_eq!(
            check_upgrade(Route::Server, &request(&wrong_version)).unwrap_err(),
            Refusal::Version
        );
        let short_key = SERVER_HEAD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
        assert_eq!(
            check_upgrade(Route::Server, &request(&short_key)).unwrap_err(),
            Refusal::BadUpgrade
        );
    }

    #[test]
    fn server_ids_are_checked() {
        assert!(is_valid_server_id("0b6f0e0c-5b5e-4c54-9f49-8d8f8f6f7a1b"));
        assert!(is_valid_server_id("a.b_c:d-E"));
        assert!(!is_valid_server_id(""));
        assert!(!is_valid_server_id("has space"));
        assert!(!is_valid_server_id("slash/"));
        assert!(!is_valid_server_id(&"x".repeat(129)));
        assert!(is_valid_server_id(&"x".repeat(128)));
    }

    #[test]
    fn host_and_acme_challenge_paths_are_kept() {
        let request = request(SERVER_HEAD);
        assert_eq!(request.host.as_deref(), Some("r"));
        assert_eq!(request.acme_challenge, None);
        let challenge =
            "GET /.well-known/acme-challenge/tok?x=1 HTTP/1.1\r\nHost: relay.example:80\r\n\r\n";
        let request = super::tests::request(challenge);
        assert_eq!(request.route, Some(Route::NotFound));
        assert_eq!(
            request.acme_challenge.as_deref(),
            Some("/.well-known/acme-challenge/tok?x=1")
        );
        assert_eq!(request.host.as_deref(), Some("relay.example:80"));
        let mut out = Vec::new();
        write_response(&mut out, 421, "", "");
        assert!(out.starts_with(b"HTTP/1.1 421 Misdirected Request\r\n"));
    }

    #[test]
    fn the_clock_routes_keep_their_method_and_query() {
        let advance = request("POST /clock/advance?by=30s HTTP/1.1\r\nHost: r\r\n\r\n");
        assert_eq!(advance.route, Some(Route::ClockAdvance));
        assert!(advance.method_is_post && !advance.method_is_get);
        assert_eq!(advance.query.as_deref(), Some("by=30s"));
        let clock = request("GET /clock HTTP/1.1\r\nHost: r\r\n\r\n");
        assert_eq!(clock.route, Some(Route::Clock));
        assert_eq!(clock.query, None);
        assert_eq!(request(SERVER_HEAD).query.as_deref(), Some("x=1"));
    }

    #[test]
    fn forwarded_for_takes_the_rightmost_address() {
        let head = SERVER_HEAD.replace(
            "User-Agent: pyry\r\n",
            "User-Agent: pyry\r\nX-Forwarded-For: 10.0.0.1, 203.0.113.9\r\n",
        );
        assert_eq!(
            request(&head).forwarded_for,
            Some("203.0.113.9".parse().unwrap())
        );
    }

    #[test]
    fn forwarded_for_takes_the_last_header_line() {
        // The proxy in front appends its own line; a client's forged
        // earlier line must not win, and neither may a forged left entry.
        let lines = "X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 10.9.9.9, 203.0.113.9\r\n";
        let head = SERVER_HEAD.replace(
            "User-Agent: pyry\r\n",
            &format!("User-Agent: pyry\r\n{lines}"),
        );
        assert_eq!(
            request(&head).forwarded_for,
            Some("203.0.113.9".parse().unwrap())
        );
        // A right-most entry that is not an address: the peer address is used.
        let lines = "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.1, unknown\r\n";
        let head = SERVER_HEAD.replace(
            "User-Agent: pyry\r\n",
            &format!("User-Agent: pyry\r\n{lines}"),
        );
        assert_eq!(request(&head).forwarded_for, None);
    }
}

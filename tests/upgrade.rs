//! SPEC §2 (and the `/healthz` of §10) over real sockets: routes, the
//! header gate, the WebSocket handshake rules, the order of the checks,
//! the admission limits, the 101 answer, and the request-head limits.

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::*;

/// The RFC 6455 §1.3 sample nonce and its accept value.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

type Headers = Vec<(String, String)>;

/// The WebSocket part of a valid upgrade request.
fn ws_headers() -> Headers {
    [
        ("Host", "relay.test"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", KEY),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect()
}

fn owned(headers: Vec<(&'static str, String)>) -> Headers {
    headers
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
}

/// Every header a valid binary upgrade carries.
fn server_request(server_id: &str) -> Headers {
    let mut headers = ws_headers();
    headers.extend(owned(binary_headers(server_id)));
    headers
}

/// Every header a valid phone upgrade carries.
fn client_request(server_id: &str) -> Headers {
    let mut headers = ws_headers();
    headers.extend(owned(phone_headers(server_id)));
    headers
}

/// A request head with exactly these headers, in this order.
fn head(method: &str, path: &str, headers: &[(String, String)]) -> String {
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out
}

/// `headers` without any header called `name` (case-insensitive).
fn without(headers: &[(String, String)], name: &str) -> Headers {
    headers
        .iter()
        .filter(|(n, _)| !n.eq_ignore_ascii_case(name))
        .cloned()
        .collect()
}

/// `headers` with the header `name` set to `value` (replaced, or added).
fn with(headers: &[(String, String)], name: &str, value: &str) -> Headers {
    let mut out = without(headers, name);
    out.push((name.to_string(), value.to_string()));
    out
}

/// The values of response header `name` (case-insensitive).
fn header_values(response: &str, name: &str) -> Vec<String> {
    response
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The lowercase names of every response header, in order.
fn header_names(response: &str) -> Vec<String> {
    response
        .split("\r\n")
        .skip(1)
        .filter(|line| !line.is_empty())
        .map(|line| {
            line.split_once(':')
                .expect("header line has a colon")
                .0
                .to_ascii_lowercase()
        })
        .collect()
}

fn status_of(h: &mut Harness, request: &str) -> u16 {
    h.request(request).0
}

/// Asserts that `request` gets `expected` with an empty body and that the
/// relay then closes the connection. Returns the response head.
fn assert_refused(h: &mut Harness, request: &str, expected: u16) -> String {
    let (status, response, mut client) = h.request(request);
    assert_eq!(
        status, expected,
        "request:\n{request}\nresponse:\n{response}"
    );
    assert_eq!(header_values(&response, "Content-Length"), vec!["0"]);
    assert_eq!(client.body_until_eof(h), b"", "refusals have an empty body");
    client.hang_up(h);
    response
}

/// Asserts the relay has sent nothing to `client` yet (and not closed it).
fn assert_nothing_received(h: &mut Harness, client: &mut Client) {
    h.settle();
    match client.stream().peek(&mut [0u8; 1]) {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        Ok(0) => panic!("the relay closed the connection"),
        Ok(_) => panic!("the relay answered too early"),
        Err(err) => panic!("peek failed: {err}"),
    }
}

/// A head of exactly `total` bytes: a valid binary upgrade padded with a
/// filler header.
fn padded_server_head(total: usize) -> String {
    let bare = head("GET", "/v1/server", &server_request("srv-pad"));
    let overhead = bare.len() + "X-Filler: \r\n".len();
    let filler = "a".repeat(total - overhead);
    let out = head(
        "GET",
        "/v1/server",
        &with(&server_request("srv-pad"), "X-Filler", &filler),
    );
    assert_eq!(out.len(), total);
    out
}

// ---------------------------------------------------------------- routes

#[test]
fn websocket_routes_upgrade_and_ignore_the_query_string() {
    let mut h = Harness::start();
    let mut open = Vec::new();
    for (path, headers) in [
        ("/v1/server", server_request("srv-1")),
        ("/v1/server?x=1", server_request("srv-2")),
        ("/v1/server?", server_request("srv-3")),
        ("/v1/client", client_request("srv-1")),
        ("/v1/client?x=1&y=2", client_request("srv-2")),
    ] {
        let (status, response, client) = h.request(&head("GET", path, &headers));
        assert_eq!(status, 101, "{path}: {response}");
        open.push(client);
    }
    assert_eq!(h.peers(), (3, 2));
}

#[test]
fn every_other_path_is_404_even_with_valid_upgrade_headers() {
    let mut h = Harness::start();
    for path in [
        "/v1/serverX",
        "/v1/server/",
        "/v1/server/x",
        "/V1/SERVER",
        "/v1/clients",
        "/v1/client/",
        "/v1",
        "/",
        "/healthzX",
        "/healthz/",
        "/metrics",
        "/v1/serverX?x=/v1/server",
    ] {
        let (status, response, _) = h.request(&head("GET", path, &server_request("srv-1")));
        assert_eq!(status, 404, "{path}: {response}");
    }
    assert_eq!(
        status_of(&mut h, "DELETE /nope HTTP/1.1\r\nHost: r\r\n\r\n"),
        404
    );
    assert_eq!(status_of(&mut h, "GET / HTTP/1.0\r\n\r\n"), 404);
    assert_eq!(h.stats().binaries, 0);
}

#[test]
fn healthz_answers_any_method_and_ignores_the_query_string() {
    let mut h = Harness::start();
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n",
        "POST /healthz HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 0\r\n\r\n",
        "PUT /healthz HTTP/1.1\r\nHost: relay.test\r\nContent-Length: 0\r\n\r\n",
        "DELETE /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n",
        "OPTIONS /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n",
        "GET /healthz?verbose=1 HTTP/1.1\r\nHost: relay.test\r\n\r\n",
        "GET /healthz HTTP/1.0\r\n\r\n",
    ] {
        let (status, response, mut client) = h.request(request);
        assert_eq!(status, 200, "{request}: {response}");
        let body = client.body_until_eof(&mut h);
        assert!(body.starts_with(b"{\"status\":\"ok\""), "{request}");
    }
}

// ---------------------------------------------------------------- healthz

#[test]
fn healthz_body_and_headers_are_exact() {
    let mut h = Harness::with_config(|c| c.version = "1.2.3-test".to_string());
    let (status, response, mut client) =
        h.request("GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n");
    assert_eq!(status, 200);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(
        header_values(&response, "Content-Type"),
        vec!["application/json; charset=utf-8"]
    );
    assert_eq!(header_values(&response, "Cache-Control"), vec!["no-store"]);
    let body = client.body_until_eof(&mut h);
    let expected = r#"{"status":"ok","version":"1.2.3-test","connected_binaries":0,"connected_phones":0,"uptime_seconds":0}"#;
    assert_eq!(String::from_utf8(body).unwrap(), expected);
    assert_eq!(
        header_values(&response, "Content-Length"),
        vec![expected.len().to_string()]
    );
}

#[test]
fn healthz_reports_the_crate_version_by_default() {
    let mut h = Harness::start();
    let (body, _) = h.healthz();
    let expected = format!(
        r#"{{"status":"ok","version":"{}","connected_binaries":0,"connected_phones":0,"uptime_seconds":0}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(body, expected);
}

#[test]
fn healthz_counts_follow_binaries_and_phones() {
    let mut h = Harness::start();
    assert_eq!(h.counts(), (0, 0));

    let mut binary = h.binary("srv-a");
    assert_eq!(h.counts(), (1, 0));
    let mut other = h.binary("srv-b");
    assert_eq!(h.counts(), (2, 0));

    let (mut p1, _) = h.phone_with_id("srv-a", &mut binary);
    let (mut p2, _) = h.phone_with_id("srv-a", &mut binary);
    let (_p3, _) = h.phone_with_id("srv-b", &mut other);
    assert_eq!(h.counts(), (2, 3));

    // A phone refused after the 101 is never counted.
    let mut stray = h.phone("srv-nobody");
    stray.expect_closed(&mut h, NO_SERVER);
    assert_eq!(h.counts(), (2, 3));

    // The binary leaves: it stops counting at once, its phones wait out
    // the grace period and are still counted.
    drop(binary);
    h.settle();
    assert_eq!(h.counts(), (1, 3));
    h.advance(Duration::from_secs(29));
    assert_eq!(h.counts(), (1, 3));
    h.advance(Duration::from_secs(1));
    p1.expect_closed(&mut h, BINARY_GONE);
    p2.expect_closed(&mut h, BINARY_GONE);
    assert_eq!(h.counts(), (1, 1));

    drop(other);
    h.settle();
    assert_eq!(h.counts(), (0, 1));
}

#[test]
fn healthz_uptime_follows_relay_time() {
    let mut h = Harness::start();
    let (_, value) = h.healthz();
    assert_eq!(value["uptime_seconds"], 0);
    h.advance(Duration::from_millis(999));
    let (_, value) = h.healthz();
    assert_eq!(value["uptime_seconds"], 0);
    h.advance(Duration::from_millis(1));
    let (_, value) = h.healthz();
    assert_eq!(value["uptime_seconds"], 1);
    h.advance(Duration::from_secs(3600));
    let (body, _) = h.healthz();
    assert!(body.ends_with(r#""uptime_seconds":3601}"#), "{body}");
}

// ---------------------------------------------------------------- the tables

/// One change to a valid upgrade request.
#[derive(Clone, Copy, Debug)]
enum Edit {
    /// Without the header (any case).
    Remove(&'static str),
    /// The header with this value (replaced, or added).
    Set(&'static str, &'static str),
    /// This method instead of GET.
    Method(&'static str),
}

use Edit::{Method, Remove, Set};

const SERVER: &str = "/v1/server";
const CLIENT: &str = "/v1/client";
const ID: &str = "X-Pyrycode-Server";
const VERSION: &str = "X-Pyrycode-Version";
const TOKEN: &str = "X-Pyrycode-Token";
const DEVICE: &str = "X-Pyrycode-Device-Name";
const UA: &str = "User-Agent";
const UPGRADE: &str = "Upgrade";
const CONNECTION: &str = "Connection";
const WS_KEY: &str = "Sec-WebSocket-Key";
const WS_VERSION: &str = "Sec-WebSocket-Version";
/// Whether the relay writes a log line for the request.
const LOGGED: bool = true;
const QUIET: bool = false;

/// The valid upgrade request of `route` for `server_id`, with `edits`.
fn edited(route: &str, server_id: &str, edits: &[Edit]) -> String {
    let mut method = "GET";
    let mut headers = match route {
        SERVER => server_request(server_id),
        _ => client_request(server_id),
    };
    for edit in edits {
        match *edit {
            Remove(name) => headers = without(&headers, name),
            Set(name, value) => headers = with(&headers, name, value),
            Method(other) => method = other,
        }
    }
    head(method, route, &headers)
}

/// Asserts that a binary claiming `server_id` is refused with `status`.
fn refuse_binary(h: &mut Harness, server_id: &str, status: u16) -> String {
    assert_refused(h, &upgrade_head(SERVER, &binary_headers(server_id)), status)
}

/// A row of an upgrade table: the valid upgrade request of `route` (a
/// binary claiming `srv-1`, or a phone dialling the binary of `srv-1`)
/// with `edits` applied gets `status`, and the relay logs it or not.
struct Row {
    route: &'static str,
    edits: Vec<Edit>,
    status: u16,
    logged: bool,
}

fn row(route: &'static str, edits: &[Edit], status: u16, logged: bool) -> Row {
    let edits = edits.to_vec();
    Row {
        route,
        edits,
        status,
        logged,
    }
}

impl Row {
    fn request(&self) -> String {
        edited(self.route, "srv-1", &self.edits)
    }

    /// The server-id the request claims or dials.
    fn server_id(&self) -> &str {
        self.edits
            .iter()
            .rev()
            .find_map(|edit| match edit {
                Set(ID, value) => Some(*value),
                _ => None,
            })
            .unwrap_or("srv-1")
    }

    /// Runs the row against a fresh relay (with the binary of `srv-1` for
    /// phones) and checks the status, what the relay holds afterwards, and
    /// whether it logged anything for the request.
    fn check(&self) {
        let what = format!("{} {:?}", self.route, self.edits);
        let phone = self.route == CLIENT;
        capture_logs();
        let mut h = Harness::start();
        let _binary = phone.then(|| h.binary("srv-1"));
        take_logs();
        let request = self.request();
        let client = if self.status == 101 {
            let (status, response, client) = h.request(&request);
            assert_eq!(status, 101, "{what}: {response}");
            let stats = h.stats();
            assert_eq!(
                (stats.binaries, stats.phones),
                (1, usize::from(phone)),
                "{what}"
            );
            Some(client)
        } else {
            let response = assert_refused(&mut h, &request, self.status);
            let version = header_values(&response, WS_VERSION);
            let named = if self.status == 426 {
                vec!["13"]
            } else {
                vec![]
            };
            assert_eq!(version, named, "{what}: {response}");
            let stats = h.stats();
            let held = usize::from(phone);
            assert_eq!(
                (stats.connections, stats.binaries, stats.phones),
                (held, held, 0),
                "{what}"
            );
            None
        };
        let lines = take_logs();
        assert_eq!(!lines.is_empty(), self.logged, "{what}: logged {lines:?}");
        // A binary let in serves phones, whose conn_ids carry its id.
        if let (Some(mut binary), false) = (client, phone) {
            let id = self.server_id();
            let (_phone, conn_id) = h.phone_with_id(id, &mut binary);
            assert!(conn_id.starts_with(&format!("client-{id}-")), "{conn_id}");
        }
    }
}

// ---------------------------------------------------------------- header gate

#[test]
fn the_header_gate_refuses_quietly_and_comes_before_the_websocket_rules() {
    let too_long: &'static str = "x".repeat(129).leak();
    let longest: &'static str = "x".repeat(128).leak();
    let v8 = Set(WS_VERSION, "8");
    let rows = [
        row(SERVER, &[], 101, LOGGED),
        row(SERVER, &[Remove(ID)], 400, QUIET),
        row(SERVER, &[Set(ID, "")], 400, QUIET),
        row(SERVER, &[Set(ID, "   ")], 400, QUIET),
        row(SERVER, &[Remove(VERSION)], 400, QUIET),
        row(SERVER, &[Set(VERSION, "")], 400, QUIET),
        row(SERVER, &[Set(VERSION, "   ")], 400, QUIET),
        row(SERVER, &[Remove(UA)], 400, QUIET),
        row(SERVER, &[Set(UA, "")], 400, QUIET),
        row(SERVER, &[Set(UA, "   ")], 400, QUIET),
        // A phone's token does not stand in for the binary's version.
        row(SERVER, &[Remove(VERSION), Set(TOKEN, "t")], 400, QUIET),
        row(CLIENT, &[], 101, LOGGED),
        row(CLIENT, &[Remove(ID)], 400, QUIET),
        row(CLIENT, &[Set(ID, "")], 400, QUIET),
        row(CLIENT, &[Set(ID, "  ")], 400, QUIET),
        row(CLIENT, &[Remove(TOKEN)], 400, QUIET),
        row(CLIENT, &[Set(TOKEN, "")], 400, QUIET),
        row(CLIENT, &[Set(TOKEN, "  ")], 400, QUIET),
        row(CLIENT, &[Remove(UA)], 400, QUIET),
        row(CLIENT, &[Set(UA, "")], 400, QUIET),
        row(CLIENT, &[Set(UA, "  ")], 400, QUIET),
        // A binary's version does not stand in for the phone's token.
        row(CLIENT, &[Remove(TOKEN), Set(VERSION, "0.9.0")], 400, QUIET),
        // The device name is optional: absent or empty, the phone gets in.
        row(CLIENT, &[Remove(DEVICE)], 101, LOGGED),
        row(CLIENT, &[Set(DEVICE, "")], 101, LOGGED),
        // A server-id is 1–128 bytes of [A-Za-z0-9._:-], on both routes.
        row(SERVER, &[Set(ID, "a")], 101, LOGGED),
        row(SERVER, &[Set(ID, longest)], 101, LOGGED),
        row(SERVER, &[Set(ID, "A.b_C:d-9")], 101, LOGGED),
        row(
            SERVER,
            &[Set(ID, "0b6f0e0c-5b5e-4c54-9f49-8d8f8f6f7a1b")],
            101,
            LOGGED,
        ),
        row(SERVER, &[Set(ID, too_long)], 400, QUIET),
        row(CLIENT, &[Set(ID, too_long)], 400, QUIET),
        row(SERVER, &[Set(ID, "has space")], 400, QUIET),
        row(CLIENT, &[Set(ID, "has space")], 400, QUIET),
        row(SERVER, &[Set(ID, "slash/")], 400, QUIET),
        row(CLIENT, &[Set(ID, "slash/")], 400, QUIET),
        row(SERVER, &[Set(ID, "a/b")], 400, QUIET),
        row(CLIENT, &[Set(ID, "a/b")], 400, QUIET),
        row(SERVER, &[Set(ID, "emoji-\u{1F600}")], 400, QUIET),
        row(CLIENT, &[Set(ID, "emoji-\u{1F600}")], 400, QUIET),
        row(SERVER, &[Set(ID, "percent%20")], 400, QUIET),
        row(CLIENT, &[Set(ID, "percent%20")], 400, QUIET),
        row(SERVER, &[Set(ID, "quote\"")], 400, QUIET),
        row(CLIENT, &[Set(ID, "quote\"")], 400, QUIET),
        row(SERVER, &[Set(ID, "comma,x")], 400, QUIET),
        row(CLIENT, &[Set(ID, "comma,x")], 400, QUIET),
        // A wrong version alone is 426 (and logged)...
        row(SERVER, &[v8], 426, LOGGED),
        // ...but a failed header gate wins over it.
        row(SERVER, &[v8, Remove(ID)], 400, QUIET),
        row(SERVER, &[v8, Remove(VERSION)], 400, QUIET),
        row(SERVER, &[v8, Remove(UA)], 400, QUIET),
        row(SERVER, &[v8, Set(ID, "bad id")], 400, QUIET),
        row(CLIENT, &[v8, Remove(TOKEN)], 400, QUIET),
    ];
    for row in &rows {
        row.check();
    }
}

#[test]
fn header_names_are_case_insensitive() {
    let mut h = Harness::start();
    let lower: Headers = server_request("srv-lower")
        .into_iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v))
        .collect();
    let (status, response, _b1) = h.request(&head("GET", SERVER, &lower));
    assert_eq!(status, 101, "{response}");

    let upper: Headers = server_request("srv-upper")
        .into_iter()
        .map(|(n, v)| (n.to_ascii_uppercase(), v))
        .collect();
    let (status, response, _b2) = h.request(&head("GET", SERVER, &upper));
    assert_eq!(status, 101, "{response}");

    let mixed: Headers = client_request("srv-lower")
        .into_iter()
        .map(|(n, v)| {
            let n: String = n
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i % 2 == 0 {
                        c.to_ascii_lowercase()
                    } else {
                        c.to_ascii_uppercase()
                    }
                })
                .collect();
            (n, v)
        })
        .collect();
    let (status, response, _p) = h.request(&head("GET", CLIENT, &mixed));
    assert_eq!(status, 101, "{response}");
    assert_eq!(h.stats().phones, 1);
}

// ---------------------------------------------------------------- websocket rules

#[test]
fn the_websocket_rules_refuse_400_or_426_and_log_it() {
    let mut rows = Vec::new();
    // Connection may be a comma list; values are case-insensitive.
    for (upgrade, connection) in [
        ("websocket", "keep-alive, Upgrade"),
        ("websocket", "Upgrade, keep-alive"),
        ("websocket", "keep-alive,upgrade"),
        ("WebSocket", "UPGRADE"),
        ("WEBSOCKET", "upgrade"),
    ] {
        rows.push(row(
            SERVER,
            &[Set(UPGRADE, upgrade), Set(CONNECTION, connection)],
            101,
            LOGGED,
        ));
    }
    // A Connection header without `upgrade`.
    rows.push(row(SERVER, &[Remove(CONNECTION)], 400, LOGGED));
    for connection in [
        "keep-alive",
        "",
        "close",
        "upgraded",
        "keep-alive, upgrade-please",
    ] {
        rows.push(row(SERVER, &[Set(CONNECTION, connection)], 400, LOGGED));
    }
    for route in [SERVER, CLIENT] {
        rows.push(row(route, &[Remove(UPGRADE)], 400, LOGGED));
        for upgrade in ["", "h2c", "websockets", "web socket"] {
            rows.push(row(route, &[Set(UPGRADE, upgrade)], 400, LOGGED));
        }
        for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"] {
            rows.push(row(route, &[Method(method)], 400, LOGGED));
        }
        // A wrong version is 426 naming version 13.
        for version in ["8", "12", "14"] {
            rows.push(row(route, &[Set(WS_VERSION, version)], 426, LOGGED));
        }
    }
    rows.push(row(SERVER, &[Remove(WS_KEY)], 400, LOGGED));
    for key in [
        "",
        "c2hvcnQ=",                     // "short": 5 bytes
        "AAAAAAAAAAAAAAAAAAAAAA",       // 16 bytes, but padding missing
        "AAAAAAAAAAAAAAAAAAAAAAA=",     // 17 bytes
        "AAAAAAAAAAAAAAAAAAAA",         // 15 bytes
        "not base64 at all!!!!!!=",     // not base64
        "dGhlIHNhbXBsZSBub25jZQ==dGhl", // trailing garbage
    ] {
        rows.push(row(SERVER, &[Set(WS_KEY, key)], 400, LOGGED));
    }
    for row in &rows {
        row.check();
    }
}

// ---------------------------------------------------------------- admission

#[test]
fn the_rate_limit_beats_every_other_check() {
    let mut h = Harness::with_config(|c| c.rate_limit_burst = 2);
    let _binary = h.binary("srv-1");
    // A refused attempt still spends a token.
    assert_refused(&mut h, &edited(SERVER, "srv-2", &[Remove(UA)]), 400);
    // The bucket is empty: 429 whatever else is wrong.
    for request in [
        edited(SERVER, "srv-2", &[]),
        edited(CLIENT, "srv-1", &[]),
        edited(CLIENT, "bad id", &[Remove(TOKEN), Set(WS_VERSION, "8")]),
        edited(SERVER, "srv-3", &[Method("POST"), Remove(UPGRADE)]),
        edited(SERVER, "srv-4", &[Set(WS_KEY, "x")]).replace(SERVER, "/v1/server?x=1"),
    ] {
        assert_refused(&mut h, &request, 429);
    }
    // Not an upgrade: /healthz and 404 are not rate limited.
    assert_eq!(h.healthz().1["connected_binaries"], 1);
    assert_eq!(status_of(&mut h, "GET /nope HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(h.peers(), (1, 0));
}

#[test]
fn the_rate_limit_refills_one_attempt_per_interval() {
    let mut h = Harness::with_config(|c| {
        c.rate_limit_burst = 1;
        c.rate_limit_interval = Duration::from_secs(6);
    });
    let mut b1 = h.binary("srv-1");
    refuse_binary(&mut h, "srv-2", 429);
    h.advance(Duration::from_secs(5));
    refuse_binary(&mut h, "srv-2", 429);
    h.advance(Duration::from_secs(1));
    let mut b2 = h.binary("srv-2");
    refuse_binary(&mut h, "srv-3", 429);

    // Unused tokens pile up only to the burst. (A minute passes in steps,
    // the binaries answering their pings in between, so that they stay.)
    b1.answer_pings(true);
    b2.answer_pings(true);
    for _ in 0..3 {
        h.advance(Duration::from_secs(20));
        h.sync(&mut [&mut b1, &mut b2]);
    }
    let _b3 = h.binary("srv-3");
    refuse_binary(&mut h, "srv-4", 429);
    assert_eq!(h.stats().binaries, 3);
}

#[test]
fn the_rate_limit_uses_x_forwarded_for_only_when_trusted() {
    let mut forwarded = binary_headers("srv-2");
    forwarded.push(("X-Forwarded-For", "203.0.113.7".to_string()));
    for trusted in [false, true] {
        let mut h = Harness::with_config(|c| {
            c.rate_limit_burst = 1;
            c.trust_x_forwarded_for = trusted;
        });
        let _b = h.binary("srv-1");
        // Trusted, the forwarded address has a bucket of its own.
        let _b2 = trusted.then(|| {
            let (status, response, b2) = h.upgrade(SERVER, &forwarded);
            assert_eq!(status, 101, "{response}");
            b2
        });
        assert_refused(&mut h, &upgrade_head(SERVER, &forwarded), 429);
    }
}

#[test]
fn the_global_connection_cap_is_503() {
    let mut h = Harness::with_config(|c| c.max_connections = 1);
    let binary = h.binary("srv-1");
    let response = refuse_binary(&mut h, "srv-2", 503);
    assert!(response.starts_with("HTTP/1.1 503 "), "{response}");
    assert_refused(&mut h, &upgrade_head(CLIENT, &phone_headers("srv-1")), 503);
    // Capacity is checked before the header gate and the WebSocket rules.
    let hopeless = edited(SERVER, "x y", &[Remove(UA), Set(WS_VERSION, "8")]);
    assert_refused(&mut h, &hopeless, 503);
    // /healthz does not count and is not refused.
    assert_eq!(h.healthz().1["connected_binaries"], 1);
    assert_eq!(h.stats().phones, 0);

    drop(binary);
    h.settle();
    let _b = h.binary("srv-2");
}

#[test]
fn the_rate_limit_is_checked_before_the_global_cap() {
    let mut h = Harness::with_config(|c| {
        c.max_connections = 1;
        c.rate_limit_burst = 2;
    });
    let _binary = h.binary("srv-1");
    refuse_binary(&mut h, "srv-2", 503);
    refuse_binary(&mut h, "srv-2", 429);
}

#[test]
fn the_per_ip_connection_cap_is_429() {
    let mut h = Harness::with_config(|c| c.max_connections_per_ip = 1);
    let mut binary = h.binary("srv-1");
    assert_refused(&mut h, &upgrade_head(CLIENT, &phone_headers("srv-1")), 429);
    refuse_binary(&mut h, "srv-2", 429);
    assert_eq!(h.healthz().1["connected_binaries"], 1);
    assert_eq!(h.stats().phones, 0);

    // The binary closes cleanly: its slot is free again.
    binary.send_close(&mut h, 1000, "");
    assert_eq!(binary.recv_close(&mut h), (Some(1000), String::new()));
    binary.wait_eof(&mut h);
    drop(binary);
    h.settle();
    let _b = h.binary("srv-2");
}

// ---------------------------------------------------------------- the 101

#[test]
fn the_101_carries_only_upgrade_connection_and_accept() {
    let mut h = Harness::start();
    let mut headers = server_request("srv-1");
    headers.push((
        "Sec-WebSocket-Extensions".to_string(),
        "permessage-deflate; client_max_window_bits".to_string(),
    ));
    headers.push((
        "Sec-WebSocket-Protocol".to_string(),
        "chat, pyrycode".to_string(),
    ));
    let (status, response, mut binary) = h.request(&head("GET", "/v1/server", &headers));
    assert_eq!(status, 101);
    assert!(
        response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{response}"
    );
    assert_eq!(
        header_names(&response),
        vec!["upgrade", "connection", "sec-websocket-accept"],
        "{response}"
    );
    assert_eq!(
        header_values(&response, "Upgrade")[0].to_ascii_lowercase(),
        "websocket"
    );
    assert_eq!(
        header_values(&response, "Connection")[0].to_ascii_lowercase(),
        "upgrade"
    );
    assert_eq!(
        header_values(&response, "Sec-WebSocket-Accept"),
        vec![ACCEPT]
    );
    // No hello: the binary gets nothing after the 101.
    binary.expect_no_data(&mut h);

    // The phone side offers the same (the Android client does).
    let mut headers = client_request("srv-1");
    headers.push((
        "Sec-WebSocket-Extensions".to_string(),
        "permessage-deflate".to_string(),
    ));
    headers.push(("Sec-WebSocket-Protocol".to_string(), "pyrycode".to_string()));
    let headers = with(&headers, "Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw==");
    let (status, response, mut phone) = h.request(&head("GET", "/v1/client", &headers));
    assert_eq!(status, 101);
    assert_eq!(
        header_names(&response),
        vec!["upgrade", "connection", "sec-websocket-accept"],
        "{response}"
    );
    assert_eq!(
        header_values(&response, "Sec-WebSocket-Accept"),
        vec!["HSmrc0sMlYUkAGmm5OPpG2HaGWk="]
    );
    phone.expect_no_data(&mut h);
}

#[test]
fn refusals_decided_after_the_101_are_websocket_closes() {
    let mut h = Harness::with_config(|c| c.max_phones_per_server = 1);
    let mut stray = h.phone("srv-none");
    stray.expect_closed(&mut h, NO_SERVER);

    let (_binary, _phone, _) = h.pair("srv-1");
    let mut extra = h.phone("srv-1");
    extra.expect_closed(&mut h, TOO_MANY_PHONES);
}

// ---------------------------------------------------------------- request head

#[test]
fn a_head_over_the_size_limit_is_431() {
    let mut h = Harness::start();
    // Exactly at the limit is fine; one byte over is not.
    let (status, response, _b) = h.request(&padded_server_head(8 * 1024));
    assert_eq!(status, 101, "{response}");
    let response = assert_refused(&mut h, &padded_server_head(8 * 1024 + 1), 431);
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");
    assert_refused(&mut h, &padded_server_head(20_000), 431);

    // A head that never ends is refused once it passes the limit.
    let mut client = h.connect();
    let mut endless = b"GET /v1/server HTTP/1.1\r\n".to_vec();
    while endless.len() <= 9 * 1024 {
        endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    client.send_raw(&mut h, &endless);
    let (status, _) = client.response(&mut h);
    assert_eq!(status, 431);
    client.wait_eof(&mut h);
    assert_eq!(h.stats().binaries, 1);
}

#[test]
fn the_head_limit_is_configurable() {
    let mut h = Harness::with_config(|c| c.max_header_size = 1024);
    let (status, _, _b) = h.request(&padded_server_head(1024));
    assert_eq!(status, 101);
    assert_refused(&mut h, &padded_server_head(1025), 431);
    // /healthz is bound by the same limit.
    let big_healthz = format!(
        "GET /healthz HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(1100)
    );
    assert_refused(&mut h, &big_healthz, 431);
}

#[test]
fn a_head_not_complete_within_the_handshake_timeout_gets_408() {
    let mut h = Harness::start();
    let request = upgrade_head("/v1/server", &binary_headers("srv-1"));
    let mut slow = h.connect();
    let mut silent = h.connect();
    // Dribbling bytes does not extend the deadline.
    slow.send_raw(&mut h, &request.as_bytes()[..10]);
    h.advance(Duration::from_secs(3));
    slow.send_raw(&mut h, &request.as_bytes()[10..20]);
    h.advance(Duration::from_millis(1999));
    assert_nothing_received(&mut h, &mut slow);
    assert_nothing_received(&mut h, &mut silent);

    h.advance(Duration::from_millis(1));
    for client in [&mut slow, &mut silent] {
        let (status, response) = client.response(&mut h);
        assert_eq!(status, 408, "{response}");
        assert_eq!(header_values(&response, "Content-Length"), vec!["0"]);
        assert_eq!(client.body_until_eof(&mut h), b"");
    }
    drop((slow, silent));
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn the_handshake_timeout_ends_at_the_101() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv-1");
    h.advance(Duration::from_secs(6));
    binary.expect_no_data(&mut h);
    let (mut phone, conn_id) = h.phone_with_id("srv-1", &mut binary);
    h.advance(Duration::from_secs(6));
    phone.send_text(&mut h, b"[1]");
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, b"[1]"));
}

#[test]
fn a_head_sent_one_byte_at_a_time_still_upgrades() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv-1");
    let request = head("GET", "/v1/client?x=1", &client_request("srv-1"));
    let mut phone = h.connect();
    for byte in request.as_bytes() {
        phone.send_raw(&mut h, std::slice::from_ref(byte));
    }
    let (status, response) = phone.response(&mut h);
    assert_eq!(status, 101, "{response}");
    assert_eq!(
        header_values(&response, "Sec-WebSocket-Accept"),
        vec![ACCEPT]
    );
    phone.send_text(&mut h, br#"{"n":1}"#);
    let wrapped: serde_json::Value = serde_json::from_slice(&binary.recv_text(&mut h)).unwrap();
    assert_eq!(wrapped["frame"], serde_json::json!({"n": 1}));
    assert_eq!(h.stats().phones, 1);
}

#[test]
fn frames_sent_with_the_head_in_one_write_are_not_lost() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv-1");
    let mut bytes = head("GET", "/v1/client", &client_request("srv-1")).into_bytes();
    bytes.extend_from_slice(&masked_frame(0x1, true, br#"{"first":1}"#));
    bytes.extend_from_slice(&masked_frame(0x1, true, br#"{"second":2}"#));
    let third = masked_frame(0x1, true, br#"{"third":3}"#);
    bytes.extend_from_slice(&third[..5]);
    let mut phone = h.connect();
    phone.send_raw(&mut h, &bytes);
    let (status, response) = phone.response(&mut h);
    assert_eq!(status, 101, "{response}");

    let first = binary.recv_text(&mut h);
    let value: serde_json::Value = serde_json::from_slice(&first).unwrap();
    let conn_id = value["conn_id"].as_str().unwrap().to_string();
    assert_eq!(first, envelope(&conn_id, br#"{"first":1}"#));
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, br#"{"second":2}"#)
    );
    phone.send_raw(&mut h, &third[5..]);
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, br#"{"third":3}"#)
    );

    // The binary side too: a ping in the same write as the head is answered.
    let mut bytes = upgrade_head("/v1/server", &binary_headers("srv-2")).into_bytes();
    bytes.extend_from_slice(&masked_frame(0x9, true, b"early"));
    let mut second = h.connect();
    second.send_raw(&mut h, &bytes);
    let (status, _) = second.response(&mut h);
    assert_eq!(status, 101);
    assert_eq!(second.recv(&mut h), Msg::Pong(b"early".to_vec()));
}

#[test]
fn bytes_that_are_not_http_get_400() {
    let mut h = Harness::start();
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..],
        b"\x00\x01\x02\x03\r\n\r\n",
        b"hello there, relay\r\n\r\n",
        b"GET /v1/server HTTP/9.9\r\n\r\n",
        b"GET /v1/server HTTP/1.1\r\nno colon here\r\n\r\n",
    ] {
        let mut client = h.connect();
        client.send_raw(&mut h, garbage);
        let (status, response) = client.response(&mut h);
        assert_eq!(
            status,
            400,
            "{:?}: {response}",
            String::from_utf8_lossy(garbage)
        );
        assert_eq!(client.body_until_eof(&mut h), b"");
    }
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn the_rate_limit_refills_on_time_when_polled_every_second() {
    let mut h = Harness::with_config(|c| {
        c.rate_limit_burst = 1;
        c.rate_limit_interval = Duration::from_secs(6);
    });
    let _b1 = h.binary("srv-1");
    // A client retrying every second is refused for five seconds ...
    for _ in 0..5 {
        h.advance(Duration::from_secs(1));
        refuse_binary(&mut h, "srv-2", 429);
    }
    // ... and let in once the interval has passed.
    h.advance(Duration::from_secs(1));
    let _b2 = h.binary("srv-2");
}

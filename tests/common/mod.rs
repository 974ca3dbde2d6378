//! What the suites share: the public test fixture
//! (`pyrycode_relay::fixture`, `docs/TESTING.md`) under the names the
//! suites grew up with, and the few helpers only they need. The relay, its
//! manual clock, the clients, the waits and the wire helpers are the
//! fixture's; nothing here repeats them.
//!
//! - this file: the names ([`Harness`] is the fixture's `TestRelay`,
//!   [`Msg`] its `Frame`), the close codes the suites assert, and queries
//!   of the relay (`/healthz`, metrics);
//! - `scenarios.rs`: the small scenarios many suites share (a binary and
//!   its phones, one exchange each way, pings answered, closes expected);
//! - `logs.rs`: the relay's log lines, captured per test.
//!
//! The tests that run the real executable use `tests/support/process.rs`
//! instead (and `tests/support/blocking.rs` for their clients).
#![allow(dead_code, unused_imports)]

use std::str::FromStr;
use std::time::Duration;

#[path = "../support/stream.rs"]
pub mod stream;

mod logs;
mod scenarios;

pub use logs::{capture_logs, take_logs};
pub use scenarios::*;

/// A frame the relay sent.
pub use pyrycode_relay::fixture::Frame as Msg;
/// The relay under test: the fixture's relay, its clock and its clients'
/// waits.
pub use pyrycode_relay::fixture::TestRelay as Harness;
pub use pyrycode_relay::fixture::{
    binary_headers, close_directive, close_notice, conn_id_of, envelope, masked_frame,
    phone_headers, upgrade_head, Client, FrameReader,
};

/// `n` seconds.
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `n` milliseconds.
pub fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The closes the relay starts, as `(code, reason)` (SPEC §8).
pub const HEARTBEAT_TIMEOUT: (u16, &str) = (1011, "heartbeat timeout");
pub const MESSAGE_TIMEOUT: (u16, &str) = (1008, "message timeout");
pub const BACKLOG_FULL: (u16, &str) = (1011, "phone backlog full");
pub const SHUTTING_DOWN: (u16, &str) = (1001, "shutting down");
pub const NO_SERVER: (u16, &str) = (4404, "no server with that id");
pub const BINARY_GONE: (u16, &str) = (4404, "binary gone");
pub const RECLAIMED: (u16, &str) = (4404, "binary reclaimed server-id");
pub const ALREADY_CLAIMED: (u16, &str) = (4409, "server-id already claimed");
pub const TOO_MANY_PHONES: (u16, &str) = (4429, "too many phones for server-id");

/// The value of the one series named exactly `series` (e.g.
/// `pyrycode_relay_push_wakes_total{outcome="dropped"}`) in a metrics
/// exposition.
#[track_caller]
pub fn sample<T: FromStr>(text: &str, series: &str) -> T {
    let values: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .collect();
    assert_eq!(values.len(), 1, "not one {series} in:\n{text}");
    match values[0].parse() {
        Ok(value) => value,
        Err(_) => panic!(
            "{series} is not a {}: {}",
            std::any::type_name::<T>(),
            values[0]
        ),
    }
}

/// What the suites ask the relay besides the fixture's queries.
pub trait HarnessExt {
    /// The binaries and phones the relay counts, after a settle.
    fn peers(&mut self) -> (usize, usize);
    /// The value of one counter or gauge of `/metrics` (see [`sample`]).
    fn metric(&self, series: &str) -> u64;
    /// Messages the relay has forwarded from phones to binaries.
    fn forwarded_phone_to_binary(&self) -> u64;
    /// `/healthz`, asserting the 200: the body as text and as JSON.
    fn healthz(&mut self) -> (String, serde_json::Value);
    /// The binaries and phones `/healthz` counts.
    fn counts(&mut self) -> (u64, u64);
}

impl HarnessExt for Harness {
    fn peers(&mut self) -> (usize, usize) {
        let stats = self.stats();
        (stats.binaries, stats.phones)
    }

    #[track_caller]
    fn metric(&self, series: &str) -> u64 {
        sample(&self.relay().metrics_text(), series)
    }

    fn forwarded_phone_to_binary(&self) -> u64 {
        self.metric(r#"pyrycode_relay_frames_forwarded_total{direction="phone_to_binary"}"#)
    }

    #[track_caller]
    fn healthz(&mut self) -> (String, serde_json::Value) {
        let (status, response, mut client) =
            self.request("GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n");
        assert_eq!(status, 200, "{response}");
        let body = String::from_utf8(client.body_until_eof(self)).expect("healthz body is UTF-8");
        let value = serde_json::from_str(&body).expect("healthz body is JSON");
        (body, value)
    }

    fn counts(&mut self) -> (u64, u64) {
        let (_, value) = self.healthz();
        (
            value["connected_binaries"].as_u64().unwrap(),
            value["connected_phones"].as_u64().unwrap(),
        )
    }
}

/// The closes the suites expect, by `(code, reason)` constant.
pub trait ClientExt {
    /// [`Client::expect_closed_by_relay`], asserting the code and reason
    /// (one of the `(code, reason)` constants, e.g. [`BINARY_GONE`]).
    fn expect_closed(&mut self, h: &mut Harness, close: (u16, &str));
    /// Waits for a close frame (skipping pings) and asserts its code and
    /// reason; the handshake is left to the test.
    fn expect_close_frame(&mut self, h: &mut Harness, close: (u16, &str));
    /// Answers a close already received with a close of `code` and waits
    /// for the relay's FIN; returns whether the echo could be written (the
    /// relay may have hung up already).
    fn echo_close(&mut self, h: &mut Harness, code: u16) -> bool;
}

impl ClientExt for Client {
    #[track_caller]
    fn expect_closed(&mut self, h: &mut Harness, (code, reason): (u16, &str)) {
        let (got, why) = self.expect_closed_by_relay(h);
        assert_eq!((got, why.as_str()), (Some(code), reason), "{}", self.name());
    }

    #[track_caller]
    fn expect_close_frame(&mut self, h: &mut Harness, (code, reason): (u16, &str)) {
        let (got, why) = self.recv_close(h);
        assert_eq!((got, why.as_str()), (Some(code), reason), "{}", self.name());
    }

    #[track_caller]
    fn echo_close(&mut self, h: &mut Harness, code: u16) -> bool {
        let echo = masked_frame(0x8, true, &code.to_be_bytes());
        let written = self.write_some(&echo) == echo.len();
        self.wait_eof(h);
        written
    }
}

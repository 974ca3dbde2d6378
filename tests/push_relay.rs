//! Push wakes through the relay loop (SPEC §5.3): a binary's `push_wake`
//! reaches the fake FCM endpoint and its outcome comes back through the
//! workers' waker to the relay's metrics; a stalled FCM endpoint never
//! delays the frames the loop forwards meanwhile; a refused wake is
//! dropped and the binary stays up.
//!
//! The relay runs in-process with a manual clock (`tests/common`); the fake
//! OAuth and FCM endpoints are threads on loopback (`tests/fake_http`).

mod common;
mod fake_http;

use std::time::Duration;

use common::*;
use fake_http::google::{fcm_ok, key_json, oauth_server, PRIVATE_KEY};
use fake_http::{FakeServer, Reply, Stall};
use pyrycode_relay::push::{Push, PushConfig, ServiceAccountKey};

/// A relay whose push goes to `oauth` and `fcm`.
fn relay_with_push(oauth: &FakeServer, fcm: &FakeServer) -> Harness {
    let mut h = Harness::start();
    let key = key_json(PRIVATE_KEY, &oauth.url("/token"));
    let key = ServiceAccountKey::from_json(key.as_bytes()).unwrap();
    let config = PushConfig::new(key, None, &fcm.url("")).unwrap();
    h.relay_mut()
        .enable_push(Push::new(config).unwrap())
        .unwrap();
    h
}

fn push_wake(token: &str) -> Vec<u8> {
    format!(r#"{{"push_wake":{{"platform":"fcm","token":"{token}"}}}}"#).into_bytes()
}

/// The value of one series in the relay's metrics.
fn metric(h: &Harness, series: &str) -> String {
    let text = h.relay().metrics_text();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in the metrics"))
        .to_string()
}

/// Turns the loop (the outcome arrives from a worker thread, in real
/// time) until `series` reads `value`.
fn wait_for_metric(h: &mut Harness, series: &str, value: &str) {
    for _ in 0..20_000 {
        if metric(h, series) == value {
            return;
        }
        h.turn_waiting(Duration::from_millis(1));
    }
    panic!("{series} never became {value}: {}", metric(h, series));
}

const SENT: &str = "pyrycode_relay_push_wakes_total{outcome=\"sent\"}";
const SEND_FAILED: &str = "pyrycode_relay_push_wakes_total{outcome=\"send_failed\"}";
const DROPPED: &str = "pyrycode_relay_push_wakes_total{outcome=\"dropped\"}";

#[test]
fn a_wake_is_sent_and_its_outcome_counted() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut h = relay_with_push(&oauth, &fcm);
    let mut binary = h.binary("srv");
    binary.send_text(&mut h, &push_wake("devtok-1"));
    let request = fcm.next_request();
    assert!(request.body_str().contains("\"token\":\"devtok-1\""));
    wait_for_metric(&mut h, SENT, "1");
    assert_eq!(metric(&h, DROPPED), "0");
    binary.expect_no_data(&mut h);
}

#[test]
fn a_stalled_fcm_endpoint_never_delays_forwarding() {
    let stall = Stall::default();
    let held = stall.clone();
    let oauth = oauth_server(3600);
    let fcm = FakeServer::start(move |_| Reply::Stall(held.clone()));
    let mut h = relay_with_push(&oauth, &fcm);
    let mut binary = h.binary("srv");
    let (mut phone, conn_id) = h.phone_with_id("srv", &mut binary);

    binary.send_text(&mut h, &push_wake("devtok-stalled"));
    // A worker is now inside the FCM call, which does not answer.
    let _stalled = fcm.next_request();
    for i in 0..50 {
        let up = format!(r#"{{"n":{i}}}"#);
        phone.send_text(&mut h, up.as_bytes());
        assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, up.as_bytes()));
        let down = format!(r#"{{"m":{i}}}"#);
        binary.send_text(&mut h, &envelope(&conn_id, down.as_bytes()));
        assert_eq!(phone.recv_text(&mut h), down.into_bytes());
    }
    assert_eq!(metric(&h, SEND_FAILED), "0", "no outcome while FCM stalls");

    stall.release();
    wait_for_metric(&mut h, SEND_FAILED, "1");
    phone.expect_no_data(&mut h);
}

#[test]
fn wakes_past_the_burst_are_dropped_and_the_binary_stays_up() {
    let (oauth, fcm) = (oauth_server(3600), fcm_ok());
    let mut h = relay_with_push(&oauth, &fcm);
    let mut binary = h.binary("srv");
    for n in 0..8 {
        binary.send_text(&mut h, &push_wake(&format!("devtok-{n}")));
    }
    // A burst of 6 per server-id: two of eight are dropped at once.
    assert_eq!(metric(&h, DROPPED), "2");
    wait_for_metric(&mut h, SENT, "6");
    // Ten seconds later the bucket has one wake again.
    h.advance(Duration::from_secs(10));
    binary.send_text(&mut h, &push_wake("devtok-later"));
    wait_for_metric(&mut h, SENT, "7");
    let (mut phone, conn_id) = h.phone_with_id("srv", &mut binary);
    binary.send_text(&mut h, &envelope(&conn_id, b"{}"));
    assert_eq!(phone.recv_text(&mut h), b"{}".to_vec());
}

#[test]
fn without_push_a_wake_is_dropped_with_a_warning() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv");
    binary.send_text(&mut h, &push_wake("devtok-1"));
    h.settle();
    assert_eq!(metric(&h, DROPPED), "1");
    binary.expect_no_data(&mut h);
}

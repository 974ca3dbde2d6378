//! Graceful shutdown (SPEC §9), in-process: stop accepting, deliver what is
//! queued, close every WebSocket 1001 "shutting down", finish once the
//! close handshakes are done, and drop whoever stays silent at the drain
//! deadline.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const SID: &str = "shutdown-srv";
const SHUTTING_DOWN: (Option<u16>, &str) = (Some(1001), "shutting down");

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Asserts a close code and reason are 1001 "shutting down".
fn closed_with(close: (Option<u16>, String)) {
    assert_eq!(
        (close.0, close.1.as_str()),
        SHUTTING_DOWN,
        "expected close 1001 \"shutting down\""
    );
}

/// The next frame that is not a ping, which must be the shutdown close.
fn expect_shutdown_close(h: &mut Harness, client: &mut Client) {
    match client.recv_data(h) {
        Msg::Close(code, reason) => closed_with((code, reason)),
        other => panic!("expected the shutdown close first, got {other:?}"),
    }
}

/// Waits (without moving relay time) until `done` holds.
fn eventually(h: &mut Harness, what: &str, mut done: impl FnMut(&mut Harness) -> bool) {
    for _ in 0..20_000 {
        if done(h) {
            return;
        }
        h.turn(Duration::from_millis(1));
    }
    panic!("never happened: {what}");
}

fn finished(h: &mut Harness) -> bool {
    h.settle();
    h.relay.is_finished()
}

/// Answers a close already received and waits for the relay's FIN.
fn echo_close(h: &mut Harness, client: &mut Client) {
    client
        .stream
        .write_all(&masked_frame(0x8, true, &1001u16.to_be_bytes()))
        .unwrap();
    client.wait_eof(h);
}

#[test]
fn every_websocket_is_closed_1001_and_the_relay_finishes_when_closes_are_echoed() {
    let mut h = Harness::new();
    let mut binary = h.binary(SID);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);
    let (mut phone2, _) = h.phone_with_id(SID, &mut binary);
    let mut other_binary = h.binary("other-srv");
    assert_eq!(h.stats().connections, 4);
    assert!(!h.relay.is_finished());

    h.relay.shutdown();
    h.settle();
    assert!(!h.relay.is_finished(), "finished before the handshakes");

    // The binary's next frame is the close itself: no close notices for
    // phones that go because the relay does.
    expect_shutdown_close(&mut h, &mut binary);
    for client in [&mut phone, &mut phone2, &mut other_binary] {
        closed_with(client.expect_closed_by_relay(&mut h));
    }
    assert!(!h.relay.is_finished(), "the binary has not answered yet");
    echo_close(&mut h, &mut binary);

    // Each socket got its FIN after the close; once the clients hang up
    // the relay holds nothing and is done.
    drop((binary, phone, phone2, other_binary));
    eventually(&mut h, "all connections gone", |h| {
        h.stats().connections == 0
    });
    assert!(h.relay.is_finished());
}

#[test]
fn phones_closed_by_shutdown_send_their_binary_no_close_notice() {
    let mut h = Harness::new();
    // Arrange for the phone to sit before its binary in the relay's table
    // (a slot freed by a connection that left), so that it is closed
    // while its binary is still registered.
    let filler = h.connect();
    let mut binary = h.binary(SID);
    drop(filler);
    eventually(&mut h, "the filler gone", |h| h.stats().connections == 1);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);

    h.relay.shutdown();
    expect_shutdown_close(&mut h, &mut binary);
    expect_shutdown_close(&mut h, &mut phone);
}

#[test]
fn a_relay_with_no_connections_finishes_at_once() {
    let mut h = Harness::new();
    h.settle();
    assert!(!h.relay.is_finished(), "an idle relay is not finished");
    h.relay.shutdown();
    assert!(h.relay.is_finished());
    // A second shutdown is harmless.
    h.relay.shutdown();
    h.settle();
    assert!(h.relay.is_finished());
}

#[test]
fn new_connections_are_refused_after_shutdown() {
    let mut h = Harness::new();
    let mut binary = h.binary(SID);
    h.relay.shutdown();
    h.settle();

    match TcpStream::connect(h.addr) {
        Err(err) => assert_eq!(err.kind(), ErrorKind::ConnectionRefused),
        Ok(mut stream) => {
            // Connected to nothing that answers: no response, ever.
            stream.set_nonblocking(true).unwrap();
            let _ =
                stream.write_all(upgrade_head("/v1/server", &binary_headers("late")).as_bytes());
            h.settle();
            h.advance(secs(1));
            let mut buf = [0u8; 64];
            match stream.read(&mut buf) {
                Ok(n) => assert_eq!(n, 0, "the relay answered after shutdown"),
                Err(err) => assert_ne!(err.kind(), ErrorKind::WouldBlock, "connection still held"),
            }
        }
    }
    // The existing connection is closing, not refused.
    closed_with(binary.expect_closed_by_relay(&mut h));
}

#[test]
fn a_connection_still_sending_its_request_head_is_dropped_at_once() {
    let mut h = Harness::new();
    let mut client = h.connect();
    client.send_raw(&mut h, b"GET /v1/server HTTP/1.1\r\nHost: relay.test\r\n");
    assert_eq!(h.stats().connections, 1);
    h.relay.shutdown();
    assert!(client.body_until_eof(&mut h).is_empty(), "no response");
    assert_eq!(h.stats().connections, 0);
    assert!(h.relay.is_finished());
}

#[test]
fn a_message_routed_just_before_shutdown_arrives_before_the_close() {
    let mut h = Harness::new();
    let mut binary = h.binary(SID);
    let (mut phone, conn_id) = h.phone_with_id(SID, &mut binary);

    binary.send_text(&mut h, &envelope(&conn_id, br#"{"last":"words"}"#));
    phone.send_text(&mut h, br#"{"me":"too"}"#);
    binary.wait_delivered(&mut h);
    phone.wait_delivered(&mut h);
    h.relay.shutdown();

    assert_eq!(
        phone.recv_data(&mut h),
        Msg::Text(br#"{"last":"words"}"#.to_vec())
    );
    closed_with(phone.expect_closed_by_relay(&mut h));
    assert_eq!(
        binary.recv_data(&mut h),
        Msg::Text(envelope(&conn_id, br#"{"me":"too"}"#))
    );
    closed_with(binary.expect_closed_by_relay(&mut h));
}

/// A JSON string frame of about `len` bytes, tagged with `i`.
fn big_frame(i: usize, len: usize) -> Vec<u8> {
    let mut frame = format!("\"{i:06}:").into_bytes();
    frame.resize(len - 1, b'x');
    frame.push(b'"');
    frame
}

#[test]
fn output_queued_behind_a_slow_phone_is_all_delivered_before_the_close() {
    let mut h = Harness::with_config(|c| c.phone_backlog = 64 << 20);
    let mut binary = h.binary(SID);
    let (mut phone, conn_id) = h.phone_with_id(SID, &mut binary);

    // The phone does not read: the relay ends up holding output for it.
    let mut frames = Vec::new();
    let mut extra = 0;
    while extra < 4 {
        let frame = big_frame(frames.len(), 200 * 1024);
        binary.send_text(&mut h, &envelope(&conn_id, &frame));
        frames.push(frame);
        if h.stats().connections_with_buffers > 0 {
            extra += 1;
        }
        assert!(frames.len() < 320, "the phone's socket never filled up");
    }
    let last = br#"{"queued":"just before shutdown"}"#.to_vec();
    binary.send_text(&mut h, &envelope(&conn_id, &last));
    frames.push(last);
    binary.wait_delivered(&mut h);
    assert_eq!(h.stats().connections_with_buffers, 1, "output is queued");

    h.relay.shutdown();
    closed_with(binary.expect_closed_by_relay(&mut h));

    // Everything queued comes first, in order, then the close.
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(phone.recv_text(&mut h), *frame, "frame {i}");
    }
    closed_with(phone.expect_closed_by_relay(&mut h));
    drop((binary, phone));
    eventually(&mut h, "finished", finished);
}

#[test]
fn silent_connections_are_dropped_at_the_drain_deadline() {
    // A long close-handshake wait, so that only the drain deadline acts.
    let mut h = Harness::with_config(|c| c.write_timeout = secs(60));
    let mut binary = h.binary(SID);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);

    h.relay.shutdown();
    // The phone answers, the binary stays silent.
    closed_with(phone.expect_closed_by_relay(&mut h));
    drop(phone);
    expect_shutdown_close(&mut h, &mut binary);
    eventually(&mut h, "the phone gone", |h| h.stats().connections == 1);

    h.advance(secs(9));
    h.advance(millis(990));
    assert!(
        !binary.is_closed(&mut h),
        "dropped before the drain deadline"
    );
    assert!(!h.relay.is_finished());
    assert_eq!(h.stats().connections, 1);

    h.advance(millis(10));
    assert_eq!(h.stats().connections, 0);
    assert!(h.relay.is_finished());
    eventually(&mut h, "dropped at the drain deadline", |h| {
        binary.is_closed(h)
    });
}

#[test]
fn with_default_timeouts_silent_connections_are_gone_after_10s() {
    let mut h = Harness::new();
    let mut binary = h.binary(SID);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);
    h.relay.shutdown();
    expect_shutdown_close(&mut h, &mut binary);
    expect_shutdown_close(&mut h, &mut phone);

    h.advance(secs(9));
    assert!(!h.relay.is_finished());
    assert!(!binary.is_closed(&mut h));
    assert!(!phone.is_closed(&mut h));
    h.advance(secs(1));
    assert!(h.relay.is_finished());
    eventually(&mut h, "binary dropped", |h| binary.is_closed(h));
    eventually(&mut h, "phone dropped", |h| phone.is_closed(h));
}

#[test]
fn a_drain_shorter_than_the_close_wait_still_ends_everything() {
    let mut h = Harness::with_config(|c| c.drain_timeout = secs(3));
    let mut binary = h.binary(SID);
    h.relay.shutdown();
    expect_shutdown_close(&mut h, &mut binary);
    h.advance(millis(2990));
    assert!(!h.relay.is_finished());
    h.advance(millis(10));
    assert!(h.relay.is_finished());
    eventually(&mut h, "binary dropped", |h| binary.is_closed(h));
}

#[test]
fn phones_of_a_binary_in_grace_are_closed_1001_too() {
    let mut h = Harness::new();
    let mut binary = h.binary(SID);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);
    binary.hang_up(&mut h);
    assert_eq!(h.stats().binaries, 0);
    h.advance(secs(5));

    h.relay.shutdown();
    closed_with(phone.expect_closed_by_relay(&mut h));
    drop(phone);
    eventually(&mut h, "finished", finished);
}

#[test]
fn messages_arriving_after_the_shutdown_close_are_not_forwarded() {
    let mut h = Harness::new();
    let mut binary = h.binary(SID);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);
    h.relay.shutdown();
    expect_shutdown_close(&mut h, &mut phone);
    // The phone had not seen the close yet when it sent this.
    phone.send_text(&mut h, br#"{"too":"late"}"#);
    // The binary's next frame is its close, not an envelope.
    closed_with(binary.expect_closed_by_relay(&mut h));
    echo_close(&mut h, &mut phone);
    drop((binary, phone));
    eventually(&mut h, "finished", finished);
}

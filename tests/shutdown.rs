//! Graceful shutdown (SPEC §9), in-process: stop accepting, deliver what is
//! queued, close every WebSocket 1001 "shutting down", finish once the
//! close handshakes are done, and drop whoever stays silent at the drain
//! deadline.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;

use common::*;

const SID: &str = "shutdown-srv";

fn finished(h: &mut Harness) -> bool {
    h.settle();
    h.relay().is_finished()
}

#[test]
fn every_websocket_is_closed_1001_and_the_relay_finishes_when_closes_are_echoed() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair(SID);
    let (mut phone2, _) = h.phone_with_id(SID, &mut binary);
    let mut other_binary = h.binary("other-srv");
    assert_eq!(h.stats().connections, 4);
    assert!(!h.relay().is_finished());

    h.relay_mut().shutdown();
    h.settle();
    assert!(!h.relay().is_finished(), "finished before the handshakes");

    // The binary's next frame is the close itself: no close notices for
    // phones that go because the relay does.
    binary.expect_close_frame(&mut h, SHUTTING_DOWN);
    for client in [&mut phone, &mut phone2, &mut other_binary] {
        client.expect_closed(&mut h, SHUTTING_DOWN);
    }
    assert!(!h.relay().is_finished(), "the binary has not answered yet");
    assert!(binary.echo_close(&mut h, 1001), "the echo was written");

    // Each socket got its FIN after the close; once the clients hang up
    // the relay holds nothing and is done.
    drop((binary, phone, phone2, other_binary));
    h.eventually("all connections gone", |h| h.stats().connections == 0);
    assert!(h.relay().is_finished());
}

#[test]
fn phones_closed_by_shutdown_send_their_binary_no_close_notice() {
    let mut h = Harness::start();
    // Arrange for the phone to sit before its binary in the relay's table
    // (a slot freed by a connection that left), so that it is closed
    // while its binary is still registered.
    let filler = h.connect();
    let mut binary = h.binary(SID);
    drop(filler);
    h.eventually("the filler gone", |h| h.stats().connections == 1);
    let (mut phone, _) = h.phone_with_id(SID, &mut binary);

    h.relay_mut().shutdown();
    binary.expect_close_frame(&mut h, SHUTTING_DOWN);
    phone.expect_close_frame(&mut h, SHUTTING_DOWN);
}

#[test]
fn a_relay_with_no_connections_finishes_at_once() {
    let mut h = Harness::start();
    h.settle();
    assert!(!h.relay().is_finished(), "an idle relay is not finished");
    h.relay_mut().shutdown();
    assert!(h.relay().is_finished());
    // A second shutdown is harmless.
    h.relay_mut().shutdown();
    h.settle();
    assert!(h.relay().is_finished());
}

#[test]
fn new_connections_are_refused_after_shutdown() {
    let mut h = Harness::start();
    let mut binary = h.binary(SID);
    h.relay_mut().shutdown();
    h.settle();

    match TcpStream::connect(h.addr()) {
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
    binary.expect_closed(&mut h, SHUTTING_DOWN);
}

#[test]
fn a_connection_still_sending_its_request_head_is_dropped_at_once() {
    let mut h = Harness::start();
    let mut client = h.connect();
    client.send_raw(&mut h, b"GET /v1/server HTTP/1.1\r\nHost: relay.test\r\n");
    assert_eq!(h.stats().connections, 1);
    h.relay_mut().shutdown();
    assert!(client.body_until_eof(&mut h).is_empty(), "no response");
    assert_eq!(h.stats().connections, 0);
    assert!(h.relay().is_finished());
}

#[test]
fn a_message_routed_just_before_shutdown_arrives_before_the_close() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    binary.send_text(&mut h, &envelope(&conn_id, br#"{"last":"words"}"#));
    phone.send_text(&mut h, br#"{"me":"too"}"#);
    binary.wait_delivered(&mut h);
    phone.wait_delivered(&mut h);
    h.relay_mut().shutdown();

    assert_eq!(
        phone.recv_data(&mut h),
        Msg::Text(br#"{"last":"words"}"#.to_vec())
    );
    phone.expect_closed(&mut h, SHUTTING_DOWN);
    assert_eq!(
        binary.recv_data(&mut h),
        Msg::Text(envelope(&conn_id, br#"{"me":"too"}"#))
    );
    binary.expect_closed(&mut h, SHUTTING_DOWN);
}

#[test]
fn output_queued_behind_a_slow_phone_is_all_delivered_before_the_close() {
    let mut h = Harness::with_config(|c| c.phone_backlog = 64 << 20);
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    // The phone does not read: the relay ends up holding output for it.
    let mut frames = fill_phone_output(&mut h, &mut binary, &conn_id, 4);
    let last = br#"{"queued":"just before shutdown"}"#.to_vec();
    binary.send_text(&mut h, &envelope(&conn_id, &last));
    frames.push(last);
    binary.wait_delivered(&mut h);
    assert_eq!(h.stats().connections_with_buffers, 1, "output is queued");

    h.relay_mut().shutdown();
    binary.expect_closed(&mut h, SHUTTING_DOWN);

    // Everything queued comes first, in order, then the close.
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(phone.recv_text(&mut h), *frame, "frame {i}");
    }
    phone.expect_closed(&mut h, SHUTTING_DOWN);
    drop((binary, phone));
    h.eventually("finished", finished);
}

#[test]
fn silent_connections_are_dropped_at_the_drain_deadline() {
    // A long close-handshake wait, so that only the drain deadline acts.
    let mut h = Harness::with_config(|c| c.write_timeout = secs(60));
    let (mut binary, mut phone, _) = h.pair(SID);

    h.relay_mut().shutdown();
    // The phone answers, the binary stays silent.
    phone.expect_closed(&mut h, SHUTTING_DOWN);
    drop(phone);
    binary.expect_close_frame(&mut h, SHUTTING_DOWN);
    h.eventually("the phone gone", |h| h.stats().connections == 1);

    h.advance(secs(9));
    h.advance(millis(990));
    assert!(
        !binary.is_closed(&mut h),
        "dropped before the drain deadline"
    );
    assert!(!h.relay().is_finished());
    assert_eq!(h.stats().connections, 1);

    h.advance(millis(10));
    assert_eq!(h.stats().connections, 0);
    assert!(h.relay().is_finished());
    h.eventually("dropped at the drain deadline", |h| binary.is_closed(h));
}

#[test]
fn with_default_timeouts_silent_connections_are_gone_after_10s() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair(SID);
    h.relay_mut().shutdown();
    binary.expect_close_frame(&mut h, SHUTTING_DOWN);
    phone.expect_close_frame(&mut h, SHUTTING_DOWN);

    h.advance(secs(9));
    assert!(!h.relay().is_finished());
    assert!(!binary.is_closed(&mut h));
    assert!(!phone.is_closed(&mut h));
    h.advance(secs(1));
    assert!(h.relay().is_finished());
    h.eventually("binary dropped", |h| binary.is_closed(h));
    h.eventually("phone dropped", |h| phone.is_closed(h));
}

#[test]
fn a_drain_shorter_than_the_close_wait_still_ends_everything() {
    let mut h = Harness::with_config(|c| c.drain_timeout = secs(3));
    let mut binary = h.binary(SID);
    h.relay_mut().shutdown();
    binary.expect_close_frame(&mut h, SHUTTING_DOWN);
    h.advance(millis(2990));
    assert!(!h.relay().is_finished());
    h.advance(millis(10));
    assert!(h.relay().is_finished());
    h.eventually("binary dropped", |h| binary.is_closed(h));
}

#[test]
fn phones_of_a_binary_in_grace_are_closed_1001_too() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair(SID);
    binary.hang_up(&mut h);
    assert_eq!(h.stats().binaries, 0);
    h.advance(secs(5));

    h.relay_mut().shutdown();
    phone.expect_closed(&mut h, SHUTTING_DOWN);
    drop(phone);
    h.eventually("finished", finished);
}

#[test]
fn messages_arriving_after_the_shutdown_close_are_not_forwarded() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair(SID);
    h.relay_mut().shutdown();
    phone.expect_close_frame(&mut h, SHUTTING_DOWN);
    // The phone had not seen the close yet when it sent this.
    phone.send_text(&mut h, br#"{"too":"late"}"#);
    // The binary's next frame is its close, not an envelope.
    binary.expect_closed(&mut h, SHUTTING_DOWN);
    assert!(phone.echo_close(&mut h, 1001), "the echo was written");
    drop((binary, phone));
    h.eventually("finished", finished);
}

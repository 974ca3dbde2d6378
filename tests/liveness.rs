//! Liveness (SPEC §2, §6): pings and pong deadlines, answering the peer's
//! pings, the message deadline against slow dribbling, unbounded idle
//! time, stalled output, the close-handshake wait and the handshake
//! timeout. Every deadline is checked just before it (nothing happens)
//! and at it (the exact close code and reason).

mod common;

use std::time::Duration;

use common::*;

const SID: &str = "liveness-srv";

/// Asserts that nothing at all arrived (not even a ping) and the
/// connection is open.
fn assert_silent(h: &mut Harness, client: &mut Client) {
    client.wait_received(h);
    assert_eq!(client.try_recv(h), None, "no frame expected yet");
    assert!(!client.is_closed(h), "connection unexpectedly closed");
}

/// Asserts that nothing but pings arrived and the connection is open;
/// returns how many pings there were.
fn assert_open(h: &mut Harness, client: &mut Client) -> usize {
    client.wait_received(h);
    let mut pings = 0;
    while let Some(msg) = client.try_recv(h) {
        match msg {
            Msg::Ping(payload) => {
                assert!(payload.is_empty(), "relay pings carry no payload");
                pings += 1;
            }
            other => panic!("connection should still be open, got {other:?}"),
        }
    }
    assert!(!client.is_closed(h), "connection unexpectedly closed");
    pings
}

/// Moves time on by `by`, then asserts `client` got nothing at all, with
/// `binary` (if any) answering its pings.
fn advance_silent(h: &mut Harness, by: Duration, client: &mut Client, binary: Option<&mut Client>) {
    h.advance(by);
    assert_silent(h, client);
    if let Some(binary) = binary {
        binary.answer_received_pings(h);
    }
}

/// Moves time on to 10 ms before a deadline (`left` before it), asserts
/// `client` is still open with `pings` pings, then to the deadline, where
/// the next data frame must be `close`.
fn closes_at_deadline(
    h: &mut Harness,
    client: &mut Client,
    left: Duration,
    pings: usize,
    close: (u16, &str),
) {
    h.advance(left - millis(10));
    assert_eq!(assert_open(h, client), pings, "pings before the deadline");
    h.advance(millis(10));
    client.expect_close_frame(h, close);
}

/// Sends raw bytes and waits until the relay has them, so that time
/// moved next is measured from their arrival.
fn send_now(h: &mut Harness, client: &mut Client, bytes: &[u8]) {
    client.send_raw(h, bytes);
    client.wait_delivered(h);
}

/// Moves time forward by `total` in steps of `step`; after each step the
/// `responsive` clients answer their pings. Returns the pings each got.
fn advance_answering(
    h: &mut Harness,
    total: Duration,
    step: Duration,
    responsive: &mut [&mut Client],
) -> Vec<usize> {
    let mut counts = vec![0; responsive.len()];
    let mut gone = Duration::ZERO;
    while gone < total {
        h.advance(step);
        gone += step;
        for (client, count) in responsive.iter_mut().zip(counts.iter_mut()) {
            *count += client.answer_received_pings(h);
        }
    }
    counts
}

/// The header of a masked client frame announcing `len` payload bytes,
/// with the fixed mask of [`masked_frame`], and the masked payload.
fn frame_prefix(opcode: u8, fin: bool, len: usize) -> (Vec<u8>, Vec<u8>) {
    let payload = vec![b'x'; len];
    let frame = masked_frame(opcode, fin, &payload);
    let header_len = frame.len() - len;
    (frame[..header_len].to_vec(), frame[header_len..].to_vec())
}

// ---------------------------------------------------------------------
// Pings and pong deadlines
// ---------------------------------------------------------------------

#[test]
fn a_silent_phone_is_pinged_at_30s_and_closed_1011_at_60s() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    advance_silent(&mut h, secs(29), &mut phone, None);
    advance_silent(&mut h, millis(990), &mut phone, None);
    h.advance(millis(10));
    assert_eq!(phone.recv(&mut h), Msg::Ping(Vec::new()), "ping at 30 s");
    binary.answer_received_pings(&mut h);

    advance_silent(&mut h, secs(29), &mut phone, Some(&mut binary));
    advance_silent(&mut h, millis(990), &mut phone, None);
    assert_eq!(h.stats().phones, 1);

    h.advance(millis(10));
    assert_eq!(
        phone.recv(&mut h),
        Msg::Close(Some(1011), "heartbeat timeout".into()),
        "closed at 60 s"
    );
    assert_eq!(h.stats().phones, 0);
    // The binary, which answered its pings, stays and learns about it.
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1011));
    assert_eq!(h.stats().binaries, 1);
}

#[test]
fn a_silent_binary_is_pinged_at_30s_and_closed_1011_at_60s() {
    let mut h = Harness::start();
    let mut binary = h.binary(SID);

    advance_silent(&mut h, secs(29), &mut binary, None);
    h.advance(secs(1));
    assert_eq!(binary.recv(&mut h), Msg::Ping(Vec::new()), "ping at 30 s");

    advance_silent(&mut h, secs(29), &mut binary, None);
    assert_eq!(h.stats().binaries, 1);
    h.advance(secs(1));
    binary.expect_closed(&mut h, HEARTBEAT_TIMEOUT);
    assert_eq!(h.stats().binaries, 0);
    binary.hang_up(&mut h);
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn peers_that_answer_every_ping_stay_up_for_ten_minutes() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    let pings = advance_answering(&mut h, secs(600), secs(5), &mut [&mut binary, &mut phone]);
    // One ping every 30 s, each with an empty payload.
    assert_eq!(pings, vec![20, 20]);
    assert_eq!(h.peers(), (1, 1));
    assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
}

#[test]
fn a_late_pong_still_counts_and_the_next_ping_gets_its_own_30s() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair(SID);

    h.advance(secs(30));
    assert_eq!(phone.recv(&mut h), Msg::Ping(Vec::new()));
    binary.answer_received_pings(&mut h);
    h.advance(secs(29));
    phone.send_pong(&mut h, b"");
    phone.wait_delivered(&mut h);
    binary.answer_received_pings(&mut h);

    // The pong at 59 s answered the ping of 30 s: no close at 60 s, but
    // the next ping.
    h.advance(secs(1));
    assert_eq!(phone.recv(&mut h), Msg::Ping(Vec::new()), "ping at 60 s");
    assert_open(&mut h, &mut phone);
    binary.answer_received_pings(&mut h);

    // That one goes unanswered: closed 30 s after it, not before.
    advance_silent(&mut h, secs(29), &mut phone, Some(&mut binary));
    h.advance(secs(1));
    phone.expect_close_frame(&mut h, HEARTBEAT_TIMEOUT);
}

#[test]
fn data_messages_are_not_pongs() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    // The phone chats every 10 s but never answers a ping.
    for second in (10..60).step_by(10) {
        h.advance(secs(10));
        binary.answer_received_pings(&mut h);
        let message = format!("{{\"t\":{second}}}").into_bytes();
        phone.send_text(&mut h, &message);
        assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &message));
    }
    assert_eq!(phone.recv(&mut h), Msg::Ping(Vec::new()));
    h.advance(secs(9));
    assert_open(&mut h, &mut phone);
    h.advance(secs(1));
    phone.expect_close_frame(&mut h, HEARTBEAT_TIMEOUT);
}

/// A phone of a binary that answers its pings is closed for its own
/// silence at 60 s; returns the three after the binary got the notice.
fn phone_closed_by_heartbeat(h: &mut Harness) -> (Client, Client, String) {
    let (mut binary, mut phone, conn_id) = h.pair(SID);
    h.advance(secs(30));
    binary.answer_received_pings(h);
    h.advance(secs(30));
    phone.expect_close_frame(h, HEARTBEAT_TIMEOUT);
    assert_eq!(binary.recv_text(h), close_notice(&conn_id, 1011));
    binary.answer_received_pings(h);
    assert_eq!(h.stats().phones, 0);
    (binary, phone, conn_id)
}

#[test]
fn a_relay_close_waits_for_the_peers_close_at_most_write_timeout() {
    let mut h = Harness::start();
    let (_binary, mut phone, _) = phone_closed_by_heartbeat(&mut h);

    // The phone never answers the close: the socket stays until the
    // close-handshake wait (write_timeout, 10 s) is over, then goes.
    h.advance(secs(9));
    assert!(!phone.is_closed(&mut h), "dropped before write_timeout");
    assert_eq!(h.stats().connections, 2);
    h.advance(millis(990));
    assert!(!phone.is_closed(&mut h), "dropped before write_timeout");
    h.advance(millis(10));
    h.eventually("dropped at write_timeout", |h| phone.is_closed(h));
    assert_eq!(h.stats().connections, 1);
}

#[test]
fn a_relay_close_that_is_answered_ends_the_socket_at_once() {
    let mut h = Harness::start();
    let (_binary, mut phone, _) = phone_closed_by_heartbeat(&mut h);
    // Echo the close and see EOF without any more relay time passing.
    assert!(phone.echo_close(&mut h, 1011), "the echo was written");
    phone.hang_up(&mut h);
    assert_eq!(h.stats().connections, 1);
}

// ---------------------------------------------------------------------
// The peer's pings
// ---------------------------------------------------------------------

#[test]
fn a_peers_ping_is_answered_with_a_pong_of_the_same_payload() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    let odd: Vec<u8> = (0..125u8).map(|i| i.wrapping_mul(37)).collect();
    for payload in [&b"phone-ping"[..], b"", &[0x00, 0xff, 0x80], &odd] {
        phone.send_ping(&mut h, payload);
        assert_eq!(phone.recv(&mut h), Msg::Pong(payload.to_vec()));
        binary.send_ping(&mut h, payload);
        assert_eq!(binary.recv(&mut h), Msg::Pong(payload.to_vec()));
    }
    // Pings are answered by the relay, never forwarded.
    assert_quiet(&mut h, [&mut binary, &mut phone]);
    phone.send_text(&mut h, b"{}");
    assert_eq!(binary.recv(&mut h), Msg::Text(envelope(&conn_id, b"{}")));
}

// ---------------------------------------------------------------------
// The message deadline
// ---------------------------------------------------------------------

#[test]
fn a_partial_frame_must_complete_within_30s_or_the_phone_is_closed_1008() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    h.advance(secs(5));
    let (header, payload) = frame_prefix(0x1, true, 1000);
    send_now(&mut h, &mut phone, &header);
    send_now(&mut h, &mut phone, &payload[..10]);

    h.advance(secs(25)); // 30 s: the ping, not answered, deadline 60 s
    binary.answer_received_pings(&mut h);
    h.advance(secs(4));
    binary.answer_received_pings(&mut h);
    // 35 s: 30 s after the frame began.
    closes_at_deadline(&mut h, &mut phone, secs(1), 1, MESSAGE_TIMEOUT);
    // Nothing of the partial message was forwarded.
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1008));
    assert_eq!(h.stats().phones, 0);
}

#[test]
fn slow_dribbling_does_not_extend_the_message_deadline() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair(SID);

    // One header byte, then a payload byte every 5 s: the message began
    // with the first byte, and progress does not buy more time.
    let (header, payload) = frame_prefix(0x1, true, 100);
    send_now(&mut h, &mut phone, &header[..1]);
    send_now(&mut h, &mut phone, &header[1..]);
    for i in 0..5 {
        h.advance(secs(5));
        send_now(&mut h, &mut phone, &payload[i..i + 1]);
    }
    h.advance(secs(4)); // 29 s
    send_now(&mut h, &mut phone, &payload[5..6]);
    assert_open(&mut h, &mut phone);
    binary.answer_received_pings(&mut h);
    h.advance(secs(1)); // 30 s
    phone.expect_close_frame(&mut h, MESSAGE_TIMEOUT);
}

#[test]
fn an_open_fragmented_message_must_complete_within_30s() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    h.advance(secs(10));
    // Complete frames, but the message stays open (no final fragment).
    phone.send_frame(&mut h, 0x1, false, b"[1,");
    phone.wait_delivered(&mut h);
    for _ in 0..5 {
        h.advance(secs(5));
        binary.answer_received_pings(&mut h);
        phone.send_frame(&mut h, 0x0, false, b"2,");
        phone.wait_delivered(&mut h);
    }
    h.advance(secs(4)); // 39 s
    binary.answer_received_pings(&mut h);
    // 40 s; the one ping is the one of 30 s.
    closes_at_deadline(&mut h, &mut phone, secs(1), 1, MESSAGE_TIMEOUT);
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1008));
}

#[test]
fn a_binary_dribbling_a_message_is_closed_1008_too() {
    let mut h = Harness::start();
    let mut binary = h.binary(SID);
    let (header, _) = frame_prefix(0x1, true, 300);
    send_now(&mut h, &mut binary, &header);
    h.advance(secs(29));
    assert_eq!(assert_open(&mut h, &mut binary), 0);
    // The ping of 30 s may come first: it was due at the same moment.
    closes_at_deadline(&mut h, &mut binary, secs(1), 0, MESSAGE_TIMEOUT);
    assert_eq!(h.stats().binaries, 0);
}

#[test]
fn a_message_completed_in_time_is_forwarded_and_the_next_one_gets_a_fresh_30s() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    let inner = br#"{"slow":"but in time"}"#;
    let frame = masked_frame(0x1, true, inner);
    let complete_just_in_time = |h: &mut Harness, phone: &mut Client, binary: &mut Client| {
        send_now(h, phone, &frame[..5]);
        // (The phone answers no ping in the middle of its frame.)
        advance_answering(h, secs(29), secs(1), &mut [binary]);
        h.advance(millis(990));
        phone.send_raw(h, &frame[5..]);
        assert_eq!(binary.recv_text(h), envelope(&conn_id, inner));
    };
    complete_just_in_time(&mut h, &mut phone, &mut binary);

    // The deadline is gone with the message: 20 s later (50 s after the
    // first one began) a second message starts and has its own 30 s.
    advance_answering(&mut h, secs(20), secs(1), &mut [&mut binary, &mut phone]);
    complete_just_in_time(&mut h, &mut phone, &mut binary);
    advance_answering(&mut h, secs(5), secs(1), &mut [&mut binary, &mut phone]);
    assert_eq!(h.stats().phones, 1);
}

#[test]
fn idle_time_between_messages_is_unbounded() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair(SID);

    // Three hours without a data message; both answer their pings.
    let pings = advance_answering(
        &mut h,
        secs(3 * 3600),
        secs(30),
        &mut [&mut binary, &mut phone],
    );
    assert_eq!(pings, vec![360, 360]);
    assert_eq!(h.peers(), (1, 1));
    assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
}

// ---------------------------------------------------------------------
// Stalled output
// ---------------------------------------------------------------------

/// The binary sends `phone` (which never reads) frames until the relay
/// holds output for it that the socket will not take; returns the frames.
fn overwhelm_phone(
    h: &mut Harness,
    binary: &mut Client,
    phone: &mut Client,
    conn_id: &str,
) -> Vec<Vec<u8>> {
    let frames = fill_phone_output(h, binary, conn_id, 8);
    binary.wait_delivered(h);
    phone.wait_still(h);
    assert_eq!(h.stats().connections_with_buffers, 1);
    frames
}

#[test]
fn output_that_makes_no_progress_for_write_timeout_drops_the_phone() {
    let mut h = Harness::with_config(|c| c.phone_backlog = 64 << 20);
    let (mut binary, mut phone, conn_id) = h.pair(SID);
    // Small fixed kernel buffers on both ends: once full they stay full
    // (no autotuning, no memory-pressure shuffling), so no byte can move.
    phone.set_recv_buffer(16 * 1024);
    phone.set_relay_send_buffer(&h, 16 * 1024);
    overwhelm_phone(&mut h, &mut binary, &mut phone, &conn_id);

    h.advance(secs(9));
    assert_eq!(h.stats().phones, 1);
    h.advance(millis(990));
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 1);

    h.advance(millis(10));
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1001));
    let stats = h.stats();
    assert_eq!((stats.phones, stats.binaries), (0, 1));
    assert_eq!(stats.connections, 1);
    assert_eq!(stats.connections_with_buffers, 0);
}

/// Reads at most `limit` bytes the socket holds now, without waiting.
fn read_some(client: &mut Client, limit: usize, into: &mut Vec<u8>) -> usize {
    use std::io::Read;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < limit {
        let want = chunk.len().min(limit - got);
        match client.stream().read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => {
                into.extend_from_slice(&chunk[..n]);
                got += n;
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("read failed: {err}"),
        }
    }
    got
}

/// The text messages among the relay's frames in `bytes` (pings
/// skipped); asserts nothing else is there and nothing is left.
fn texts_of(bytes: Vec<u8>) -> Vec<Vec<u8>> {
    let mut frames = FrameReader::new();
    frames
        .push(&bytes)
        .expect("the relay's frames are well-formed");
    let mut texts = Vec::new();
    while let Some(msg) = frames.pop() {
        match msg {
            Msg::Text(payload) => texts.push(payload),
            Msg::Ping(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert_eq!(frames.pending(), 0, "bytes of a partial frame were left");
    texts
}

#[test]
fn output_that_keeps_making_progress_is_never_dropped() {
    let mut h = Harness::with_config(|c| c.phone_backlog = 64 << 20);
    let (mut binary, mut phone, conn_id) = h.pair(SID);
    // Fixed kernel buffers: without them, loopback autotuning may grow
    // enough to take the whole backlog after one or two reads.
    phone.set_recv_buffer(64 * 1024);
    phone.set_relay_send_buffer(&h, 64 * 1024);
    let frames = overwhelm_phone(&mut h, &mut binary, &mut phone, &conn_id);

    // Every 9 s the phone reads a little (and sends a pong, since the
    // relay's pings wait behind the backlog): each read lets the relay
    // write more, which restarts the 10 s.
    let mut bytes = Vec::new();
    let mut rounds = 0;
    while h.stats().connections_with_buffers > 0 {
        h.advance(secs(9));
        binary.answer_received_pings(&mut h);
        phone.send_pong(&mut h, b"");
        phone.wait_delivered(&mut h);
        assert!(read_some(&mut phone, 256 * 1024, &mut bytes) > 0);
        rounds += 1;
        assert!(rounds < 1000, "the phone's output never drained");
    }
    assert!(rounds >= 3, "the test must span several write_timeouts");
    assert_eq!(h.stats().phones, 1);
    while read_some(&mut phone, usize::MAX, &mut bytes) > 0 {}
    assert_eq!(texts_of(bytes), frames);
    binary.expect_no_data(&mut h);
}

// ---------------------------------------------------------------------
// The handshake timeout
// ---------------------------------------------------------------------

#[test]
fn a_request_head_not_complete_within_5s_gets_408() {
    let mut h = Harness::start();
    let mut client = h.connect();
    send_now(
        &mut h,
        &mut client,
        b"GET /v1/server HTTP/1.1\r\nHost: relay.test\r\n",
    );
    h.advance(secs(2));
    send_now(&mut h, &mut client, b"X-Pyrycode-Server: dribble\r\n");
    h.advance(secs(2));
    h.advance(millis(990));
    assert!(!client.is_closed(&mut h), "closed before 5 s");
    assert_eq!(h.stats().connections, 1);

    h.advance(millis(10));
    let (status, head) = client.response(&mut h);
    assert_eq!(status, 408, "{head}");
    assert!(client.body_until_eof(&mut h).is_empty());
    client.hang_up(&mut h);
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn a_connection_that_sends_nothing_gets_408_at_5s() {
    let mut h = Harness::start();
    let mut client = h.connect();
    h.advance(secs(4));
    assert!(!client.is_closed(&mut h), "closed before 5 s");
    h.advance(secs(1));
    let (status, head) = client.response(&mut h);
    assert_eq!(status, 408, "{head}");
    client.wait_eof(&mut h);
}

#[test]
fn an_upgrade_completed_within_5s_is_not_timed_out() {
    let mut h = Harness::start();
    let head = upgrade_head("/v1/server", &binary_headers(SID));
    let mut client = h.connect();
    send_now(&mut h, &mut client, &head.as_bytes()[..20]);
    h.advance(millis(4990));
    client.send_raw(&mut h, &head.as_bytes()[20..]);
    let (status, _) = client.response(&mut h);
    assert_eq!(status, 101);
    advance_silent(&mut h, secs(20), &mut client, None);
    assert_eq!(h.stats().binaries, 1);
}

// ---------------------------------------------------------------------
// Phones the relay is not reading are not blamed for silence
// ---------------------------------------------------------------------

#[test]
fn phones_of_a_binary_in_grace_are_not_timed_out_for_missing_pongs() {
    let mut h = Harness::with_config(|c| c.grace_period = secs(600));
    let (mut binary, mut phone, _) = h.pair(SID);
    h.advance(secs(10));
    binary.hang_up(&mut h);
    assert_eq!(h.stats().binaries, 0);

    // Almost ten minutes of grace. The phone answers the pings it gets;
    // whether the relay reads those pongs during grace or not, the phone
    // must not be closed 1011 for them.
    let mut pings = 0;
    for _ in 0..59 {
        h.advance(secs(10));
        pings += phone.answer_pings_unread(&mut h);
    }
    h.advance(secs(9)); // 599 s after the binary left
    pings += phone.answer_pings_unread(&mut h);
    assert_eq!(h.stats().phones, 1);
    assert!(pings >= 19, "the phone was pinged during grace ({pings})");
    h.advance(secs(1));
    phone.expect_close_frame(&mut h, BINARY_GONE);
}

/// The phone sends `bytes` (whole frames back to back) until the relay
/// stops reading it; returns how many bytes went out.
fn push_until_paused(h: &mut Harness, phone: &mut Client, bytes: &[u8]) -> usize {
    let mut sent = 0;
    let mut unread_after_settle = 0;
    while sent < bytes.len() {
        sent += phone.write_some(&bytes[sent..]);
        h.settle();
        // A relay that reads this phone leaves nothing unread once it is
        // idle; bytes left twice in a row mean it has stopped reading.
        if phone.relay_unread(h).unwrap_or(0) > 0 {
            unread_after_settle += 1;
            if unread_after_settle >= 2 {
                return sent;
            }
        } else {
            unread_after_settle = 0;
        }
    }
    panic!("the relay read all {sent} bytes: no backpressure");
}

/// 512 frames of 64 KiB, and the masked stream of them.
fn frames_and_stream() -> (Vec<Vec<u8>>, Vec<u8>) {
    let frames: Vec<Vec<u8>> = (0..512).map(|i| big_frame(i, 64 * 1024)).collect();
    let stream = frames
        .iter()
        .flat_map(|f| masked_frame(0x1, true, f))
        .collect();
    (frames, stream)
}

/// Moves time on by `by`; then `binary`, which reads nothing, sends an
/// unsolicited pong to stay alive.
fn keep_alive(h: &mut Harness, binary: &mut Client, by: Duration) {
    h.advance(by);
    binary.send_pong(h, b"");
    binary.wait_delivered(h);
}

#[test]
fn phones_of_a_backpressured_binary_are_not_timed_out_for_missing_pongs() {
    // No write_timeout in the way: the binary does not read for minutes.
    let mut h = Harness::with_config(|c| c.write_timeout = secs(3600));
    let (mut binary, mut phone, conn_id) = h.pair(SID);
    let (frames, bytes) = frames_and_stream();
    let mut sent = push_until_paused(&mut h, &mut phone, &bytes);

    // Five minutes in which the phone answers none of its pings; the
    // binary keeps itself alive with unsolicited pongs (it reads nothing).
    for _ in 0..30 {
        keep_alive(&mut h, &mut binary, secs(10));
    }
    assert_open(&mut h, &mut phone);
    assert_eq!(h.stats().phones, 1);

    // The binary reads again: backpressure ends, every frame arrives.
    let mut received = 0;
    let mut rounds = 0;
    while received < frames.len() {
        rounds += 1;
        assert!(rounds < 100_000, "the frames never all arrived");
        if sent < bytes.len() {
            sent += phone.write_some(&bytes[sent..]);
        }
        while let Some(msg) = binary.try_recv(&mut h) {
            match msg {
                Msg::Text(wrapped) => {
                    assert_eq!(wrapped, envelope(&conn_id, &frames[received]));
                    received += 1;
                }
                Msg::Ping(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_open(&mut h, &mut phone);

    // Now that it is read again, the phone's silence counts: it is closed
    // for the unanswered pings within one pong_timeout.
    let mut waited = Duration::ZERO;
    loop {
        keep_alive(&mut h, &mut binary, secs(1));
        waited += secs(1);
        phone.wait_received(&mut h);
        if let Some(msg) = phone.try_recv(&mut h) {
            if msg == Msg::Ping(Vec::new()) {
                continue;
            }
            assert_eq!(msg, Msg::Close(Some(1011), "heartbeat timeout".into()));
            break;
        }
        assert!(waited <= secs(31), "the silent phone was never closed");
    }
}

#[test]
fn phones_held_back_by_a_binary_that_leaves_are_read_again_at_once() {
    let mut h = Harness::start();
    let mut binary = h.binary(SID);
    let mut phone = h.phone(SID);
    let (_, frames) = frames_and_stream();
    let sent = push_until_paused(&mut h, &mut phone, &frames);
    assert!(phone.relay_unread(&h).unwrap_or(0) > 0);

    // The binary goes away: its server-id enters grace, so nothing holds
    // the phone back any more. The relay must read what is waiting without
    // a new readiness edge from the phone (which sends nothing new).
    binary.hang_up(&mut h);
    phone.wait_delivered(&mut h);
    assert_eq!(phone.relay_unread(&h), Some(0));
    assert!(sent > 0);
    assert_eq!(
        h.stats().phones,
        1,
        "the phone stays, waiting out the grace"
    );
    assert_ne!(
        h.metric("pyrycode_relay_phone_messages_dropped_total"),
        0,
        "the waiting messages had no binary to go to"
    );
}

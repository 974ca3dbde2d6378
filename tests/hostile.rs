//! Hostile clients (issue 4, point 2): slowloris, dribbled messages,
//! protocol violations, floods and non-reading peers, each answered with a
//! clear refusal at bounded cost, without harming any other connection.
//!
//! Deterministic: the relay runs in-process with a manual clock, clients
//! are real loopback sockets, and nothing sleeps (see `tests/common`).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use pyrycode_relay::config::{Config, READ_CHUNK};

/// Writes `bytes` for as long as the relay takes them; returns how many
/// were written once neither side moves any more (the relay stopped
/// reading this client and the kernel buffers are full).
fn send_until_stuck(h: &mut Harness, client: &mut Client, bytes: &[u8]) -> usize {
    let mut at = 0;
    let mut idle_rounds = 0;
    while at < bytes.len() && idle_rounds < 3 {
        let n = client.write_some(&bytes[at..]);
        if n == 0 {
            h.settle();
            idle_rounds += 1;
        } else {
            at += n;
            idle_rounds = 0;
            h.turn();
        }
    }
    h.settle();
    at
}

fn expect_close_code(h: &mut Harness, client: &mut Client, code: u16) {
    let (got, _) = client.expect_closed_by_relay(h);
    assert_eq!(got, Some(code));
}

#[test]
fn a_thousand_slowloris_heads_do_not_hurt_an_honest_pair_and_are_gone_at_the_handshake_deadline() {
    let mut h = Harness::start();
    let head = b"GET /v1/client HTTP/1.1\r\nHost: relay.test\r\nX-Dribble: ";
    let mut dribblers: Vec<Client> = (0..1000)
        .map(|_| {
            let mut c = h.connect();
            assert_eq!(c.write_some(&head[..10]), 10);
            c
        })
        .collect();
    let (mut binary, mut phone, conn_id) = h.pair("honest");
    assert_eq!(h.stats().connections, 1002);

    // Four seconds of dribbling, one byte per connection per second; the
    // honest pair talks all the while.
    for second in 0..4 {
        for c in dribblers.iter_mut() {
            assert_eq!(c.write_some(&head[10 + second..11 + second]), 1);
        }
        h.advance(secs(1));
        assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
        assert_eq!(h.stats().connections, 1002);
    }
    let memory = h.relay().memory();
    assert!(memory.partial_input <= 1000 * 14, "{memory:?}");
    assert_eq!(memory.queued_output, 0);

    h.advance(Duration::from_millis(990));
    assert_eq!(h.stats().connections, 1002, "closed before the deadline");
    h.advance(Duration::from_millis(10));
    for c in dribblers.iter_mut() {
        let (status, _) = c.response(&mut h);
        assert_eq!(status, 408);
        c.wait_eof(&mut h);
    }
    drop(dribblers);
    h.settle();
    assert_eq!(h.stats().connections, 2);
    assert_eq!(h.relay().memory().partial_input, 0);
    assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
}

#[test]
fn a_message_dribbled_one_byte_a_second_is_closed_1008_at_the_message_deadline() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("dribble");
    let frame = masked_frame(0x1, true, &[b'1'; 60]);
    for byte in &frame[..29] {
        phone.send_raw(&mut h, std::slice::from_ref(byte));
        h.advance(secs(1));
        phone.expect_no_data(&mut h);
    }
    // The first byte came 29 s ago; the 30th second ends the message.
    phone.send_raw(&mut h, &frame[29..30]);
    h.advance(secs(1));
    phone.expect_close_frame(&mut h, MESSAGE_TIMEOUT);
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1008));
}

#[test]
fn a_message_dribbled_as_tiny_fragments_is_closed_1008_at_the_message_deadline() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("fragments");
    phone.send_frame(&mut h, 0x1, false, b"[");
    for _ in 0..29 {
        h.advance(secs(1));
        phone.send_frame(&mut h, 0x0, false, b"1,");
        phone.expect_no_data(&mut h);
    }
    h.advance(secs(1));
    phone.expect_close_frame(&mut h, MESSAGE_TIMEOUT);
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1008));
}

#[test]
fn garbage_after_a_valid_upgrade_is_closed_1002() {
    let mut h = Harness::start();
    // In the same write as the head…
    let mut head = upgrade_head("/v1/server", &binary_headers("garbage-1"));
    head.push_str("GET / HTTP/1.1\r\n\r\n");
    let (status, _, mut binary) = h.request(&head);
    assert_eq!(status, 101);
    expect_close_code(&mut h, &mut binary, 1002);
    // …and later, from a phone.
    let (mut binary, mut phone, conn_id) = h.pair("garbage-2");
    phone.send_raw(&mut h, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
    expect_close_code(&mut h, &mut phone, 1002);
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1002));
}

#[test]
fn unmasked_client_frames_are_closed_1002() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair("unmasked");
    phone.send_raw(&mut h, b"\x81\x07{\"a\":1}");
    expect_close_code(&mut h, &mut phone, 1002);
    binary.recv_text(&mut h); // the close notice
    binary.send_raw(&mut h, b"\x89\x00");
    expect_close_code(&mut h, &mut binary, 1002);
}

#[test]
fn reserved_bits_and_unknown_opcodes_are_closed_1002() {
    let mut h = Harness::start();
    let mut binary = h.binary("reserved");
    let mut cases: Vec<Vec<u8>> = [0x40u8, 0x20, 0x10]
        .iter()
        .map(|rsv| {
            let mut frame = masked_frame(0x1, true, b"{}");
            frame[0] |= rsv;
            frame
        })
        .collect();
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        cases.push(masked_frame(opcode, true, b"{}"));
    }
    for frame in cases {
        let mut phone = h.phone("reserved");
        phone.send_raw(&mut h, &frame);
        expect_close_code(&mut h, &mut phone, 1002);
        binary.recv_text(&mut h); // the close notice
    }
    let (mut phone, conn_id) = h.phone_with_id("reserved", &mut binary);
    assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
}

#[test]
fn a_length_of_two_to_the_63_is_closed_1009_without_buffering_anything() {
    let mut h = Harness::start();
    let (_binary, mut phone, _) = h.pair("huge");
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend_from_slice(&[0u8; 1000]);
    phone.send_raw(&mut h, &header);
    expect_close_code(&mut h, &mut phone, 1009);
    assert_eq!(h.relay().memory().partial_input, 0);
    assert_eq!(h.relay().memory().reassembly, 0);

    // One byte over the limit, declared in the header: refused before the
    // payload is sent.
    let mut phone = h.phone("huge");
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(256u64 * 1024 + 1).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    phone.send_raw(&mut h, &header);
    expect_close_code(&mut h, &mut phone, 1009);
}

#[test]
fn fragmented_or_oversized_control_frames_are_closed_1002() {
    let mut h = Harness::start();
    let (mut binary, mut keeper, keeper_id) = h.pair("control");
    let cases = [
        masked_frame(0x9, false, b"p"),
        masked_frame(0xA, false, b"p"),
        masked_frame(0x8, false, &1000u16.to_be_bytes()),
        masked_frame(0x9, true, &[b'p'; 126]),
    ];
    for frame in cases {
        let mut phone = h.phone("control");
        phone.send_raw(&mut h, &frame);
        expect_close_code(&mut h, &mut phone, 1002);
        binary.recv_text(&mut h); // the close notice
    }
    // A ping between fragments is allowed and answered.
    keeper.send_frame(&mut h, 0x1, false, b"[1,");
    keeper.send_ping(&mut h, b"mid");
    assert_eq!(keeper.recv(&mut h), Msg::Pong(b"mid".to_vec()));
    keeper.send_frame(&mut h, 0x0, true, b"2]");
    assert_eq!(binary.recv_text(&mut h), envelope(&keeper_id, b"[1,2]"));
}

#[test]
fn a_continuation_without_a_start_and_a_start_inside_a_message_are_closed_1002() {
    let mut h = Harness::start();
    let mut binary = h.binary("continuation");
    let mut phone = h.phone("continuation");
    phone.send_frame(&mut h, 0x0, true, b"{}");
    expect_close_code(&mut h, &mut phone, 1002);
    let mut phone = h.phone("continuation");
    phone.send_frame(&mut h, 0x1, false, b"[");
    phone.send_frame(&mut h, 0x1, true, b"]");
    expect_close_code(&mut h, &mut phone, 1002);
    binary.recv_text(&mut h);
    binary.recv_text(&mut h);
}

#[test]
fn invalid_utf8_in_text_is_closed_1007() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("utf8");
    phone.send_text(&mut h, b"\"\xff\"");
    expect_close_code(&mut h, &mut phone, 1007);
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1007));

    // Invalid UTF-8 split across fragments, and in a close reason.
    let mut phone = h.phone("utf8");
    phone.send_frame(&mut h, 0x1, false, b"\"\xe2\x82");
    phone.send_frame(&mut h, 0x0, true, b"\"");
    expect_close_code(&mut h, &mut phone, 1007);
    binary.recv_text(&mut h);
    let mut phone = h.phone("utf8");
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"\xc3\x28");
    phone.send_frame(&mut h, 0x8, true, &payload);
    expect_close_code(&mut h, &mut phone, 1007);
    binary.recv_text(&mut h);

    // A valid character split across fragments is fine.
    let (mut phone, conn_id) = h.phone_with_id("utf8", &mut binary);
    phone.send_frame(&mut h, 0x1, false, b"\"\xe2\x82");
    phone.send_frame(&mut h, 0x0, true, b"\xac\"");
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, "\"€\"".as_bytes())
    );
}

#[test]
fn a_ping_flood_from_a_client_that_never_reads_costs_bounded_memory() {
    let mut h = Harness::start();
    let limit = Config::default().output_read_limit();
    let (mut binary, mut sibling, sibling_id) = h.pair("pings");
    let mut flooder = h.phone("pings");
    flooder.set_relay_send_buffer(&h, 4096);
    let ping = masked_frame(0x9, true, &[b'p'; 125]);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 200_000)
        .collect();
    let sent = send_until_stuck(&mut h, &mut flooder, &flood);
    // The relay stopped reading long before the 26 MB were sent…
    assert!(
        sent < flood.len(),
        "the relay read the whole flood: {:?}",
        h.relay().memory()
    );
    let memory = h.relay().memory();
    // …once the pongs it owes passed its read-pause limit.
    assert!(
        memory.largest_queue > limit - READ_CHUNK,
        "never reached the limit: {memory:?}"
    );
    assert!(memory.largest_queue <= limit + 1024, "{memory:?}");
    // The sibling and the binary are unaffected.
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
    // Output that makes no progress for --write-timeout drops the flooder.
    h.advance(Duration::from_secs(10));
    assert!(flooder.is_closed(&mut h));
    let notice = String::from_utf8(binary.recv_text(&mut h)).unwrap();
    assert!(notice.ends_with(r#""close_code":1001}"#), "{notice}");
    assert!(h.relay().memory().largest_queue < 1024);
    assert_eq!(h.stats().phones, 1);
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
}

#[test]
fn a_million_tiny_frames_make_one_message() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("tiny");
    let mut stream = masked_frame(0x1, false, b"[");
    let empty = masked_frame(0x0, false, b"");
    for _ in 0..999_998 {
        stream.extend_from_slice(&empty);
    }
    stream.extend_from_slice(&masked_frame(0x0, true, b"]"));
    phone.send_raw(&mut h, &stream);
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, b"[]"));
    let memory = h.relay().memory();
    assert_eq!(
        (memory.partial_input, memory.reassembly),
        (0, 0),
        "{memory:?}"
    );
    assert_routes(&mut h, &mut binary, &mut phone, &conn_id);
}

#[test]
fn a_phone_that_never_reads_is_closed_1011_and_nobody_else_notices() {
    let mut h = Harness::start();
    let (mut binary, mut slow, slow_id) = h.pair("backlog");
    let (mut sibling, sibling_id) = h.phone_with_id("backlog", &mut binary);
    slow.set_relay_send_buffer(&h, 4096);
    let filler = "x".repeat(32 * 1024);
    let mut sent_to_slow = 0;
    let notice = loop {
        assert!(sent_to_slow < 400, "the slow phone was never closed");
        let frame = format!("{{\"seq\":{sent_to_slow},\"pad\":\"{filler}\"}}");
        binary.send_text(&mut h, &envelope(&slow_id, frame.as_bytes()));
        sent_to_slow += 1;
        let small = format!("{{\"seq\":{sent_to_slow}}}");
        binary.send_text(&mut h, &envelope(&sibling_id, small.as_bytes()));
        assert_eq!(sibling.recv_text(&mut h), small.into_bytes());
        if let Some(Msg::Text(notice)) = binary.try_recv(&mut h) {
            break notice;
        }
    };
    assert_eq!(notice, close_notice(&slow_id, 1011));
    assert!(h.relay().memory().largest_queue <= Config::default().phone_backlog + 1024);
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
    // The slow phone gets every frame queued before the close, in order.
    let mut seq = 0;
    let (code, reason) = loop {
        match slow.recv_data(&mut h) {
            Msg::Text(bytes) => {
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(value["seq"], seq);
                seq += 1;
            }
            Msg::Close(code, reason) => break (code, reason),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (code, reason.as_str()),
        (Some(BACKLOG_FULL.0), BACKLOG_FULL.1)
    );
    assert!(seq > 0 && seq < sent_to_slow);
}

#[test]
fn a_binary_that_never_reads_holds_back_sixteen_phones_and_loses_nothing() {
    let mut h = Harness::start();
    let config = Config::default();
    let mut binary = h.binary("held");
    let mut phones = Vec::new();
    for _ in 0..16 {
        phones.push(h.phone_with_id("held", &mut binary));
    }
    // No small socket buffers here (the binary reads again later): the
    // 12 MB the phones send are more than the kernel holds on the binary's
    // side (a 4 MiB send buffer at most, plus its receive window).
    const MESSAGES: usize = 48;
    let pad = "p".repeat(16 * 1024);
    let mut streams: Vec<(Vec<u8>, usize)> = (0..16)
        .map(|_| {
            let mut stream = Vec::new();
            for seq in 0..MESSAGES {
                let msg = format!("{{\"seq\":{seq},\"pad\":\"{pad}\"}}");
                stream.extend_from_slice(&masked_frame(0x1, true, msg.as_bytes()));
            }
            (stream, 0)
        })
        .collect();

    // The binary reads nothing: the phones push until the relay stops
    // reading them.
    let mut peak = 0;
    let mut idle = 0;
    while idle < 3 {
        let moved = pump(&mut h, &mut phones, &mut streams);
        peak = peak.max(h.relay().memory().queued_output);
        idle = if moved == 0 { idle + 1 } else { 0 };
    }
    // The relay stopped taking the phones' messages once the binary's
    // queue passed high water, and never queued more than one message
    // beyond it.
    let forwarded = h.forwarded_phone_to_binary();
    assert!(
        forwarded < 16 + 16 * MESSAGES as u64,
        "every message was taken: no backpressure"
    );
    let bound = config.binary_high_water + config.max_message_size + 1024;
    assert!(peak <= bound, "{peak} bytes queued for the binary");
    let memory = h.relay().memory();
    assert!(
        memory.partial_input <= 16 * (READ_CHUNK + config.max_message_size + 14),
        "{memory:?}"
    );
    assert_eq!(h.stats().phones, 16);

    // The binary reads again: every message arrives, in order per phone.
    let ids: HashMap<String, usize> = phones
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (id.clone(), i))
        .collect();
    let mut next = vec![0usize; 16];
    let mut received = 0;
    let mut stuck = 0;
    while received < 16 * MESSAGES {
        pump(&mut h, &mut phones, &mut streams);
        let mut got_any = false;
        while let Some(msg) = binary.try_recv(&mut h) {
            let Msg::Text(bytes) = msg else { continue };
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let phone = ids[value["conn_id"].as_str().unwrap()];
            assert_eq!(value["frame"]["seq"], next[phone]);
            next[phone] += 1;
            received += 1;
            got_any = true;
        }
        stuck = if got_any { 0 } else { stuck + 1 };
        assert!(
            stuck < 1000,
            "delivery stopped at {received}: {:?} {:?}",
            h.relay().memory(),
            h.relay().stats()
        );
    }
    assert_eq!(next, vec![MESSAGES; 16]);
    assert_eq!(h.forwarded_phone_to_binary(), 16 + 16 * MESSAGES as u64);
    assert_eq!(h.stats().phones, 16);
}

/// One round of the phones writing what they can; returns bytes written.
fn pump(
    h: &mut Harness,
    phones: &mut [(Client, String)],
    streams: &mut [(Vec<u8>, usize)],
) -> usize {
    let mut moved = 0;
    for ((phone, _), (stream, at)) in phones.iter_mut().zip(streams.iter_mut()) {
        let n = phone.write_some(&stream[*at..]);
        *at += n;
        moved += n;
    }
    h.settle();
    moved
}

#[test]
fn envelopes_forged_for_another_server_ids_phones_are_dropped() {
    let mut h = Harness::start();
    let (mut mallory, mut own_phone, own_id) = h.pair("mallory");
    let (mut binary, mut victim, victim_id) = h.pair("victim");
    mallory.send_text(&mut h, &envelope(&victim_id, br#"{"forged":true}"#));
    mallory.send_text(
        &mut h,
        format!("{{\"conn_id\":\"{victim_id}\",\"close_code\":4401}}").as_bytes(),
    );
    mallory.send_text(
        &mut h,
        &envelope("client-victim-00000000000000000000000000000000", b"1"),
    );
    assert_quiet(&mut h, [&mut victim, &mut binary]);
    // Nobody was closed: mallory keeps its own phone, the victim its binary.
    assert_routes(&mut h, &mut mallory, &mut own_phone, &own_id);
    assert_routes(&mut h, &mut binary, &mut victim, &victim_id);
    assert_eq!(h.stats().phones, 2);
}

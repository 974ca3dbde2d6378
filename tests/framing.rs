//! RFC 6455 framing of the relay against real phones and binaries (SPEC
//! §5.1, §6, §7, §8): partial and coalesced frames, size limits,
//! protocol violations and their close codes, fragmentation, control
//! frames and the close handshake. The harness itself asserts that every
//! frame the relay writes is unmasked, final and without reserved bits.

mod common;

use std::io::ErrorKind;
use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A binary for "srv-1" and one phone of it, with its conn_id.
fn pair() -> (Harness, Client, Client, String) {
    let mut h = Harness::start();
    let (binary, phone, conn_id) = h.pair("srv-1");
    (h, binary, phone, conn_id)
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("the binary got JSON")
}

/// Asserts the relay closed `phone` with `code` and an empty reason,
/// completes the handshake, and checks the binary got the close notice
/// for it and nothing else (nothing of the phone's was forwarded).
fn assert_phone_closed(
    h: &mut Harness,
    phone: &mut Client,
    binary: &mut Client,
    conn_id: &str,
    code: u16,
) {
    assert_eq!(phone.expect_closed_by_relay(h), (Some(code), String::new()));
    assert_eq!(
        json_of(&binary.recv_text(h)),
        json!({"conn_id": conn_id, "close_code": code})
    );
    binary.expect_no_data(h);
    assert_eq!(
        h.stats().binaries,
        1,
        "the binary is never torn down for it"
    );
}

/// Sends `bytes` from a fresh phone and asserts it is closed with `code`.
fn violation_closes_phone(bytes: &[u8], code: u16) {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    phone.send_raw(&mut h, bytes);
    assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, code);
    assert_eq!(h.stats().phones, 0);
}

/// A masked frame with the first byte given verbatim (FIN, RSV, opcode).
fn masked_with_first_byte(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = masked_frame(0x1, true, payload);
    frame[0] = first;
    frame
}

/// Writes as much of `bytes` as the relay takes, tolerating the relay
/// closing the connection part way (it may refuse a frame from its header).
fn send_until_refused(h: &mut Harness, client: &mut Client, bytes: &[u8]) {
    let mut at = 0;
    for _ in 0..20_000 {
        if at == bytes.len() {
            break;
        }
        match client.stream().write(&bytes[at..]) {
            Ok(n) => at += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => {
                h.turn_waiting(Duration::from_millis(1));
            }
            Err(_) => break,
        }
    }
    h.settle();
}

/// A JSON string literal of exactly `len` bytes.
fn json_string(len: usize) -> Vec<u8> {
    assert!(len >= 2);
    let mut out = vec![b'"'];
    out.extend(std::iter::repeat_n(b'a', len - 2));
    out.push(b'"');
    out
}

// ---------------------------------------------------------------- partial and coalesced

#[test]
fn frames_split_byte_by_byte_arrive_intact() {
    let (mut h, mut binary, mut phone, conn_id) = pair();

    // A short frame and one with a 16-bit length, one byte per write.
    let short = br#"{"type":"noise_msg","data":"AAEC"}"#.to_vec();
    let medium = json_string(300);
    for message in [&short, &medium] {
        for byte in masked_frame(0x1, true, message) {
            phone.send_raw(&mut h, &[byte]);
        }
        assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, message));
    }

    // The binary's side too.
    let reply = br#"{"type":"noise_msg","data":"BBED"}"#;
    for byte in masked_frame(0x1, true, &envelope(&conn_id, reply)) {
        binary.send_raw(&mut h, &[byte]);
    }
    assert_eq!(phone.recv_text(&mut h), reply.to_vec());
    let long_reply = json_string(70_000);
    for byte in masked_frame(0x1, true, &envelope(&conn_id, &long_reply))
        .iter()
        .take(14)
    {
        binary.send_raw(&mut h, &[*byte]);
    }
    let frame = masked_frame(0x1, true, &envelope(&conn_id, &long_reply));
    for chunk in frame[14..].chunks(4096) {
        binary.send_raw(&mut h, chunk);
    }
    assert_eq!(phone.recv_text(&mut h), long_reply);
}

#[test]
fn a_64_bit_length_frame_with_its_header_split_byte_by_byte_arrives_intact() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let message = json_string(70_000);
    let frame = masked_frame(0x1, true, &message);
    assert_eq!(frame[1], 0x80 | 127);
    for byte in &frame[..14] {
        phone.send_raw(&mut h, std::slice::from_ref(byte));
    }
    for chunk in frame[14..].chunks(777) {
        phone.send_raw(&mut h, chunk);
    }
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &message));
}

/// The phone sends `messages` in one write, and the binary gets them in
/// order; then the binary sends their envelopes in one write, and the
/// phone gets them in order. Nothing else arrives.
fn burst_both_ways(
    h: &mut Harness,
    binary: &mut Client,
    phone: &mut Client,
    conn_id: &str,
    messages: &[Vec<u8>],
) {
    let burst: Vec<u8> = messages
        .iter()
        .flat_map(|message| masked_frame(0x1, true, message))
        .collect();
    phone.send_raw(h, &burst);
    for message in messages {
        assert_eq!(binary.recv_text(h), envelope(conn_id, message));
    }
    binary.expect_no_data(h);

    let burst: Vec<u8> = messages
        .iter()
        .flat_map(|message| masked_frame(0x1, true, &envelope(conn_id, message)))
        .collect();
    binary.send_raw(h, &burst);
    for message in messages {
        assert_eq!(phone.recv_text(h), *message);
    }
    assert_quiet(h, [binary, phone]);
}

#[test]
fn many_frames_in_one_write_all_arrive_in_order() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let messages: Vec<Vec<u8>> = (0..500)
        .map(|i| format!(r#"{{"seq":{i}}}"#).into_bytes())
        .collect();

    burst_both_ways(&mut h, &mut binary, &mut phone, &conn_id, &messages);
}

#[test]
fn frames_straddling_read_boundaries_arrive_intact() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    // 300 KiB in one write: the relay reads it in pieces, so frames are
    // cut at arbitrary points between reads.
    let messages: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            let mut m = format!(r#"{{"seq":{i},"pad":""#).into_bytes();
            m.extend(std::iter::repeat_n(b'x', 1000 + i * 7 % 97));
            m.extend_from_slice(b"\"}");
            m
        })
        .collect();
    burst_both_ways(&mut h, &mut binary, &mut phone, &conn_id, &messages);
}

#[test]
fn a_200_kib_message_passes_both_ways() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let message = json_string(200 * 1024);
    phone.send_text(&mut h, &message);
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &message));
    binary.send_text(&mut h, &envelope(&conn_id, &message));
    assert_eq!(phone.recv_text(&mut h), message);
}

// ---------------------------------------------------------------- size limit

#[test]
fn a_message_exactly_at_the_size_limit_passes() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let message = json_string(256 * 1024);
    phone.send_text(&mut h, &message);
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &message));
}

#[test]
fn a_message_one_byte_over_the_default_limit_is_1009() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let frame = masked_frame(0x1, true, &json_string(256 * 1024 + 1));
    // The relay refuses from the header alone: nothing of the payload is needed.
    phone.send_raw(&mut h, &frame[..14]);
    assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, 1009);
}

#[test]
fn a_peer_that_keeps_writing_its_oversized_message_still_sees_1009() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let frame = masked_frame(0x1, true, &json_string(300 * 1024));
    send_until_refused(&mut h, &mut phone, &frame);
    assert_eq!(phone.recv_close(&mut h), (Some(1009), String::new()));
    assert_eq!(
        json_of(&binary.recv_text(&mut h)),
        json!({"conn_id": conn_id, "close_code": 1009})
    );
    phone.wait_eof(&mut h);
    binary.expect_no_data(&mut h);
}

#[test]
fn the_size_limit_is_configurable_and_counts_every_fragment() {
    let mut h = Harness::with_config(|c| c.max_message_size = 1024);
    let (mut binary, mut phone, conn_id) = h.pair("srv-1");
    let at_limit = json_string(1024);
    phone.send_text(&mut h, &at_limit);
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &at_limit));
    phone.send_text(&mut h, &json_string(1025));
    assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, 1009);

    // Fragments that are each small but together too big.
    let (mut phone, conn_id) = h.phone_with_id("srv-1", &mut binary);
    let whole = json_string(1100);
    phone.send_frame(&mut h, 0x1, false, &whole[..600]);
    binary.expect_no_data(&mut h);
    phone.send_frame(&mut h, 0x0, true, &whole[600..]);
    assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, 1009);
}

#[test]
fn a_length_of_2_pow_63_is_1009_at_once() {
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 63).to_be_bytes());
    frame.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    violation_closes_phone(&frame, 1009);

    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&u64::MAX.to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    violation_closes_phone(&frame, 1009);
}

#[test]
fn a_binary_over_the_size_limit_is_closed_1009() {
    let mut h = Harness::with_config(|c| c.max_message_size = 1024);
    let mut binary = h.binary("srv-1");
    binary.send_text(&mut h, &json_string(1025));
    assert_eq!(
        binary.expect_closed_by_relay(&mut h),
        (Some(1009), String::new())
    );
    assert_eq!(h.stats().binaries, 0);
}

// ---------------------------------------------------------------- protocol errors

#[test]
fn an_unmasked_frame_is_1002() {
    violation_closes_phone(&[0x81, 0x02, b'{', b'}'], 1002);
    violation_closes_phone(&[0x89, 0x00], 1002);

    let mut h = Harness::start();
    let mut binary = h.binary("srv-1");
    binary.send_raw(&mut h, &[0x81, 0x02, b'{', b'}']);
    assert_eq!(
        binary.expect_closed_by_relay(&mut h),
        (Some(1002), String::new())
    );
}

#[test]
fn reserved_bits_are_1002() {
    for first in [0xC1, 0xA1, 0x91, 0xF1, 0xC9] {
        violation_closes_phone(&masked_with_first_byte(first, b"{}"), 1002);
    }
}

#[test]
fn reserved_opcodes_are_1002() {
    for opcode in [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF] {
        violation_closes_phone(&masked_frame(opcode, true, b"{}"), 1002);
    }
}

#[test]
fn a_continuation_without_a_message_is_1002() {
    violation_closes_phone(&masked_frame(0x0, true, b"{}"), 1002);
    violation_closes_phone(&masked_frame(0x0, false, b"{"), 1002);

    // Also right after a fragmented message has ended.
    let (mut h, mut binary, mut phone, conn_id) = pair();
    phone.send_frame(&mut h, 0x1, false, b"[1,");
    phone.send_frame(&mut h, 0x0, true, b"2]");
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, b"[1,2]"));
    phone.send_frame(&mut h, 0x0, true, b"[3]");
    assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, 1002);
}

#[test]
fn a_new_message_inside_a_fragmented_one_is_1002() {
    for opcode in [0x1, 0x2] {
        let mut bytes = masked_frame(0x1, false, b"[1,");
        bytes.extend_from_slice(&masked_frame(opcode, true, b"2]"));
        violation_closes_phone(&bytes, 1002);
    }
    let mut bytes = masked_frame(0x2, false, b"[1,");
    bytes.extend_from_slice(&masked_frame(0x1, false, b"2"));
    violation_closes_phone(&bytes, 1002);
}

#[test]
fn fragmented_control_frames_are_1002() {
    for opcode in [0x9, 0xA, 0x8] {
        violation_closes_phone(&masked_frame(opcode, false, b""), 1002);
    }
    let mut bytes = masked_frame(0x9, false, b"pi");
    bytes.extend_from_slice(&masked_frame(0x0, true, b"ng"));
    violation_closes_phone(&bytes, 1002);
}

#[test]
fn control_payloads_over_125_bytes_are_1002() {
    let (mut h, _binary, mut phone, _) = pair();
    let max = vec![b'p'; 125];
    phone.send_ping(&mut h, &max);
    assert_eq!(phone.recv(&mut h), Msg::Pong(max));

    for opcode in [0x9, 0xA] {
        violation_closes_phone(&masked_frame(opcode, true, &[b'p'; 126]), 1002);
    }
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'r'; 124]);
    violation_closes_phone(&masked_frame(0x8, true, &close), 1002);
}

#[test]
fn bytes_after_a_protocol_error_are_not_forwarded() {
    let mut bytes = masked_frame(0x3, true, b"{}");
    bytes.extend_from_slice(&masked_frame(0x1, true, br#"{"after":1}"#));
    violation_closes_phone(&bytes, 1002);
}

// ---------------------------------------------------------------- fragmentation and control

#[test]
fn a_fragmented_message_arrives_as_one() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    phone.send_frame(&mut h, 0x1, false, br#"{"a":"#);
    phone.send_frame(&mut h, 0x0, false, br#""hel"#);
    binary.expect_no_data(&mut h);
    phone.send_frame(&mut h, 0x0, true, br#"lo"}"#);
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, br#"{"a":"hello"}"#)
    );

    // Empty fragments, a binary-opcode start, all in one write.
    let mut bytes = masked_frame(0x2, false, b"");
    bytes.extend_from_slice(&masked_frame(0x0, false, b"[true"));
    bytes.extend_from_slice(&masked_frame(0x0, false, b""));
    bytes.extend_from_slice(&masked_frame(0x0, true, b",null]"));
    phone.send_raw(&mut h, &bytes);
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, b"[true,null]"));

    // UTF-8 may be split across fragments.
    let text = "\"caf\u{e9} \u{1F600}\"".as_bytes().to_vec();
    phone.send_frame(&mut h, 0x1, false, &text[..5]);
    phone.send_frame(&mut h, 0x0, false, &text[5..9]);
    phone.send_frame(&mut h, 0x0, true, &text[9..]);
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &text));
    binary.expect_no_data(&mut h);
}

#[test]
fn a_ping_between_fragments_is_answered_and_the_message_still_arrives() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    phone.send_frame(&mut h, 0x1, false, b"[\"frag");
    phone.send_ping(&mut h, b"are you there");
    assert_eq!(phone.recv(&mut h), Msg::Pong(b"are you there".to_vec()));
    phone.send_pong(&mut h, b"unsolicited");
    phone.send_frame(&mut h, 0x0, true, b"ment\"]");
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, b"[\"fragment\"]")
    );

    // The same in one write, with an empty ping.
    let mut bytes = masked_frame(0x1, false, b"{\"k\":");
    bytes.extend_from_slice(&masked_frame(0x9, true, b""));
    bytes.extend_from_slice(&masked_frame(0x0, true, b"7}"));
    phone.send_raw(&mut h, &bytes);
    assert_eq!(phone.recv(&mut h), Msg::Pong(Vec::new()));
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, b"{\"k\":7}"));
    phone.expect_no_data(&mut h);
}

#[test]
fn pings_are_answered_with_the_same_payload_on_both_legs() {
    let (mut h, mut binary, mut phone, _) = pair();
    let payload = [0u8, 1, 2, 0xff, 0xfe];
    phone.send_ping(&mut h, &payload);
    assert_eq!(phone.recv(&mut h), Msg::Pong(payload.to_vec()));
    binary.send_ping(&mut h, b"from pyry");
    assert_eq!(binary.recv(&mut h), Msg::Pong(b"from pyry".to_vec()));
    // Pings are not forwarded anywhere.
    assert_quiet(&mut h, [&mut binary, &mut phone]);
}

// ---------------------------------------------------------------- payload rules

#[test]
fn invalid_utf8_in_a_phone_text_message_is_1007() {
    violation_closes_phone(&masked_frame(0x1, true, b"\"\xff\""), 1007);
    violation_closes_phone(&masked_frame(0x1, true, b"\"\xc3\""), 1007);
    // Also when the bad byte only shows once fragments are joined.
    let mut bytes = masked_frame(0x1, false, b"\"\xed\xa0");
    bytes.extend_from_slice(&masked_frame(0x0, true, b"\x80\""));
    violation_closes_phone(&bytes, 1007);
}

#[test]
fn a_phone_message_that_is_not_json_is_1007_and_the_sibling_is_unaffected() {
    const NOT_JSON: [&[u8]; 6] = [
        b"hello",
        b"{\"a\":",
        b"{} {}",
        b"",
        b"{'single':1}",
        b"[1,]",
    ];
    for bad in NOT_JSON {
        let (mut h, mut binary, mut phone, conn_id) = pair();
        let (mut sibling, sibling_id) = h.phone_with_id("srv-1", &mut binary);
        phone.send_text(&mut h, bad);
        assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, 1007);

        sibling.send_text(&mut h, b"[\"still here\"]");
        assert_eq!(
            binary.recv_text(&mut h),
            envelope(&sibling_id, b"[\"still here\"]")
        );
        binary.send_text(&mut h, &envelope(&sibling_id, b"\"ack\""));
        assert_eq!(sibling.recv_text(&mut h), b"\"ack\"".to_vec());
        sibling.expect_no_data(&mut h);
    }
}

#[test]
fn a_binary_opcode_phone_message_is_forwarded_as_a_text_envelope() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let message = br#"{"v":2,"data":"AAEC"}"#;
    phone.send_binary(&mut h, message);
    // recv_text fails on anything but a text frame.
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, message));
    phone.send_binary(&mut h, b"not json");
    assert_phone_closed(&mut h, &mut phone, &mut binary, &conn_id, 1007);
}

#[test]
fn everything_delivered_to_a_phone_is_a_text_frame() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    for frame in [&br#"{"a":1}"#[..], b"\"s\"", b"42", b"[]", b"true"] {
        binary.send_text(&mut h, &envelope(&conn_id, frame));
        assert_eq!(phone.recv(&mut h), Msg::Text(frame.to_vec()));
    }
    // Even when the binary used the binary opcode.
    binary.send_binary(&mut h, &envelope(&conn_id, b"[1]"));
    assert_eq!(phone.recv(&mut h), Msg::Text(b"[1]".to_vec()));
}

// ---------------------------------------------------------------- close handshake

/// The relay echoed the phone's close with `echoed` (no reason) and closed
/// the connection; the binary got the close notice with `notice`.
fn close_echoed(
    h: &mut Harness,
    phone: &mut Client,
    binary: &mut Client,
    conn_id: &str,
    echoed: Option<u16>,
    notice: u16,
) {
    assert_eq!(phone.recv_close(h), (echoed, String::new()), "{echoed:?}");
    phone.wait_eof(h);
    assert_eq!(
        json_of(&binary.recv_text(h)),
        json!({"conn_id": conn_id, "close_code": notice})
    );
}

#[test]
fn a_phone_close_is_echoed_and_the_tcp_connection_closed() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    phone.send_close(&mut h, 1000, "bye");
    close_echoed(&mut h, &mut phone, &mut binary, &conn_id, Some(1000), 1000);
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 0);
    drop(phone);
    assert_eq!(h.stats().connections, 1);
}

#[test]
fn every_sendable_close_code_is_echoed() {
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999,
    ] {
        let (mut h, mut binary, mut phone, conn_id) = pair();
        phone.send_close(&mut h, code, "");
        close_echoed(&mut h, &mut phone, &mut binary, &conn_id, Some(code), code);
    }
}

#[test]
fn an_empty_close_is_echoed_empty() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    phone.send_frame(&mut h, 0x8, true, b"");
    // No code of its own: the binary hears 1001 (SPEC §5.4).
    close_echoed(&mut h, &mut phone, &mut binary, &conn_id, None, 1001);
}

#[test]
fn messages_after_the_phones_close_are_not_forwarded() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    let mut bytes = masked_frame(0x8, true, &1000u16.to_be_bytes());
    bytes.extend_from_slice(&masked_frame(0x1, true, br#"{"late":1}"#));
    phone.send_raw(&mut h, &bytes);
    close_echoed(&mut h, &mut phone, &mut binary, &conn_id, Some(1000), 1000);
    binary.expect_no_data(&mut h);
}

#[test]
fn a_one_byte_close_payload_is_1002() {
    violation_closes_phone(&masked_frame(0x8, true, &[0x03]), 1002);
}

#[test]
fn close_codes_that_may_not_be_sent_are_1002() {
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        violation_closes_phone(&masked_frame(0x8, true, &code.to_be_bytes()), 1002);
    }
}

#[test]
fn a_close_reason_that_is_not_utf8_is_1007() {
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bad \xff reason");
    violation_closes_phone(&masked_frame(0x8, true, &payload), 1007);
}

#[test]
fn the_relays_close_completes_when_the_peer_echoes_it() {
    let (mut h, mut binary, mut phone, conn_id) = pair();
    // A close directive: the relay starts the handshake with the binary's code.
    binary.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{conn_id}","close_code":4401}}"#).as_bytes(),
    );
    assert_eq!(phone.recv_close(&mut h), (Some(4401), String::new()));
    // Until the echo, the relay keeps the socket and forwards nothing more.
    phone.send_text(&mut h, b"[\"ignored\"]");
    assert!(!phone.is_closed(&mut h));
    phone.send_close(&mut h, 4401, "");
    phone.wait_eof(&mut h);
    // A directive's close gets no notice back.
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 0);
}

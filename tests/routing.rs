//! Routing between a binary and its phones (SPEC §5, §7, §8, §9): the
//! envelope both ways byte for byte, malformed and misaddressed envelopes,
//! close directives and close notices, ordering, backpressure from a slow
//! binary, the backlog of a slow phone, buffers of idle connections, and
//! shutdown.
//!
//! The first five tests are the scenarios of the binary-forwarder ticket
//! (`seed/binary-forwarder-ticket.txt`), run against the whole relay.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ------------------------------------------------ the ticket's five scenarios

#[test]
fn ticket_1_an_envelope_reaches_only_its_phone_byte_exact() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("srv");
    let (mut other, _) = h.phone_with_id("srv", &mut binary);

    let inner: &[u8] = b"{ \"v\" : 2,\n\t\"type\":\"noise_msg\" ,\"data\":\"q83vEjRW\\u00e9\\\"\",\
        \"nested\":{\"a\":[1, 2.50, -0.0, 1e+10, {\"b\" :null}], \"c\":  {}},\"s\":\"\xc3\xa9\xf0\x9f\x98\x80\"  }";
    // The envelope itself with odd spacing, frame before conn_id, and an
    // unknown field.
    let mut env = b"{ \"frame\" :  ".to_vec();
    env.extend_from_slice(inner);
    env.extend_from_slice(
        format!(" ,\n \"extra\": {{\"ignored\": [true]}}, \"conn_id\"  :\"{conn_id}\" }}")
            .as_bytes(),
    );
    binary.send_text(&mut h, &env);

    assert_eq!(phone.recv(&mut h), Msg::Text(inner.to_vec()));
    assert_quiet(&mut h, [&mut other, &mut binary]);

    // Scalars are frames too, delivered as their JSON text.
    for scalar in [&b"\"just a string\""[..], b"42", b"true", b"[ ]"] {
        binary.send_text(&mut h, &envelope(&conn_id, scalar));
        assert_eq!(phone.recv(&mut h), Msg::Text(scalar.to_vec()));
    }
    other.expect_no_data(&mut h);
}

#[test]
fn ticket_2_two_phones_each_get_only_their_own() {
    let mut h = Harness::start();
    let (mut binary, mut p1, id1) = h.pair("srv");
    let (mut p2, id2) = h.phone_with_id("srv", &mut binary);
    assert_ne!(id1, id2);

    let mut both = envelope(&id1, br#"{"for":"one"}"#);
    both = masked_frame(0x1, true, &both);
    both.extend_from_slice(&masked_frame(
        0x1,
        true,
        &envelope(&id2, br#"{"for":"two"}"#),
    ));
    both.extend_from_slice(&masked_frame(
        0x1,
        true,
        &envelope(&id1, br#"{"for":"one","again":true}"#),
    ));
    binary.send_raw(&mut h, &both);

    assert_eq!(p1.recv_text(&mut h), br#"{"for":"one"}"#.to_vec());
    assert_eq!(
        p1.recv_text(&mut h),
        br#"{"for":"one","again":true}"#.to_vec()
    );
    assert_eq!(p2.recv_text(&mut h), br#"{"for":"two"}"#.to_vec());
    assert_quiet(&mut h, [&mut p1, &mut p2]);
}

#[test]
fn ticket_3_an_unknown_conn_id_is_dropped_and_the_binary_keeps_reading() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("srv");

    let unknown = "client-srv-00000000000000000000000000000000";
    binary.send_text(&mut h, &envelope(unknown, br#"{"lost":true}"#));
    binary.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{unknown}","close_code":4401}}"#).as_bytes(),
    );
    assert_quiet(&mut h, [&mut phone, &mut binary]);

    binary.send_text(&mut h, &envelope(&conn_id, br#"{"lands":true}"#));
    assert_eq!(phone.recv_text(&mut h), br#"{"lands":true}"#.to_vec());
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().binaries, 1);
}

#[test]
fn ticket_4_a_binary_disconnect_schedules_the_grace_release() {
    let mut h = Harness::start();
    let (binary, mut phones) = h.server_with_phones("srv", 2);
    drop(binary);
    assert_eq!(h.stats().binaries, 0);

    h.advance(secs(29));
    for (phone, _) in phones.iter_mut() {
        phone.expect_no_data(&mut h);
    }
    h.advance(SECOND);
    for (phone, _) in phones.iter_mut() {
        phone.expect_closed(&mut h, BINARY_GONE);
    }
    assert_eq!(h.stats().phones, 0);
}

#[test]
fn ticket_5_shutdown_closes_everyone_1001_and_finishes_after_the_handshakes() {
    let mut h = Harness::start();
    let (mut binary, phones) = h.server_with_phones("srv", 2);
    let mut lone = h.binary("srv-2");

    h.relay_mut().shutdown();
    let mut clients: Vec<Client> = phones.into_iter().map(|(phone, _)| phone).collect();
    binary.expect_closed(&mut h, SHUTTING_DOWN);
    // No close notices: the binary's next frame was the close itself.
    lone.expect_closed(&mut h, SHUTTING_DOWN);
    for phone in clients.iter_mut() {
        phone.expect_closed(&mut h, SHUTTING_DOWN);
    }
    // New connections are no longer accepted.
    assert!(TcpStream::connect(h.addr()).is_err());

    assert!(!h.relay().is_finished());
    drop((binary, lone, clients));
    h.settle();
    assert!(h.relay().is_finished());
    assert_eq!(h.stats().connections, 0);
}

#[test]
fn shutdown_with_silent_peers_finishes_at_the_drain_deadline() {
    let mut h = Harness::start();
    let (mut binary, mut phone, _) = h.pair("srv");
    h.relay_mut().shutdown();
    binary.expect_close_frame(&mut h, SHUTTING_DOWN);
    phone.expect_close_frame(&mut h, SHUTTING_DOWN);
    h.advance(Duration::from_millis(9_990));
    assert!(!h.relay().is_finished());
    h.advance(Duration::from_millis(10));
    assert!(h.relay().is_finished());
    binary.wait_eof(&mut h);
    phone.wait_eof(&mut h);
}

#[test]
fn the_drain_deadline_ends_shutdown_even_with_a_long_write_timeout() {
    let mut h = Harness::with_config(|c| c.write_timeout = secs(60));
    let (mut binary, _phone, _) = h.pair("srv");
    h.relay_mut().shutdown();
    assert_eq!(binary.recv_close(&mut h).0, Some(1001));
    h.advance(secs(9));
    assert!(!h.relay().is_finished());
    h.advance(SECOND);
    assert!(h.relay().is_finished());
}

#[test]
fn shutdown_delivers_what_is_queued_before_the_close() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = h.pair("srv");
    phone.set_relay_send_buffer(&h, 16 * 1024);
    // The phone reads nothing for now: most of this stays queued in the relay.
    let frame = |i: usize| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "w".repeat(8 * 1024));
    for i in 0..30 {
        binary.send_text(&mut h, &envelope(&conn_id, frame(i).as_bytes()));
    }
    assert!(h.stats().connections_with_buffers >= 1, "nothing queued");

    h.relay_mut().shutdown();
    binary.expect_closed(&mut h, SHUTTING_DOWN);
    for i in 0..30 {
        assert_eq!(phone.recv(&mut h), Msg::Text(frame(i).into_bytes()));
    }
    phone.expect_closed(&mut h, SHUTTING_DOWN);
}

// -------------------------------------------------------- malformed envelopes

#[test]
fn malformed_envelopes_are_dropped_and_the_binary_keeps_working() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");

    let bad: Vec<Vec<u8>> = vec![
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}}"#).into_bytes(), // truncated
        b"not json at all".to_vec(),
        Vec::new(),
        format!(r#"[{{"conn_id":"{id}","frame":{{"a":1}}}}]"#).into_bytes(),
        format!(r#""{id}""#).into_bytes(),
        b"42".to_vec(),
        b"null".to_vec(),
        br#"{"conn_id":123,"frame":{"a":1}}"#.to_vec(),
        br#"{"conn_id":null,"frame":{"a":1}}"#.to_vec(),
        format!(r#"{{"conn_id":["{id}"],"frame":{{"a":1}}}}"#).into_bytes(),
        br#"{"frame":{"a":1}}"#.to_vec(),
        format!(r#"{{"conn_id":"{id}"}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":null}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":1005}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":999}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":5000}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":1006}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":1015}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":2999}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":70000}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":-1}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":"4401"}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","close_code":1005}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":null,"close_code":999}}"#).into_bytes(),
        // Not UTF-8: not JSON. The phone must never get such a text frame.
        b"\xff\xfe".to_vec(),
        [
            &b"{\"conn_id\":\""[..],
            id.as_bytes(),
            b"\",\"frame\":\"\xff\"}",
        ]
        .concat(),
        [
            &b"{\"conn_id\":\""[..],
            id.as_bytes(),
            b"\",\"frame\":{\"k\":\"\xc3\"}}",
        ]
        .concat(),
    ];
    for (i, envelope_bytes) in bad.iter().enumerate() {
        binary.send_text(&mut h, envelope_bytes);
        assert_quiet(&mut h, [&mut phone, &mut binary]);
        // The next good envelope lands.
        let good = format!(r#"{{"after_bad":{i}}}"#);
        binary.send_text(&mut h, &envelope(&id, good.as_bytes()));
        assert_eq!(
            phone.recv(&mut h),
            Msg::Text(good.into_bytes()),
            "after bad envelope {:?}",
            String::from_utf8_lossy(envelope_bytes)
        );
    }
    assert_routes(&mut h, &mut binary, &mut phone, &id);
    assert_eq!(h.peers(), (1, 1));
}

#[test]
fn close_code_zero_is_no_directive() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    binary.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{id}","frame":{{"a":1}},"close_code":0}}"#).as_bytes(),
    );
    assert_eq!(phone.recv(&mut h), Msg::Text(br#"{"a":1}"#.to_vec()));
    phone.expect_no_data(&mut h);
    assert_routes(&mut h, &mut binary, &mut phone, &id);
}

#[test]
fn an_envelope_for_another_server_ids_phone_is_dropped() {
    let mut h = Harness::start();
    let (mut binary_a, mut phone_a, id_a) = h.pair("srv-a");
    let (mut binary_b, mut phone_b, id_b) = h.pair("srv-b");

    binary_a.send_text(&mut h, &envelope(&id_b, br#"{"stolen":true}"#));
    binary_a.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{id_b}","frame":{{"bye":1}},"close_code":4401}}"#).as_bytes(),
    );
    binary_a.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{id_b}","close_code":1000}}"#).as_bytes(),
    );
    assert_quiet(
        &mut h,
        [&mut phone_b, &mut phone_a, &mut binary_a, &mut binary_b],
    );

    assert_routes(&mut h, &mut binary_a, &mut phone_a, &id_a);
    assert_routes(&mut h, &mut binary_b, &mut phone_b, &id_b);
    assert_eq!(h.stats().phones, 2);
}

#[test]
fn push_wake_is_dropped_without_push_and_the_binary_stays_up() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    binary.send_text(
        &mut h,
        br#"{"push_wake":{"platform":"fcm","token":"fcm-token-xyz"}}"#,
    );
    assert_quiet(&mut h, [&mut binary, &mut phone]);
    assert!(h
        .relay()
        .metrics_text()
        .contains("pyrycode_relay_push_wakes_total{outcome=\"dropped\"} 1\n"));
    assert_routes(&mut h, &mut binary, &mut phone, &id);
    assert_eq!(h.stats().binaries, 1);
}

// ----------------------------------------------------------- close directives

#[test]
fn a_close_directive_with_a_frame_delivers_it_then_closes() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    let (mut sibling, sibling_id) = h.phone_with_id("srv", &mut binary);

    binary.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{id}", "frame": {{"error" : "auth"}} ,"close_code":4401}}"#)
            .as_bytes(),
    );
    assert_eq!(
        phone.recv(&mut h),
        Msg::Text(br#"{"error" : "auth"}"#.to_vec())
    );
    assert_eq!(
        phone.expect_closed_by_relay(&mut h),
        (Some(4401), String::new())
    );
    // No close notice for a close the binary asked for.
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 1);
    // Later envelopes to it are dropped; the sibling is unaffected.
    binary.send_text(&mut h, &envelope(&id, br#"{"too":"late"}"#));
    sibling.expect_no_data(&mut h);
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
}

#[test]
fn a_close_directive_without_a_frame_only_closes() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    binary.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{id}","close_code":4421}}"#).as_bytes(),
    );
    assert_eq!(phone.recv(&mut h), Msg::Close(Some(4421), String::new()));
    phone.send_close(&mut h, 4421, "");
    phone.wait_eof(&mut h);
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 0);
}

#[test]
fn a_close_directive_with_a_null_frame_only_closes() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    binary.send_text(
        &mut h,
        format!(r#"{{"conn_id":"{id}","frame":null,"close_code":4426}}"#).as_bytes(),
    );
    assert_eq!(phone.recv(&mut h), Msg::Close(Some(4426), String::new()));
    // The phone vanishes instead of answering: still no notice.
    drop(phone);
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 0);
}

#[test]
fn a_close_directive_comes_after_everything_queued_before_it() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend(masked_frame(
            0x1,
            true,
            &envelope(&id, format!("{{\"n\":{i}}}").as_bytes()),
        ));
    }
    batch.extend(masked_frame(
        0x1,
        true,
        format!(r#"{{"conn_id":"{id}","frame":{{"n":"last"}},"close_code":1000}}"#).as_bytes(),
    ));
    batch.extend(masked_frame(0x1, true, &envelope(&id, br#"{"n":"after"}"#)));
    binary.send_raw(&mut h, &batch);
    for i in 0..5 {
        assert_eq!(
            phone.recv(&mut h),
            Msg::Text(format!("{{\"n\":{i}}}").into_bytes())
        );
    }
    assert_eq!(phone.recv(&mut h), Msg::Text(br#"{"n":"last"}"#.to_vec()));
    assert_eq!(
        phone.expect_closed_by_relay(&mut h),
        (Some(1000), String::new())
    );
    binary.expect_no_data(&mut h);
}

#[test]
fn every_sendable_close_code_is_a_directive() {
    let mut h = Harness::start();
    let mut binary = h.binary("srv");
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4401, 4999,
    ] {
        let (mut phone, id) = h.phone_with_id("srv", &mut binary);
        binary.send_text(
            &mut h,
            format!(r#"{{"conn_id":"{id}","close_code":{code}}}"#).as_bytes(),
        );
        assert_eq!(
            phone.expect_closed_by_relay(&mut h),
            (Some(code), String::new()),
            "directive {code}"
        );
    }
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 0);
}

// -------------------------------------------------------------- close notices

#[test]
fn a_phone_closing_1000_gives_the_binary_an_exact_notice() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    let (mut sibling, sibling_id) = h.phone_with_id("srv", &mut binary);
    phone.send_close(&mut h, 1000, "done");
    assert_eq!(phone.recv_close(&mut h), (Some(1000), String::new()));
    phone.wait_eof(&mut h);
    assert_eq!(
        binary.recv(&mut h),
        Msg::Text(format!(r#"{{"conn_id":"{id}","close_code":1000}}"#).into_bytes())
    );
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 1);
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
}

#[test]
fn a_phone_closing_with_its_own_code_reports_that_code() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    phone.send_close(&mut h, 4000, "app went to background");
    assert_eq!(binary.recv_text(&mut h), close_notice(&id, 4000));
    binary.expect_no_data(&mut h);
}

#[test]
fn a_phone_closing_without_a_code_reports_1001() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    phone.send_frame(&mut h, 0x8, true, b"");
    assert_eq!(binary.recv_text(&mut h), close_notice(&id, 1001));
    binary.expect_no_data(&mut h);
}

#[test]
fn a_phone_dropping_its_tcp_connection_reports_1001() {
    let mut h = Harness::start();
    let (mut binary, phone, id) = h.pair("srv");
    let (mut sibling, sibling_id) = h.phone_with_id("srv", &mut binary);
    drop(phone);
    assert_eq!(binary.recv_text(&mut h), close_notice(&id, 1001));
    binary.expect_no_data(&mut h);
    let stats = h.stats();
    assert_eq!((stats.phones, stats.connections), (1, 2));
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
}

#[test]
fn a_phone_sending_non_json_is_closed_1007_and_the_binary_told() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    let (mut sibling, sibling_id) = h.phone_with_id("srv", &mut binary);
    phone.send_text(&mut h, b"{\"half\": ");
    assert_eq!(
        phone.expect_closed_by_relay(&mut h),
        (Some(1007), String::new())
    );
    // Nothing was forwarded; the notice is the binary's only message.
    assert_eq!(binary.recv(&mut h), Msg::Text(close_notice(&id, 1007)));
    binary.expect_no_data(&mut h);
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
}

#[test]
fn a_phone_sending_invalid_utf8_in_a_binary_message_is_closed_1007() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    phone.send_binary(&mut h, b"\"\xff\xfe\"");
    assert_eq!(phone.recv_close(&mut h), (Some(1007), String::new()));
    assert_eq!(binary.recv(&mut h), Msg::Text(close_notice(&id, 1007)));
    binary.expect_no_data(&mut h);
}

#[test]
fn a_phone_message_over_the_size_limit_is_closed_1009_and_the_binary_told() {
    let mut h = Harness::with_config(|c| c.max_message_size = 1024);
    let (mut binary, mut phone, id) = h.pair("srv");
    let (mut sibling, sibling_id) = h.phone_with_id("srv", &mut binary);
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    phone.send_text(&mut h, big.as_bytes());
    assert_eq!(phone.recv_close(&mut h), (Some(1009), String::new()));
    assert_eq!(binary.recv(&mut h), Msg::Text(close_notice(&id, 1009)));
    binary.expect_no_data(&mut h);
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
}

#[test]
fn a_phone_that_stops_answering_pings_is_closed_1011_and_the_binary_told() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    h.advance(secs(30));
    assert_eq!(binary.recv(&mut h), Msg::Ping(Vec::new()));
    binary.send_pong(&mut h, b"");
    assert_eq!(phone.recv(&mut h), Msg::Ping(Vec::new()));
    h.advance(secs(29));
    binary.expect_no_data(&mut h);
    h.advance(SECOND);
    phone.expect_close_frame(&mut h, HEARTBEAT_TIMEOUT);
    assert_eq!(binary.recv_text(&mut h), close_notice(&id, 1011));
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().binaries, 1);
}

// ------------------------------------------------------- phone → binary bytes

#[test]
fn phone_frames_reach_the_binary_byte_exact() {
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    let inners: [&[u8]; 5] = [
        b" \t\r\n{ \"v\":2 , \"data\" : \"\\u00e9\\ud83d\\ude00\\n\\\"\\\\\",\"raw\":\"\xc3\xa9\xf0\x9f\x98\x80\",\
          \"deep\":{\"a\":[[[ {\"b\":[1,2.50,-3e-7, null,false]} ]]]}}\n ",
        b"\"a string frame\"",
        b"0",
        b"[]",
        b"{}",
    ];
    for inner in inners {
        phone.send_text(&mut h, inner);
        assert_eq!(binary.recv(&mut h), Msg::Text(envelope(&id, inner)));
    }
    // A binary-opcode message is forwarded as text, verbatim.
    phone.send_binary(&mut h, br#"{"bin" : 1}"#);
    assert_eq!(
        binary.recv(&mut h),
        Msg::Text(envelope(&id, br#"{"bin" : 1}"#))
    );
    // A fragmented message is forwarded once, reassembled.
    phone.send_frame(&mut h, 0x1, false, br#"{"frag":"#);
    binary.expect_no_data(&mut h);
    phone.send_frame(&mut h, 0x0, false, br#" [1, "#);
    phone.send_ping(&mut h, b"mid");
    assert_eq!(phone.recv(&mut h), Msg::Pong(b"mid".to_vec()));
    phone.send_frame(&mut h, 0x0, true, br#"2] }"#);
    assert_eq!(
        binary.recv(&mut h),
        Msg::Text(envelope(&id, br#"{"frag": [1, 2] }"#))
    );
    binary.expect_no_data(&mut h);
}

#[test]
fn per_phone_order_is_kept_over_a_thousand_messages() {
    let mut h = Harness::start();
    let (mut binary, mut p1, id1) = h.pair("srv");
    let (mut p2, id2) = h.phone_with_id("srv", &mut binary);

    // Phones → binary: both phones send 1000 messages, written in
    // interleaved chunks.
    let frames = |tag: &str| -> Vec<Vec<u8>> {
        (0..1000)
            .map(|i| masked_frame(0x1, true, format!("{{\"{tag}\":{i}}}").as_bytes()))
            .collect()
    };
    let (f1, f2) = (frames("a"), frames("b"));
    for (c1, c2) in f1.chunks(37).zip(f2.chunks(37)) {
        p1.send_raw(&mut h, &c1.concat());
        p2.send_raw(&mut h, &c2.concat());
    }
    let (mut next1, mut next2) = (0, 0);
    for _ in 0..2000 {
        let msg = binary.recv_text(&mut h);
        if msg == envelope(&id1, format!("{{\"a\":{next1}}}").as_bytes()) {
            next1 += 1;
        } else if msg == envelope(&id2, format!("{{\"b\":{next2}}}").as_bytes()) {
            next2 += 1;
        } else {
            panic!(
                "out of order at a={next1} b={next2}: {}",
                String::from_utf8_lossy(&msg)
            );
        }
    }
    assert_eq!((next1, next2), (1000, 1000));

    // Binary → phones, in one write.
    let mut batch = Vec::new();
    for i in 0..1000 {
        batch.extend(masked_frame(
            0x1,
            true,
            &envelope(&id1, format!("[{i}]").as_bytes()),
        ));
        batch.extend(masked_frame(
            0x1,
            true,
            &envelope(&id2, format!("[{i},{i}]").as_bytes()),
        ));
    }
    binary.send_raw(&mut h, &batch);
    for i in 0..1000 {
        assert_eq!(p1.recv_text(&mut h), format!("[{i}]").into_bytes());
        assert_eq!(p2.recv_text(&mut h), format!("[{i},{i}]").into_bytes());
    }
    assert_quiet(&mut h, [&mut p1, &mut p2]);
}

// ------------------------------------------------------------- backpressure

/// Phone message `i` of the backpressure test (about 200 bytes).
fn numbered(i: usize) -> Vec<u8> {
    let mut msg = format!("{{\"seq\":{i},\"pad\":\"").into_bytes();
    msg.resize(196, b'p');
    msg.extend_from_slice(b"\"}");
    msg
}

#[test]
fn a_slow_binary_pushes_back_on_its_phones_and_nothing_is_dropped() {
    const COUNT: usize = 10_000;
    let mut h = Harness::start();
    let (mut binary, mut phone, id) = h.pair("srv");
    // Small kernel buffers on both legs, so that what the relay holds
    // back shows: the kernel alone cannot absorb the phone's 2 MB.
    binary.set_recv_buffer(32 * 1024);
    binary.set_relay_send_buffer(&h, 32 * 1024);
    phone.set_send_buffer(32 * 1024);
    phone.set_relay_recv_buffer(&h, 32 * 1024);

    let stream: Vec<u8> = (0..COUNT)
        .flat_map(|i| masked_frame(0x1, true, &numbered(i)))
        .collect();

    // The binary reads nothing: the phone is sent until it cannot write.
    let mut at = 0;
    let mut idle = 0;
    while at < stream.len() && idle < 200 {
        let n = phone.write_some(&stream[at..]);
        at += n;
        idle = if n == 0 { idle + 1 } else { 0 };
        h.turn_waiting(Duration::from_millis(1));
    }
    assert!(
        at < stream.len(),
        "the relay read all {} bytes of the phone while its binary read nothing",
        stream.len()
    );
    h.settle();
    assert_eq!(h.stats().phones, 1);

    // The binary reads: everything arrives, in order, and the phone can
    // send the rest.
    for i in 0..COUNT {
        if at < stream.len() {
            at += phone.write_some(&stream[at..]);
        }
        let msg = binary.recv_text(&mut h);
        assert!(
            msg == envelope(&id, &numbered(i)),
            "message {i} is wrong: {}",
            String::from_utf8_lossy(&msg[..msg.len().min(120)])
        );
    }
    assert_eq!(at, stream.len());
    assert_quiet(&mut h, [&mut binary, &mut phone]);
    let stats = h.stats();
    assert_eq!((stats.binaries, stats.phones), (1, 1));
    assert_eq!(stats.connections_with_buffers, 0);
    assert_routes(&mut h, &mut binary, &mut phone, &id);
}

#[test]
fn a_phone_that_never_reads_is_closed_1011_when_its_backlog_is_full() {
    let mut h = Harness::with_config(|c| c.phone_backlog = 64 * 1024);
    let (mut binary, mut sleeper, sleeper_id) = h.pair("srv");
    let (mut sibling, sibling_id) = h.phone_with_id("srv", &mut binary);
    // Small kernel buffers, so the relay's own queue fills after kilobytes.
    sleeper.set_relay_send_buffer(&h, 16 * 1024);

    let chunk = format!("{{\"blob\":\"{}\"}}", "z".repeat(8 * 1024));
    let mut sent = 0;
    while h.stats().phones == 2 {
        assert!(sent < 64 * 1024 * 1024, "the sleeper was never closed");
        binary.send_text(&mut h, &envelope(&sleeper_id, chunk.as_bytes()));
        sent += chunk.len();
    }
    assert_eq!(
        binary.recv(&mut h),
        Msg::Text(close_notice(&sleeper_id, 1011))
    );
    binary.expect_no_data(&mut h);

    // The binary and the sibling go on as before.
    assert_routes(&mut h, &mut binary, &mut sibling, &sibling_id);
    binary.send_text(&mut h, &envelope(&sleeper_id, br#"{"gone":true}"#));
    assert_quiet(&mut h, [&mut sibling, &mut binary]);
    assert_eq!(h.stats().binaries, 1);

    // What the sleeper finally reads: its frames, then the close.
    let mut frames = 0;
    loop {
        match sleeper.recv(&mut h) {
            Msg::Text(bytes) => {
                assert_eq!(bytes, chunk.as_bytes());
                frames += 1;
            }
            Msg::Close(code, reason) => {
                assert_eq!(
                    (code, reason.as_str()),
                    (Some(BACKLOG_FULL.0), BACKLOG_FULL.1)
                );
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        frames * chunk.len() < sent,
        "a frame over the budget was delivered"
    );
    // However the sleeper's connection ends now, the binary heard once.
    drop(sleeper);
    h.advance(secs(10));
    binary.expect_no_data(&mut h);
    assert_eq!(h.stats().connections, 2);
}

// ------------------------------------------------------------------ buffers

#[test]
fn idle_connections_hold_no_buffers_after_traffic() {
    let mut h = Harness::start();
    let (mut binary, mut p1, id1) = h.pair("srv");
    let (mut p2, id2) = h.phone_with_id("srv", &mut binary);
    assert_routes(&mut h, &mut binary, &mut p1, &id1);
    assert_routes(&mut h, &mut binary, &mut p2, &id2);

    // A frame split across writes, a fragmented message, a large message.
    let frame = masked_frame(0x1, true, br#"{"split":"in two"}"#);
    p1.send_raw(&mut h, &frame[..7]);
    assert_eq!(h.stats().connections_with_buffers, 1);
    p1.send_raw(&mut h, &frame[7..]);
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&id1, br#"{"split":"in two"}"#)
    );
    p2.send_frame(&mut h, 0x1, false, b"[1,");
    p2.send_frame(&mut h, 0x0, true, b"2]");
    assert_eq!(binary.recv_text(&mut h), envelope(&id2, b"[1,2]"));
    let big = format!("\"{}\"", "q".repeat(200 * 1024));
    binary.send_text(&mut h, &envelope(&id1, big.as_bytes()));
    assert_eq!(p1.recv_text(&mut h), big.as_bytes());

    h.settle();
    let stats = h.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.connections_with_buffers, 0);
}

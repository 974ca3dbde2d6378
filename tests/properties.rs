//! Property tests (issue 4, point 1), run on stable with every
//! `cargo test`: envelopes wrap and unwrap byte-exact for arbitrary JSON
//! values; a valid byte stream split at arbitrary points gives the same
//! frames, the same messages and, through the real relay, the same
//! routing. The fuzz targets in `fuzz/` check the same properties on
//! arbitrary (mostly invalid) input.

mod common;

use proptest::prelude::*;
use pyrycode_relay::envelope::{self, BinaryEnvelope};
use serde_json::Value;

use common::stream::{client_frame, decode_split, Event};
use common::*;

const CONN_ID: &str =
    "client-0b6f0e0c-5b5e-4c54-9f49-8d8f8f6f7a1b-00112233445566778899aabbccddeeff";

/// Arbitrary JSON values: every kind, nested, with strings that need
/// escaping and numbers of every shape.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\\\\\"\u{0}-\u{1f}\u{7f}\u{e9}\u{1f600}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
}

/// The text a phone might send for `value`: compact, pretty, or with
/// whitespace around it.
fn json_text() -> impl Strategy<Value = Vec<u8>> {
    (json_value(), 0..3u8).prop_map(|(value, style)| match style {
        0 => serde_json::to_vec(&value).unwrap(),
        1 => serde_json::to_vec_pretty(&value).unwrap(),
        _ => format!(" \n\t{} \r\n", serde_json::to_string(&value).unwrap()).into_bytes(),
    })
}

fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// The payload of the one unmasked frame the relay wrote.
fn payload(out: &[u8]) -> &[u8] {
    match out[1] {
        126 => &out[4..],
        127 => &out[10..],
        _ => &out[2..],
    }
}

/// A valid client byte stream: data messages (some fragmented, with pings
/// between fragments), and the events the relay must see for it.
fn valid_stream() -> impl Strategy<Value = (Vec<u8>, Vec<Event>)> {
    let message = (
        json_text(),
        any::<bool>(),
        prop::collection::vec(any::<usize>(), 0..4),
        any::<[u8; 4]>(),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..126)),
    );
    prop::collection::vec(message, 1..8).prop_map(|messages| {
        let mut bytes = Vec::new();
        let mut events = Vec::new();
        for (text, is_text, cuts, mask, mut ping) in messages {
            let opcode = if is_text { 0x1 } else { 0x2 };
            // Fragment boundaries at arbitrary points of the message.
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
            bounds.sort_unstable();
            bounds.dedup();
            let mut pieces = Vec::new();
            let mut at = 0;
            for b in bounds {
                pieces.push(&text[at..b]);
                at = b;
            }
            pieces.push(&text[at..]);
            let last = pieces.len() - 1;
            if last == 0 {
                // Not fragmented: the ping goes before the message.
                if let Some(ping) = ping.take() {
                    bytes.extend(client_frame(0x9, true, mask, &ping));
                    events.push(Event::Ping(ping));
                }
            }
            for (i, piece) in pieces.iter().enumerate() {
                let op = if i == 0 { opcode } else { 0x0 };
                bytes.extend(client_frame(op, i == last, mask, piece));
                if i == 0 {
                    if let Some(ping) = &ping {
                        bytes.extend(client_frame(0x9, true, mask, ping));
                        events.push(Event::Ping(ping.clone()));
                    }
                }
            }
            events.push(Event::Message {
                text: is_text,
                payload: text,
            });
        }
        (bytes, events)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Phone → binary → phone: the frame comes back byte for byte.
    #[test]
    fn envelopes_wrap_and_unwrap_byte_exact(text in json_text()) {
        prop_assume!(trim_json_whitespace(&text) != b"null");
        prop_assert!(envelope::is_json(&text));
        let mut out = Vec::new();
        envelope::write_phone_message(&mut out, CONN_ID, &text);
        let wrapped = payload(&out);
        // What the binary receives is JSON whose frame is the phone's value…
        let value: Value = serde_json::from_slice(wrapped).unwrap();
        prop_assert_eq!(&value["conn_id"], CONN_ID);
        prop_assert_eq!(&value["frame"], &serde_json::from_slice::<Value>(&text).unwrap());
        // …and an envelope the binary sends back with it is the same bytes.
        match envelope::parse_binary_message(wrapped) {
            Ok(BinaryEnvelope::Deliver { conn_id, frame: Some(frame), close_code: None }) => {
                prop_assert_eq!(conn_id.as_ref(), CONN_ID);
                prop_assert_eq!(frame, trim_json_whitespace(&text));
            }
            other => prop_assert!(false, "did not parse back: {:?}", other),
        }
    }

    /// A valid stream gives the same events however it is cut into reads.
    #[test]
    fn frames_do_not_depend_on_where_the_stream_is_split(
        (bytes, expected) in valid_stream(),
        cuts in prop::collection::vec(1..300usize, 0..24),
    ) {
        let (whole, left) = decode_split(&bytes, &[], 256 * 1024);
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(left, 0);
        let (split, left) = decode_split(&bytes, &cuts, 256 * 1024);
        prop_assert_eq!(&split, &expected);
        prop_assert_eq!(left, 0);
        // One byte per read, the worst case.
        let ones = vec![1; bytes.len()];
        prop_assert_eq!(decode_split(&bytes, &ones, 256 * 1024).0, expected);
    }
}

proptest! {
    // Each case runs a relay with real sockets.
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Through the relay: a phone's stream cut at arbitrary points, with
    /// relay turns between the pieces, reaches the binary as the same
    /// envelopes in the same order.
    #[test]
    fn routing_does_not_depend_on_where_the_stream_is_split(
        (bytes, expected) in valid_stream(),
        cuts in prop::collection::vec(1..200usize, 0..16),
    ) {
        let mut h = Harness::start();
        let (mut binary, mut phone, conn_id) = h.pair("split");
        let mut at = 0usize;
        for cut in cuts.iter().chain([&usize::MAX]) {
            let end = at.saturating_add(*cut).min(bytes.len());
            phone.send_raw(&mut h, &bytes[at..end]);
            at = end;
        }
        for event in expected {
            match event {
                Event::Message { payload, .. } => {
                    prop_assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, &payload));
                }
                Event::Ping(payload) => prop_assert_eq!(phone.recv(&mut h), Msg::Pong(payload)),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }
        binary.expect_no_data(&mut h);
    }
}

/// Fuzzer finding (envelope target): a phone's message `null` is valid
/// JSON and is forwarded, but `"frame":null` in an envelope from the
/// binary means "no frame" (SPEC §5.2), so it cannot travel back. Not a
/// bug; the round-trip property excludes it.
#[test]
fn a_null_frame_is_forwarded_but_means_no_frame_on_the_way_back() {
    let mut out = Vec::new();
    envelope::write_phone_message(&mut out, CONN_ID, b"null");
    assert!(envelope::is_json(payload(&out)));
    assert_eq!(
        envelope::parse_binary_message(payload(&out)).unwrap_err(),
        "no frame and no close_code"
    );
}

/// serde_json skips nested values (`IgnoredAny`, `RawValue`) without
/// recursion, so no nesting depth is refused and none overflows the
/// stack: 128 Ki levels (all a 256 KiB message holds) pass both ways.
#[test]
fn deeply_nested_json_is_neither_refused_nor_a_stack_overflow() {
    let depth = 128 * 1024 - 64;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    assert!(envelope::is_json(nested.as_bytes()));
    let mut out = Vec::new();
    envelope::write_phone_message(&mut out, CONN_ID, nested.as_bytes());
    match envelope::parse_binary_message(payload(&out)) {
        Ok(BinaryEnvelope::Deliver {
            frame: Some(frame), ..
        }) => assert_eq!(frame, nested.as_bytes()),
        other => panic!("{other:?}"),
    }
}

//! The envelope decoder (`envelope::parse_binary_message`) on arbitrary
//! bytes, and the round trip: any JSON text a phone sends, wrapped by
//! `envelope::write_phone_message`, parses back to the same conn_id and
//! to exactly the same frame bytes (JSON whitespace around the value
//! aside, which `RawValue` does not keep).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyrycode_relay::envelope::{self, BinaryEnvelope};
use pyrycode_relay::ws;

const CONN_ID: &str = "client-srv-0123456789abcdef0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    // 1. Any bytes from a binary: an envelope or an error, never a panic,
    //    and a frame is always a slice of the input that is JSON itself.
    if let Ok(BinaryEnvelope::Deliver {
        frame, close_code, ..
    }) = envelope::parse_binary_message(data)
    {
        if let Some(frame) = frame {
            assert!(envelope::is_json(frame));
            let start = frame.as_ptr() as usize - data.as_ptr() as usize;
            assert!(start + frame.len() <= data.len());
        } else {
            assert!(close_code.is_some());
        }
        if let Some(code) = close_code {
            assert!(ws::is_sendable_close_code(code));
        }
    }

    // 2. The round trip, for inputs a phone may send. A bare `null` frame
    //    means "no frame" in an envelope (SPEC §5.2), so it cannot come back.
    if !envelope::is_json(data) || trim_json_whitespace(data) == b"null" {
        return;
    }
    let mut out = Vec::new();
    envelope::write_phone_message(&mut out, CONN_ID, data);
    let payload = strip_header(&out);
    assert!(envelope::is_json(payload));
    match envelope::parse_binary_message(payload) {
        Ok(BinaryEnvelope::Deliver {
            conn_id,
            frame: Some(frame),
            close_code: None,
        }) => {
            assert_eq!(conn_id, CONN_ID);
            assert_eq!(frame, trim_json_whitespace(data));
        }
        other => panic!("wrapped JSON did not parse back: {other:?}"),
    }
});

/// The payload of the single unmasked frame in `out`.
fn strip_header(out: &[u8]) -> &[u8] {
    match out[1] {
        126 => &out[4..],
        127 => &out[10..],
        _ => &out[2..],
    }
}

fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |e| e + 1);
    &bytes[start..end]
}

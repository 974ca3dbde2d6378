//! The routing envelope of the binary leg (SPEC §5).
//!
//! Phone → binary: `{"conn_id":"…","frame":<the phone's bytes>}` is written
//! straight into the binary's output as one WebSocket text frame, the
//! phone's bytes copied verbatim (they are only validated as JSON, never
//! re-encoded). Binary → phone: the envelope is parsed with the `frame`
//! value kept as a borrowed [`RawValue`], whose bytes go to the phone
//! untouched. The relay never looks inside a frame.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ws::{self, FrameKind};

const WRAP_PREFIX: &[u8] = b"{\"conn_id\":\"";
const WRAP_MIDDLE: &[u8] = b"\",\"frame\":";
const WRAP_SUFFIX: &[u8] = b"}";

/// Whether `bytes` are one valid JSON text (UTF-8 included).
pub fn is_json(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str::<IgnoredAny>(text).is_ok(),
        Err(_) => false,
    }
}

/// Appends the text frame carrying a phone's message to its binary.
/// `conn_id` holds only `[A-Za-z0-9._:-]`, so it needs no escaping.
pub fn write_phone_message(out: &mut Vec<u8>, conn_id: &str, frame: &[u8]) {
    let len = WRAP_PREFIX.len() + conn_id.len() + WRAP_MIDDLE.len() + frame.len() + 1;
    ws::write_header(out, FrameKind::Text, len);
    out.extend_from_slice(WRAP_PREFIX);
    out.extend_from_slice(conn_id.as_bytes());
    out.extend_from_slice(WRAP_MIDDLE);
    out.extend_from_slice(frame);
    out.extend_from_slice(WRAP_SUFFIX);
}

/// Appends the close notice telling a binary that a phone is gone (§5.4).
pub fn write_close_notice(out: &mut Vec<u8>, conn_id: &str, code: u16) {
    let body = format!("{{\"conn_id\":\"{conn_id}\",\"close_code\":{code}}}");
    ws::write_frame(out, FrameKind::Text, body.as_bytes());
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    conn_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    frame: Option<&'a RawValue>,
    #[serde(default)]
    close_code: Option<u16>,
    #[serde(borrow, default)]
    push_wake: Option<&'a RawValue>,
}

/// A well-formed envelope from a binary.
#[derive(Debug)]
pub enum BinaryEnvelope<'a> {
    /// Deliver `frame` (if any) to `conn_id`, then close it with
    /// `close_code` (if any).
    Deliver {
        conn_id: Cow<'a, str>,
        frame: Option<&'a [u8]>,
        close_code: Option<u16>,
    },
    /// A `push_wake` request (§5.3): the raw JSON value of its key.
    PushWake(&'a [u8]),
}

/// Parses one message from a binary; the error says why it is malformed.
pub fn parse_binary_message(bytes: &[u8]) -> Result<BinaryEnvelope<'_>, &'static str> {
    let wire: Wire = serde_json::from_slice(bytes).map_err(|_| "not a JSON envelope object")?;
    let Some(conn_id) = wire.conn_id else {
        return match wire.push_wake {
            Some(wake) => Ok(BinaryEnvelope::PushWake(wake.get().as_bytes())),
            None => Err("no conn_id"),
        };
    };
    let conn_id = json_string(conn_id).ok_or("conn_id is not a string")?;
    let close_code = wire.close_code.filter(|code| *code != 0);
    if let Some(code) = close_code {
        if !ws::is_sendable_close_code(code) {
            return Err("close_code is not a sendable close code");
        }
    }
    let frame = wire.frame.map(|raw| raw.get().as_bytes());
    if frame.is_none() && close_code.is_none() {
        return Err("no frame and no close_code");
    }
    Ok(BinaryEnvelope::Deliver {
        conn_id,
        frame,
        close_code,
    })
}

/// The value of a JSON string, borrowed when it has no escapes.
fn json_string(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(bytes: &[u8]) -> (String, Option<Vec<u8>>, Option<u16>) {
        match parse_binary_message(bytes).unwrap() {
            BinaryEnvelope::Deliver {
                conn_id,
                frame,
                close_code,
            } => (conn_id.into_owned(), frame.map(<[u8]>::to_vec), close_code),
            BinaryEnvelope::PushWake(_) => panic!("push_wake"),
        }
    }

    #[test]
    fn the_inner_frame_keeps_its_exact_bytes() {
        let inner =
            br#"{ "v":2, "type" : "noise_msg","data":"q83vEjRW\u00e9" , "n":[1, 2.50,{}] }"#;
        let mut envelope = br#"{"conn_id":"client-s-00","frame":"#.to_vec();
        envelope.extend_from_slice(inner);
        envelope.extend_from_slice(br#","extra":true}"#);
        let (conn_id, frame, code) = deliver(&envelope);
        assert_eq!(conn_id, "client-s-00");
        assert_eq!(frame.unwrap(), inner.to_vec());
        assert_eq!(code, None);
    }

    #[test]
    fn close_directives_and_malformed_envelopes() {
        assert_eq!(
            deliver(br#"{"conn_id":"c","close_code":4401}"#),
            ("c".into(), None, Some(4401))
        );
        assert_eq!(
            deliver(br#"{"conn_id":"c","frame":null,"close_code":1000}"#),
            ("c".into(), None, Some(1000))
        );
        for bad in [
            &br#"{"conn_id":"c"}"#[..],
            br#"{"conn_id":"c","frame":null}"#,
            br#"{"conn_id":"c","frame":{},"close_code":1005}"#,
            br#"{"conn_id":"c","frame":{},"close_code":70000}"#,
            br#"{"conn_id":"c","frame":{},"close_code":"x"}"#,
            br#"{"conn_id":7,"frame":{}}"#,
            br#"[1,2]"#,
            br#"{"conn_id":null,"frame":{}}"#,
            br#"{"frame":{}}"#,
            b"not json",
        ] {
            assert!(
                parse_binary_message(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            deliver(br#"{"conn_id":"\u0063","frame":1}"#),
            ("c".into(), Some(b"1".to_vec()), None)
        );
        assert!(matches!(
            parse_binary_message(br#"{"push_wake":{"platform":"fcm","token":"t"}}"#),
            Ok(BinaryEnvelope::PushWake(
                br#"{"platform":"fcm","token":"t"}"#
            ))
        ));
    }

    #[test]
    fn phone_messages_are_wrapped_verbatim() {
        let mut out = Vec::new();
        write_phone_message(&mut out, "client-s-ab", b" [1, 2] ");
        assert_eq!(out[0], 0x81);
        assert_eq!(&out[2..], br#"{"conn_id":"client-s-ab","frame": [1, 2] }"#);
        assert!(is_json(&out[2..]));
        assert!(!is_json(b"{"));
        assert!(!is_json(b"\xff"));
    }
}

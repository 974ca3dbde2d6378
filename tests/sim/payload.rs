//! What the simulated peers send: JSON messages that name their sender
//! and their place in its sequence, formatted at random (whitespace,
//! escapes, raw UTF-8, numbers the relay must not normalise), so that
//! "byte-exact" means something; and the malformed input the relay must
//! refuse.

use super::rng::Rng;

const SPACE: [&str; 6] = ["", "", " ", "\t", "\n", "\r\n "];
const PIECES: [&str; 12] = [
    "abc",
    "Z",
    "\\\"",
    "\\\\",
    "\\/",
    "\\u00e9",
    "\\ud83d\\ude00",
    "\\n",
    "é",
    "😀",
    "-_.",
    "0123456789",
];
const EXTRAS: [&str; 5] = [
    r#""n":[1,-0,2.50e-3,true,null,{}]"#,
    r#""deep":{"a":{"b":[[[]]]}}"#,
    r#""big":123456789012345678901234567890"#,
    r#""f":1E+2"#,
    r#""s":"\u0000""#,
];

/// `{"<tag>":<from>,"k":<k>,"x":"…"}` of about `size` bytes, valid JSON.
pub fn message(rng: &mut Rng, tag: &str, from: usize, k: usize, size: usize) -> Vec<u8> {
    let mut out = String::with_capacity(size + 64);
    let space = |rng: &mut Rng, out: &mut String| {
        out.push_str(SPACE[rng.below(SPACE.len())]);
    };
    out.push('{');
    space(rng, &mut out);
    out.push_str(&format!("\"{tag}\""));
    space(rng, &mut out);
    out.push(':');
    space(rng, &mut out);
    out.push_str(&from.to_string());
    out.push(',');
    space(rng, &mut out);
    out.push_str(&format!("\"k\":{k},"));
    if rng.chance(30) {
        out.push_str(EXTRAS[rng.below(EXTRAS.len())]);
        out.push(',');
    }
    space(rng, &mut out);
    out.push_str("\"x\":\"");
    while out.len() < size {
        out.push_str(PIECES[rng.below(PIECES.len())]);
    }
    out.push('"');
    space(rng, &mut out);
    out.push('}');
    out.into_bytes()
}

/// The sender and sequence number `bytes` carries under `tag`.
pub fn tag_of(bytes: &[u8], tag: &str) -> Option<(usize, usize)> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let from = value.get(tag)?.as_u64()? as usize;
    let k = value.get("k")?.as_u64()? as usize;
    Some((from, k))
}

/// A phone message the relay must refuse with 1007: not JSON.
pub fn not_json(rng: &mut Rng) -> Vec<u8> {
    let choices: [&[u8]; 5] = [b"{", b"hello", b"{\"a\":}", b"[1,2", b"{\"a\":1}x"];
    choices[rng.below(choices.len())].to_vec()
}

/// A binary envelope the relay must drop with a warning, keeping the
/// binary: bad JSON, wrong types, no frame, a code it cannot send.
pub fn malformed_envelope(rng: &mut Rng, conn_id: Option<&str>) -> Vec<u8> {
    let id = conn_id.unwrap_or("client-nobody-0");
    let choices = [
        b"not json at all".to_vec(),
        br#"{"conn_id":7,"frame":{}}"#.to_vec(),
        br#"["conn_id","frame"]"#.to_vec(),
        format!(r#"{{"conn_id":"{id}"}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":null}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{}},"close_code":1005}}"#).into_bytes(),
        format!(r#"{{"conn_id":"{id}","frame":{{}},"close_code":"x"}}"#).into_bytes(),
        br#"{"conn_id":"client-nobody-00000000000000000000000000000000","frame":{}}"#.to_vec(),
    ];
    choices[rng.below(choices.len())].clone()
}

//! The frame decoder with message reassembly, driven like the relay drives
//! it (`tests/support/stream.rs`): the stream is cut into reads at
//! fuzzer-chosen points. The events (messages, control frames, the first
//! error) must not depend on the cuts, and nothing held between reads may
//! exceed the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod split;
#[path = "../../tests/support/stream.rs"]
mod stream;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, data)) = data.split_first() else {
        return;
    };
    // Small limits reach 1009 quickly; 125 and 126 sit at header edges.
    let max_message = match limit % 4 {
        0 => 125,
        1 => 126,
        2 => 1024,
        _ => 256 * 1024,
    };
    let input = split::split(data);
    let (whole, whole_left) = stream::decode_split(input.stream, &[], max_message);
    let mut decoder = stream::Decoder::new(max_message);
    for (chunk, _) in &input.chunks {
        decoder.feed(chunk);
    }
    let (cut, cut_left) = decoder.finish();
    assert_eq!(whole, cut, "events depend on where the stream was cut");
    assert_eq!(whole_left, cut_left);
});

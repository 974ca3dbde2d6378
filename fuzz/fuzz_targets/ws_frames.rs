//! The library's WebSocket reader (`ws::Reader`, the one the relay reads
//! with) over a stream cut into reads at fuzzer-chosen points. The events
//! (messages, control frames, the first error) must not depend on the
//! cuts, and nothing held between reads may exceed the limits
//! (`tests/support/stream.rs: decode_split` checks those bounds).
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
    let cuts: Vec<usize> = input.chunks.iter().map(|(chunk, _)| chunk.len()).collect();
    let whole = stream::decode_split(input.stream, &[], max_message);
    let cut = stream::decode_split(input.stream, &cuts, max_message);
    assert_eq!(whole, cut, "events depend on where the stream was cut");
});

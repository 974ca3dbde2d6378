//! The PROXY v2 header parser (`proxy_protocol::parse`), driven like the
//! relay will drive it: the connection's first bytes arrive in reads cut at
//! fuzzer-chosen points, and the buffer is re-parsed after each read.
//!
//! Beyond "no panic": the first decision does not depend on the cuts (it
//! equals the one-shot result on the whole stream, or both are `Partial`);
//! once made, a decision never changes as more bytes arrive; a complete
//! header is no longer than the input or the cap, every shorter prefix of
//! it is `Partial`, and its source is the one its address block names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyrycode_relay::proxy_protocol::{self, Parse, MAX_HEADER_LEN};

mod split;

fuzz_target!(|data: &[u8]| {
    let input = split::split(data);
    let stream = input.stream;
    let whole = proxy_protocol::parse(stream);

    // Reads cut where the fuzzer says; the rest arrives in one last read.
    let mut received = 0;
    let mut first = Parse::Partial;
    let ends = input
        .chunks
        .iter()
        .map(|(chunk, _)| chunk.len())
        .chain(std::iter::once(stream.len()));
    for len in ends {
        received = (received + len).min(stream.len());
        let step = proxy_protocol::parse(&stream[..received]);
        if first == Parse::Partial {
            first = step;
        } else {
            assert_eq!(step, first, "decision changed at {received} bytes");
        }
        if received == stream.len() {
            break;
        }
    }
    assert_eq!(first, whole, "the cuts changed the decision");

    if let Parse::Complete { len, source } = whole {
        assert!(len <= stream.len() && len <= MAX_HEADER_LEN);
        for cut in 0..len {
            assert_eq!(proxy_protocol::parse(&stream[..cut]), Parse::Partial);
        }
        let block = &stream[16..];
        let (ip, port): (std::net::IpAddr, u16) = match stream[13] >> 4 {
            1 => (
                <[u8; 4]>::try_from(&block[..4]).unwrap().into(),
                u16::from_be_bytes([block[8], block[9]]),
            ),
            _ => (
                <[u8; 16]>::try_from(&block[..16]).unwrap().into(),
                u16::from_be_bytes([block[32], block[33]]),
            ),
        };
        assert_eq!(source, std::net::SocketAddr::new(ip, port));
        assert_eq!(&stream[..12], &proxy_protocol::SIGNATURE);
    }
});

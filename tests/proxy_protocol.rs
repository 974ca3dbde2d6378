//! Property tests of the PROXY v2 parser (`src/proxy_protocol.rs`), run on
//! stable with every `cargo test`: a valid header (with the first bytes of
//! TLS after it) gives the same result however the connection's reads
//! split it, and on arbitrary bytes a decision never changes once made.
//! `fuzz/fuzz_targets/proxy_header.rs` checks the same on fuzzed input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use pyrycode_relay::proxy_protocol::{self, Parse, MAX_HEADER_LEN};

/// Any TCP4 or TCP6 source/destination pair.
fn addresses() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
    prop_oneof![
        (
            any::<[u8; 4]>(),
            any::<u16>(),
            any::<[u8; 4]>(),
            any::<u16>()
        )
            .prop_map(|(s, sp, d, dp)| (
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(s)), sp),
                SocketAddr::new(IpAddr::V4(Ipv4Addr::from(d)), dp),
            )),
        (
            any::<[u8; 16]>(),
            any::<u16>(),
            any::<[u8; 16]>(),
            any::<u16>()
        )
            .prop_map(|(s, sp, d, dp)| (
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), sp),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), dp),
            )),
    ]
}

/// Feeds `stream` in chunks of the given sizes, as a connection's reads
/// would accumulate it, and returns the first decision (or `Partial`).
fn feed(stream: &[u8], chunks: &[usize]) -> Parse {
    let mut received = 0;
    let mut sizes = chunks.iter().copied().chain(std::iter::repeat(1));
    while received < stream.len() {
        received = (received + sizes.next().unwrap().max(1)).min(stream.len());
        let step = proxy_protocol::parse(&stream[..received]);
        if step != Parse::Partial {
            return step;
        }
    }
    Parse::Partial
}

proptest! {
    #[test]
    fn any_split_of_a_valid_header_gives_the_same_result(
        (source, destination) in addresses(),
        tlv in prop::collection::vec(any::<u8>(), 0..64),
        after in prop::collection::vec(any::<u8>(), 0..64),
        chunks in prop::collection::vec(1usize..24, 0..40),
    ) {
        let header = proxy_protocol::encode(source, destination, &tlv);
        let mut stream = header.clone();
        stream.extend_from_slice(&after);
        let expected = Parse::Complete { len: header.len(), source: Some(source) };
        prop_assert_eq!(proxy_protocol::parse(&stream), expected);
        prop_assert_eq!(feed(&stream, &chunks), expected);
    }

    #[test]
    fn a_decision_never_changes_as_more_bytes_arrive(
        prefix in prop_oneof![
            Just(proxy_protocol::SIGNATURE.to_vec()),
            Just([&proxy_protocol::SIGNATURE[..], &[0x21, 0x11]].concat()),
            Just([&proxy_protocol::SIGNATURE[..], &[0x21, 0x21, 0x00]].concat()),
            Just(b"PROXY ".to_vec()),
            Just(Vec::new()),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let stream = [prefix, tail].concat();
        let mut decided: Option<Parse> = None;
        for end in 0..=stream.len() {
            let step = proxy_protocol::parse(&stream[..end]);
            match decided {
                Some(first) => prop_assert_eq!(step, first, "at {} bytes", end),
                None if step != Parse::Partial => decided = Some(step),
                None => {}
            }
            if let Parse::Complete { len, .. } = step {
                prop_assert!(len <= end && len <= MAX_HEADER_LEN);
            }
        }
    }
}

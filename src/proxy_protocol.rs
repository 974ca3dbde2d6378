//! The PROXY protocol v2 header that a TCP-passthrough load balancer puts
//! in front of each connection (`--https-proxy-protocol`,
//! `--proxy-protocol`): it carries the client's real address, which then
//! replaces the TCP peer address for the rate limit, the per-IP caps and
//! the logs.
//!
//! The header is binary and small (HAProxy's `doc/proxy-protocol.txt`, §2.2):
//!
//! ```text
//!  0..12  signature  \r \n \r \n \0 \r \n Q U I T \n
//!  12     version (high nibble, must be 2) | command (low: 0 LOCAL, 1 PROXY)
//!  13     family (high: 1 INET, 2 INET6)   | transport (low: 1 STREAM)
//!  14..16 length of what follows, big-endian
//!  16..   addresses: TCP4 src(4) dst(4) sport(2) dport(2) = 12 bytes,
//!                    TCP6 src(16) dst(16) sport(2) dport(2) = 36 bytes,
//!         then TLVs (ignored)
//! ```
//!
//! The relay accepts what a load balancer in front of it sends: a `PROXY`
//! command with a TCP over IPv4 or IPv6 source (a real client), or a
//! `LOCAL` command (the balancer's own connection: a health check; the
//! spec says to accept it and use the real endpoints; the loop lets such a
//! connection ask for `/healthz` and nothing else). Everything else is a
//! [`Refusal`], and the caller closes the connection without writing a
//! byte: a missing header (the client spoke TLS or HTTP straight away), a
//! v1 text header, UDP or UNIX-socket addresses, a length too short for the
//! addresses, or a header longer than [`MAX_HEADER_LEN`].
//!
//! [`parse`] is stateless and cheap: it looks at the accumulated bytes of
//! a connection's first reads (split anywhere) and says [`Parse::Partial`]
//! (read more), [`Parse::Complete`] (strip `len` bytes; the rest belongs to
//! TLS or HTTP) or [`Parse::Refused`]. It decides from the bytes in header
//! order, so a refusal is known as early as the bytes allow (the first byte
//! of a missing header already refuses it) and never changes as more bytes
//! arrive; a prefix of a valid header is always `Partial`. Only the fixed
//! 16 bytes and the address block are read, so re-parsing a growing buffer
//! costs O(1). The caller enforces [`HEADER_DEADLINE`].
//!
//! A hand parser rather than a crate (`ppp`, `proxy-header`): the format is
//! fixed and small, the relay needs its own refusal reasons (for the logs)
//! and its own length cap, and this parser allocates nothing. It has its
//! own fuzz target (`fuzz/fuzz_targets/proxy_header.rs`) and property tests
//! (`tests/proxy_protocol.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// The 12-byte signature that starts every v2 header.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The start of a v1 (text) header, refused with its own reason.
const V1_PREFIX: &[u8] = b"PROXY ";
/// Signature, version/command, family/transport, length.
const FIXED_LEN: usize = 16;
/// Source and destination IPv4 addresses and ports.
const TCP4_ADDRESS_LEN: usize = 12;
/// Source and destination IPv6 addresses and ports.
const TCP6_ADDRESS_LEN: usize = 36;
/// The longest header accepted, TLVs included. Load balancers send the
/// addresses and a few short TLVs (AWS: a VPC endpoint id; GCP: a
/// connection id); this bounds what an unauthenticated peer can make the
/// relay buffer before it knows who is talking.
pub const MAX_HEADER_LEN: usize = 1024;
/// The whole header must have arrived this long after the accept.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);

/// What the bytes received so far say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// A valid header so far: read more.
    Partial,
    /// A whole valid header of `len` bytes (addresses and TLVs included).
    Complete {
        /// Bytes to strip before TLS or HTTP begins.
        len: usize,
        /// The client's address and port, from a `PROXY` header; `None`
        /// for a `LOCAL` header: the proxy opened the connection itself
        /// (a health check), and the spec says to accept it with the real
        /// endpoints and ignore the address block.
        source: Option<SocketAddr>,
    },
    /// Not a header the relay accepts; close without writing.
    Refused(Refusal),
}

/// Why a header is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The bytes do not start with the v2 signature (no header at all).
    Missing,
    /// A PROXY protocol v1 text header.
    Version1,
    /// The version nibble is not 2.
    BadVersion,
    /// A command other than `LOCAL` or `PROXY`.
    BadCommand,
    /// An address family other than IPv4 or IPv6 (UNSPEC, UNIX).
    UnsupportedFamily,
    /// A transport other than STREAM (UDP, UNSPEC).
    UnsupportedTransport,
    /// The length field is shorter than the address block.
    ShortAddresses,
    /// The header is longer than [`MAX_HEADER_LEN`].
    TooLong,
}

impl Refusal {
    /// The `reason=` value of the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Version1 => "v1_text_header",
            Refusal::BadVersion => "bad_version",
            Refusal::BadCommand => "bad_command",
            Refusal::UnsupportedFamily => "unsupported_family",
            Refusal::UnsupportedTransport => "unsupported_transport",
            Refusal::ShortAddresses => "short_addresses",
            Refusal::TooLong => "too_long",
        }
    }
}

/// The address families the relay accepts.
#[derive(Clone, Copy)]
enum Family {
    Tcp4,
    Tcp6,
}

impl Family {
    fn address_len(self) -> usize {
        match self {
            Family::Tcp4 => TCP4_ADDRESS_LEN,
            Family::Tcp6 => TCP6_ADDRESS_LEN,
        }
    }
}

/// Parses the start of a connection's bytes as a PROXY v2 header.
///
/// `bytes` is everything received so far; call again with more bytes
/// after a [`Parse::Partial`].
pub fn parse(bytes: &[u8]) -> Parse {
    match check_signature(bytes) {
        Ok(()) => {}
        Err(step) => return step,
    }
    let Some(&version_command) = bytes.get(12) else {
        return Parse::Partial;
    };
    let command = match check_version_command(version_command) {
        Ok(command) => command,
        Err(refusal) => return Parse::Refused(refusal),
    };
    let Some(&family_transport) = bytes.get(13) else {
        return Parse::Partial;
    };
    if command == Command::Local {
        return parse_local(bytes);
    }
    let family = match check_family_transport(family_transport) {
        Ok(family) => family,
        Err(refusal) => return Parse::Refused(refusal),
    };
    let Some(length) = bytes.get(14..FIXED_LEN) else {
        return Parse::Partial;
    };
    let rest = usize::from(u16::from_be_bytes([length[0], length[1]]));
    if rest < family.address_len() {
        return Parse::Refused(Refusal::ShortAddresses);
    }
    let len = FIXED_LEN + rest;
    if len > MAX_HEADER_LEN {
        return Parse::Refused(Refusal::TooLong);
    }
    if bytes.len() < len {
        return Parse::Partial;
    }
    let source = source_address(family, &bytes[FIXED_LEN..]);
    Parse::Complete {
        len,
        source: Some(source),
    }
}

/// A `LOCAL` header: its family and address block are ignored (HAProxy's
/// health checks send UNSPEC and none), only its length counts.
fn parse_local(bytes: &[u8]) -> Parse {
    let Some(length) = bytes.get(14..FIXED_LEN) else {
        return Parse::Partial;
    };
    let len = FIXED_LEN + usize::from(u16::from_be_bytes([length[0], length[1]]));
    if len > MAX_HEADER_LEN {
        return Parse::Refused(Refusal::TooLong);
    }
    if bytes.len() < len {
        return Parse::Partial;
    }
    Parse::Complete { len, source: None }
}

/// The two commands of a v2 header.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Local,
    Proxy,
}

/// `Ok` once all 12 signature bytes match; otherwise the step to return.
fn check_signature(bytes: &[u8]) -> Result<(), Parse> {
    let seen = bytes.len().min(SIGNATURE.len());
    if bytes[..seen] == SIGNATURE[..seen] {
        return if seen == SIGNATURE.len() {
            Ok(())
        } else {
            Err(Parse::Partial)
        };
    }
    // Not v2. A v1 text header gets its own reason, known after 6 bytes;
    // anything else is refused at the first byte that differs from both.
    let v1_seen = bytes.len().min(V1_PREFIX.len());
    if bytes[..v1_seen] == V1_PREFIX[..v1_seen] {
        return Err(if v1_seen == V1_PREFIX.len() {
            Parse::Refused(Refusal::Version1)
        } else {
            Parse::Partial
        });
    }
    Err(Parse::Refused(Refusal::Missing))
}

fn check_version_command(byte: u8) -> Result<Command, Refusal> {
    if byte >> 4 != 2 {
        return Err(Refusal::BadVersion);
    }
    match byte & 0x0f {
        0x0 => Ok(Command::Local),
        0x1 => Ok(Command::Proxy),
        _ => Err(Refusal::BadCommand),
    }
}

fn check_family_transport(byte: u8) -> Result<Family, Refusal> {
    let family = match byte >> 4 {
        0x1 => Family::Tcp4,
        0x2 => Family::Tcp6,
        _ => return Err(Refusal::UnsupportedFamily),
    };
    match byte & 0x0f {
        0x1 => Ok(family),
        _ => Err(Refusal::UnsupportedTransport),
    }
}

/// The source address and port of the address block (its length was
/// checked against the family by the caller).
fn source_address(family: Family, block: &[u8]) -> SocketAddr {
    match family {
        Family::Tcp4 => {
            let ip: [u8; 4] = block[0..4].try_into().expect("4 bytes");
            let port = u16::from_be_bytes([block[8], block[9]]);
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
        }
        Family::Tcp6 => {
            let ip: [u8; 16] = block[0..16].try_into().expect("16 bytes");
            let port = u16::from_be_bytes([block[32], block[33]]);
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)
        }
    }
}

/// Encodes a `PROXY` header for `source` → `destination` (same family),
/// followed by `tlv` bytes. Tests, fuzz targets and the benchmark use it to
/// play the load balancer.
pub fn encode(source: SocketAddr, destination: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + TCP6_ADDRESS_LEN + tlv.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(0x21);
    let addresses: Vec<u8> = match (source, destination) {
        (SocketAddr::V4(src), SocketAddr::V4(dst)) => {
            out.push(0x11);
            [&src.ip().octets()[..], &dst.ip().octets()[..]].concat()
        }
        (SocketAddr::V6(src), SocketAddr::V6(dst)) => {
            out.push(0x21);
            [&src.ip().octets()[..], &dst.ip().octets()[..]].concat()
        }
        _ => panic!("PROXY header: source and destination of different families"),
    };
    let rest = addresses.len() + 4 + tlv.len();
    out.extend_from_slice(&u16::try_from(rest).expect("header too long").to_be_bytes());
    out.extend_from_slice(&addresses);
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out.extend_from_slice(tlv);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Vec<u8> {
        encode(
            "203.0.113.7:51234".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
            &[],
        )
    }

    fn with_byte(mut header: Vec<u8>, at: usize, value: u8) -> Vec<u8> {
        header[at] = value;
        header
    }

    #[test]
    fn tcp4_header_gives_the_source_and_its_length() {
        let mut bytes = v4();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let expected = Parse::Complete {
            len: 28,
            source: Some("203.0.113.7:51234".parse().unwrap()),
        };
        assert_eq!(parse(&bytes), expected);
    }

    #[test]
    fn tcp6_header_with_tlvs_is_stripped_whole() {
        let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c'];
        let header = encode(
            "[2001:db8::1]:40000".parse().unwrap(),
            "[2001:db8::2]:8443".parse().unwrap(),
            &tlv,
        );
        assert_eq!(header.len(), 16 + 36 + tlv.len());
        let expected = Parse::Complete {
            len: header.len(),
            source: Some("[2001:db8::1]:40000".parse().unwrap()),
        };
        assert_eq!(parse(&header), expected);
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_partial() {
        let header = v4();
        for cut in 0..header.len() {
            assert_eq!(parse(&header[..cut]), Parse::Partial, "cut at {cut}");
        }
    }

    #[test]
    fn a_request_or_client_hello_is_missing_at_the_first_byte() {
        assert_eq!(parse(b"G"), Parse::Refused(Refusal::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Parse::Refused(Refusal::Missing));
        assert_eq!(parse(b"\r\n\r\nX"), Parse::Refused(Refusal::Missing));
    }

    #[test]
    fn v1_text_header_is_refused_with_its_own_reason() {
        assert_eq!(parse(b"PROX"), Parse::Partial);
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert_eq!(parse(v1), Parse::Refused(Refusal::Version1));
        assert_eq!(parse(b"POST /"), Parse::Refused(Refusal::Missing));
    }

    #[test]
    fn a_local_header_is_complete_without_a_source() {
        // HAProxy's health check: LOCAL, UNSPEC, no address block.
        let check = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00GET /healthz";
        assert_eq!(parse(&check[..15]), Parse::Partial);
        assert_eq!(
            parse(check),
            Parse::Complete {
                len: 16,
                source: None
            }
        );
        // LOCAL with an (ignored) address block of its own length.
        assert_eq!(
            parse(&with_byte(v4(), 12, 0x20)),
            Parse::Complete {
                len: v4().len(),
                source: None
            }
        );
    }

    #[test]
    fn wrong_version_and_command_are_refused() {
        let bytes = with_byte(v4(), 12, 0x11);
        assert_eq!(parse(&bytes), Parse::Refused(Refusal::BadVersion));
        let bytes = with_byte(v4(), 12, 0x22);
        assert_eq!(parse(&bytes), Parse::Refused(Refusal::BadCommand));
    }

    #[test]
    fn udp_unix_and_unspec_addresses_are_refused() {
        let cases = [
            (0x12, Refusal::UnsupportedTransport), // UDP over IPv4
            (0x22, Refusal::UnsupportedTransport), // UDP over IPv6
            (0x10, Refusal::UnsupportedTransport), // IPv4, UNSPEC transport
            (0x31, Refusal::UnsupportedFamily),    // UNIX stream
            (0x00, Refusal::UnsupportedFamily),    // UNSPEC
            (0x41, Refusal::UnsupportedFamily),    // undefined family
        ];
        for (byte, refusal) in cases {
            let bytes = with_byte(v4(), 13, byte);
            assert_eq!(parse(&bytes), Parse::Refused(refusal), "byte {byte:#04x}");
            // Known as soon as that byte has arrived.
            assert_eq!(parse(&bytes[..14]), Parse::Refused(refusal));
        }
    }

    #[test]
    fn length_too_short_for_the_addresses_is_refused() {
        let mut bytes = v4();
        bytes[14..16].copy_from_slice(&11u16.to_be_bytes());
        assert_eq!(parse(&bytes), Parse::Refused(Refusal::ShortAddresses));
        // An IPv6 family with an IPv4-sized block.
        let bytes = with_byte(v4(), 13, 0x21);
        assert_eq!(parse(&bytes), Parse::Refused(Refusal::ShortAddresses));
    }

    #[test]
    fn header_longer_than_the_cap_is_refused_from_its_length_field() {
        let mut bytes = v4();
        let rest = u16::try_from(MAX_HEADER_LEN - 16 + 1).unwrap();
        bytes[14..16].copy_from_slice(&rest.to_be_bytes());
        assert_eq!(parse(&bytes[..16]), Parse::Refused(Refusal::TooLong));
        let longest = encode(
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
            &vec![0; MAX_HEADER_LEN - 28],
        );
        assert!(matches!(parse(&longest), Parse::Complete { len, .. } if len == MAX_HEADER_LEN));
    }

    #[test]
    fn refusal_reasons_are_distinct_log_words() {
        let all = [
            Refusal::Missing,
            Refusal::Version1,
            Refusal::BadVersion,
            Refusal::BadCommand,
            Refusal::UnsupportedFamily,
            Refusal::UnsupportedTransport,
            Refusal::ShortAddresses,
            Refusal::TooLong,
        ];
        let words: std::collections::HashSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(words.len(), all.len());
    }
}

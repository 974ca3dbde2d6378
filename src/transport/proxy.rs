//! The PROXY layer: a connection's first bytes are a PROXY protocol v2
//! header (`crate::proxy_protocol` parses it); the client address it names
//! replaces the TCP peer, and the bytes after it belong to the next layer.
//!
//! The header usually arrives in the first segment. When the network cuts
//! it, the bytes so far wait in a pooled buffer (at most
//! `proxy_protocol::MAX_HEADER_LEN`) and are parsed again, whole, with the
//! next read: the parser is stateless. A refusal is known at the first
//! byte that cannot start a valid header and ends the connection with
//! nothing written. The 5 s deadline is the loop's (a connection deadline
//! like any other).

use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::ServerConfig;

use super::tls::TlsLayer;
use super::{read_some, split_scratch, Input, Refusal};
use crate::buffer::BufferPool;
use crate::proxy_protocol::{self, Parse};

/// A connection whose PROXY header is not complete yet.
pub(super) struct HeaderStage {
    /// The header's bytes so far, if it came in pieces.
    partial: Option<Vec<u8>>,
    /// TLS follows the header (`--https-proxy-protocol`), or HTTP does.
    then_tls: Option<Arc<ServerConfig>>,
    /// The client's address, once the header is in.
    source: Option<SocketAddr>,
}

/// What a read in this stage led to.
// Once per connection the TLS layer is moved through it into the box the
// PROXY stage occupied: no allocation, one copy.
#[allow(clippy::large_enum_variant)]
pub(super) enum Step {
    /// Something for the loop.
    Input(Input),
    /// The header is in and TLS begins: the transport switches to this
    /// layer and reads on with it (it holds the bytes after the header).
    StartTls(TlsLayer),
}

impl HeaderStage {
    pub(super) fn new(then_tls: Option<Arc<ServerConfig>>) -> HeaderStage {
        HeaderStage {
            partial: None,
            then_tls,
            source: None,
        }
    }

    /// Whether the header is in (and the next layer is plain HTTP: a TLS
    /// layer replaces this stage at once).
    pub(super) fn is_done(&self) -> bool {
        self.source.is_some()
    }

    pub(super) fn source(&self) -> Option<SocketAddr> {
        self.source
    }

    /// Reads the header's bytes. Bytes after a complete header are plain
    /// HTTP (returned at the front of `buf`) or TLS (handed to the new TLS
    /// layer).
    pub(super) fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        pool: &mut BufferPool,
    ) -> Step {
        let (_, region) = split_scratch(buf);
        let mut filled = 0;
        if let Some(partial) = self.partial.take() {
            region[..partial.len()].copy_from_slice(&partial);
            filled = partial.len();
            pool.put(partial);
        }
        let offered = region.len() - filled;
        let n = match read_some(stream, &mut region[filled..]) {
            Ok(Some(n)) => n,
            Ok(None) => return Step::Input(Input::Closed),
            Err(err) => {
                self.keep(&region[..filled], pool);
                return Step::Input(match err.kind() {
                    std::io::ErrorKind::WouldBlock => Input::WouldBlock,
                    _ => Input::Failed(err),
                });
            }
        };
        filled += n;
        match proxy_protocol::parse(&region[..filled]) {
            Parse::Partial => {
                self.keep(&region[..filled], pool);
                Step::Input(Input::Again)
            }
            Parse::Refused(why) => Step::Input(Input::Refused(Refusal::ProxyHeader(why))),
            Parse::Complete { len, source } => {
                self.source = Some(source);
                self.hand_on(buf, len..filled, n == offered, pool)
            }
        }
    }

    /// The header is in: the bytes after it (`rest` of the back half of
    /// `buf`) go to the new TLS layer, or to the front of `buf` as
    /// plaintext.
    fn hand_on(
        &mut self,
        buf: &mut [u8],
        rest: std::ops::Range<usize>,
        more: bool,
        pool: &mut BufferPool,
    ) -> Step {
        let half = buf.len() / 2;
        let rest = half + rest.start..half + rest.end;
        match self.then_tls.take() {
            Some(config) => match TlsLayer::new(config, self.source) {
                Ok(mut tls) => {
                    tls.carry(&buf[rest], pool);
                    Step::StartTls(tls)
                }
                Err(err) => Step::Input(Input::Failed(err)),
            },
            None => {
                let len = rest.len();
                buf.copy_within(rest, 0);
                Step::Input(match len {
                    0 => Input::Again,
                    _ => Input::Data { len, more },
                })
            }
        }
    }

    /// Keeps a partial header for the next read.
    fn keep(&mut self, bytes: &[u8], pool: &mut BufferPool) {
        if !bytes.is_empty() {
            let mut partial = pool.get();
            partial.extend_from_slice(bytes);
            self.partial = Some(partial);
        }
    }

    pub(super) fn partial_len(&self) -> usize {
        self.partial.as_ref().map_or(0, Vec::len)
    }

    pub(super) fn holds_buffer(&self) -> bool {
        self.partial.is_some()
    }

    pub(super) fn buffer_capacity(&self) -> usize {
        self.partial.as_ref().map_or(0, Vec::capacity)
    }

    pub(super) fn release(&mut self, pool: &mut BufferPool) {
        if let Some(partial) = self.partial.take() {
            pool.put(partial);
        }
    }
}

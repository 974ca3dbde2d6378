//! A simulated peer's connection as the generator sees it: bytes of HTTP
//! and WebSocket in and out, over plain TCP or over TLS. The generator
//! calls the same four methods either way; only [`Transport::read`] needs a
//! second scratch buffer, for ciphertext, which plain connections ignore.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use crate::tls::{Client, TlsStream};

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    /// Wraps a socket (connected or connecting): plain, or a TLS client
    /// session whose handshake starts with the first flush.
    pub fn new(tcp: TcpStream, tls: Option<&Client>) -> io::Result<Transport> {
        Ok(match tls {
            None => Transport::Plain(tcp),
            Some(client) => Transport::Tls(Box::new(client.start(tcp)?)),
        })
    }

    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.tcp(),
        }
    }

    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => tls.tcp_mut(),
        }
    }

    /// The TLS session, if this connection has one.
    pub fn tls(&self) -> Option<&TlsStream> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(tls) => Some(tls),
        }
    }

    /// Plaintext into `buf`: `Ok(0)` at the peer's FIN, `WouldBlock` when
    /// drained. `cipher` is only used (and must be non-empty) over TLS.
    pub fn read(&mut self, buf: &mut [u8], cipher: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.read(buf, cipher),
        }
    }

    /// Takes some of `data` (never `Ok(0)` for non-empty data: a full
    /// buffer is `WouldBlock`).
    pub fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(data),
            Transport::Tls(tls) => tls.write(data),
        }
    }

    /// Sends what the transport itself still holds (TLS records queued
    /// while the socket was full); nothing to do for plain TCP.
    pub fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(tls) => tls.flush(),
        }
    }
}

//! The TLS layer: rustls's unbuffered server connection, driven with the
//! loop's buffers.
//!
//! `UnbufferedServerConnection` keeps no buffer of its own: the caller
//! hands it the received bytes and a place for what it sends. Here:
//!
//! - **Reading**: ciphertext lands in the back half of the loop's scratch
//!   buffer (after any partial record kept from the last read), rustls
//!   decrypts the complete records, and their plaintext is copied to the
//!   front half, which is what the loop decodes. A record is never shorter
//!   than its plaintext, so the front half always has room. What rustls has
//!   not consumed (a partial record; in a handshake, the fragments of a
//!   message it joins in place) waits in a pooled buffer until the next
//!   read, and is given back to rustls first, byte for byte, as it must be.
//! - **Writing**: plaintext is encrypted one record (≤ 16 KiB) at a time
//!   into a pooled buffer and written; the next record is encrypted only
//!   once that one is out, so at most one record of ciphertext waits here.
//!   Handshake flights, alerts and `close_notify` wait in the same buffer
//!   until the loop's flush writes them.
//!
//! When the handshake completes with ALPN `acme-tls/1` (a CA validating a
//! TLS-ALPN-01 challenge; the resolver gave it the challenge certificate),
//! the connection is closed with `close_notify`: RFC 8737 sends no data.
//!
//! A failed handshake or record queues rustls's alert and ends the
//! connection; the loop writes the alert, then FIN.

use std::io::{self, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, WriteTraffic,
};
use rustls::ServerConfig;

use super::{read_some, split_scratch, Input, Refusal};
use crate::buffer::BufferPool;

/// Most plaintext in one record (RFC 8446 §5.1).
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// More than any record's header, nonce, tag and content-type byte.
const RECORD_OVERHEAD: usize = 64;
/// Steps rustls may take before it is ready to encrypt (it first emits
/// anything queued: a key update, an alert).
const MAX_STEPS: usize = 16;

/// One TLS connection's state (boxed in the transport: most of it is the
/// rustls connection, about 1 KB).
pub(super) struct TlsLayer {
    conn: UnbufferedServerConnection,
    phase: Phase,
    shutdown: Closing,
    /// Received bytes rustls has not consumed yet.
    input: Option<Vec<u8>>,
    /// `input` holds bytes rustls has not seen at all (handed over by the
    /// PROXY stage): process them even if the socket has nothing new.
    fresh_input: bool,
    /// Ciphertext owed to the peer.
    output: Output,
    /// The PROXY header's client address, until the loop takes it.
    source: Option<SocketAddr>,
}

/// Where the TLS session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Handshaking,
    /// Handshake complete: application data both ways.
    Open,
    /// The peer sent `close_notify`; anything after it is discarded.
    PeerClosed,
    /// A fatal error; the alert is owed, input is discarded.
    Failed,
}

/// How far our side's closing has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Closing {
    Open,
    /// `close_notify` is queued (an ACME validation).
    CloseNotifyQueued,
    /// FIN goes out once everything owed is written.
    FinAfterFlush,
    FinSent,
}

/// What one socket read left to process.
struct Received {
    /// Kept input and new bytes, from the start of the region.
    filled: usize,
    /// New bytes.
    read: usize,
    /// Room the read was given.
    offered: usize,
    /// The socket reached EOF.
    eof: bool,
}

/// What one pass over the received records ended with.
enum End {
    /// Every complete record is consumed; more bytes are needed.
    NeedInput,
    /// The peer's `close_notify` arrived.
    PeerClosed,
    Failed(rustls::Error),
}

impl TlsLayer {
    pub(super) fn new(
        config: Arc<ServerConfig>,
        source: Option<SocketAddr>,
    ) -> io::Result<TlsLayer> {
        Ok(TlsLayer {
            conn: UnbufferedServerConnection::new(config).map_err(io::Error::other)?,
            phase: Phase::Handshaking,
            shutdown: Closing::Open,
            input: None,
            fresh_input: false,
            output: Output::default(),
            source,
        })
    }

    /// Takes bytes that arrived before this layer existed (after a PROXY
    /// header), to be processed by the next read.
    pub(super) fn carry(&mut self, bytes: &[u8], pool: &mut BufferPool) {
        self.keep(bytes, pool);
        self.fresh_input = true;
    }

    pub(super) fn take_source(&mut self) -> Option<SocketAddr> {
        self.source.take()
    }

    pub(super) fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::PeerClosed)
    }

    /// Reads ciphertext and returns the plaintext of the complete records
    /// at the front of `buf`.
    pub(super) fn read(
        &mut self,
        stream: &mut TcpStream,
        buf: &mut [u8],
        pool: &mut BufferPool,
    ) -> Input {
        let (plain, region) = split_scratch(buf);
        if matches!(self.phase, Phase::PeerClosed | Phase::Failed) {
            return discard(stream, region);
        }
        let got = match self.receive(stream, region, pool) {
            Ok(got) => got,
            Err(input) => return input,
        };
        let room = region.len();
        let (consumed, len, end) = self.process(plain, &mut region[..got.filled], pool);
        let rest = &mut region[consumed..got.filled];
        if let Some(input) = self.conclude(end, len, rest, room, pool) {
            return input;
        }
        match (len, got.eof) {
            (0, true) => Input::Closed,
            (0, false) => Input::Again,
            (len, _) => Input::Data {
                len,
                more: got.read > 0 && got.read == got.offered,
            },
        }
    }

    /// Puts the kept input back at the start of `region` and reads the
    /// socket after it. `Err` is what the read says when there is nothing
    /// to process.
    fn receive(
        &mut self,
        stream: &mut TcpStream,
        region: &mut [u8],
        pool: &mut BufferPool,
    ) -> Result<Received, Input> {
        let fresh = std::mem::take(&mut self.fresh_input);
        let mut filled = 0;
        if let Some(kept) = self.input.take() {
            region[..kept.len()].copy_from_slice(&kept);
            filled = kept.len();
            pool.put(kept);
        }
        let offered = region.len() - filled;
        let (read, eof) = match read_some(stream, &mut region[filled..]) {
            Ok(Some(n)) => (n, false),
            Ok(None) => (0, true),
            Err(err) if err.kind() == ErrorKind::WouldBlock && fresh => (0, false),
            Err(err) => {
                self.keep(&region[..filled], pool);
                return Err(match err.kind() {
                    ErrorKind::WouldBlock => Input::WouldBlock,
                    _ => Input::Failed(err),
                });
            }
        };
        if eof && !fresh {
            return Err(Input::Closed); // a partial record is all that is left
        }
        Ok(Received {
            filled: filled + read,
            read,
            offered,
            eof,
        })
    }

    /// After the records: a failure, the peer's `close_notify`, input that
    /// can never complete, or a finished ACME validation end the read
    /// here; otherwise the unconsumed `rest` is kept for the next one.
    fn conclude(
        &mut self,
        end: End,
        len: usize,
        rest: &mut [u8],
        room: usize,
        pool: &mut BufferPool,
    ) -> Option<Input> {
        match end {
            End::Failed(error) => {
                self.fail(rest, pool);
                return Some(Input::Refused(Refusal::Tls(error)));
            }
            End::PeerClosed => {
                self.phase = Phase::PeerClosed;
                return Some(match len {
                    0 => Input::Closed,
                    len => Input::Data { len, more: false },
                });
            }
            End::NeedInput => {}
        }
        if rest.len() == room {
            self.fail(rest, pool);
            return Some(Input::Refused(Refusal::TlsHandshakeTooLarge));
        }
        self.keep(rest, pool);
        if self.phase == Phase::Handshaking && !self.conn.is_handshaking() {
            self.phase = Phase::Open;
            if crate::tls::is_acme_validation(self.conn.alpn_protocol()) {
                if self.queue_close_notify(pool).is_ok() {
                    self.shutdown = Closing::CloseNotifyQueued;
                }
                return Some(Input::Refused(Refusal::AcmeValidationDone));
            }
        }
        None
    }

    /// Runs the received bytes through rustls: plaintext of application
    /// records to `plain`, handshake output to `output`. Returns how many
    /// bytes of `input` are consumed, how much plaintext there is, and why
    /// it stopped.
    fn process(
        &mut self,
        plain: &mut [u8],
        input: &mut [u8],
        pool: &mut BufferPool,
    ) -> (usize, usize, End) {
        let (mut consumed, mut len) = (0, 0);
        loop {
            let status = self.conn.process_tls_records(&mut input[consumed..]);
            let mut discard = status.discard;
            let end = match status.state {
                Err(error) => Some(End::Failed(error)),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut end = None;
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                let to = len + record.payload.len();
                                // Never: a record is longer than its plaintext.
                                let Some(room) = plain.get_mut(len..to) else {
                                    end = Some(End::Failed(rustls::Error::General(
                                        "plaintext larger than its records".into(),
                                    )));
                                    break;
                                };
                                room.copy_from_slice(record.payload);
                                len = to;
                            }
                            Err(error) => {
                                end = Some(End::Failed(error));
                                break;
                            }
                        }
                    }
                    end
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => self
                    .output
                    .append(pool, 0, |room| data.encode(room).map_err(encode_shortfall))
                    .err()
                    .map(|err| End::Failed(rustls::Error::General(err.to_string()))),
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    // The loop's flush writes `output` at the end of the turn.
                    data.done();
                    None
                }
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Some(End::PeerClosed),
                // BlockedHandshake, WriteTraffic (nothing left to read);
                // no early data is accepted.
                Ok(_) => Some(End::NeedInput),
            };
            consumed += discard;
            if let Some(end) = end {
                return (consumed, len, end);
            }
        }
    }

    /// A fatal error: encode what rustls queued (the alert, and whatever
    /// the failing step queued before it, e.g. a ServerHello), for the loop
    /// to write; discard all input from now on.
    ///
    /// rustls hands out what it queued before it looks at input again, so
    /// each call while it `wants_write` gives one queued record; calling
    /// once more would parse the failed record again.
    fn fail(&mut self, rest: &mut [u8], pool: &mut BufferPool) {
        self.phase = Phase::Failed;
        for _ in 0..MAX_STEPS {
            if !self.conn.wants_write() {
                break;
            }
            let status = self.conn.process_tls_records(rest);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = status.state else {
                break;
            };
            let encoded = self
                .output
                .append(pool, 0, |room| data.encode(room).map_err(encode_shortfall));
            if encoded.is_err() {
                break;
            }
        }
        if let Some(input) = self.input.take() {
            pool.put(input);
        }
    }

    /// Encrypts up to one record of `plaintext` once the last one is out;
    /// returns how much it took.
    pub(super) fn write(
        &mut self,
        stream: &mut TcpStream,
        plaintext: &[u8],
        pool: &mut BufferPool,
    ) -> io::Result<usize> {
        self.flush(stream, pool)?;
        if self.output.pending() > 0 {
            return Err(ErrorKind::WouldBlock.into());
        }
        let take = plaintext.len().min(MAX_RECORD_PLAINTEXT);
        let record = &plaintext[..take];
        self.seal(pool, take + RECORD_OVERHEAD, |traffic, room| {
            traffic.encrypt(record, room)
        })?;
        self.flush(stream, pool)?;
        Ok(take)
    }

    /// Queues `close_notify`.
    fn queue_close_notify(&mut self, pool: &mut BufferPool) -> io::Result<()> {
        self.seal(pool, RECORD_OVERHEAD, |traffic, room| {
            traffic.queue_close_notify(room)
        })
    }

    /// Lets rustls emit what it has queued, then has `fill` write into
    /// `output` with the traffic keys.
    fn seal(
        &mut self,
        pool: &mut BufferPool,
        guess: usize,
        mut fill: impl FnMut(
            &mut WriteTraffic<'_, ServerConnectionData>,
            &mut [u8],
        ) -> Result<usize, EncryptError>,
    ) -> io::Result<()> {
        if self.phase == Phase::Failed {
            return Err(io::Error::new(ErrorKind::BrokenPipe, "TLS failed"));
        }
        for _ in 0..MAX_STEPS {
            // The kept input goes back to rustls as it is (it may hold
            // handshake fragments it has already looked at).
            let input: &mut [u8] = self.input.as_deref_mut().unwrap_or(&mut []);
            let status = self.conn.process_tls_records(input);
            let discard = status.discard;
            let sealed = match status.state {
                Ok(ConnectionState::WriteTraffic(mut traffic)) => {
                    self.output.append(pool, guess, |room| {
                        fill(&mut traffic, room).map_err(encrypt_shortfall)
                    })?;
                    true
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    self.output
                        .append(pool, 0, |room| data.encode(room).map_err(encode_shortfall))?;
                    false
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    false
                }
                Ok(state) => {
                    return Err(io::Error::other(format!("TLS cannot send now ({state:?})")))
                }
                Err(error) => return Err(io::Error::other(error)),
            };
            if discard > 0 {
                if let Some(input) = self.input.as_mut() {
                    input.drain(..discard);
                }
            }
            if sealed {
                return Ok(());
            }
        }
        Err(io::Error::other("TLS never became ready to send"))
    }

    /// Writes the ciphertext owed; sends FIN after it if asked to.
    /// Returns the bytes written; a full socket is not an error.
    pub(super) fn flush(
        &mut self,
        stream: &mut TcpStream,
        pool: &mut BufferPool,
    ) -> io::Result<usize> {
        let written = self.output.write_to(stream, pool)?;
        if self.output.pending() == 0 && self.shutdown == Closing::FinAfterFlush {
            self.shutdown = Closing::FinSent;
            let _ = stream.shutdown(Shutdown::Write);
        }
        Ok(written)
    }

    /// `close_notify` (unless the session never opened or failed), then
    /// FIN once everything owed is written.
    pub(super) fn shutdown_write(&mut self, stream: &mut TcpStream, pool: &mut BufferPool) {
        if matches!(self.shutdown, Closing::FinAfterFlush | Closing::FinSent) {
            return;
        }
        if self.shutdown == Closing::Open && self.is_established() {
            let _ = self.queue_close_notify(pool);
        }
        self.shutdown = Closing::FinAfterFlush;
        let _ = self.flush(stream, pool);
    }

    pub(super) fn pending_output(&self) -> usize {
        self.output.pending()
    }

    pub(super) fn partial_input(&self) -> usize {
        self.input.as_ref().map_or(0, Vec::len)
    }

    pub(super) fn holds_buffers(&self) -> bool {
        self.input.is_some() || self.output.buf.is_some()
    }

    pub(super) fn buffer_capacity(&self) -> usize {
        self.input.as_ref().map_or(0, Vec::capacity)
            + self.output.buf.as_ref().map_or(0, Vec::capacity)
    }

    pub(super) fn release(&mut self, pool: &mut BufferPool) {
        if let Some(input) = self.input.take() {
            pool.put(input);
        }
        if let Some(output) = self.output.buf.take() {
            pool.put(output);
        }
    }

    /// Keeps unconsumed input for the next read.
    fn keep(&mut self, bytes: &[u8], pool: &mut BufferPool) {
        if !bytes.is_empty() {
            let mut input = pool.get();
            input.extend_from_slice(bytes);
            self.input = Some(input);
        }
    }
}

/// After `close_notify` or a failure: read and drop what still comes.
fn discard(stream: &mut TcpStream, region: &mut [u8]) -> Input {
    match read_some(stream, region) {
        Ok(Some(_)) => Input::Again,
        Ok(None) => Input::Closed,
        Err(err) if err.kind() == ErrorKind::WouldBlock => Input::WouldBlock,
        Err(err) => Input::Failed(err),
    }
}

/// Ciphertext waiting for the socket: `buf[sent..]`.
#[derive(Default)]
struct Output {
    buf: Option<Vec<u8>>,
    sent: usize,
}

/// Why `fill` wrote nothing.
enum Shortfall {
    /// It needs this much room.
    Needs(usize),
    Failed(String),
}

impl Output {
    fn pending(&self) -> usize {
        self.buf.as_ref().map_or(0, |buf| buf.len() - self.sent)
    }

    /// Appends what `fill` writes into fresh room at the end, `guess`
    /// bytes first, then as much as it says it needs.
    fn append(
        &mut self,
        pool: &mut BufferPool,
        guess: usize,
        mut fill: impl FnMut(&mut [u8]) -> Result<usize, Shortfall>,
    ) -> io::Result<()> {
        let buf = self.buf.get_or_insert_with(|| pool.get());
        let start = buf.len();
        let mut room = guess;
        loop {
            buf.resize(start + room, 0);
            match fill(&mut buf[start..]) {
                Ok(written) => {
                    buf.truncate(start + written);
                    return Ok(());
                }
                Err(Shortfall::Needs(needed)) if needed > room => room = needed,
                Err(shortfall) => {
                    buf.truncate(start);
                    let why = match shortfall {
                        Shortfall::Needs(needed) => format!("needs {needed} bytes"),
                        Shortfall::Failed(why) => why,
                    };
                    return Err(io::Error::other(why));
                }
            }
        }
    }

    /// Writes until done or the socket is full; the buffer goes back to
    /// the pool once empty.
    fn write_to(&mut self, stream: &mut TcpStream, pool: &mut BufferPool) -> io::Result<usize> {
        let Some(buf) = self.buf.as_mut() else {
            return Ok(0);
        };
        let mut written = 0;
        while self.sent < buf.len() {
            match stream.write(&buf[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    written += n;
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(written),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.sent = 0;
        if let Some(buf) = self.buf.take() {
            pool.put(buf);
        }
        Ok(written)
    }
}

fn encode_shortfall(error: EncodeError) -> Shortfall {
    match error {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Shortfall::Needs(required_size)
        }
        other => Shortfall::Failed(other.to_string()),
    }
}

fn encrypt_shortfall(error: EncryptError) -> Shortfall {
    match error {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Shortfall::Needs(required_size)
        }
        other => Shortfall::Failed(other.to_string()),
    }
}

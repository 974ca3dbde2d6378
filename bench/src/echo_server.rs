//! A plain WebSocket echo server: the endpoint behind HAProxy in the
//! baseline runs. One `mio` loop, one thread; every text or binary message
//! comes back unchanged, pings get pongs, a close is answered and the
//! server then closes the TCP connection first (as RFC 6455 asks, so the
//! server side keeps TIME_WAIT, not the proxy's ports).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use pyrycode_relay::buffer::Unpooled;
use pyrycode_relay::ws::{self as codec, write_close, write_frame, Event, FrameKind, Reader};

use crate::wsproto as ws;

const LISTENER: Token = Token(usize::MAX);

enum State {
    Head,
    Open,
    /// Close answered; FIN sent once the output is written.
    Closing,
}

struct Conn {
    stream: TcpStream,
    state: State,
    /// The request head while it is partial.
    head: Vec<u8>,
    /// The client's frames: the library's WebSocket reader, server side.
    reader: Reader,
    out: Vec<u8>,
    out_pos: usize,
    fin_sent: bool,
}

/// Serves on `listen` until killed; prints the bound port on stdout first.
pub fn run(listen: SocketAddr) -> std::io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen)?;
    // mio listens with a backlog of 128; HAProxy may open far more
    // connections at once than that (churn, population set-up).
    // SAFETY: listen() again on our own listening socket only resizes the
    // accept queue (capped by net.core.somaxconn).
    unsafe {
        use std::os::fd::AsRawFd;
        libc::listen(listener.as_raw_fd(), 4096);
    }
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("{}", listener.local_addr()?.port());
    let _ = std::io::stdout().flush();
    let mut events = Events::with_capacity(1024);
    let mut conns: slab::Slab<Conn> = slab::Slab::new();
    let mut scratch = vec![0u8; 256 * 1024];
    let mut dirty: Vec<usize> = Vec::new();
    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if err.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let _ = stream.set_nodelay(true);
                            let entry = conns.vacant_entry();
                            poll.registry().register(
                                &mut stream,
                                Token(entry.key()),
                                Interest::READABLE | Interest::WRITABLE,
                            )?;
                            entry.insert(Conn {
                                stream,
                                state: State::Head,
                                head: Vec::new(),
                                reader: Reader::new(codec::Role::Server),
                                out: Vec::new(),
                                out_pos: 0,
                                fin_sent: false,
                            });
                        }
                        Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let key = event.token().0;
            let Some(conn) = conns.get_mut(key) else {
                continue;
            };
            let mut alive = true;
            if event.is_writable() && conn.out_pos < conn.out.len() {
                alive = flush(conn);
            }
            if alive && (event.is_readable() || event.is_read_closed() || event.is_error()) {
                alive = read(conn, &mut scratch);
                if alive && conn.out_pos < conn.out.len() {
                    dirty.push(key);
                }
            }
            if !alive {
                let mut conn = conns.remove(key);
                let _ = poll.registry().deregister(&mut conn.stream);
            }
        }
        for key in dirty.drain(..) {
            if let Some(conn) = conns.get_mut(key) {
                if !flush(conn) {
                    let mut conn = conns.remove(key);
                    let _ = poll.registry().deregister(&mut conn.stream);
                }
            }
        }
    }
}

/// Reads until WouldBlock; false when the connection is over.
fn read(conn: &mut Conn, scratch: &mut [u8]) -> bool {
    loop {
        match conn.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => {
                let alive = match conn.state {
                    State::Head => {
                        conn.head.extend_from_slice(&scratch[..n]);
                        answer_upgrade(conn)
                    }
                    State::Open | State::Closing => echo(conn, &mut scratch[..n]),
                };
                if !alive {
                    return false;
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Answers a complete request head with the 101; the bytes after it are
/// the first WebSocket bytes. `false` ends the connection.
fn answer_upgrade(conn: &mut Conn) -> bool {
    let end = match ws::head_end(&conn.head) {
        Some(end) => end,
        None => return conn.head.len() <= 16 * 1024,
    };
    let Some(key) = std::str::from_utf8(&conn.head[..end])
        .ok()
        .and_then(|head| ws::header(head, "sec-websocket-key"))
    else {
        return false;
    };
    let accept = ws::accept_for(key);
    conn.out.extend_from_slice(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    );
    conn.state = State::Open;
    let mut rest = std::mem::take(&mut conn.head);
    rest.drain(..end);
    echo(conn, &mut rest)
}

/// Every message comes back as it came (text or binary), pings get
/// pongs, a close is answered. `false` ends the connection (a protocol
/// error).
fn echo(conn: &mut Conn, input: &mut [u8]) -> bool {
    let mut batch = conn.reader.batch(input, usize::MAX);
    let mut alive = true;
    while let Some(event) = batch.next(&mut Unpooled) {
        match event {
            Event::Message { text, payload } => {
                let kind = if text {
                    FrameKind::Text
                } else {
                    FrameKind::Binary
                };
                write_frame(&mut conn.out, kind, payload);
            }
            Event::Ping(payload) => write_frame(&mut conn.out, FrameKind::Pong, payload),
            Event::Pong(_) => {}
            Event::Close { code, .. } => {
                write_close(&mut conn.out, code, "");
                conn.state = State::Closing;
            }
            Event::Error(_) => alive = false,
        }
    }
    batch.finish(&mut Unpooled);
    alive
}

/// Writes until WouldBlock; false when the connection is over.
fn flush(conn: &mut Conn) -> bool {
    while conn.out_pos < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_pos..]) {
            Ok(0) => return false,
            Ok(n) => conn.out_pos += n,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    conn.out.clear();
    conn.out_pos = 0;
    if conn.out.capacity() > 64 * 1024 {
        conn.out = Vec::new();
    }
    if matches!(conn.state, State::Closing) && !conn.fin_sent {
        conn.fin_sent = true;
        let _ = conn.stream.shutdown(Shutdown::Write);
    }
    true
}

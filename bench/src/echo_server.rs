//! A plain WebSocket echo server: the endpoint behind HAProxy in the
//! baseline runs. One `mio` loop, one thread; every text or binary message
//! comes back unchanged, pings get pongs, a close is answered and the
//! server then closes the TCP connection first (as RFC 6455 asks, so the
//! server side keeps TIME_WAIT, not the proxy's ports).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

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
    inbuf: Vec<u8>,
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
                                inbuf: Vec::new(),
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
                if conn.inbuf.is_empty() {
                    match process(conn, &mut scratch[..n]) {
                        Some(used) => {
                            if used < n {
                                conn.inbuf.extend_from_slice(&scratch[used..n]);
                            }
                        }
                        None => return false,
                    }
                } else {
                    let mut inbuf = std::mem::take(&mut conn.inbuf);
                    inbuf.extend_from_slice(&scratch[..n]);
                    match process(conn, &mut inbuf) {
                        Some(used) => {
                            inbuf.drain(..used);
                            conn.inbuf = inbuf;
                        }
                        None => return false,
                    }
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return true,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Handles what is complete at the start of `buf`; `None` ends the
/// connection.
fn process(conn: &mut Conn, buf: &mut [u8]) -> Option<usize> {
    let mut used = 0;
    if matches!(conn.state, State::Head) {
        let end = match ws::head_end(buf) {
            Some(end) => end,
            None if buf.len() > 16 * 1024 => return None,
            None => return Some(0),
        };
        let head = std::str::from_utf8(&buf[..end]).ok()?;
        let key = ws::header(head, "sec-websocket-key")?;
        let accept = ws::accept_for(key);
        conn.out.extend_from_slice(
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .as_bytes(),
        );
        conn.state = State::Open;
        used = end;
    }
    loop {
        let frame = match ws::parse_frame(&buf[used..]) {
            Ok(Some(f)) => f,
            Ok(None) => return Some(used),
            Err(_) => return None,
        };
        let (start, end) = (used + frame.start, used + frame.end);
        let mask = frame.mask?; // clients must mask
        ws::apply_mask(&mut buf[start..end], mask);
        used += frame.end;
        if !matches!(conn.state, State::Open) {
            continue;
        }
        let payload = &buf[start..end];
        match frame.opcode {
            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT => {
                // Unfragmented messages only: echo each frame as it is.
                ws::write_server_frame(&mut conn.out, frame.opcode, payload);
            }
            ws::OP_PING => ws::write_server_frame(&mut conn.out, ws::OP_PONG, payload),
            ws::OP_PONG => {}
            ws::OP_CLOSE => {
                let code = ws::close_code(payload);
                let body = if code == 1005 {
                    Vec::new()
                } else {
                    code.to_be_bytes().to_vec()
                };
                ws::write_server_frame(&mut conn.out, ws::OP_CLOSE, &body);
                conn.state = State::Closing;
            }
            _ => return None,
        }
    }
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

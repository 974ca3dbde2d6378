//! A fake HTTP/1.1 endpoint on loopback for the push tests: it stands in
//! for Google's OAuth token endpoint or for FCM. Each connection gets its
//! own thread, one request is read (head parsed with `httparse`, body by
//! `Content-Length`), recorded, and answered with what the test's
//! responder says, then the connection is closed. A responder may also
//! hold the connection open until the test releases it (a stalled
//! endpoint).
#![allow(dead_code)]

pub mod google;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// One request as the fake endpoint received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The value of header `name` (case-insensitive), if sent once or more.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn body_str(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

/// What the fake endpoint answers.
pub enum Reply {
    /// A status, extra headers and a body.
    Status(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Hold the connection, answering nothing, until [`Stall::release`];
    /// then close it.
    Stall(Stall),
}

impl Reply {
    /// `status` with a JSON body.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::Status(status, Vec::new(), body.as_bytes().to_vec())
    }
}

/// A latch the test opens to let stalled connections go.
#[derive(Clone, Default)]
pub struct Stall(Arc<(Mutex<bool>, Condvar)>);

impl Stall {
    pub fn release(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut guard = open.lock().unwrap();
        while !*guard {
            guard = changed.wait(guard).unwrap();
        }
    }
}

type Responder = dyn Fn(&Recorded) -> Reply + Send + Sync;

/// A fake endpoint listening on 127.0.0.1.
pub struct FakeServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    received: Receiver<Recorded>,
}

impl FakeServer {
    /// Starts an endpoint that answers every request with `responder`.
    pub fn start(responder: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let (record, received) = mpsc::channel();
        let responder: Arc<Responder> = Arc::new(responder);
        let counter = Arc::clone(&hits);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (responder, counter, record) =
                    (Arc::clone(&responder), Arc::clone(&counter), record.clone());
                thread::spawn(move || serve(stream, &*responder, &counter, &record));
            }
        });
        FakeServer {
            addr,
            hits,
            received,
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests fully received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The next request received, waiting for it (bounded, so a missing
    /// request fails the test instead of hanging it).
    pub fn next_request(&self) -> Recorded {
        self.received
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the fake endpoint received no request")
    }

    /// Every request received so far, without waiting.
    pub fn drain(&self) -> Vec<Recorded> {
        self.received.try_iter().collect()
    }
}

fn serve(
    mut stream: TcpStream,
    responder: &Responder,
    hits: &AtomicUsize,
    record: &Sender<Recorded>,
) {
    let Some(request) = read_request(&mut stream) else {
        return;
    };
    hits.fetch_add(1, Ordering::SeqCst);
    let reply = responder(&request);
    let _ = record.send(request);
    match reply {
        Reply::Status(status, headers, body) => {
            let mut head = format!(
                "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
        Reply::Stall(stall) => stall.wait(),
    }
}

/// Reads one request: the head up to the blank line, then the body.
fn read_request(stream: &mut TcpStream) -> Option<Recorded> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_len = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(&buf[..head_len]).ok()?;
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_ascii_lowercase(), value)
        })
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .map_or(0, |(_, value)| {
            value.parse::<usize>().expect("content-length")
        });
    let mut body = buf[head_len..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Recorded {
        method: parsed.method?.to_owned(),
        path: parsed.path?.to_owned(),
        headers,
        body,
    })
}

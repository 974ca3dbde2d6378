//! Small scenarios many suites share: a binary and its phones, one
//! exchange each way, pings answered, a phone's output filled up.

use super::{envelope, Client, Harness, Msg};

/// A binary and its phones, in one call.
pub trait Scenarios {
    /// A binary of `server_id`, one phone of it, and the phone's conn_id.
    fn pair(&mut self, server_id: &str) -> (Client, Client, String);
    /// A binary of `server_id` with `n` phones, and their conn_ids.
    fn server_with_phones(&mut self, server_id: &str, n: usize) -> (Client, Vec<(Client, String)>);
}

impl Scenarios for Harness {
    #[track_caller]
    fn pair(&mut self, server_id: &str) -> (Client, Client, String) {
        let mut binary = self.binary(server_id);
        let (phone, conn_id) = self.phone_with_id(server_id, &mut binary);
        (binary, phone, conn_id)
    }

    #[track_caller]
    fn server_with_phones(&mut self, server_id: &str, n: usize) -> (Client, Vec<(Client, String)>) {
        let mut binary = self.binary(server_id);
        let phones = (0..n)
            .map(|_| self.phone_with_id(server_id, &mut binary))
            .collect();
        (binary, phones)
    }
}

/// The binary still serves `phone`: one frame each way lands byte-exact.
pub fn assert_routes(h: &mut Harness, binary: &mut Client, phone: &mut Client, conn_id: &str) {
    let down = br#"{"still":"here", "n" : [1,2]}"#;
    binary.send_text(h, &envelope(conn_id, down));
    assert_eq!(phone.recv_text(h), down.to_vec());
    let up = br#"{"and":"back"}"#;
    phone.send_text(h, up);
    assert_eq!(binary.recv_text(h), envelope(conn_id, up));
}

/// Asserts that none of `clients` got anything but pings, and none is
/// closed.
pub fn assert_quiet<const N: usize>(h: &mut Harness, clients: [&mut Client; N]) {
    for client in clients {
        client.expect_no_data(h);
    }
}

/// A JSON string frame of `len` bytes, tagged with `i`.
pub fn big_frame(i: usize, len: usize) -> Vec<u8> {
    let mut frame = format!("\"{i:06}:").into_bytes();
    frame.resize(len - 1, b'x');
    frame.push(b'"');
    frame
}

/// Pings answered by hand, at the moment the test chooses (the fixture's
/// `Client::answer_pings(true)` answers them as they arrive).
pub trait PingAnswers {
    /// Answers every ping received so far with a pong of the same
    /// payload; returns how many there were. Any other frame fails. Ends
    /// with a ping round trip, so the relay has read the pongs before the
    /// test moves time on.
    fn answer_received_pings(&mut self, h: &mut Harness) -> usize;
    /// Answers the pings received so far without waiting for the relay to
    /// read the pongs (it may not be reading this client), only for its
    /// socket to take them; asserts the connection is open. Returns how
    /// many pings there were.
    fn answer_pings_unread(&mut self, h: &mut Harness) -> usize;
}

impl PingAnswers for Client {
    #[track_caller]
    fn answer_received_pings(&mut self, h: &mut Harness) -> usize {
        const MARK: &[u8] = b"harness-round-trip";
        let pings = pong_pings(self, h);
        self.send_ping(h, MARK);
        match self.recv(h) {
            Msg::Pong(payload) if payload == MARK => {}
            other => panic!(
                "{}: expected the round-trip pong, got {other:?}",
                self.name()
            ),
        }
        pings
    }

    #[track_caller]
    fn answer_pings_unread(&mut self, h: &mut Harness) -> usize {
        let pings = pong_pings(self, h);
        self.wait_delivered(h);
        assert!(
            !self.is_closed(h),
            "{}: connection unexpectedly closed",
            self.name()
        );
        pings
    }
}

/// Sends a pong for every ping received so far (waiting for the relay to
/// read it, if it reads this client); any other frame fails.
#[track_caller]
fn pong_pings(client: &mut Client, h: &mut Harness) -> usize {
    let mut pings = 0;
    while let Some(msg) = client.try_recv(h) {
        match msg {
            Msg::Ping(payload) => {
                client.send_pong(h, &payload);
                pings += 1;
            }
            other => panic!("{}: expected only pings, got {other:?}", client.name()),
        }
    }
    pings
}

/// The binary sends `phone` (which does not read) frames of 200 KiB until
/// the relay has held output for it over `rounds` sends in a row; returns
/// the frames. Only the phone can hold a buffer: the binary's frames are
/// whole.
pub fn fill_phone_output(
    h: &mut Harness,
    binary: &mut Client,
    conn_id: &str,
    rounds: usize,
) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut extra = 0;
    while extra < rounds {
        let frame = big_frame(frames.len(), 200 * 1024);
        binary.send_text(h, &envelope(conn_id, &frame));
        frames.push(frame);
        if h.stats().connections_with_buffers > 0 {
            extra += 1;
        }
        assert!(frames.len() < 320, "the phone's socket never filled up");
    }
    frames
}

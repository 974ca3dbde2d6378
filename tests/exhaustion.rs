//! Resource exhaustion (issue 4, point 3): running out of file
//! descriptors pauses accepting and recovers by itself (that it does not
//! spin meanwhile is measured by `relay-bench fd-exhaustion`); the
//! relay's memory stays under the worst case that docs/SECURITY.md
//! derives from the configuration.

mod common;
#[path = "support/process.rs"]
mod process;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use process::{RelayProcess, WAIT};
use pyrycode_relay::buffer::MAX_POOLED_BYTES;
use pyrycode_relay::config::{Config, READ_CHUNK};
use pyrycode_relay::Memory;

/// Sends a `/healthz` request and reads the status, waiting at most `wait`.
fn healthz(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n")
        .unwrap();
    read_status(stream, wait)
}

fn read_status(stream: &mut TcpStream, wait: Duration) -> Option<u16> {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while got.len() < 12 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    std::str::from_utf8(&got[9..12]).ok()?.parse().ok()
}

#[test]
fn out_of_descriptors_accepting_pauses_and_resumes() {
    // The idle connections below must outlive the test.
    let mut relay = RelayProcess::start_with_fd_limit(&["--handshake-timeout", "120s"], 32);
    assert!(
        relay
            .log
            .iter()
            .any(|l| l.contains("fd_limit soft=32 hard=32")),
        "{:?}",
        relay.log
    );
    // Past the limit: the kernel completes every handshake, the relay can
    // take only as many as it has descriptors for.
    let mut held: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(relay.addr).unwrap())
        .collect();
    let paused = relay.wait_for("accept_paused");
    assert!(paused.contains("error="), "{paused}");

    // Still responsive: an accepted connection is served at once…
    assert_eq!(healthz(&mut held[0], WAIT), Some(200));
    held.remove(0);
    // …and while the limit holds, a new connection waits in the backlog
    // unserved. (What accepting costs meanwhile is a benchmark figure:
    // `relay-bench fd-exhaustion`.)
    let mut waiting = TcpStream::connect(relay.addr).unwrap();
    assert_eq!(healthz(&mut waiting, Duration::from_millis(700)), None);

    // Connections close, descriptors come back: the relay accepts what
    // waited in the backlog without any new connection arriving.
    held.truncate(10);
    relay.wait_for("accept_resumed");
    assert_eq!(read_status(&mut waiting, WAIT), Some(200));
    let mut fresh = TcpStream::connect(relay.addr).unwrap();
    assert_eq!(healthz(&mut fresh, WAIT), Some(200));
}

/// docs/SECURITY.md, "Worst-case memory": what one connection can make the
/// relay hold, in accounted bytes, with `config`.
fn per_connection_worst_case(config: &Config) -> usize {
    // The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
    const MAX_HEADER: usize = 14;
    // One pong past the limit, a close frame.
    let output = config.output_read_limit() + 131 + 127;
    let partial = config.max_message_size + MAX_HEADER + READ_CHUNK;
    let reassembly = config.max_message_size;
    output + partial + reassembly
}

fn accounted(memory: &Memory) -> usize {
    memory.queued_output + memory.partial_input + memory.reassembly
}

#[test]
fn flooding_non_reading_peers_with_maximum_size_messages_stays_under_the_worst_case() {
    let mut h = Harness::start();
    let config = Config::default();
    let per_connection = per_connection_worst_case(&config);
    let mut binary = h.binary("flood");
    let mut phones = Vec::new();
    for _ in 0..16 {
        phones.push(h.phone_with_id("flood", &mut binary));
    }
    binary.set_relay_send_buffer(&h, 4096);
    for (phone, _) in &phones {
        phone.set_relay_send_buffer(&h, 4096);
    }
    // A maximum-size message each way, and pings nobody reads the pongs of.
    let max_json = |seq: usize| {
        let mut msg = format!("{{\"seq\":{seq},\"pad\":\"");
        msg.push_str(&"m".repeat(config.max_message_size - msg.len() - 2));
        msg.push_str("\"}");
        assert_eq!(msg.len(), config.max_message_size);
        msg.into_bytes()
    };
    let mut phone_streams: Vec<(Vec<u8>, usize)> = (0..16)
        .map(|i| {
            let mut stream = Vec::new();
            for seq in 0..12 {
                stream.extend(masked_frame(0x1, true, &max_json(seq)));
                stream.extend(masked_frame(0x9, true, &[i as u8; 125]));
            }
            (stream, 0)
        })
        .collect();
    let mut binary_stream = Vec::new();
    for seq in 0..8 {
        for (_, conn_id) in &phones {
            // The frame inside the envelope: as large as a phone may queue.
            let frame = max_json(seq);
            binary_stream.extend(masked_frame(0x1, true, &envelope(conn_id, &frame[..])));
        }
    }
    let binary_stream = (binary_stream, 0usize);

    let mut worst = Memory::default();
    let mut streams = phone_streams
        .drain(..)
        .chain([binary_stream])
        .collect::<Vec<_>>();
    let mut idle = 0;
    while idle < 3 {
        let mut moved = 0;
        let clients = phones.iter_mut().map(|(p, _)| p).chain([&mut binary]);
        for (client, (stream, at)) in clients.zip(streams.iter_mut()) {
            let n = client.write_some(&stream[*at..]);
            *at += n;
            moved += n;
        }
        h.settle();
        let memory = h.relay().memory();
        if accounted(&memory) > accounted(&worst) {
            worst = memory;
        }
        assert!(memory.largest_queue <= per_connection, "{memory:?}");
        idle = if moved == 0 { idle + 1 } else { 0 };
    }
    let connections = h.stats().connections;
    let bound = connections * per_connection;
    assert!(
        accounted(&worst) <= bound,
        "{worst:?} over {connections} × {per_connection}"
    );
    // Allocated bytes: queues may hold up to twice their unsent bytes
    // (sent bytes are dropped lazily) and Vec growth doubles again;
    // the idle pool and the scratch buffer are global.
    let global = MAX_POOLED_BYTES + READ_CHUNK;
    assert!(worst.allocated <= 4 * bound + global, "{worst:?}");
    // The tight bounds by role: the binary's queue stops one message past
    // high water; a phone is closed before its queue passes its backlog.
    assert!(
        worst.largest_queue <= output_bound(&config),
        "{worst:?}, bound {}",
        output_bound(&config)
    );
}

/// The read-pause limit plus one pong: no queue of one connection goes
/// further.
fn output_bound(config: &Config) -> usize {
    config.output_read_limit() + 131
}

#[test]
fn a_flood_of_tiny_phone_messages_cannot_push_the_binary_queue_far_past_high_water() {
    // Each 7-byte frame `1` becomes an envelope of ~80 bytes: one 64 KiB
    // read of them used to add ~700 KB past high water before the relay
    // looked at the binary's queue again.
    let mut h = Harness::start();
    let config = Config::default();
    let (binary, mut phone, _) = h.pair("tiny");
    binary.set_relay_send_buffer(&h, 4096);
    let one = masked_frame(0x1, true, b"1");
    let stream: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * 600_000)
        .collect();
    let mut at = 0;
    let mut peak = 0;
    let mut idle = 0;
    while idle < 3 && at < stream.len() {
        let n = phone.write_some(&stream[at..]);
        at += n;
        h.settle();
        peak = peak.max(h.relay().memory().queued_output);
        idle = if n == 0 { idle + 1 } else { 0 };
    }
    let envelope_len = envelope(&"c".repeat(48), b"1").len() + 10;
    let forwarded = h.forwarded_phone_to_binary();
    assert!(
        forwarded < 600_001,
        "every message was taken: no backpressure"
    );
    assert!(
        peak <= config.binary_high_water + envelope_len,
        "{peak} bytes queued for the binary"
    );
}

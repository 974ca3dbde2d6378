//! Memory that comes back (issue #14): what a burst of connections made
//! the relay allocate is given back once the burst is over, by the trim
//! timer every 4 s, with no traffic needed to trigger it.

mod common;

use std::time::Duration;

use common::*;

/// The shared read buffer: all the relay allocates for connections at rest.
const SCRATCH: usize = 64 * 1024;
/// The period of the relay's trim timer.
const TRIM_INTERVAL: Duration = Duration::from_secs(4);

#[test]
fn buffers_of_a_burst_are_freed_two_trim_periods_after_it() {
    let mut h = Harness::start();
    let (mut binary, mut phone, conn_id) = {
        let mut binary = h.binary("rest");
        let (phone, conn_id) = h.phone_with_id("rest", &mut binary);
        (binary, phone, conn_id)
    };
    // A burst of 48 sockets, each holding a partial request head: each
    // has borrowed a pooled buffer.
    let mut burst: Vec<Client> = (0..48).map(|_| h.connect()).collect();
    for client in burst.iter_mut() {
        client.send_raw(&mut h, b"GET /v1/client HTTP/1.1\r\n");
    }
    assert!(h.relay().memory().allocated >= SCRATCH + 48 * 16 * 1024);
    for mut client in burst {
        client.hang_up(&mut h);
    }
    assert_eq!(h.stats().connections, 2);
    let pooled = h.relay().memory().allocated - SCRATCH;
    assert!(
        pooled >= 48 * 16 * 1024,
        "the buffers went back to the pool"
    );

    // The pair keeps talking (borrowing a buffer or two at a time) while
    // the burst's buffers sit idle through two trim periods.
    for _ in 0..2 {
        phone.send_text(&mut h, br#"{"still":"here"}"#);
        assert_eq!(
            binary.recv_text(&mut h),
            envelope(&conn_id, br#"{"still":"here"}"#)
        );
        h.advance(TRIM_INTERVAL);
    }
    let memory = h.relay().memory();
    assert!(
        memory.allocated <= SCRATCH + 2 * 16 * 1024,
        "{memory:?}: the burst's {pooled} pooled bytes are still held"
    );
    phone.send_text(&mut h, br#"{"after":true}"#);
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, br#"{"after":true}"#)
    );
    h.advance(TRIM_INTERVAL);
    h.advance(TRIM_INTERVAL);
    assert_eq!(
        h.relay().memory().allocated,
        SCRATCH,
        "at rest: nothing pooled"
    );
}

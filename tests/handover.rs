//! The hand-over of an upgrade, in-process and deterministic: the relay's
//! state goes through `snapshot` → bytes → `Snapshot::decode` →
//! `Relay::restore` on the same sockets, with time from the manual clock
//! (the fixture's `hand_over`), and every peer goes on as if nothing had
//! happened — partial frames,
//! partial request heads, reassembly, queued output, deadlines, grace
//! windows, a running conflict probe, counters and per-IP limits.
//!
//! The exec itself (the same PID, the memfd, the signal mask, check mode)
//! is tested with the real executable in `tests/handover_process.rs`.

mod common;

use std::time::Duration;

use common::{binary_headers, close_notice, envelope, masked_frame, Harness, Msg};
use pyrycode_relay::Relay;

#[test]
fn a_binary_that_left_20s_before_the_upgrade_is_released_10s_after_it() {
    let mut h = Harness::with_config(|c| c.grace_period = Duration::from_secs(30));
    let mut binary = h.binary("grace-srv");
    let mut phone = h.phone("grace-srv");
    binary.sync(&mut h);
    binary.hang_up(&mut h);
    h.advance(Duration::from_secs(20));

    h.hand_over();
    h.advance(Duration::from_millis(9_990));
    phone.expect_no_data(&mut h);
    assert_eq!(h.stats().phones, 1);
    h.advance(Duration::from_millis(10));
    assert_eq!(
        phone.expect_closed_by_relay(&mut h),
        (Some(4404), "binary gone".to_string())
    );
    assert!(h
        .relay()
        .metrics_text()
        .contains("pyrycode_relay_grace_expiries_total 1"));
}

#[test]
fn a_silent_phone_gets_its_heartbeat_close_on_time_and_pings_go_on() {
    let mut h = Harness::with_config(|c| c.pong_timeout = Duration::from_secs(20));
    let mut binary = h.binary("beat-srv");
    let (mut phone, conn_id) = h.phone_with_id("beat-srv", &mut binary);
    h.advance(Duration::from_secs(30));
    assert_eq!(phone.recv(&mut h), Msg::Ping(Vec::new()));
    assert_eq!(binary.recv(&mut h), Msg::Ping(Vec::new()));
    binary.send_pong(&mut h, b"");
    h.advance(Duration::from_secs(10));

    h.hand_over();
    h.advance(Duration::from_millis(9_990));
    phone.expect_no_data(&mut h);
    h.advance(Duration::from_millis(10));
    assert_eq!(
        phone.expect_closed_by_relay(&mut h),
        (Some(1011), "heartbeat timeout".to_string())
    );
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1011));
    // The binary answered: its next ping comes on the old schedule.
    h.advance(Duration::from_millis(9_990));
    binary.expect_no_data(&mut h);
    h.advance(Duration::from_millis(10));
    assert_eq!(binary.recv(&mut h), Msg::Ping(Vec::new()));
}

#[test]
fn half_a_frame_half_a_fragmented_message_and_half_a_head_move_as_they_are() {
    let mut h = Harness::start();
    let mut binary = h.binary("mid-srv");
    let (mut phone, conn_id) = h.phone_with_id("mid-srv", &mut binary);
    let (mut other, other_id) = h.phone_with_id("mid-srv", &mut binary);

    let whole = masked_frame(0x1, true, br#"{"split":"across the upgrade"}"#);
    phone.send_raw(&mut h, &whole[..9]);
    other.send_raw(&mut h, &masked_frame(0x1, false, br#"{"frag":"#));
    other.send_raw(&mut h, &masked_frame(0x0, false, br#""ment"#));
    let head = common::upgrade_head("/v1/client", &common::phone_headers("mid-srv"));
    let mut late = h.connect();
    late.send_raw(&mut h, &head.as_bytes()[..40]);

    h.hand_over();
    phone.send_raw(&mut h, &whole[9..]);
    other.send_raw(&mut h, &masked_frame(0x0, true, br#""}"#));
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, br#"{"split":"across the upgrade"}"#)
    );
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&other_id, br#"{"frag":"ment"}"#)
    );
    late.send_raw(&mut h, &head.as_bytes()[40..]);
    let (status, response) = late.response(&mut h);
    assert_eq!(status, 101, "{response}");
    assert_eq!(h.stats().phones, 3);
}

#[test]
fn queued_output_goes_out_after_the_upgrade_in_order() {
    let mut h = Harness::start();
    let mut binary = h.binary("queue-srv");
    let (mut phone, conn_id) = h.phone_with_id("queue-srv", &mut binary);
    binary.set_recv_buffer(4 * 1024);
    binary.set_relay_send_buffer(&h, 4 * 1024);
    let frame = |i: usize| format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(400));
    for i in 0..200 {
        phone.send_text(&mut h, frame(i).as_bytes());
    }
    h.settle();
    let queued = h.relay().memory().queued_output;
    assert!(queued > 0, "nothing queued: the test proves nothing");

    h.hand_over();
    assert_eq!(h.relay().memory().queued_output, queued);
    for i in 0..200 {
        assert_eq!(
            binary.recv_text(&mut h),
            envelope(&conn_id, frame(i).as_bytes()),
            "message {i}"
        );
    }
    phone.send_text(&mut h, b"{\"after\":1}");
    assert_eq!(
        binary.recv_text(&mut h),
        envelope(&conn_id, b"{\"after\":1}")
    );
}

#[test]
fn a_conflict_probe_running_across_the_upgrade_is_decided_there() {
    let mut h = Harness::start();
    let mut holder = h.binary("probe-srv");
    let mut challenger = h.binary("probe-srv");
    assert_eq!(holder.recv(&mut h), Msg::Ping(b"conflict-probe".to_vec()));
    h.advance(Duration::from_secs(5));

    h.hand_over();
    holder.send_pong(&mut h, b"conflict-probe");
    assert_eq!(
        challenger.expect_closed_by_relay(&mut h),
        (Some(4409), "server-id already claimed".to_string())
    );
    let (mut phone, conn_id) = h.phone_with_id("probe-srv", &mut holder);
    holder.send_text(&mut h, &envelope(&conn_id, b"{\"still\":\"holder\"}"));
    assert_eq!(phone.recv_text(&mut h), b"{\"still\":\"holder\"}");
}

#[test]
fn an_unanswered_probe_still_times_out_on_the_old_schedule() {
    let mut h = Harness::start();
    let mut holder = h.binary("silent-srv");
    let _challenger = h.binary("silent-srv");
    assert_eq!(holder.recv(&mut h), Msg::Ping(b"conflict-probe".to_vec()));
    h.advance(Duration::from_secs(6));
    h.hand_over();
    h.advance(Duration::from_millis(3_990));
    holder.expect_no_data(&mut h);
    h.advance(Duration::from_millis(10));
    assert_eq!(
        holder.expect_closed_by_relay(&mut h),
        (Some(1011), "heartbeat timeout".to_string())
    );
}

/// The relay's own series (the `process_*` ones are read from `/proc` at
/// each scrape and move on their own).
fn relay_metrics(h: &Harness) -> String {
    h.relay()
        .metrics_text()
        .lines()
        .filter(|line| !line.contains("process_"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn counters_gauges_routing_and_close_notices_carry_on() {
    let mut h = Harness::start();
    let mut binary = h.binary("count-srv");
    let (mut phone, conn_id) = h.phone_with_id("count-srv", &mut binary);
    binary.send_text(&mut h, &envelope(&conn_id, b"{\"down\":1}"));
    assert_eq!(phone.recv_text(&mut h), b"{\"down\":1}");
    let before = relay_metrics(&h);

    h.hand_over();
    assert_eq!(relay_metrics(&h), before);
    let stats = h.stats();
    assert_eq!((stats.binaries, stats.phones, stats.connections), (1, 1, 2));
    let (status, _, mut health) = h.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 200);
    let body = String::from_utf8(health.body_until_eof(&mut h)).unwrap();
    assert!(
        body.contains("\"connected_binaries\":1,\"connected_phones\":1"),
        "{body}"
    );

    phone.send_close(&mut h, 1000, "bye");
    assert_eq!(binary.recv_text(&mut h), close_notice(&conn_id, 1000));
    assert!(h
        .relay()
        .metrics_text()
        .contains("frames_forwarded_total{direction=\"phone_to_binary\"} 1"));
}

#[test]
fn per_ip_buckets_and_counts_carry_on() {
    let mut h = Harness::with_config(|c| {
        c.rate_limit_burst = 3;
        c.rate_limit_interval = Duration::from_secs(60);
        c.max_connections_per_ip = 2;
    });
    let _binary = h.binary("ip-srv");
    h.hand_over();
    let _phone = h.phone("ip-srv");
    let (status, _, _) = h.upgrade("/v1/server", &binary_headers("ip-other"));
    assert_eq!(status, 429, "the bucket had one attempt left, then none");
    h.advance(Duration::from_secs(60));
    let (status, _, _) = h.upgrade("/v1/server", &binary_headers("ip-other"));
    assert_eq!(status, 429, "two live connections: the per-IP count moved");
}

#[test]
fn a_second_upgrade_follows_the_first() {
    let mut h = Harness::start();
    let mut binary = h.binary("twice-srv");
    let (mut phone, conn_id) = h.phone_with_id("twice-srv", &mut binary);
    h.hand_over();
    h.hand_over();
    phone.send_text(&mut h, b"[2]");
    assert_eq!(binary.recv_text(&mut h), envelope(&conn_id, b"[2]"));
    let accepted = h.binary("twice-other");
    drop(accepted);
}

#[test]
fn a_snapshot_naming_descriptors_that_are_not_its_sockets_is_refused_untouched() {
    use std::os::fd::AsRawFd;
    let mut h = Harness::start();
    let _binary = h.binary("fd-srv");
    h.settle();
    let mut snapshot = h.relay().snapshot(0);
    let file = std::fs::File::open("/proc/self/status").unwrap();
    snapshot.conns[0].fd = file.as_raw_fd();
    let refused = Relay::restore(h.config().clone(), Box::new(h.clock().clone()), snapshot);
    assert!(refused.is_err(), "a file passed for a socket");
    // Nothing was taken over: the file and the relay's sockets are as they were.
    assert!(std::fs::metadata(format!("/proc/self/fd/{}", file.as_raw_fd())).is_ok());
    assert_eq!(h.stats().binaries, 1);
    let _phone = h.phone("fd-srv");
}

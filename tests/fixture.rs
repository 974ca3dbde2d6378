//! The public test fixture (`pyrycode_relay::fixture`) and relay time
//! under a manual clock: what one advance fires, the `/clock` control
//! endpoints in process, the delivery barriers, slow readers, resets,
//! several client addresses, the census and the consistency audit.

use std::net::Ipv4Addr;
use std::time::Duration;

use pyrycode_relay::fixture::{close_notice, envelope, Client, Frame, TestRelay};
use pyrycode_relay::{AdvanceError, Census, Config, ManualClock, Relay, SystemClock};

const SECOND: Duration = Duration::from_secs(1);

fn http(relay: &mut TestRelay, addr: std::net::SocketAddr, head: &str) -> (u16, String, Client) {
    let mut client = relay.connect_to(addr);
    client.send_raw(relay, head.as_bytes());
    let (status, response) = client.response(relay);
    (status, response, client)
}

#[test]
fn one_advance_fires_each_deadline_at_its_own_instant() {
    let mut relay = TestRelay::start();
    let mut binary = relay.binary("hb");
    let mut phone = relay.phone("hb");
    // Neither answers: one advance cannot give them the chance to.
    assert_eq!(relay.advance(60 * SECOND), 60 * SECOND);
    assert_eq!(phone.recv(&mut relay), Frame::Ping(Vec::new()));
    assert_eq!(
        phone.recv_close(&mut relay),
        (Some(1011), "heartbeat timeout".to_string())
    );
    assert_eq!(binary.recv(&mut relay), Frame::Ping(Vec::new()));
    // Its phone's close notice (the phone was closed first), then its own.
    let notice = binary.recv_text(&mut relay);
    assert!(notice.ends_with(br#","close_code":1011}"#), "{notice:?}");
    assert_eq!(
        binary.recv_close(&mut relay),
        (Some(1011), "heartbeat timeout".to_string())
    );
}

#[test]
fn clients_that_answer_between_steps_stay() {
    let mut relay = TestRelay::start();
    let mut binary = relay.binary("steps");
    let (mut phone, conn_id) = relay.phone_with_id("steps", &mut binary);
    binary.answer_pings(true);
    phone.answer_pings(true);
    for _ in 0..30 {
        relay.advance(10 * SECOND);
        relay.sync(&mut [&mut binary, &mut phone]);
    }
    assert_eq!(relay.elapsed(), 300 * SECOND);
    binary.send_text(&mut relay, &envelope(&conn_id, b"[1]"));
    assert_eq!(phone.recv_text(&mut relay), b"[1]");
    assert_eq!(relay.stats().phones, 1);
}

#[test]
fn the_clock_endpoint_answers_after_the_timers_output_is_written() {
    let mut relay = TestRelay::start();
    let control = relay.listen_metrics();
    let mut binary = relay.binary("gone");
    let mut phone = relay.phone("gone");
    binary.send_close(&mut relay, 1000, "");

    let (status, head, mut answer) = http(
        &mut relay,
        control,
        "POST /clock/advance?by=29s HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert_eq!(
        answer.body_until_eof(&mut relay),
        br#"{"elapsed_ms":29000}"#
    );
    phone.expect_no_data(&mut relay);

    let (_, _, mut answer) = http(
        &mut relay,
        control,
        "POST /clock/advance?by=2s HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    // The response is queued only after the grace window's output was
    // written: the relay holds nothing more for the phone.
    assert_eq!(phone.relay_phase(&relay), Some("closing"));
    assert_eq!(phone.relay_queued(&relay), Some(0));
    assert_eq!(
        answer.body_until_eof(&mut relay),
        br#"{"elapsed_ms":31000}"#
    );
    assert_eq!(
        phone.recv_close(&mut relay),
        (Some(4404), "binary gone".to_string())
    );

    let (status, _, mut answer) = http(&mut relay, control, "GET /clock HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(
        answer.body_until_eof(&mut relay),
        br#"{"elapsed_ms":31000}"#
    );
}

#[test]
fn the_clock_endpoint_refuses_what_it_cannot_do() {
    let mut relay = TestRelay::start();
    let control = relay.listen_metrics();
    for (head, status, says) in [
        ("POST /clock/advance HTTP/1.1\r\n\r\n", 400, "missing ?by="),
        ("POST /clock/advance?by=soon HTTP/1.1\r\n\r\n", 400, "soon"),
        (
            "POST /clock/advance?by=2d HTTP/1.1\r\n\r\n",
            400,
            "invalid duration",
        ),
        (
            "POST /clock/advance?by=25h HTTP/1.1\r\n\r\n",
            400,
            "at most 24h",
        ),
        ("GET /clock/advance?by=1s HTTP/1.1\r\n\r\n", 405, ""),
        ("POST /clock HTTP/1.1\r\n\r\n", 405, ""),
        ("GET /clock/elsewhere HTTP/1.1\r\n\r\n", 404, ""),
    ] {
        let (got, response, mut client) = http(&mut relay, control, head);
        assert_eq!(got, status, "{head}: {response}");
        let body = String::from_utf8(client.body_until_eof(&mut relay)).unwrap();
        assert!(body.contains(says), "{head}: {body}");
    }
    assert_eq!(relay.elapsed(), Duration::ZERO, "nothing moved the clock");
    // The clock routes are the metrics listener's only.
    let (status, _, _) = relay.request("GET /clock HTTP/1.1\r\n\r\n");
    assert_eq!(status, 404);
}

#[test]
fn a_real_clock_cannot_be_advanced() {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    let mut relay = Relay::new(config.clone(), Box::new(SystemClock)).unwrap();
    assert_eq!(relay.advance(SECOND), Err(AdvanceError::NotManual));
    let mut manual = Relay::new(config, Box::new(ManualClock::new())).unwrap();
    assert_eq!(
        manual.advance(25 * 3600 * SECOND),
        Err(AdvanceError::TooFar)
    );
    assert_eq!(manual.advance(SECOND), Ok(SECOND));
}

#[test]
fn a_binary_that_stops_reading_holds_its_phones_back_until_it_reads() {
    let mut relay = TestRelay::with_config(|config| {
        config.binary_high_water = 16 * 1024;
        config.binary_low_water = 4 * 1024;
    });
    let mut binary = relay.binary("slow");
    let (mut phone, conn_id) = relay.phone_with_id("slow", &mut binary);
    binary.set_recv_buffer(4096);
    binary.set_relay_send_buffer(&relay, 4096);
    binary.set_reading(false);
    let message = format!("[\"{}\"]", "x".repeat(2000));
    let mut sent = 0;
    while phone.relay_reads(&relay) == Some(true) {
        phone.push_frame(0x1, true, message.as_bytes());
        sent += 1;
        phone.wait_delivered(&mut relay);
        assert!(sent < 1000, "backpressure never began");
    }
    binary.set_reading(true);
    relay.sync(&mut [&mut binary, &mut phone]);
    for _ in 0..sent {
        assert_eq!(
            binary.recv_text(&mut relay),
            envelope(&conn_id, message.as_bytes())
        );
    }
    assert_eq!(phone.relay_reads(&relay), Some(true));
    relay.assert_consistent();
}

#[test]
fn a_reset_phone_is_reported_to_its_binary_as_gone() {
    let mut relay = TestRelay::start();
    let mut binary = relay.binary("rst");
    let (phone, conn_id) = relay.phone_with_id("rst", &mut binary);
    phone.reset(&mut relay);
    assert_eq!(binary.recv_text(&mut relay), close_notice(&conn_id, 1001));
    assert_eq!(relay.stats().phones, 0);
}

#[test]
fn clients_can_come_from_several_loopback_addresses() {
    let mut relay = TestRelay::with_config(|config| config.max_connections_per_ip = 1);
    let _binary = relay.binary("ips");
    let (status, _, _) =
        relay.upgrade("/v1/client", &pyrycode_relay::fixture::phone_headers("ips"));
    assert_eq!(status, 429, "a second connection from 127.0.0.1");
    let mut phone = relay.connect_from(Ipv4Addr::new(127, 0, 0, 2));
    let head = pyrycode_relay::fixture::upgrade_head(
        "/v1/client",
        &pyrycode_relay::fixture::phone_headers("ips"),
    );
    phone.send_raw(&mut relay, head.as_bytes());
    assert_eq!(phone.response(&mut relay).0, 101);
    assert_eq!(relay.stats().phones, 1);
}

#[test]
fn once_everyone_has_left_and_deadlines_passed_nothing_is_left() {
    let mut relay = TestRelay::start();
    let mut binary = relay.binary("empty");
    let (mut phone, _) = relay.phone_with_id("empty", &mut binary);
    relay.assert_consistent();
    phone.send_close(&mut relay, 1000, "bye");
    assert_eq!(phone.recv_close(&mut relay).0, Some(1000));
    phone.hang_up(&mut relay);
    binary.hang_up(&mut relay);
    relay.assert_consistent();
    assert_eq!(relay.census().server_ids, 1, "in grace");
    relay.advance(31 * SECOND);
    relay.advance(60 * SECOND); // the rate limiter's sweep forgets 127.0.0.1
    assert_eq!(relay.census(), Census::default());
}

#[test]
#[should_panic(expected = "phone of quiet")]
fn a_wait_that_runs_out_names_its_client() {
    let mut relay = TestRelay::start();
    let _binary = relay.binary("quiet");
    let mut phone = relay.phone("quiet");
    relay.set_patience(50);
    phone.recv_data(&mut relay);
}

#[test]
fn next_deadline_lets_a_test_watch_each_deadline() {
    let mut relay = TestRelay::start();
    let mut binary = relay.binary("watch");
    let phone = relay.phone("watch");
    binary.send_close(&mut relay, 1000, "");
    let mut seen = Vec::new();
    while relay.elapsed() < 31 * SECOND {
        let next = relay.next_deadline().expect("timers stand");
        relay.advance(next - relay.elapsed());
        if phone.relay_phase(&relay) == Some("closing") {
            seen.push(relay.elapsed());
            break;
        }
    }
    assert_eq!(
        seen,
        vec![30 * SECOND],
        "closed at the grace deadline exactly"
    );
}

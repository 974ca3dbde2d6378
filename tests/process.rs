//! End to end with the real executable (SPEC §9, §10): flags, the
//! `listening` log line, a binary and a phone exchanging frames over
//! loopback, `/healthz`, SIGTERM and the exit codes, and what the logs
//! must never contain. Real time: every wait is bounded
//! (`support/process.rs`, `support/blocking.rs`).

#[path = "support/blocking.rs"]
mod blocking;
#[path = "support/process.rs"]
mod process;

use std::net::{TcpListener, TcpStream};

use blocking::{http, Ws};
use process::{free_addr, run_relay as run_to_exit, RelayProcess};
use pyrycode_relay::fixture::{envelope, upgrade_head};

/// The conn_id of a phone→binary envelope, checking the envelope is
/// exactly `{"conn_id":…,"frame":<inner>}`.
fn conn_id_of(wrapped: &[u8], inner: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(wrapped).expect("envelope is JSON");
    let conn_id = value["conn_id"].as_str().expect("conn_id").to_string();
    assert_eq!(wrapped, envelope(&conn_id, inner), "envelope byte-exact");
    conn_id
}

fn binary_headers<'a>(server_id: &'a str, user_agent: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Pyrycode-Server", server_id),
        ("X-Pyrycode-Version", "0.9.0"),
        ("User-Agent", user_agent),
    ]
}

fn phone_headers<'a>(
    server_id: &'a str,
    token: &'a str,
    user_agent: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("X-Pyrycode-Server", server_id),
        ("X-Pyrycode-Token", token),
        ("X-Pyrycode-Device-Name", "Pixel"),
        ("User-Agent", user_agent),
    ]
}

// ---------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------

#[test]
fn serves_routes_answers_healthz_and_shuts_down_cleanly_on_sigterm() {
    let mut relay = RelayProcess::start(&[
        "--grace-period",
        "200ms",
        "--ping-interval",
        "1s",
        "--drain-timeout",
        "3s",
    ]);
    let addr = relay.addr;
    let mut binary = Ws::connect(
        addr,
        "/v1/server",
        &binary_headers("proc-srv", "pyry/0.9.0"),
    );
    let mut phone = Ws::connect(
        addr,
        "/v1/client",
        &phone_headers("proc-srv", "opaque", "okhttp/4.12"),
    );

    let up = br#"{"v":2, "type":"noise_msg" ,"data":"AAEC\u00e9","n":[1.50, -0]}"#;
    phone.send_text(up);
    let conn_id = conn_id_of(&binary.recv_text(), up);
    assert!(conn_id.starts_with("client-proc-srv-"), "{conn_id}");

    let down = br#"{ "type" : "noise_msg", "data":"/wD+", "x":"\ud83d\ude00" }"#;
    binary.send_text(&envelope(&conn_id, down));
    assert_eq!(phone.recv_text(), down.to_vec(), "byte-exact to the phone");

    let (status, head, body) = http(addr, "GET /healthz HTTP/1.1\r\nHost: relay.test\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/json; charset=utf-8\r\n"),
        "{head}"
    );
    assert!(lower.contains("cache-control: no-store\r\n"), "{head}");
    let body = String::from_utf8(body).unwrap();
    let prefix = format!(
        "{{\"status\":\"ok\",\"version\":\"{}\",\"connected_binaries\":1,\"connected_phones\":1,\"uptime_seconds\":",
        env!("CARGO_PKG_VERSION")
    );
    assert!(body.starts_with(&prefix), "healthz body: {body}");

    relay.signal(libc::SIGTERM);
    assert_eq!(binary.expect_close(), (1001, "shutting down".to_string()));
    assert_eq!(phone.expect_close(), (1001, "shutting down".to_string()));
    drop((binary, phone));

    let status = relay.wait_exit();
    assert_eq!(status.code(), Some(0), "log: {}", relay.log_text());
    assert!(relay.log_text().contains("shutdown_complete"));
}

#[test]
fn sigint_shuts_down_too_and_the_listener_is_closed() {
    let mut relay = RelayProcess::start(&["--drain-timeout", "3s"]);
    let addr = relay.addr;
    let mut binary = Ws::connect(
        addr,
        "/v1/server",
        &binary_headers("proc-int", "pyry/0.9.0"),
    );
    relay.signal(libc::SIGINT);
    assert_eq!(binary.expect_close(), (1001, "shutting down".to_string()));
    drop(binary);
    assert_eq!(relay.wait_exit().code(), Some(0));
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

#[test]
fn logs_never_contain_tokens_user_agents_or_frame_bytes() {
    // Every secret below contains this marker; the log must not.
    const MARK: &str = "5ecret";
    let mut relay = RelayProcess::start(&["--log-level", "trace", "--drain-timeout", "3s"]);
    let addr = relay.addr;
    let token = "tok-5ecret-7c41e2";
    let phone_ua = "okhttp-5ecret-UA/4.12";
    let binary_ua = "pyry-5ecret-UA/0.9.0";

    let mut binary = Ws::connect(addr, "/v1/server", &binary_headers("log-srv", binary_ua));
    let mut phone = Ws::connect(
        addr,
        "/v1/client",
        &phone_headers("log-srv", token, phone_ua),
    );
    let up = br#"{"data":"FRAME-5ecret-up"}"#;
    phone.send_text(up);
    let conn_id = conn_id_of(&binary.recv_text(), up);
    binary.send_text(&envelope(&conn_id, br#""FRAME-5ecret-down""#));
    assert_eq!(phone.recv_text(), br#""FRAME-5ecret-down""#.to_vec());

    // Envelopes the relay warns about and drops.
    binary.send_text(&envelope(
        "client-log-srv-nobody",
        br#""FRAME-5ecret-unknown""#,
    ));
    binary.send_text(b"FRAME-5ecret-not-json");
    binary.send_text(br#"{"conn_id":7,"frame":"FRAME-5ecret-badtype"}"#);
    binary.send_text(br#"{"push_wake":{"platform":"fcm","token":"push-5ecret-token"}}"#);
    // A phone whose message is not JSON is closed 1007.
    let mut bad_phone = Ws::connect(
        addr,
        "/v1/client",
        &phone_headers("log-srv", token, phone_ua),
    );
    bad_phone.send_text(b"FRAME-5ecret-garbage {");
    assert_eq!(bad_phone.expect_close().0, 1007);
    let notice: serde_json::Value = serde_json::from_slice(&binary.recv_text()).unwrap();
    assert_eq!(notice["close_code"], 1007, "{notice}");
    assert!(notice.get("frame").is_none(), "{notice}");
    // Refused upgrades that carried the secrets.
    let mut wrong_version = upgrade_head("/v1/client", &phone_headers("log-srv", token, phone_ua));
    wrong_version = wrong_version.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    assert_eq!(http(addr, &wrong_version).0, 426);
    let no_server = upgrade_head("/v1/client", &phone_headers("log-srv", "", phone_ua));
    assert_eq!(http(addr, &no_server).0, 400);
    let mut lost = Ws::connect(
        addr,
        "/v1/client",
        &phone_headers("nobody-srv", token, phone_ua),
    );
    assert_eq!(
        lost.expect_close(),
        (4404, "no server with that id".to_string())
    );

    // The binary still works after all that.
    phone.send_text(br#"{"still":"FRAME-5ecret-alive"}"#);
    assert_eq!(
        binary.recv_text(),
        envelope(&conn_id, br#"{"still":"FRAME-5ecret-alive"}"#)
    );

    relay.signal(libc::SIGTERM);
    binary.expect_close();
    phone.expect_close();
    drop((binary, phone, bad_phone, lost));
    assert_eq!(relay.wait_exit().code(), Some(0));

    let log = relay.log_text();
    // The events happened and were logged...
    for event in [
        "server_claimed",
        "phone_connected",
        "envelope_dropped",
        "push_wake_dropped",
        "phone_message_invalid",
        "phone_refused",
    ] {
        assert!(log.contains(event), "no {event} in the log:\n{log}");
    }
    // ...without the secrets.
    for line in &relay.log {
        for secret in [MARK, "okhttp", "pyry-", token, phone_ua, binary_ua, "FRAME"] {
            assert!(!line.contains(secret), "the log leaks {secret:?}: {line}");
        }
    }
}

#[test]
fn a_bad_flag_exits_2_with_a_one_line_reason() {
    for args in [
        &["--grace-period", "soon"][..],
        &["--metrics-listen", "0.0.0.0:9090"],
        &["--no-such-flag"],
        &["--max-message-size", "lots"],
    ] {
        let (status, stdout, stderr) = run_to_exit(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr:?}");
        let flag = args[0].trim_start_matches('-');
        assert!(
            lines[0].contains(flag),
            "{args:?}: reason lacks the flag: {stderr:?}"
        );
    }
    let (_, _, stderr) = run_to_exit(&["--grace-period", "soon"]);
    assert!(stderr.contains("soon"), "{stderr}");
}

#[test]
fn version_prints_the_version_and_exits_0() {
    let (status, stdout, stderr) = run_to_exit(&["--version"]);
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(
        stdout.trim_end(),
        format!("pyrycode-relay {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_listen_address_in_use_exits_1() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();

    let (status, _, stderr) =
        run_to_exit(&["--insecure-listen", &taken_addr, "--metrics-listen", ""]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listen_failed"), "{stderr}");

    let (status, _, stderr) = run_to_exit(&[
        "--insecure-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &taken_addr,
    ]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listen_failed"), "{stderr}");
    drop(taken);
}

/// The value of the one series named exactly `series` in a scrape.
fn sample(text: &str, series: &str) -> f64 {
    let values: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .collect();
    assert_eq!(values.len(), 1, "{series} in:\n{text}");
    values[0].parse().expect("a number")
}

#[test]
fn metrics_are_scraped_over_http_with_exact_values_after_known_traffic() {
    let metrics_addr = free_addr();
    let metrics_flag = metrics_addr.to_string();
    // A flag given twice takes its last value: this --metrics-listen wins.
    let mut relay =
        RelayProcess::start(&["--metrics-listen", &metrics_flag, "--drain-timeout", "3s"]);
    let addr = relay.addr;
    let mut binary = Ws::connect(addr, "/v1/server", &binary_headers("m-srv", "pyry/1"));
    let mut phone = Ws::connect(addr, "/v1/client", &phone_headers("m-srv", "t", "okhttp"));
    // Three messages up, two frames down.
    let mut conn_id = String::new();
    for n in 0..3 {
        let up = format!(r#"{{"n":{n}}}"#);
        phone.send_text(up.as_bytes());
        conn_id = conn_id_of(&binary.recv_text(), up.as_bytes());
    }
    for n in 0..2 {
        let down = format!(r#"{{"r":{n}}}"#);
        binary.send_text(&envelope(&conn_id, down.as_bytes()));
        assert_eq!(phone.recv_text(), down.into_bytes());
    }
    // One envelope dropped; the frame after it proves it was read.
    binary.send_text(b"not json");
    binary.send_text(&envelope(&conn_id, b"3"));
    assert_eq!(phone.recv_text(), b"3".to_vec());
    // A phone for nobody (accepted, then 4404) and a binary without headers.
    let mut stray = Ws::connect(addr, "/v1/client", &phone_headers("nobody", "t", "okhttp"));
    assert_eq!(stray.expect_close().0, 4404);
    let bare =
        "GET /v1/server HTTP/1.1\r\nHost: r\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(http(addr, bare).0, 400);

    let (status, head, body) = http(metrics_addr, "GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "{head}"
    );
    let text = String::from_utf8(body).unwrap();
    let p = "pyrycode_relay_";
    for (series, expected) in [
        (format!("{p}connected_binaries"), 1.0),
        (format!("{p}connected_phones"), 1.0),
        (
            format!("{p}frames_forwarded_total{{direction=\"phone_to_binary\"}}"),
            3.0,
        ),
        (
            format!("{p}frames_forwarded_total{{direction=\"binary_to_phone\"}}"),
            3.0,
        ),
        (
            format!("{p}ws_upgrade_attempts_total{{endpoint=\"server\",outcome=\"accept\"}}"),
            1.0,
        ),
        (
            format!("{p}ws_upgrade_attempts_total{{endpoint=\"client\",outcome=\"accept\"}}"),
            1.0,
        ),
        (
            format!("{p}ws_upgrade_attempts_total{{endpoint=\"client\",outcome=\"reject_404\"}}"),
            1.0,
        ),
        (
            format!(
                "{p}ws_upgrade_attempts_total{{endpoint=\"server\",outcome=\"reject_headers\"}}"
            ),
            1.0,
        ),
        (
            format!("{p}register_failures_total{{kind=\"no_server\"}}"),
            1.0,
        ),
        (format!("{p}envelopes_dropped_total"), 1.0),
        (format!("{p}grace_expiries_total"), 0.0),
        (format!("{p}push_wakes_total{{outcome=\"dropped\"}}"), 0.0),
    ] {
        assert_eq!(sample(&text, &series), expected, "{series}");
    }

    // The process metrics of the relay process itself.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
        0
    );
    assert_eq!(
        sample(&text, "process_max_fds"),
        limit.rlim_max as f64,
        "the relay raised its soft limit to the hard one"
    );
    let open = sample(&text, "process_open_fds");
    assert!(
        (7.0..100.0).contains(&open),
        "two listeners, three sockets: {open}"
    );
    let rss = sample(&text, "process_resident_memory_bytes");
    assert!(rss > 0.0 && sample(&text, "process_virtual_memory_bytes") >= rss);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = sample(&text, "process_start_time_seconds");
    assert!(
        started > 1.6e9 && started <= now + 1.0,
        "{started} vs {now}"
    );
    assert!(sample(&text, "process_cpu_seconds_total") >= 0.0);

    relay.signal(libc::SIGTERM);
    binary.expect_close();
    phone.expect_close();
    drop((binary, phone, stray));
    assert_eq!(relay.wait_exit().code(), Some(0));
}

#[test]
fn sighup_leaves_the_relay_serving() {
    // The systemd unit's ExecReload sends SIGHUP.
    let mut relay = RelayProcess::start(&["--drain-timeout", "3s"]);
    relay.signal(libc::SIGHUP);
    let (status, head, _) = http(relay.addr, "GET /healthz HTTP/1.1\r\nHost: r\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    relay.signal(libc::SIGTERM);
    assert_eq!(relay.wait_exit().code(), Some(0), "{}", relay.log_text());
}

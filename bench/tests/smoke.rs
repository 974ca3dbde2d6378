//! A tiny run of every scenario against the relay (a few connections for
//! about a second each, no HAProxy), so the benchmark never rots: the
//! generator's codec, the simulated peers, `/proc` sampling, the JSON and
//! the chart all run in `make test`. The same over TLS (`--tls`), and
//! against a relay the test starts itself (`--url`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// One benchmark at a time: each pins the relay to CPU 0 and the generator
/// to CPU 1, and the relay runs with a 400 ms pong timeout; two runs at
/// once on a 2-core machine would starve each other into heartbeat
/// timeouts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The relay executable of the profile this test was built with
/// (`target/<profile>/pyrycode-relay`). `cargo test --workspace` builds it
/// before any test runs (the relay's own integration tests need it); when
/// this crate is tested alone and it is missing, it is built into a
/// separate target directory, since the running `cargo test` holds the lock
/// of the normal one.
fn relay_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/smoke-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable under target/<profile>/deps");
    let relay = profile_dir.join("pyrycode-relay");
    if relay.exists() {
        return relay;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace");
    let target_dir = profile_dir
        .parent()
        .unwrap_or(profile_dir)
        .join("relay-bench-smoke");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "-p", "pyrycode-relay", "--bin", "pyrycode-relay"])
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .expect("run cargo build for the relay");
    assert!(status.success(), "building the relay failed");
    let built = target_dir.join("debug/pyrycode-relay");
    assert!(built.exists(), "no relay at {}", built.display());
    built
}

/// Runs relay-bench with `args`: (success, stdout, stderr, exit code).
fn bench(args: &[&str]) -> (bool, String, String, Option<i32>) {
    let output = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .args(args)
        .output()
        .expect("run relay-bench");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        output.status.code(),
    )
}

/// Runs relay-bench with `args`, which must succeed; returns its stdout.
fn bench_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr, _) = bench(args);
    assert!(
        ok,
        "relay-bench {args:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// The results file a run wrote (`--json`).
fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The directory of one test's files (results, chart, certificates),
/// under the system's temp dir: removed when the test passes, kept for a
/// look when it fails.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("relay-bench-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// `file` in the directory.
    fn join(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Pings every 100 ms that must be answered within 400 ms: a simulated
/// peer that did not answer would be closed 1011, which the generator
/// counts as an error.
const FAST_PINGS: &[&str] = &[
    "--relay-arg=--ping-interval=100ms",
    "--relay-arg=--pong-timeout=400ms",
];

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The flags of a tiny suite: 12 idle phones, 6 echoing phones for
/// 0.6 s in closed and open loop, churn 4 at a time (and the large-message
/// echo run, unless `NO_LARGE` is added).
const TINY_SUITE: &[&str] = &[
    "--quiet",
    "--idle-phones",
    "12",
    "--phones",
    "6",
    "--phones-per-binary",
    "3",
    "--in-flight",
    "2",
    "--rates",
    "400",
    "--churn-concurrency",
    "4",
    "--churn-rest",
    "300ms",
    "--duration",
    "600ms",
    "--open-duration",
    "500ms",
    "--warmup",
    "200ms",
    "--hold",
    "200ms",
    "--sources",
    "3",
];

/// Skips the suite's large-message echo run.
const NO_LARGE: &[&str] = &["--large-size", "0"];

/// The run of `scenario` against `target` in a results file.
fn run_of<'a>(doc: &'a Value, scenario: &str, target: &str) -> &'a Value {
    doc["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["scenario"] == scenario && m["target"] == target)
        .unwrap_or_else(|| panic!("no {scenario} run of {target} in {doc:#}"))
}

/// Every measurement of a results file, checked error-free and busy.
fn check_runs(doc: &Value, target: &str, scenarios: &[&str]) {
    for scenario in scenarios {
        let m = run_of(doc, scenario, target);
        if *scenario == "idle" {
            assert!(m["rss_connected_bytes"].as_u64().unwrap() > 0, "{m:#}");
        } else {
            assert!(m["completed"].as_u64().unwrap() > 0, "{m:#}");
        }
    }
    for m in doc["measurements"].as_array().unwrap() {
        assert_eq!(m["errors"], 0, "errors in {m:#}");
    }
}

/// `--tls`: the tiny suite over TLS against the relay, and against HAProxy
/// terminating TLS with the same certificate when HAProxy is installed.
#[test]
fn every_scenario_runs_briefly_over_tls() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = Scratch::new("smoke-tls");
    let json = dir.join("tls.json");
    let svg = dir.join("tls.svg");
    let mut args = vec![
        "suite",
        "--tls",
        "--relay",
        relay.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
        "--baseline",
        "auto",
    ];
    args.extend_from_slice(FAST_PINGS);
    args.extend_from_slice(TINY_SUITE);
    args.extend_from_slice(NO_LARGE);
    let stdout = bench_ok(&args);
    assert!(stdout.contains("## fanout"), "{stdout}");
    let doc = read_json(&json);
    assert_eq!(doc["machine"]["transport"], "tls");
    let mut targets = vec!["relay"];
    if haproxy_installed() {
        targets.push("haproxy");
    }
    for target in targets {
        check_runs(&doc, target, &["idle", "echo", "churn"]);
        let churn = run_of(&doc, "churn", target);
        assert!(
            churn["cpu_us_per_cycle"].as_f64().unwrap() > 0.0,
            "{churn:#}"
        );
        check_handshakes(&doc, target, churn["upgrades"].as_u64().unwrap());
    }
}

/// Every connection to `target` did a full TLS 1.3 handshake with ALPN
/// http/1.1, none resumed; at least `upgrades` of them.
fn check_handshakes(doc: &Value, target: &str, upgrades: u64) {
    let tally = &doc["machine"]["tls_handshakes"][target];
    let full = tally["full_handshakes"].as_u64().unwrap();
    assert!(full >= upgrades && upgrades > 0, "{tally:#}");
    assert_eq!(tally["resumed"], 0, "{tally:#}");
    let negotiated = tally["negotiated"].as_object().unwrap();
    assert!(
        negotiated
            .keys()
            .all(|k| k.starts_with("TLSv1_3 ") && k.ends_with(" http/1.1")),
        "{tally:#}"
    );
}

/// A relay started here, with the bench's limits and fast pings: plain, or
/// serving TLS from `(cert, key)` files.
struct RelayProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl RelayProcess {
    fn start(relay: &Path, tls: Option<(&Path, &Path)>) -> RelayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let listen = match tls {
            None => vec![format!("--insecure-listen={addr}")],
            Some((cert, key)) => vec![
                format!("--https-listen={addr}"),
                format!("--tls-cert={}", cert.display()),
                format!("--tls-key={}", key.display()),
            ],
        };
        let child = Command::new(relay)
            .args(listen)
            .args(["--metrics-listen=", "--log-level=warn"])
            .args([
                "--rate-limit-burst=100000000",
                "--max-connections-per-ip=1000000",
            ])
            .args(["--ping-interval=100ms", "--pong-timeout=400ms"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the relay");
        let mut relay = RelayProcess { child, addr };
        // Readiness only: poll for the listener, bounded.
        for _ in 0..500 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return relay;
            }
            assert!(
                relay.child.try_wait().unwrap().is_none(),
                "the relay exited at start-up"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the relay did not listen on {addr}");
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--url`: echo (closed and open loop), churn and fanout against a relay
/// that runs already; client-side figures only.
#[test]
fn url_loads_a_relay_that_is_already_running() {
    let _one = exclusive();
    let relay = RelayProcess::start(&relay_binary(), None);
    let dir = Scratch::new("smoke-url");
    let json = dir.join("url.json");
    let svg = dir.join("url.svg");
    let url = format!("ws://{}", relay.addr);
    let mut args = vec![
        "suite",
        "--url",
        &url,
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY_SUITE);
    args.extend_from_slice(NO_LARGE);
    let stdout = bench_ok(&args);
    assert!(stdout.contains("client-side figures only"), "{stdout}");
    let doc = read_json(&json);
    assert_eq!(doc["machine"]["url"], url.as_str());
    check_runs(&doc, "url", &["echo", "churn", "fanout"]);
    for m in doc["measurements"].as_array().unwrap() {
        assert_ne!(m["scenario"], "idle", "idle needs the relay's process");
        assert_eq!(m["target"], "url");
        assert!(m["latency"]["p99_us"].as_f64().unwrap() > 0.0, "{m:#}");
        for proxy_figure in [
            "proxy_cpu_percent",
            "cpu_us_per_forwarded_message",
            "rss_after_bytes",
            "rss_growth_per_connection_bytes",
        ] {
            assert!(m[proxy_figure].is_null(), "{proxy_figure} in {m:#}");
        }
    }
}

/// `--url wss://`: echo and churn against a relay serving TLS with a
/// self-signed certificate the bench is told to trust (`--tls-ca`).
#[test]
fn url_loads_a_relay_over_tls() {
    let _one = exclusive();
    let dir = Scratch::new("smoke-wss");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let relay = RelayProcess::start(&relay_binary(), Some((&cert, &key)));
    let url = format!("wss://localhost:{}", relay.addr.port());
    let json = dir.join("wss.json");
    let common = [
        "--url",
        url.as_str(),
        "--tls-ca",
        cert.to_str().unwrap(),
        "--quiet",
        "--sources",
        "3",
        "--duration",
        "500ms",
        "--warmup",
        "200ms",
        "--json",
        json.to_str().unwrap(),
    ];
    let mut echo = vec!["echo", "--phones", "6", "--phones-per-binary", "3"];
    echo.extend(["--in-flight", "2"]);
    echo.extend_from_slice(&common);
    let mut churn = vec!["churn", "--concurrency", "4"];
    churn.extend_from_slice(&common);
    for args in [echo, churn] {
        bench_ok(&args);
        let doc = read_json(&json);
        assert_eq!(doc["machine"]["transport"], "tls");
        check_runs(&doc, "url", &[args[0]]);
        let m = &doc["measurements"][0];
        assert!(m["proxy_cpu_percent"].is_null(), "{m:#}");
        let upgrades = m["upgrades"].as_u64().unwrap().max(1);
        check_handshakes(&doc, "url", upgrades);
    }
    // Without --tls-ca the self-signed certificate is refused, and said so.
    let (ok, _, stderr, _) = bench(&[
        "echo",
        "--url",
        &url,
        "--phones",
        "2",
        "--duration",
        "200ms",
    ]);
    assert!(!ok && stderr.contains("UnknownIssuer"), "{stderr}");
}

/// What `--url` and `--tls` refuse, before any connection is made.
#[test]
fn url_refusals_say_why() {
    for (args, why) in [
        (
            &["echo", "--url", "ws://192.0.2.1:8080"][..],
            "192.0.2.1 is not a loopback address; load goes to 127.0.0.0/8 only, unless --allow-remote is given",
        ),
        (&["echo", "--url", "http://127.0.0.1:8080"], "the scheme must be ws or wss"),
        (&["echo", "--url", "ws://127.0.0.1:8080/v1/client"], "no path"),
        (
            &["echo", "--url", "ws://127.0.0.1:8080", "--tls-ca", "/nonexistent"],
            "--tls-ca applies to wss:// URLs",
        ),
        (
            &["echo", "--url", "ws://127.0.0.1:8080", "--baseline", "haproxy"],
            "no HAProxy baseline with it",
        ),
        (&["idle", "--url", "ws://127.0.0.1:8080"], "no process to read"),
        (&["echo", "--url", "ws://127.0.0.1:8080", "--tls"], "cannot be used with"),
        (&["echo", "--allow-remote"], "--url"),
        (&["upgrade", "--tls"], "upgrade measures plain connections; --tls is not supported"),
        (
            &["soak", "--url", "ws://127.0.0.1:8080"],
            "soak starts and watches its own relay; --url is not supported",
        ),
        (
            &["fd-exhaustion", "--url", "ws://127.0.0.1:8080"],
            "fd-exhaustion starts and watches its own relay",
        ),
    ] {
        let (ok, _, stderr, code) = bench(args);
        assert!(!ok && code == Some(2), "{args:?}: {code:?} {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

#[test]
fn every_scenario_runs_briefly_against_the_relay() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = Scratch::new("smoke");
    let json = dir.join("results.json");
    let svg = dir.join("latency.svg");
    let mut args = vec![
        "suite",
        "--relay",
        relay.to_str().unwrap(),
        "--baseline",
        "none",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ];
    args.extend_from_slice(FAST_PINGS);
    args.extend_from_slice(TINY_SUITE);
    let stdout = bench_ok(&args);
    assert!(stdout.contains("## echo"), "{stdout}");

    let doc = read_json(&json);
    let runs = doc["measurements"].as_array().unwrap();
    let find = |scenario: &str, label_part: &str| -> &Value {
        runs.iter()
            .find(|m| {
                m["scenario"] == scenario && m["label"].as_str().unwrap_or("").contains(label_part)
            })
            .unwrap_or_else(|| panic!("no {scenario} {label_part} run in {doc:#}"))
    };
    for m in runs {
        assert_eq!(m["errors"], 0, "errors in {m:#}");
        assert_eq!(m["target"], "relay");
    }
    let idle = find("idle", "12 phones");
    assert_eq!(idle["binaries"], 4);
    assert!(idle["rss_connected_bytes"].as_u64().unwrap() > 0);

    let closed = find("echo", "2 in flight");
    assert!(closed["completed"].as_u64().unwrap() > 10, "{closed:#}");
    assert_eq!(
        closed["forwarded_messages"].as_u64().unwrap(),
        2 * closed["completed"].as_u64().unwrap()
    );
    assert!(closed["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    assert_eq!(closed["message_bytes"], 256);

    let open = find("echo", "/s offered");
    assert!(open["completed"].as_u64().unwrap() > 50, "{open:#}");

    let churn = find("churn", "4 at a time");
    assert!(churn["upgrades"].as_u64().unwrap() > 0, "{churn:#}");
    assert!(churn["upgrade_latency"]["p50_us"].as_f64().unwrap() > 0.0);
    assert!(
        churn["rest"]["rss_bytes"].as_u64().unwrap() > 0,
        "{churn:#}"
    );
    assert!(!churn["rest"]["samples"].as_array().unwrap().is_empty());
    assert!(stdout.contains("## churn memory"), "{stdout}");

    let fanout = find("fanout", "1 in flight");
    assert!(fanout["completed"].as_u64().unwrap() > 10, "{fanout:#}");

    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(chart.starts_with("<svg") && chart.contains("relay p99"));
}

#[test]
fn fd_exhaustion_runs_briefly_against_the_relay() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = Scratch::new("smoke-fd");
    let json = dir.join("fd.json");
    let stdout = bench_ok(&[
        "fd-exhaustion",
        "--relay",
        relay.to_str().unwrap(),
        "--quiet",
        "--fd-limit",
        "32",
        "--connections",
        "48",
        "--duration",
        "300ms",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(stdout.contains("## fd-exhaustion"), "{stdout}");

    let doc = read_json(&json);
    let m = &doc["measurements"][0];
    assert_eq!(m["scenario"], "fd-exhaustion", "{doc:#}");
    assert_eq!(m["params"]["fd_limit"], 32);
    // The relay held some connections, not all: it ran out.
    let held = m["connections_held_at_pause"].as_u64().unwrap();
    assert!(held > 0 && held < 48, "{m:#}");
    assert!(m["window_s"].as_f64().unwrap() > 0.0, "{m:#}");
    assert!(m["proxy_cpu_percent"].as_f64().unwrap() >= 0.0, "{m:#}");
    assert!(m["context_switches_per_s"].as_f64().is_some(), "{m:#}");
    assert!(m["resume_ms"].as_f64().unwrap() > 0.0, "{m:#}");
}

#[test]
fn a_tiny_soak_samples_the_relay_under_its_mixed_load() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = Scratch::new("soak");
    let json = dir.join("soak.json");
    let mut args = vec![
        "soak",
        "--relay",
        relay.to_str().unwrap(),
        "--quiet",
        "--sources",
        "3",
        "--duration",
        "1s",
        "--interval",
        "250ms",
        "--idle-phones",
        "6",
        "--echo-phones",
        "3",
        "--phones-per-binary",
        "3",
        "--rate",
        "200",
        "--churn-concurrency",
        "2",
        "--churn-rate",
        "40",
        "--rest",
        "300ms",
        "--json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(FAST_PINGS);
    let stdout = bench_ok(&args);
    assert!(stdout.contains("## soak"), "{stdout}");
    let doc = read_json(&json);
    let soak = &doc["soak"];
    assert_eq!(soak["errors"], 0, "{soak:#}");
    assert_eq!(soak["params"]["binaries"], 3);
    let samples = soak["samples"].as_array().unwrap();
    assert!(samples.len() >= 2, "{soak:#}");
    let total = |key: &str| {
        samples
            .iter()
            .map(|s| s[key].as_u64().unwrap())
            .sum::<u64>()
    };
    assert!(total("echoes") > 0, "{soak:#}");
    assert!(total("churn_cycles") > 0, "{soak:#}");
    assert!(samples.iter().all(|s| s["rss_bytes"].as_u64().unwrap() > 0));
    // A second of samples is too short for a verdict on the trend.
    assert_eq!(soak["trend"]["verdict"], "too short to judge");
    assert!(soak["rest"]["rss_bytes"].as_u64().unwrap() > 0);
}

//! A tiny run of every scenario against the relay (a few connections for
//! about a second each, no HAProxy), so the benchmark never rots: the
//! generator's codec, the simulated peers, `/proc` sampling, the JSON and
//! the chart all run in `make test`.

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

#[test]
fn every_scenario_runs_briefly_against_the_relay() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = std::env::temp_dir().join(format!("relay-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("results.json");
    let svg = dir.join("latency.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .arg("suite")
        .arg("--relay")
        .arg(&relay)
        .args(["--baseline", "none", "--quiet"])
        .args([
            "--idle-phones",
            "12",
            "--phones",
            "6",
            "--phones-per-binary",
            "3",
        ])
        .args([
            "--in-flight",
            "2",
            "--rates",
            "400",
            "--churn-concurrency",
            "4",
            "--churn-rest",
            "300ms",
        ])
        .args(["--duration", "600ms", "--open-duration", "500ms"])
        .args(["--warmup", "200ms", "--hold", "200ms", "--sources", "3"])
        // Pings every 100 ms that must be answered within 400 ms: a
        // simulated peer that did not answer would be closed 1011, which
        // the generator counts as an error.
        .args([
            "--relay-arg=--ping-interval=100ms",
            "--relay-arg=--pong-timeout=400ms",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run relay-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "relay-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("## echo"), "{stdout}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fd_exhaustion_runs_briefly_against_the_relay() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = std::env::temp_dir().join(format!("relay-bench-smoke-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("fd.json");
    let output = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .arg("fd-exhaustion")
        .arg("--relay")
        .arg(&relay)
        .args(["--quiet", "--fd-limit", "32", "--connections", "48"])
        .args(["--duration", "300ms"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run relay-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "relay-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("## fd-exhaustion"), "{stdout}");

    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_tiny_soak_samples_the_relay_under_its_mixed_load() {
    let _one = exclusive();
    let relay = relay_binary();
    let dir = std::env::temp_dir().join(format!("relay-bench-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("soak.json");
    let output = Command::new(env!("CARGO_BIN_EXE_relay-bench"))
        .arg("soak")
        .arg("--relay")
        .arg(&relay)
        .args([
            "--quiet",
            "--sources",
            "3",
            "--duration",
            "1s",
            "--interval",
            "250ms",
        ])
        .args([
            "--idle-phones",
            "6",
            "--echo-phones",
            "3",
            "--phones-per-binary",
            "3",
        ])
        .args([
            "--rate",
            "200",
            "--churn-concurrency",
            "2",
            "--churn-rate",
            "40",
        ])
        .args(["--rest", "300ms"])
        .args([
            "--relay-arg=--ping-interval=100ms",
            "--relay-arg=--pong-timeout=400ms",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run relay-bench soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "relay-bench soak failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("## soak"), "{stdout}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
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
    let _ = std::fs::remove_dir_all(&dir);
}

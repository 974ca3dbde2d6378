//! The deployment files under `deploy/` against the relay they deploy:
//!
//! - every query of `grafana-dashboard.json` names only metrics the relay
//!   exposes (the exposition of `Metrics::render`), and the dashboard shows
//!   what the issue asks for;
//! - `pyrycode-relay.service` passes `systemd-analyze verify` (Debian
//!   package `systemd`), has the hardening it promises, and its command
//!   line passes every boot check of the relay in production mode.

#[path = "support/process.rs"]
mod process;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use process::{clean_command, copy_relay, run_to_exit, TempDir, RELAY};
use pyrycode_relay::metrics::Metrics;

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name)
}

// ------------------------------------------------------------------ dashboard

/// Every series name the relay exposes: the families of the text format,
/// with a histogram's `_bucket`, `_sum` and `_count`.
fn exposed_names() -> BTreeSet<String> {
    let text = Metrics::default().render(0, 0);
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_string());
        }
    }
    names
}

/// Keywords and aggregation operators of PromQL that look like names
/// (`sum by (le) (…)` puts a keyword between the operator and its `(`).
const KEYWORDS: [&str; 23] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression selects: every identifier that is
/// not a function call, a keyword, a label (inside `{}` or after `by`), a
/// range (`[]`) or a string.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut after_grouping = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' | '"' => {
                let close = match c {
                    '{' => '}',
                    '[' => ']',
                    _ => '"',
                };
                i += 1;
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '(' if after_grouping => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                after_grouping = false;
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                if KEYWORDS.contains(&word.as_str()) {
                    after_grouping = matches!(
                        word.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
                } else if next != Some(&'(') {
                    names.push(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number, possibly with an exponent (1e-3).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Every `expr` anywhere in the dashboard, with its panel's title.
fn queries(value: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            let title = map.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            for (key, inner) in map {
                match (key.as_str(), inner) {
                    ("expr", serde_json::Value::String(expr)) => {
                        out.push((title.to_string(), expr.clone()))
                    }
                    _ => queries(inner, title, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                queries(item, title, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_query_scanner_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le, direction) (rate(a_bucket{job=~"$job"}[$__rate_interval])))"#
        ),
        vec!["a_bucket"]
    );
    assert_eq!(
        metric_names("time() - max(process_start_time_seconds) / b_total offset 5m"),
        vec!["process_start_time_seconds", "b_total"]
    );
    assert_eq!(metric_names("1e-3 * x"), vec!["x"]);
}

#[test]
fn every_dashboard_query_names_a_metric_the_relay_exposes() {
    let text = std::fs::read_to_string(deploy_file("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut found = Vec::new();
    queries(&dashboard["panels"], "", &mut found);
    assert!(found.len() >= 20, "{} queries", found.len());
    let exposed = exposed_names();
    let mut used = BTreeSet::new();
    for (title, expr) in &found {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: no metric in {expr}");
        for name in names {
            assert!(
                exposed.contains(&name),
                "{title}: {name} is not exposed ({expr})"
            );
            used.insert(name);
        }
    }
    // What the issue asks the dashboard to show.
    for name in [
        "pyrycode_relay_connected_binaries",
        "pyrycode_relay_connected_phones",
        "pyrycode_relay_ws_upgrade_attempts_total",
        "pyrycode_relay_http_refusals_total",
        "pyrycode_relay_frames_forwarded_total",
        "pyrycode_relay_bytes_forwarded_total",
        "pyrycode_relay_frame_latency_seconds_bucket",
        "pyrycode_relay_backpressure_pauses_total",
        "pyrycode_relay_phone_backlog_full_closes_total",
        "pyrycode_relay_grace_expiries_total",
        "pyrycode_relay_push_wakes_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
    // The variables the queries use are defined.
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for variable in ["datasource", "job", "instance"] {
        assert!(variables.contains(&variable), "{variables:?}");
    }
}

// ------------------------------------------------------------------ unit file

fn unit_text() -> String {
    std::fs::read_to_string(deploy_file("pyrycode-relay.service")).unwrap()
}

/// The values of `key=` in the unit, in order.
fn directive<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn the_unit_file_has_the_promised_sandbox() {
    let unit = unit_text();
    for (key, value) in [
        ("DynamicUser", "yes"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("StateDirectory", "pyrycode-relay"),
        ("LimitNOFILE", "65536"),
        ("Environment", "PYRYCODE_RELAY_PRODUCTION=1"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("RestartPreventExitStatus", "2"),
    ] {
        assert_eq!(directive(&unit, key), vec![value], "{key}");
    }
    let exec = directive(&unit, "ExecStart");
    assert!(
        exec.len() == 1 && exec[0].contains("--cert-cache /var/lib/pyrycode-relay"),
        "the certificate cache is the state directory: {exec:?}"
    );
}

#[test]
fn systemd_analyze_verify_passes_on_the_unit() {
    // verify checks that ExecStart's program exists: point it at the
    // relay just built, in a copy of the unit.
    let dir = std::env::temp_dir().join(format!("pyrycode-relay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = dir.join("pyrycode-relay.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/local/bin/pyrycode-relay", RELAY),
    )
    .unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd; .ci/run does)");
    std::fs::remove_dir_all(&dir).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{said}");
    // Unknown keys are warnings with exit 0: the unit must have none.
    assert!(!said.contains("pyrycode-relay.service"), "{said}");
}

#[test]
fn the_units_command_line_passes_every_boot_check_in_production() {
    let unit = unit_text();
    let exec = directive(&unit, "ExecStart")[0];
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    // As the unit runs it: uid 65534 with CAP_NET_BIND_SERVICE, production.
    let mut setpriv = setpriv(65534);
    setpriv
        .args([
            "--inh-caps=+net_bind_service",
            "--ambient-caps=+net_bind_service",
        ])
        .args([
            "--",
            "/bin/sh",
            "-c",
            "exec \"$0\" \"$@\" --metrics-listen ''",
        ]);
    // The last value wins: a cache path that cannot be a directory stops
    // the start right after the boot checks, before any port is bound or
    // any CA is asked. Every check passes; what stops it is that path.
    stops_at_the_cache(setpriv, &args, &[("PYRYCODE_RELAY_PRODUCTION", "1")]);
}

/// `setpriv` running its command as `uid` (and the same gid).
fn setpriv(uid: u32) -> Command {
    let mut command = clean_command("setpriv");
    command.args([format!("--reuid={uid}"), format!("--regid={uid}")]);
    command.arg("--clear-groups");
    command
}

/// Runs a copy of the relay any uid may execute through `setpriv` with
/// `args`, the environment `env` and `--cert-cache /dev/null` last;
/// expects every boot check to pass and the start to stop at that cache
/// path (exit 1).
fn stops_at_the_cache(mut setpriv: Command, args: &[&str], env: &[(&str, &str)]) {
    let dir = TempDir::new("deploy");
    setpriv
        .arg(copy_relay(dir.path()))
        .args(args)
        .args(["--cert-cache", "/dev/null"])
        .envs(env.iter().copied());
    let (status, _, stderr) = run_to_exit(setpriv);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("certificate cache /dev/null is not a directory"),
        "{stderr}"
    );
}

#[test]
fn the_fly_manifests_command_line_passes_every_boot_check_on_fly() {
    let manifest = std::fs::read_to_string(deploy_file("fly.toml")).unwrap();
    let argv = manifest
        .lines()
        .skip_while(|line| line.trim() != "[processes]")
        .find_map(|line| line.trim().strip_prefix("app = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .expect("[processes] app = \"…\"");
    // As the image runs it: uid 65532, no capability, Fly's environment.
    let mut setpriv = setpriv(65532);
    setpriv.arg("--");
    let mut args: Vec<&str> = argv.split_whitespace().collect();
    args.extend(["--metrics-listen", ""]);
    let env = [
        ("PYRYCODE_RELAY_PRODUCTION", "1"),
        ("PYRYCODE_RELAY_SINGLE_INSTANCE", "1"),
        ("FLY_APP_NAME", "pyrycode-relay"),
    ];
    stops_at_the_cache(setpriv, &args, &env);
    for env in [
        "PYRYCODE_RELAY_SINGLE_INSTANCE = \"1\"",
        "PYRYCODE_RELAY_PRODUCTION = \"1\"",
    ] {
        assert!(manifest.contains(env), "fly.toml lacks {env}");
    }
}

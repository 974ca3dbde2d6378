//! Every boot refusal with the real executable: the process exits 2 with
//! one line of reason on stderr and nothing on stdout, before it binds
//! anything. The environment switches, the single-instance rule, what
//! production mode forbids (plain WebSocket, the manual clock, root, extra
//! capabilities), the limits, `--metrics-listen`, and every conflict of
//! the listener flags.
//!
//! The tests run as root (as CI does). The non-root cases run the relay
//! through `setpriv` (util-linux) as uid/gid 65534, with or without
//! ambient capabilities. Real time: a process that does not exit within
//! `process::WAIT` fails the test.

#[path = "support/process.rs"]
mod process;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;

use process::{clean_command, copy_relay, run_to_exit, RelayProcess, PLAIN, RELAY};

/// How the relay is run.
#[derive(Clone, Copy)]
enum As {
    /// As this test process (root).
    Me,
    /// As uid/gid 65534 with these ambient capabilities (setpriv syntax,
    /// e.g. `+net_admin,+sys_ptrace`; empty for none).
    Nobody(&'static str),
}

/// A copy of the relay any user may execute (the build directory may not
/// be reachable by uid 65534).
fn relay_for_anyone() -> &'static str {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        remove_stale_copies();
        let dir = std::env::temp_dir().join(format!("{COPY_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy_relay(&dir)
    })
    .to_str()
    .unwrap()
}

const COPY_PREFIX: &str = "pyrycode-relay-boot-";

/// Removes the copies of earlier test runs whose process is gone.
fn remove_stale_copies() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(COPY_PREFIX)) else {
            continue;
        };
        let Ok(pid) = pid.parse::<libc::pid_t>() else {
            continue;
        };
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn command(who: As, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = match who {
        As::Me => clean_command(RELAY),
        As::Nobody(caps) => {
            assert_eq!(
                // SAFETY: geteuid has no preconditions.
                unsafe { libc::geteuid() },
                0,
                "these tests drop privileges, which needs root (CI runs as root)"
            );
            let mut command = clean_command("setpriv");
            command.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
            if !caps.is_empty() {
                command.arg(format!("--inh-caps={caps}"));
                command.arg(format!("--ambient-caps={caps}"));
            }
            command.args(["--", relay_for_anyone()]);
            command
        }
    };
    command.envs(env.iter().copied()).args(args);
    command
}

/// Runs the relay to its exit; status, stdout, stderr.
fn run(who: As, env: &[(&str, &str)], args: &[&str]) -> (ExitStatus, String, String) {
    run_to_exit(command(who, env, args))
}

/// Asserts a boot refusal: exit 2, nothing on stdout, one line on stderr
/// that contains `needle`. Returns the line.
fn refused(who: As, env: &[(&str, &str)], args: &[&str], needle: &str) -> String {
    let (status, stdout, stderr) = run(who, env, args);
    let context = format!("env {env:?} args {args:?}: {stderr:?}");
    assert_eq!(status.code(), Some(2), "{context}");
    assert_eq!(stdout, "", "{context}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {context}");
    assert!(lines[0].starts_with("pyrycode-relay: "), "{context}");
    assert!(lines[0].contains(needle), "no {needle:?}: {context}");
    lines[0].to_string()
}

/// A refusal of the flags alone (as root, no environment).
fn refused_flags(args: &[&str], needle: &str) -> String {
    refused(As::Me, &[], args, needle)
}

/// Starts the relay and waits for its `listening` line; then stops it with
/// SIGTERM and expects exit 0. Returns the log.
fn starts(env: &[(&str, &str)], args: &[&str]) -> String {
    starts_command(command(As::Me, env, args))
}

/// Runs `command` (the relay, or something that execs it) until its
/// `listening` line, then stops it with SIGTERM and expects exit 0.
fn starts_command(command: Command) -> String {
    let mut relay = RelayProcess::spawn(command, 1);
    relay.signal(libc::SIGTERM);
    let status = relay.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", relay.log_text());
    relay.log_text()
}

/// Flags that pass every flag rule in production: TLS from files. The
/// files are read only after every boot check, so these do not exist.
const TLS_FILES: [&str; 6] = [
    "--tls-cert",
    "/etc/relay/cert.pem",
    "--tls-key",
    "/etc/relay/key.pem",
    "--metrics-listen",
    "",
];

/// A certificate and key any user may read, in a directory of their own.
fn readable_tls_files() -> (String, String) {
    static FILES: OnceLock<(String, String)> = OnceLock::new();
    FILES
        .get_or_init(|| {
            let dir = std::path::Path::new(relay_for_anyone())
                .parent()
                .unwrap()
                .join("tls");
            std::fs::create_dir_all(&dir).unwrap();
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["relay.test".to_string()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            for path in [&dir, &cert_path, &key_path] {
                let mode = if path == &dir { 0o755 } else { 0o644 };
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let text = |p: std::path::PathBuf| p.to_str().unwrap().to_string();
            (text(cert_path), text(key_path))
        })
        .clone()
}

// ------------------------------------------------------------ environment

#[test]
fn the_environment_switches_must_be_unset_or_exactly_one() {
    for name in [
        "PYRYCODE_RELAY_PRODUCTION",
        "PYRYCODE_RELAY_SINGLE_INSTANCE",
    ] {
        for bad in ["", "true", " 1", "0"] {
            let line = refused(As::Me, &[(name, bad)], &PLAIN, name);
            assert!(line.contains(&format!("{bad:?}")), "{line}");
        }
    }
    starts(&[("PYRYCODE_RELAY_SINGLE_INSTANCE", "1")], &PLAIN);
}

#[test]
fn fly_without_the_single_instance_assertion_is_refused() {
    let fly = ("FLY_APP_NAME", "pyrycode-relay");
    let line = refused(As::Me, &[fly], &PLAIN, "FLY_APP_NAME");
    assert!(line.contains("PYRYCODE_RELAY_SINGLE_INSTANCE=1"), "{line}");
    starts(&[fly, ("PYRYCODE_RELAY_SINGLE_INSTANCE", "1")], &PLAIN);
}

#[test]
fn empty_fcm_credentials_are_refused() {
    refused(
        As::Me,
        &[("PYRYCODE_RELAY_FCM_CREDENTIALS", "")],
        &PLAIN,
        "PYRYCODE_RELAY_FCM_CREDENTIALS is set but empty",
    );
    let line = refused(
        As::Me,
        &[("PYRYCODE_RELAY_FCM_CREDENTIALS", "{\"k\":\"s3cr3t\"}")],
        &PLAIN,
        "not a usable service-account key",
    );
    assert!(!line.contains("s3cr3t"), "{line}");
    let log = starts(&[], &PLAIN);
    assert!(log.contains("push_off reason=credentials_unset"), "{log}");
}

/// A real service-account key (a throwaway test key) turns push on.
#[test]
fn a_service_account_key_turns_push_on() {
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": "test-project",
        "private_key": include_str!("fixtures/push-test-key.pem"),
        "client_email": "relay@test-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
    })
    .to_string();
    let log = starts(&[("PYRYCODE_RELAY_FCM_CREDENTIALS", key.as_str())], &PLAIN);
    assert!(log.contains("push_enabled project=test-project"), "{log}");
    let log = starts(
        &[("PYRYCODE_RELAY_FCM_CREDENTIALS", key.as_str())],
        &[&PLAIN[..], &["--fcm-project", "other-project"]].concat(),
    );
    assert!(log.contains("push_enabled project=other-project"), "{log}");
    assert!(!log.contains("PRIVATE KEY"), "{log}");
}

// ------------------------------------------------------------- production

const PRODUCTION: (&str, &str) = ("PYRYCODE_RELAY_PRODUCTION", "1");

#[test]
fn production_refuses_plain_websocket() {
    refused(As::Me, &[PRODUCTION], &PLAIN, "refuses plain WebSocket");
    refused(
        As::Nobody(""),
        &[PRODUCTION],
        &["--metrics-listen", ""],
        "refuses plain WebSocket on 127.0.0.1:8080 (plain mode",
    );
}

#[test]
fn production_refuses_the_manual_clock() {
    let args: Vec<&str> = TLS_FILES
        .iter()
        .chain(&["--manual-clock"])
        .copied()
        .collect();
    refused(
        As::Nobody(""),
        &[PRODUCTION],
        &args,
        "--manual-clock is for tests",
    );
}

#[test]
fn production_refuses_root() {
    refused(
        As::Me,
        &[PRODUCTION],
        &TLS_FILES,
        "refuses to run as root (euid 0)",
    );
}

#[test]
fn production_refuses_capabilities_other_than_net_bind_service_and_names_them() {
    refused(
        As::Nobody("+net_admin,+sys_ptrace,+net_bind_service"),
        &[PRODUCTION],
        &TLS_FILES,
        "capabilities other than CAP_NET_BIND_SERVICE: CAP_NET_ADMIN, CAP_SYS_PTRACE (",
    );
}

#[test]
fn production_as_a_plain_user_with_net_bind_service_passes_every_check() {
    let (cert, key) = readable_tls_files();
    let args = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--https-listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
    ];
    for caps in ["", "+net_bind_service"] {
        let log = starts_command(command(As::Nobody(caps), &[PRODUCTION], &args));
        assert!(log.contains("production_mode on=1"), "{log}");
        assert!(log.contains("tls=files"), "{log}");
    }
}

#[test]
fn outside_production_root_and_capabilities_are_allowed() {
    starts(&[], &PLAIN);
}

// ----------------------------------------------------------------- limits

#[test]
fn every_limit_must_be_positive() {
    for flag in [
        "--max-connections",
        "--max-connections-per-ip",
        "--max-phones-per-server",
        "--rate-limit-burst",
        "--max-message-size",
        "--max-header-size",
        "--phone-backlog",
        "--binary-high-water",
        "--binary-low-water",
        "--rate-limit-interval",
        "--grace-period",
        "--ping-interval",
        "--pong-timeout",
        "--conflict-probe-timeout",
        "--handshake-timeout",
        "--message-timeout",
        "--write-timeout",
        "--drain-timeout",
    ] {
        let args: Vec<&str> = PLAIN.iter().chain(&[flag, "0"]).copied().collect();
        refused_flags(&args, flag);
    }
}

#[test]
fn low_water_must_be_below_high_water() {
    for low in ["1MiB", "2MiB"] {
        let args: Vec<&str> = PLAIN
            .iter()
            .chain(&["--binary-low-water", low])
            .copied()
            .collect();
        refused_flags(&args, "must be below --binary-high-water");
    }
}

#[test]
fn metrics_listen_must_be_a_loopback_ip_literal_with_a_port() {
    for (addr, needle) in [
        ("localhost:9090", "host names such as localhost are refused"),
        ("0.0.0.0:9090", "not a loopback address"),
        (":9090", "not a loopback IP literal"),
        ("127.0.0.1", "not a loopback IP literal"),
        ("127.0.0.1:0", "port 0"),
    ] {
        refused_flags(
            &["--insecure-listen", "127.0.0.1:0", "--metrics-listen", addr],
            needle,
        );
    }
}

// ---------------------------------------------------------- listener flags

#[test]
fn an_explicit_insecure_listen_refuses_the_tls_flags() {
    for extra in [
        &["--domain", "relay.example.com"][..],
        &["--http-listen", ":80"],
        &["--https-listen", ":443"],
        &["--https-proxy-protocol"],
        &["--tls-cert", "c", "--tls-key", "k"],
    ] {
        let args: Vec<&str> = PLAIN.iter().chain(extra).copied().collect();
        let line = refused_flags(&args, "--insecure-listen cannot be combined with");
        assert!(line.contains(extra[0]), "{line}");
    }
}

#[test]
fn cert_and_key_come_together() {
    refused_flags(&["--tls-cert", "c"], "--tls-cert needs --tls-key");
    refused_flags(&["--tls-key", "k"], "--tls-key needs --tls-cert");
}

#[test]
fn tls_and_acme_flags_without_their_mode_are_refused() {
    for (args, needle) in [
        (&["--https-listen", ":8443"][..], "needs TLS"),
        (&["--http-listen", ":8080"], "needs TLS"),
        (&["--https-proxy-protocol"], "needs TLS"),
        (&["--cert-cache", "/tmp/c"], "needs --domain"),
        (&["--acme-email", "ops@example.com"], "needs --domain"),
        (
            &[
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
                "--acme-directory",
                "https://127.0.0.1:14000/dir",
            ],
            "which --tls-cert turns off",
        ),
        (
            &["--tls-cert", "c", "--tls-key", "k", "--http-listen", ":80"],
            "--http-listen serves ACME HTTP-01",
        ),
        (
            &["--domain", "relay.example.com", "--proxy-protocol"],
            "use --https-proxy-protocol",
        ),
        (
            &["--domain", "relay.example.com", "--http-listen", ":443"],
            "two listeners on one port",
        ),
        (
            &[
                "--domain",
                "relay.example.com",
                "--acme-directory",
                "http://ca.example.com/dir",
            ],
            "--acme-directory",
        ),
        (&["--domain", "https://relay.example.com"], "--domain"),
        (
            &["--insecure-listen", "localhost:8080"],
            "--insecure-listen",
        ),
        (
            &["--fcm-endpoint", "http://fcm.example.com"],
            "--fcm-endpoint",
        ),
    ] {
        refused_flags(args, needle);
    }
}

#[test]
fn valid_tls_acme_and_proxy_settings_start() {
    let (cert, key) = readable_tls_files();
    let cache = std::path::Path::new(&cert)
        .parent()
        .unwrap()
        .join("acme-cache");
    let cache = cache.to_str().unwrap();
    // Nothing listens on port 9: ACME's first order fails and backs off.
    let dead_ca = "https://127.0.0.1:9/dir";
    for args in [
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--https-listen",
            "127.0.0.1:0",
        ][..],
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--https-listen",
            "127.0.0.1:0",
            "--https-proxy-protocol",
            "--domain",
            "relay.example.com",
        ],
        // The Go relay's production command line, on free ports.
        &[
            "--domain",
            "relay.example.com",
            "--cert-cache",
            cache,
            "--http-listen=127.0.0.1:0",
            "--https-listen=127.0.0.1:0",
            "--https-proxy-protocol",
            "--acme-directory",
            dead_ca,
        ],
        &["--insecure-listen", "127.0.0.1:0", "--proxy-protocol"],
    ] {
        let args: Vec<&str> = args
            .iter()
            .chain(&["--metrics-listen", ""])
            .copied()
            .collect();
        starts(&[], &args);
    }
}

#[test]
fn plain_mode_without_a_listen_flag_starts_on_127_0_0_1_8080() {
    // In a network namespace of its own, so that 8080 is free whatever else
    // runs on this machine.
    let mut command = clean_command("unshare");
    command.args([
        "--net",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" --metrics-listen ''",
        RELAY,
    ]);
    let log = starts_command(command);
    assert!(log.contains("listening addr=127.0.0.1:8080 "), "{log}");
}

//! The ACME certificate cache (`src/acme/cache_dir.rs`, `cache.rs`): the
//! directory's permission rules, the files' layout and modes, and a start
//! that serves a valid cached certificate without the CA.
//!
//! The "owned by someone else" cases chown a directory to uid 65534, so
//! this suite runs as root (as CI does).

#[path = "support/tls.rs"]
mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mio::{Poll, Token, Waker};
use pyrycode_relay::acme::cache_dir::{self, CacheDirError, Prepared};
use pyrycode_relay::acme::{cache, Acme, AcmeConfig, CertInfo};
use rcgen::{CertificateParams, KeyPair};

const NOBODY: u32 = 65534;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("relay-acme-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_to_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
        .expect("this test chowns a directory: run it as root");
}

#[test]
fn a_missing_directory_is_created_private_with_its_parents() {
    let base = temp_dir("create");
    let dir = base.join("home/.pyrycode-relay/certs");
    assert_eq!(cache_dir::prepare(&dir).unwrap(), Prepared::Created);
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(cache_dir::prepare(&dir).unwrap(), Prepared::Unchanged);
}

#[test]
fn our_open_directory_is_tightened() {
    let dir = temp_dir("tighten");
    for open in [0o755, 0o750, 0o707, 0o777] {
        chmod(&dir, open);
        let prepared = cache_dir::prepare(&dir).unwrap();
        assert_eq!(prepared, Prepared::Tightened { was: open });
        assert_eq!(mode(&dir), 0o700);
    }
}

#[test]
fn someone_elses_open_directory_is_refused_and_left_alone() {
    let dir = temp_dir("foreign-open");
    chown_to_nobody(&dir);
    for open in [0o750, 0o705, 0o777] {
        chmod(&dir, open);
        let error = cache_dir::prepare(&dir).unwrap_err();
        assert!(
            matches!(error, CacheDirError::NotPrivate { owner: NOBODY, .. }),
            "{error}"
        );
        let reason = error.to_string();
        assert!(
            reason.contains("65534") && reason.contains(&format!("{open:04o}")),
            "{reason}"
        );
        assert_eq!(mode(&dir), open, "left as it was");
    }
}

#[test]
fn someone_elses_private_directory_is_accepted() {
    let dir = temp_dir("foreign-private");
    chown_to_nobody(&dir);
    chmod(&dir, 0o700);
    assert_eq!(cache_dir::prepare(&dir).unwrap(), Prepared::Unchanged);
}

#[test]
fn a_file_is_not_a_cache_directory() {
    let dir = temp_dir("file");
    let file = dir.join("certs");
    fs::write(&file, "").unwrap();
    let error = cache_dir::prepare(&file).unwrap_err();
    assert!(matches!(error, CacheDirError::NotADirectory(_)), "{error}");
}

#[test]
fn the_default_is_under_home() {
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => {
            let expected = Path::new(&home).join(".pyrycode-relay/certs");
            assert_eq!(cache_dir::default_dir().unwrap(), expected);
        }
        _ => assert!(matches!(
            cache_dir::default_dir(),
            Err(CacheDirError::NoHome)
        )),
    }
}

/// A leaf for `domain` valid from `not_before` to `not_after`, as the
/// PEM of its key and of its chain (leaf, intermediate).
fn issued(domain: &str, not_before: SystemTime, not_after: SystemTime) -> (String, String) {
    let ca = support::TestCa::new("cache root");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec![domain.to_owned()]).unwrap();
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let leaf = ca.sign(&params, &key);
    (key.serialize_pem(), format!("{}{}", leaf, ca.root_pem))
}

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn a_stored_certificate_loads_back_private_and_in_autocert_layout() {
    let dir = temp_dir("store");
    let now = SystemTime::now();
    let (key_pem, chain_pem) = issued("relay.test", now - DAY, now + 89 * DAY);
    cache::store_certificate(&dir, "relay.test", &key_pem, &chain_pem).unwrap();

    let path = dir.join("relay.test");
    assert_eq!(mode(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("-----BEGIN PRIVATE KEY-----"), "key first");
    let cached = cache::load_certificate(&dir, "Relay.Test")
        .unwrap()
        .unwrap();
    assert_eq!(cached.certified.cert.len(), 2, "leaf and intermediate");
    assert!(cached.info.covers("relay.test"));
    assert!(cached.info.is_valid_at(now));
    assert!(!cached.info.is_valid_at(now + 90 * DAY));
}

#[test]
fn a_go_autocert_cache_file_is_read() {
    // Go's autocert writes an "EC PRIVATE KEY" (SEC1) block, then the chain.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let key = fs::read_to_string(data.join("ec-p256-sec1.key")).unwrap();
    let chain = fs::read_to_string(data.join("ec-p256-sec1.crt")).unwrap();
    let dir = temp_dir("autocert");
    fs::write(dir.join("relay.test"), format!("{key}{chain}")).unwrap();
    let cached = cache::load_certificate(&dir, "relay.test")
        .unwrap()
        .unwrap();
    assert!(cached.info.covers("relay.test"));
}

#[test]
fn unusable_cache_files_are_reported() {
    let dir = temp_dir("unusable");
    assert!(cache::load_certificate(&dir, "relay.test")
        .unwrap()
        .is_none());

    fs::write(dir.join("relay.test"), "garbage").unwrap();
    let error = cache::load_certificate(&dir, "relay.test").unwrap_err();
    assert!(error.to_string().contains("relay.test"), "{error}");

    let now = SystemTime::now();
    let (key_pem, chain_pem) = issued("other.test", now - DAY, now + DAY);
    cache::store_certificate(&dir, "relay.test", &key_pem, &chain_pem).unwrap();
    let error = cache::load_certificate(&dir, "relay.test").unwrap_err();
    assert!(
        error.to_string().contains("does not name relay.test"),
        "{error}"
    );
}

#[test]
fn an_account_of_another_directory_is_not_used() {
    let dir = temp_dir("account");
    let json = r#"{"id":"https://ca.test/acct/1","key_pkcs8":"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJVWC_QzOTCS5vtsJp2IG-UDc8cdDfeoKtxSZxaznM-mhRANCAAQenCPoGgPFTdPJ7VLLKt56RxPlYT1wNXnHc54PEyBg3LxKaH0-sJkX0mL8LyPEdsfL_Oz4TxHkWLJGrXVtNhfH","directory":"https://ca.test/dir"}"#;
    fs::write(cache::account_path(&dir), json).unwrap();
    assert!(cache::load_account(&dir, "https://ca.test/dir")
        .unwrap()
        .is_some());
    assert!(cache::load_account(&dir, "https://other.test/dir")
        .unwrap()
        .is_none());

    let credentials = cache::load_account(&dir, "https://ca.test/dir")
        .unwrap()
        .unwrap();
    cache::store_account(&dir, &credentials).unwrap();
    assert_eq!(mode(&cache::account_path(&dir)), 0o600);
    assert!(cache::load_account(&dir, "https://ca.test/dir")
        .unwrap()
        .is_some());
}

/// A waker nobody polls: these starts never get an event.
fn waker() -> (Poll, Arc<Waker>) {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
    (poll, waker)
}

/// A config whose CA is a closed loopback port: any contact fails.
fn unreachable_ca(dir: &Path) -> AcmeConfig {
    let mut config = AcmeConfig::new("relay.test", dir);
    config.directory_url = "https://127.0.0.1:9/directory".into();
    config
}

#[test]
fn a_valid_cached_certificate_is_served_at_start() {
    let dir = temp_dir("start-valid");
    let now = SystemTime::now();
    let (key_pem, chain_pem) = issued("relay.test", now - DAY, now + 89 * DAY);
    cache::store_certificate(&dir, "relay.test", &key_pem, &chain_pem).unwrap();
    let (_poll, waker) = waker();
    let acme = Acme::start(unreachable_ca(&dir), waker).unwrap();
    let served = acme
        .cached_certificate()
        .expect("cached certificate served");
    let expected = cache::load_certificate(&dir, "relay.test")
        .unwrap()
        .unwrap();
    assert_eq!(served.cert, expected.certified.cert);
    let info = CertInfo::from_der(&served.cert[0]).unwrap();
    assert!(info.is_valid_at(now));
    acme.stop();
}

#[test]
fn an_expired_cached_certificate_is_not_served() {
    let dir = temp_dir("start-expired");
    let now = SystemTime::now();
    let (key_pem, chain_pem) = issued("relay.test", now - 90 * DAY, now - DAY);
    cache::store_certificate(&dir, "relay.test", &key_pem, &chain_pem).unwrap();
    let (_poll, waker) = waker();
    let acme = Acme::start(unreachable_ca(&dir), waker).unwrap();
    assert!(acme.cached_certificate().is_none());
    acme.stop();
}

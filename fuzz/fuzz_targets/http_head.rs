//! The request-head parser (`http::parse_head`) and the upgrade checks
//! (`http::check_upgrade`) on arbitrary bytes.
//!
//! Beyond "no panic": a complete head is never longer than the input or
//! the limit; every prefix of a complete head is `Partial` (the relay
//! re-parses a growing buffer, so a head split at an unlucky point must
//! never be refused); an accepted upgrade always has a valid server-id and
//! a 28-character accept key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pyrycode_relay::http::{self, Head, Route};

fuzz_target!(|data: &[u8]| {
    let Some((&limit, bytes)) = data.split_first() else {
        return;
    };
    // Limits from 64 bytes to 8 KiB (the default) and beyond.
    let max = 64 + usize::from(limit) * 64;
    match http::parse_head(bytes, max) {
        Head::Complete { len, request } => {
            assert!(len <= bytes.len() && len <= max);
            for cut in prefixes(len) {
                let prefix = http::parse_head(&bytes[..cut], max);
                assert!(
                    matches!(prefix, Head::Partial),
                    "prefix {cut}/{len} of a complete head gave {prefix:?}"
                );
            }
            for route in [Route::Server, Route::Client] {
                if let Ok(upgrade) = http::check_upgrade(route, &request) {
                    assert!(http::is_valid_server_id(&upgrade.server_id));
                    assert_eq!(upgrade.accept_key.len(), 28);
                    assert!(request.method_is_get);
                }
            }
            for route in [Route::Healthz, Route::Metrics, Route::NotFound] {
                assert!(http::check_upgrade(route, &request).is_err());
            }
        }
        Head::Partial => assert!(bytes.len() < max),
        Head::TooLarge | Head::Malformed => {}
    }
});

/// Every prefix length of a short head, a sample of a long one.
fn prefixes(len: usize) -> Vec<usize> {
    if len <= 256 {
        (0..len).collect()
    } else {
        let step = len / 128;
        (0..len).step_by(step).chain(len - 8..len).collect()
    }
}

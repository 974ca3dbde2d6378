//! The `--domain` rule for requests: a request whose `Host` is not the
//! domain gets `421 Misdirected Request` (the certificate was for the
//! domain; a request for another name reached the wrong server).
//!
//! The comparison strips a port (`relay.example:443`, `[::1]:8443`),
//! ignores ASCII case and one trailing dot (`relay.example.` is the same
//! absolute name), and nothing else: no wildcard, no subdomain.

/// Whether the `Host` header value names `domain`.
pub fn host_matches(host: &str, domain: &str) -> bool {
    let name = strip_port(host.trim());
    let name = name.strip_suffix('.').unwrap_or(name);
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !name.is_empty() && name.eq_ignore_ascii_case(domain)
}

/// `host` without a trailing `:port`. A bracketed IPv6 literal keeps its
/// brackets; a bare IPv6 address (several colons) has no port to strip.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            name
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::host_matches;

    #[test]
    fn the_domain_matches_with_or_without_port_in_any_case() {
        for host in [
            "relay.example",
            "RELAY.Example",
            "relay.example:443",
            "relay.example:8443",
            "relay.example.",
            " relay.example ",
        ] {
            assert!(host_matches(host, "relay.example"), "{host}");
        }
        assert!(host_matches("relay.example", "Relay.Example."));
    }

    #[test]
    fn other_names_do_not_match() {
        for host in [
            "",
            ":443",
            "other.example",
            "www.relay.example",
            "relay.example.evil",
            "relay.example:",
            "relay.example:x",
            "relay.example:443:443",
            "[relay.example]:443",
            "127.0.0.1:443",
            "relay.example..",
        ] {
            assert!(!host_matches(host, "relay.example"), "{host}");
        }
    }

    #[test]
    fn ip_literals_compare_as_written() {
        assert!(host_matches("[::1]:443", "[::1]"));
        assert!(host_matches("::1", "::1"));
        assert!(host_matches("127.0.0.1:8443", "127.0.0.1"));
    }
}

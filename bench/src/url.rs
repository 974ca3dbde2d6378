//! `--url ws[s]://host:port`: a relay that is already running, loaded as
//! it is. Nothing is started or pinned on its side and nothing of its
//! process is read; the report has client-side figures only.
//!
//! Load goes to loopback (127.0.0.0/8) unless `--allow-remote` says
//! otherwise: the host is resolved first and a non-loopback address is
//! refused with the reason, before any connection is made.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// A relay at a URL, resolved and allowed.
#[derive(Clone, Debug)]
pub struct Remote {
    /// The URL as given.
    pub url: String,
    /// `wss://`.
    pub tls: bool,
    /// The host as written in the URL (the SNI name over TLS).
    pub host: String,
    /// `host:port`, the `Host` header of every upgrade.
    pub authority: String,
    /// The address dialled: the first IPv4 address of the host.
    pub addr: SocketAddr,
}

impl Remote {
    /// Parses and resolves `url`; refuses a target that is not loopback
    /// unless `allow_remote`.
    pub fn resolve(url: &str, allow_remote: bool) -> Result<Remote, String> {
        let (tls, host, port) = parse(url)?;
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("--url {url}: cannot resolve {host}: {e}"))?
            .collect();
        let Some(addr) = addrs.iter().copied().find(SocketAddr::is_ipv4) else {
            return Err(format!(
                "--url {url}: {host} has no IPv4 address (the generator dials over IPv4 only)"
            ));
        };
        if !addr.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "--url {url}: {} is not a loopback address; load goes to 127.0.0.0/8 only, \
                 unless --allow-remote is given",
                addr.ip()
            ));
        }
        Ok(Remote {
            url: url.to_string(),
            tls,
            authority: format!("{host}:{port}"),
            host,
            addr,
        })
    }

    /// Whether connections stay on this machine.
    pub fn is_loopback(&self) -> bool {
        self.addr.ip().is_loopback()
    }

    /// Source addresses to dial from: the bench's loopback aliases for a
    /// loopback target; for a remote one, whatever the kernel picks.
    pub fn sources(&self, loopback_sources: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        if self.is_loopback() {
            loopback_sources.to_vec()
        } else {
            vec![Ipv4Addr::UNSPECIFIED]
        }
    }
}

/// `ws[s]://host[:port][/]` → (TLS, host, port). The bench dials
/// `/v1/server` and `/v1/client` itself, so a path is refused.
fn parse(url: &str) -> Result<(bool, String, u16), String> {
    let bad = |why: &str| format!("--url {url}: {why}; write ws://host:port or wss://host:port");
    let (tls, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else {
        return Err(bad("the scheme must be ws or wss"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(bad(
            "no path: the bench dials /v1/server and /v1/client itself",
        ));
    }
    if authority.contains('@') {
        return Err(bad("no user information"));
    }
    if authority.starts_with('[') {
        return Err(bad(
            "IPv6 targets are not supported (the generator dials over IPv4 only)",
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
            (host, port)
        }
        None => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if let Ok(IpAddr::V6(_)) = host.parse::<IpAddr>() {
        return Err(bad("IPv6 targets are not supported"));
    }
    Ok((tls, host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_hosts_and_ports() {
        assert_eq!(
            parse("ws://127.0.0.1:8080").unwrap(),
            (false, "127.0.0.1".into(), 8080)
        );
        assert_eq!(
            parse("wss://LocalHost:8443/").unwrap(),
            (true, "localhost".into(), 8443)
        );
        assert_eq!(
            parse("wss://relay.example").unwrap(),
            (true, "relay.example".into(), 443)
        );
        assert_eq!(
            parse("ws://relay.example").unwrap(),
            (false, "relay.example".into(), 80)
        );
    }

    #[test]
    fn malformed_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("http://127.0.0.1:8080", "scheme"),
            ("127.0.0.1:8080", "scheme"),
            ("ws://127.0.0.1:8080/v1/client", "no path"),
            ("ws://127.0.0.1:8080?x=1", "no path"),
            ("ws://user@127.0.0.1:8080", "user"),
            ("ws://[::1]:8080", "IPv6"),
            ("ws://127.0.0.1:0", "port"),
            ("ws://127.0.0.1:99999", "port"),
            ("ws://127.0.0.1:http", "port"),
            ("ws://:8080", "no host"),
        ] {
            let err = parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
            assert!(err.starts_with(&format!("--url {url}: ")), "{err}");
        }
    }

    #[test]
    fn loopback_is_allowed_and_anything_else_needs_allow_remote() {
        let r = Remote::resolve("ws://127.0.0.1:9", false).unwrap();
        assert_eq!(r.addr, "127.0.0.1:9".parse().unwrap());
        assert_eq!(r.authority, "127.0.0.1:9");
        assert!(r.is_loopback());
        let aliases = [Ipv4Addr::new(127, 0, 0, 2)];
        assert_eq!(r.sources(&aliases), aliases);

        let r = Remote::resolve("wss://127.3.4.5:9", false).unwrap();
        assert!(r.tls && r.is_loopback());

        // Resolution of an IP literal needs no network.
        let err = Remote::resolve("ws://192.0.2.7:8080", false).unwrap_err();
        assert!(
            err.contains("192.0.2.7 is not a loopback address") && err.contains("--allow-remote"),
            "{err}"
        );
        let r = Remote::resolve("ws://192.0.2.7:8080", true).unwrap();
        assert!(!r.is_loopback());
        assert_eq!(r.sources(&aliases), [Ipv4Addr::UNSPECIFIED]);
    }
}

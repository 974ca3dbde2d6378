//! The HTTP phase of a connection (SPEC §2): once the request head is
//! complete, refuse a `Host` that is not the `--domain` (421), answer
//! `/healthz`, `/metrics`, an ACME HTTP-01 challenge or 404, or run the upgrade
//! checks in SPEC order (rate limit 429, capacity 503, header gate 400,
//! WebSocket headers 400/426) and switch to WebSocket. What a binary's
//! claim leads to is the slot's business (`slot.rs`); a phone joins here.
//! Refusals decided after the 101 are WebSocket closes.

use std::net::IpAddr;
use std::rc::Rc;

use log::{debug, info, warn};

use super::conns::Handle;
use super::lifecycle::{Close, Peer};
use super::listeners::Origin;
use super::Relay;
use crate::http::{self, Refusal, Request, Route};
use crate::metrics::{HttpRefusal, RegisterFailure, UpgradeOutcome};
use crate::registry::Join;
use crate::ws::{Reader, Role};

impl Relay {
    /// Acts on a complete request head of `head_len` bytes.
    pub(super) fn on_request(&mut self, handle: Handle, head_len: usize, request: Request) {
        let route = request.route.unwrap_or(Route::NotFound);
        let Some(origin) = self.conns.get(handle).map(|conn| conn.origin) else {
            return;
        };
        if origin == Origin::WebSocket && !self.names_our_host(&request) {
            debug!("request_misdirected endpoint={}", route.endpoint());
            return self.refuse_head(handle, HttpRefusal::Misdirected);
        }
        match (origin, route) {
            (Origin::Metrics, Route::Metrics) => self.answer_metrics(handle),
            (Origin::Metrics, Route::Clock | Route::ClockAdvance)
                if self.answer_clock(handle, &request) => {}
            (Origin::AcmeHttp01, _) => self.answer_http01(handle, &request),
            (Origin::WebSocket, Route::Healthz) => self.answer_healthz(handle),
            (Origin::WebSocket, Route::Server | Route::Client) => {
                self.upgrade(handle, route, head_len, &request)
            }
            _ => self.respond(
                handle,
                404,
                "Content-Type: text/plain; charset=utf-8\r\n",
                "404 page not found\n",
            ),
        }
    }

    /// Whether the request's `Host` is the `--domain`, when there is one
    /// (port stripped, ASCII case ignored). No `Host` is not the domain.
    fn names_our_host(&self, request: &Request) -> bool {
        let Some(domain) = self.config.host.as_deref() else {
            return true;
        };
        let host = request.host.as_deref();
        host.is_some_and(|host| crate::tls::host_matches(host, domain))
    }

    /// Answers a request with an error status (counted by reason) and
    /// ends the connection after it.
    pub(super) fn refuse_head(&mut self, handle: Handle, refusal: HttpRefusal) {
        self.metrics.http_refusal(refusal);
        let headers = match refusal {
            HttpRefusal::BadVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        };
        self.respond(handle, refusal.status(), headers, "");
    }

    /// Queues a complete HTTP response and ends the connection after it.
    pub(super) fn respond(&mut self, handle: Handle, status: u16, headers: &str, body: &str) {
        if let Some(out) = self.conns.queue(handle) {
            http::write_response(out, status, headers, body);
        }
        self.finish_http(handle);
    }

    fn answer_healthz(&mut self, handle: Handle) {
        let health = http::Health {
            version: &self.config.version,
            connected_binaries: self.counts.binaries,
            connected_phones: self.counts.phones,
            uptime_seconds: self.clock.now().duration_since(self.started).as_secs(),
        };
        if let Some(out) = self.conns.queue(handle) {
            http::write_healthz(out, &health);
        }
        self.finish_http(handle);
    }

    fn answer_metrics(&mut self, handle: Handle) {
        let text = self.metrics_text();
        self.respond(
            handle,
            200,
            "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
            &text,
        );
    }

    fn upgrade(&mut self, handle: Handle, route: Route, head_len: usize, request: &Request) {
        let is_server = route == Route::Server;
        let trust_forwarded = self.config.trust_x_forwarded_for;
        let Some(conn) = self.conns.get_mut(handle) else {
            return;
        };
        let ip = match request.forwarded_for {
            Some(forwarded) if trust_forwarded => forwarded,
            _ => conn.remote.ip(),
        };
        conn.client_ip = ip;
        if let Some(refusal) = self.admission(ip) {
            return self.refuse_http(handle, route, refusal);
        }
        let upgrade = match http::check_upgrade(route, request) {
            Ok(upgrade) => upgrade,
            Err(refusal) => {
                if refusal != Refusal::Headers {
                    debug!(
                        "upgrade_refused endpoint={} reason={refusal:?}",
                        route.endpoint()
                    );
                }
                self.metrics
                    .upgrade(is_server, UpgradeOutcome::RejectHeaders);
                return self.refuse_head(
                    handle,
                    match refusal {
                        Refusal::Version => HttpRefusal::BadVersion,
                        Refusal::Headers => HttpRefusal::Headers,
                        Refusal::BadUpgrade => HttpRefusal::BadUpgrade,
                    },
                );
            }
        };
        self.switch_protocols(handle, head_len, &upgrade.accept_key);
        let server_id = self.registry.intern(&upgrade.server_id);
        if is_server {
            self.claim(handle, server_id);
        } else {
            self.join(handle, server_id);
        }
        self.conns.resume(handle);
        self.arm(handle);
    }

    /// Steps 1 and 2 of the SPEC order: per-IP rate and count, then the
    /// global cap. `Some` is the refusal.
    fn admission(&mut self, ip: IpAddr) -> Option<Admission> {
        let now = self.clock.now();
        if !self.limits.allow_attempt(ip, now) {
            return Some(Admission::RateLimited);
        }
        if self.limits.live(ip) >= self.config.max_connections_per_ip {
            return Some(Admission::TooManyFromIp);
        }
        if self.counts.live >= self.config.max_connections {
            return Some(Admission::AtCapacity);
        }
        None
    }

    fn refuse_http(&mut self, handle: Handle, route: Route, refusal: Admission) {
        let is_server = route == Route::Server;
        let (counted, outcome) = match refusal {
            Admission::RateLimited => (HttpRefusal::RateLimit, UpgradeOutcome::RejectRateLimit),
            Admission::TooManyFromIp => (
                HttpRefusal::PerIpConnections,
                UpgradeOutcome::RejectRateLimit,
            ),
            Admission::AtCapacity => (HttpRefusal::MaxConnections, UpgradeOutcome::RejectCapacity),
        };
        self.metrics.upgrade(is_server, outcome);
        if counted.status() == 429 {
            self.metrics.register_failure(RegisterFailure::RateLimit);
        }
        if let Some(conn) = self.conns.get(handle) {
            warn!(
                "upgrade_refused endpoint={} status={} reason={} remote={}",
                route.endpoint(),
                counted.status(),
                counted.reason(),
                conn.client_ip
            );
        }
        self.refuse_head(handle, counted);
    }

    /// Sends the 101; bytes that followed the head become the first bytes
    /// the WebSocket reader decodes. From here the connection counts
    /// against the caps.
    fn switch_protocols(&mut self, handle: Handle, head_len: usize, accept_key: &str) {
        let now = self.clock.now();
        let ping_at = now + self.config.ping_interval;
        let Some((conn, pool)) = self.conns.with_pool(handle) else {
            return;
        };
        conn.counted = true;
        conn.deadlines.handshake = None;
        conn.deadlines.next_ping = Some(ping_at);
        if let Some(mut head) = conn.head_mut().and_then(Option::take) {
            head.drain(..head_len);
            if head.is_empty() {
                pool.put(head);
            } else {
                conn.reader = Reader::with_pending(Role::Server, head);
            }
        }
        let ip = conn.client_ip;
        self.counts.live += 1;
        self.limits.connection_opened(ip, now);
        if let Some(out) = self.conns.queue(handle) {
            http::write_switching_protocols(out, accept_key);
        }
    }

    /// A phone's upgrade completed: it joins its server-id, or is refused
    /// 4404 (nobody holds it) or 4429 (too many phones).
    fn join(&mut self, handle: Handle, server_id: Rc<str>) {
        let Some(remote) = self.conns.get(handle).map(|conn| conn.remote) else {
            return;
        };
        let cap = self.config.max_phones_per_server;
        match self.registry.join(&server_id, handle, cap) {
            Join::Joined => {
                let conn_id: Rc<str> = Rc::from(new_conn_id(&server_id));
                info!("phone_connected server_id={server_id} conn_id={conn_id} remote={remote}");
                self.registry.add_conn_id(conn_id.clone(), handle);
                self.open(handle, Peer::Phone { server_id, conn_id });
                self.metrics.upgrade(false, UpgradeOutcome::Accept);
            }
            Join::NoServer => {
                info!("phone_refused server_id={server_id} remote={remote} code=4404 reason=no_server");
                self.metrics.upgrade(false, UpgradeOutcome::Reject404);
                self.metrics.register_failure(RegisterFailure::NoServer);
                self.close(handle, Close::NoServer);
            }
            Join::Full => {
                info!("phone_refused server_id={server_id} remote={remote} code=4429 reason=phones_at_cap");
                self.metrics.upgrade(false, UpgradeOutcome::Reject429);
                self.metrics.register_failure(RegisterFailure::PhonesAtCap);
                self.close(handle, Close::PhonesAtCap);
            }
        }
    }
}

/// Why an upgrade is refused before the header checks.
#[derive(Clone, Copy, Debug)]
enum Admission {
    RateLimited,
    TooManyFromIp,
    AtCapacity,
}

/// `client-<server-id>-<32 lowercase hex>`, 128 bits from the OS CSPRNG.
fn new_conn_id(server_id: &str) -> String {
    use std::fmt::Write;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS random number generator failed");
    let mut id = String::with_capacity(7 + server_id.len() + 1 + 32);
    id.push_str("client-");
    id.push_str(server_id);
    id.push('-');
    for byte in nonce {
        let _ = write!(id, "{byte:02x}");
    }
    id
}

#[cfg(test)]
mod tests {
    #[test]
    fn conn_ids_have_the_spec_shape_and_do_not_repeat() {
        let a = super::new_conn_id("srv");
        let b = super::new_conn_id("srv");
        assert_ne!(a, b);
        let hex = a.strip_prefix("client-srv-").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }
}

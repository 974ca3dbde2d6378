//! The HTTP phase of a connection (SPEC §2): once the request head is
//! complete, answer `/healthz`, `/metrics` or 404, or run the upgrade
//! checks in SPEC order (rate limit 429, capacity 503, header gate 400,
//! WebSocket headers 400/426) and switch to WebSocket. Refusals decided
//! after the 101 (no server 4404, conflict 4409, phone cap 4429) are
//! WebSocket closes.

use std::net::IpAddr;
use std::rc::Rc;

use log::{debug, info, warn};

use super::conn::{Origin, Peer, Phase};
use super::Relay;
use crate::http::{self, Refusal, Request, Route};
use crate::metrics::{RegisterFailure, UpgradeOutcome};
use crate::registry::{Claim, ConnKey, Join};
use crate::ws::{self, close};

impl Relay {
    /// Acts on a complete request head of `head_len` bytes.
    pub(super) fn on_request(&mut self, key: ConnKey, head_len: usize, request: Request) {
        let route = request.route.unwrap_or(Route::NotFound);
        let origin = self.conns[key].origin;
        match (origin, route) {
            (Origin::Metrics, Route::Metrics) => self.answer_metrics(key),
            (Origin::Public, Route::Healthz) => self.answer_healthz(key),
            (Origin::Public, Route::Server | Route::Client) => {
                self.upgrade(key, route, head_len, &request)
            }
            _ => self.respond(
                key,
                404,
                "Content-Type: text/plain; charset=utf-8\r\n",
                "404 page not found\n",
            ),
        }
    }

    fn answer_healthz(&mut self, key: ConnKey) {
        let health = http::Health {
            version: &self.config.version,
            connected_binaries: self.binaries,
            connected_phones: self.phones,
            uptime_seconds: self.clock.now().duration_since(self.started).as_secs(),
        };
        let mut body = Vec::new();
        http::write_healthz(&mut body, &health);
        self.queue(key).extend_from_slice(&body);
        self.finish_http(key);
    }

    fn answer_metrics(&mut self, key: ConnKey) {
        let text = self.metrics_text();
        self.respond(
            key,
            200,
            "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n",
            &text,
        );
    }

    fn upgrade(&mut self, key: ConnKey, route: Route, head_len: usize, request: &Request) {
        let is_server = route == Route::Server;
        let conn = &mut self.conns[key];
        let ip = match request.forwarded_for {
            Some(forwarded) if self.config.trust_x_forwarded_for => forwarded,
            _ => conn.remote.ip(),
        };
        conn.client_ip = ip;
        if let Some(refusal) = self.admission(ip) {
            return self.refuse_http(key, route, refusal);
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
                return match refusal {
                    Refusal::Version => self.respond(key, 426, "Sec-WebSocket-Version: 13\r\n", ""),
                    Refusal::Headers | Refusal::BadUpgrade => self.respond(key, 400, "", ""),
                };
            }
        };
        self.switch_protocols(key, head_len, &upgrade.accept_key);
        let server_id = self.registry.intern(&upgrade.server_id);
        if is_server {
            self.admit_binary(key, server_id);
        } else {
            self.admit_phone(key, server_id);
        }
        self.resume.push(key);
        self.arm(key);
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
        if self.live >= self.config.max_connections {
            return Some(Admission::AtCapacity);
        }
        None
    }

    fn refuse_http(&mut self, key: ConnKey, route: Route, refusal: Admission) {
        let is_server = route == Route::Server;
        let (status, reason, outcome) = match refusal {
            Admission::RateLimited => (429, "rate_limit", UpgradeOutcome::RejectRateLimit),
            Admission::TooManyFromIp => {
                (429, "per_ip_connections", UpgradeOutcome::RejectRateLimit)
            }
            Admission::AtCapacity => (503, "max_connections", UpgradeOutcome::RejectCapacity),
        };
        self.metrics.upgrade(is_server, outcome);
        if status == 429 {
            self.metrics.register_failure(RegisterFailure::RateLimit);
        }
        let conn = &self.conns[key];
        warn!(
            "upgrade_refused endpoint={} status={status} reason={reason} remote={}",
            route.endpoint(),
            conn.client_ip
        );
        self.respond(key, status, "", "");
    }

    /// Sends the 101 and keeps any bytes that followed the head.
    fn switch_protocols(&mut self, key: ConnKey, head_len: usize, accept_key: &str) {
        let now = self.clock.now();
        let ping_interval = self.config.ping_interval;
        let conn = &mut self.conns[key];
        conn.counted = true;
        conn.deadlines.handshake = None;
        conn.deadlines.next_ping = Some(now + ping_interval);
        if let Some(mut inbuf) = conn.inbuf.take() {
            inbuf.drain(..head_len);
            if inbuf.is_empty() {
                self.pool.put(inbuf);
            } else {
                conn.inbuf = Some(inbuf);
            }
        }
        let ip = conn.client_ip;
        self.live += 1;
        self.limits.connection_opened(ip, now);
        http::write_switching_protocols(self.queue(key), accept_key);
    }

    fn admit_binary(&mut self, key: ConnKey, server_id: Rc<str>) {
        let remote = self.conns[key].remote;
        match self.registry.claim(&server_id, key) {
            Claim::Fresh => {
                info!("server_claimed server_id={server_id} remote={remote}");
                self.become_binary(key, server_id);
            }
            Claim::Reclaimed { phones } => {
                info!(
                    "server_reclaimed server_id={server_id} remote={remote} phones_closed={}",
                    phones.len()
                );
                self.become_binary(key, server_id);
                self.close_phones(&phones, "binary reclaimed server-id");
            }
            Claim::Probe { holder } => {
                info!("server_conflict server_id={server_id} remote={remote} probing=holder");
                let deadline = self.clock.now() + self.config.conflict_probe_timeout;
                let conn = &mut self.conns[key];
                conn.phase = Phase::Open(Peer::Challenger(server_id));
                conn.deadlines.probe = Some(deadline);
                ws::write_frame(self.queue(holder), ws::FrameKind::Ping, b"conflict-probe");
            }
            Claim::Busy => {
                info!("server_conflict server_id={server_id} remote={remote} outcome=refused reason=probe_running");
                self.refuse_conflict(key, true);
            }
        }
    }

    /// Makes `key` the binary of `server_id` and counts it.
    pub(super) fn become_binary(&mut self, key: ConnKey, server_id: Rc<str>) {
        let conn = &mut self.conns[key];
        conn.phase = Phase::Open(Peer::Binary(server_id));
        conn.deadlines.probe = None;
        self.binaries += 1;
        self.metrics.upgrade(true, UpgradeOutcome::Accept);
    }

    /// Closes a losing claimant 4409 "server-id already claimed".
    pub(super) fn refuse_conflict(&mut self, key: ConnKey, before_open: bool) {
        self.metrics.upgrade(true, UpgradeOutcome::Reject409);
        self.metrics.register_failure(RegisterFailure::ServerInUse);
        if before_open {
            self.refuse_ws(key, close::CONFLICT, "server-id already claimed");
        } else {
            self.close_ws(
                key,
                close::CONFLICT,
                "server-id already claimed",
                super::routing::Ending::Displaced,
            );
        }
    }

    fn admit_phone(&mut self, key: ConnKey, server_id: Rc<str>) {
        let remote = self.conns[key].remote;
        match self
            .registry
            .join(&server_id, key, self.config.max_phones_per_server)
        {
            Join::Joined => {
                let conn_id: Rc<str> = Rc::from(new_conn_id(&server_id));
                info!("phone_connected server_id={server_id} conn_id={conn_id} remote={remote}");
                self.registry.add_conn_id(conn_id.clone(), key);
                self.conns[key].phase = Phase::Open(Peer::Phone { server_id, conn_id });
                self.phones += 1;
                self.metrics.upgrade(false, UpgradeOutcome::Accept);
            }
            Join::NoServer => {
                info!("phone_refused server_id={server_id} remote={remote} code=4404 reason=no_server");
                self.metrics.upgrade(false, UpgradeOutcome::Reject404);
                self.metrics.register_failure(RegisterFailure::NoServer);
                self.refuse_ws(key, close::NOT_FOUND, "no server with that id");
            }
            Join::Full => {
                info!("phone_refused server_id={server_id} remote={remote} code=4429 reason=phones_at_cap");
                self.metrics.upgrade(false, UpgradeOutcome::Reject429);
                self.metrics.register_failure(RegisterFailure::PhonesAtCap);
                self.refuse_ws(key, close::TOO_MANY, "too many phones for server-id");
            }
        }
    }

    /// Closes a just-upgraded connection that never became a peer.
    fn refuse_ws(&mut self, key: ConnKey, code: u16, reason: &str) {
        ws::write_close(self.queue(key), Some(code), reason);
        self.enter_closing(key);
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
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).expect("the OS random number generator failed");
    let mut id = String::with_capacity(7 + server_id.len() + 1 + 32);
    id.push_str("client-");
    id.push_str(server_id);
    id.push('-');
    for byte in nonce {
        id.push_str(&format!("{byte:02x}"));
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

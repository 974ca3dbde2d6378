//! The TLS listeners' certificates from the loop's side.
//!
//! The listeners' `rustls::ServerConfig` asks a [`CertResolver`] for the
//! certificate of each handshake; the loop keeps that resolver to change
//! what it serves:
//!
//! - **SIGHUP** (certificate files): [`Relay::reload_certificates`] reads the
//!   files again. New handshakes get the new certificate, live connections
//!   keep theirs; a bad file keeps the old one and the log says why.
//! - **ACME**: the ACME thread sends each new certificate on its channel and
//!   wakes the loop (the shared waker); [`Relay::on_acme_events`] installs
//!   it. The HTTP-01 listener's answers come from the same ACME handle
//!   ([`Relay::answer_http01`]). At shutdown the thread is stopped.

use std::sync::Arc;

use log::{debug, info, warn};

use super::conns::Handle;
use super::Relay;
use crate::acme::{Acme, AcmeEvent};
use crate::http::Request;
use crate::tls::CertResolver;

/// The certificates the TLS listeners serve, and where new ones come from.
pub(super) struct Certificates {
    resolver: Arc<CertResolver>,
    /// The ACME thread, when certificates come from ACME.
    acme: Option<Acme>,
}

impl Relay {
    /// The TLS listeners' certificates come from `resolver` (the one their
    /// `ServerConfig` was built with); with `acme`, new certificates come
    /// from its thread, which wakes the loop through [`Relay::waker`].
    pub fn serve_certificates(&mut self, resolver: Arc<CertResolver>, acme: Option<Acme>) {
        self.certs = Some(Certificates { resolver, acme });
        // A certificate sent before the loop ran would otherwise wait for
        // the next wake.
        self.on_acme_events();
    }

    /// Reads the certificate files again (SIGHUP); returns whether a new
    /// certificate is served. A file that cannot be used keeps the old one.
    pub fn reload_certificates(&mut self) -> bool {
        let Some(certs) = self.certs.as_ref() else {
            debug!("sighup_ignored reason=no_certificate_files");
            return false;
        };
        match certs.resolver.reload() {
            Ok(true) => {
                info!("tls_certificate_reloaded");
                true
            }
            Ok(false) => {
                debug!("sighup_ignored reason=acme");
                false
            }
            Err(error) => {
                warn!("tls_certificate_reload_failed reason=\"{error}\" note=\"the old certificate stays\"");
                false
            }
        }
    }

    /// The waker fired: install every certificate the ACME thread sent.
    pub(super) fn on_acme_events(&mut self) {
        let Some(certs) = self.certs.as_ref() else {
            return;
        };
        let Some(acme) = certs.acme.as_ref() else {
            return;
        };
        while let Some(AcmeEvent::Certificate(certified)) = acme.try_recv() {
            info!("tls_certificate_installed source=acme");
            certs.resolver.set_certificate(certified);
        }
    }

    /// An HTTP-01 listener's request: the key authorization of a published
    /// challenge token as `text/plain`, 404 for anything else.
    pub(super) fn answer_http01(&mut self, handle: Handle, request: &Request) {
        let acme = self.certs.as_ref().and_then(|certs| certs.acme.as_ref());
        let answer = match (acme, request.acme_challenge.as_deref()) {
            (Some(acme), Some(path)) => acme.challenges().http01_response(path),
            _ => None,
        };
        match answer {
            Some(body) => {
                info!("acme_http01_answered");
                self.respond(handle, 200, "Content-Type: text/plain\r\n", &body)
            }
            None => self.respond(
                handle,
                404,
                "Content-Type: text/plain; charset=utf-8\r\n",
                "404 page not found\n",
            ),
        }
    }

    /// Shutdown: the ACME thread stops, dropping any order in flight.
    pub(super) fn stop_acme(&mut self) {
        if let Some(acme) = self.certs.as_mut().and_then(|certs| certs.acme.take()) {
            acme.stop();
        }
    }
}

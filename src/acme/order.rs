//! One certificate order with `instant-acme` (RFC 8555 §7.4), run on the
//! ACME thread: account, order, challenge, finalize, download.
//!
//! ```text
//! account (cached or new) → new order for the domain
//!   → for each pending authorization: publish the challenge response
//!     (HTTP-01 token or TLS-ALPN-01 certificate) → tell the CA "ready"
//!   → poll until the order is ready (or invalid: report the CA's reason)
//!   → new P-256 key, CSR for the domain → finalize → poll → PEM chain
//! ```
//!
//! Published responses are withdrawn when the attempt ends, however it
//! ends (a guard's `Drop`), also when the thread is stopped mid-order.
//! `badNonce` answers are retried by `instant-acme` itself with the fresh
//! nonce of the error response, as RFC 8555 §6.5 asks; any other failure
//! ends the attempt and the thread backs off (`schedule.rs`).

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, Order,
    OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};

use super::challenges::{tls_alpn01_certificate, Challenges};
use super::{cache, AcmeConfig, AcmeError, ChallengeKind};

/// How long to wait for the CA to validate and to issue.
const POLL: RetryPolicy = RetryPolicy::new()
    .initial_delay(Duration::from_millis(500))
    .backoff(1.5)
    .timeout(Duration::from_secs(180));

/// An issued certificate, as PEM text.
pub(super) struct Issued {
    /// The full chain, leaf first.
    pub chain_pem: String,
    /// The certificate's new private key (PKCS#8).
    pub key_pem: String,
}

/// The account for `config`: from the cache, or created and cached.
pub(super) async fn account(config: &AcmeConfig) -> Result<Account, AcmeError> {
    let builder = match &config.ca_root {
        Some(root) => Account::builder_with_root(root)?,
        None => Account::builder()?,
    };
    match cache::load_account(&config.cache_dir, &config.directory_url) {
        Ok(Some(credentials)) => return Ok(builder.from_credentials(credentials).await?),
        Ok(None) => {}
        // A broken file would fail every attempt: make a new account.
        Err(error) => log::warn!("acme_account_unusable reason=\"{error}\""),
    }
    let contact = config.email.as_ref().map(|email| format!("mailto:{email}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new_account = NewAccount {
        contact: &contacts,
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (account, credentials) = builder
        .create(&new_account, config.directory_url.clone(), None)
        .await?;
    cache::store_account(&config.cache_dir, &credentials)?;
    log::info!(
        "acme_account_created domain={} directory={}",
        config.domain,
        config.directory_url
    );
    Ok(account)
}

/// Orders a certificate for `domain`, answering with `kind`.
pub(super) async fn obtain(
    account: &Account,
    domain: &str,
    kind: ChallengeKind,
    challenges: &Arc<Challenges>,
) -> Result<Issued, AcmeError> {
    let identifiers = [Identifier::Dns(domain.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Published::new(challenges.clone());
    authorize(&mut order, kind, &mut published).await?;
    match order.poll_ready(&POLL).await? {
        OrderStatus::Ready => {}
        status => return Err(AcmeError::Validation(why_invalid(&mut order, status).await)),
    }
    drop(published);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&POLL).await?;
    Ok(Issued {
        chain_pem,
        key_pem: key.serialize_pem(),
    })
}

/// Publishes a response for each pending authorization and tells the CA.
async fn authorize(
    order: &mut Order,
    kind: ChallengeKind,
    published: &mut Published,
) -> Result<(), AcmeError> {
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            status => {
                let reason = format!("authorization is {status:?}");
                return Err(AcmeError::Validation(reason));
            }
        }
        let domain = authorization.identifier().to_string();
        let mut challenge = authorization
            .challenge(kind.challenge_type())
            .ok_or(AcmeError::NoChallenge(kind))?;
        let key_authorization = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                published.http01(&challenge.token, key_authorization.as_str());
            }
            ChallengeKind::TlsAlpn01 => {
                let certified =
                    tls_alpn01_certificate(&domain, key_authorization.digest().as_ref())?;
                published.tls_alpn01(&domain, certified);
            }
        }
        challenge.set_ready().await?;
    }
    Ok(())
}

/// The CA's reason for an order that did not become ready.
async fn why_invalid(order: &mut Order, status: OrderStatus) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        if let Ok(state) = authorization.refresh().await {
            let errors = state.challenges.iter().filter_map(|c| c.error.as_ref());
            reasons.extend(errors.map(|problem| problem.to_string()));
        }
    }
    match reasons.is_empty() {
        true => format!("order is {status:?}"),
        false => reasons.join("; "),
    }
}

impl ChallengeKind {
    fn challenge_type(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}

/// The responses one attempt published; withdrawn when it is dropped.
struct Published {
    challenges: Arc<Challenges>,
    http01: Vec<String>,
    tls_alpn01: Vec<String>,
}

impl Published {
    fn new(challenges: Arc<Challenges>) -> Self {
        Published {
            challenges,
            http01: Vec::new(),
            tls_alpn01: Vec::new(),
        }
    }

    fn http01(&mut self, token: &str, key_authorization: &str) {
        self.challenges.publish_http01(token, key_authorization);
        self.http01.push(token.to_owned());
    }

    fn tls_alpn01(&mut self, domain: &str, certified: Arc<rustls::sign::CertifiedKey>) {
        self.challenges.publish_tls_alpn01(domain, certified);
        self.tls_alpn01.push(domain.to_owned());
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        for token in &self.http01 {
            self.challenges.withdraw_http01(token);
        }
        for domain in &self.tls_alpn01 {
            self.challenges.withdraw_tls_alpn01(domain);
        }
    }
}

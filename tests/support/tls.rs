//! TLS helpers for tests: a throw-away CA that issues certificates
//! (rcgen), rustls client configs, and a handshake between a client and
//! the relay's server config in memory, without sockets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

/// A CA whose root a test client trusts.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The root, DER.
    pub root: CertificateDer<'static>,
    /// The root, PEM.
    pub root_pem: String,
}

/// A certificate the CA issued: chain PEM (leaf only) and key PEM.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub leaf: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let root = params.self_signed(&key).unwrap();
        TestCa {
            root: root.der().clone(),
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An ECDSA P-256 leaf for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).unwrap();
        let leaf = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            chain_pem: leaf.pem(),
            key_pem: key.serialize_pem(),
            leaf: leaf.der().clone(),
        }
    }

    /// Signs `params` for `key`; the certificate's PEM.
    pub fn sign(&self, params: &CertificateParams, key: &KeyPair) -> String {
        params.signed_by(key, &self.issuer).unwrap().pem()
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        roots
    }
}

/// A root and an intermediate: leaves come with the intermediate in
/// their chain, and clients trust only the root.
pub struct ChainCa {
    root: TestCa,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
}

impl ChainCa {
    pub fn new() -> Self {
        let root = TestCa::new("test root");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test intermediate");
        let cert = params.signed_by(&key, &root.issuer).unwrap();
        ChainCa {
            root,
            intermediate: Issuer::new(params, key),
            intermediate_pem: cert.pem(),
        }
    }

    /// A leaf for `names`; its chain PEM is leaf, then intermediate.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.intermediate)
            .unwrap();
        Issued {
            chain_pem: format!("{}{}", leaf.pem(), self.intermediate_pem),
            key_pem: key.serialize_pem(),
            leaf: leaf.der().clone(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        self.root.roots()
    }
}

impl Issued {
    /// Writes `cert.pem` and `key.pem` into `dir`.
    pub fn write(&self, cert: &Path, key: &Path) {
        std::fs::write(cert, &self.chain_pem).unwrap();
        std::fs::write(key, &self.key_pem).unwrap();
    }
}

/// A client trusting `roots`, offering `alpn`, speaking `versions`.
/// It never resumes a session: each handshake sees the certificate the
/// server serves now.
pub fn client_config(
    roots: RootCertStore,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let provider = Arc::new(pyrycode_relay::tls::provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A client that accepts any certificate and remembers the leaf it got
/// (for the self-signed TLS-ALPN-01 certificate).
pub fn trusting_client(
    alpn: &[&[u8]],
) -> (Arc<ClientConfig>, Arc<Mutex<Vec<CertificateDer<'static>>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let provider = Arc::new(pyrycode_relay::tls::provider());
    let verifier = Arc::new(AcceptAnything {
        seen: seen.clone(),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (Arc::new(config), seen)
}

#[derive(Debug)]
struct AcceptAnything {
    seen: Arc<Mutex<Vec<CertificateDer<'static>>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen
            .lock()
            .unwrap()
            .push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// Both ends of a finished handshake.
pub struct Pair {
    pub server: ServerConnection,
    pub client: ClientConnection,
}

/// Runs a handshake in memory; the first error of either side ends it.
pub fn handshake(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    sni: &str,
) -> Result<Pair, rustls::Error> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut pair = Pair {
        server: ServerConnection::new(server.clone())?,
        client: ClientConnection::new(client.clone(), name)?,
    };
    for _ in 0..16 {
        if !pair.server.is_handshaking() && !pair.client.is_handshaking() {
            return Ok(pair);
        }
        pair.pump()?;
    }
    panic!("handshake did not finish in 16 flights");
}

impl Pair {
    /// Moves pending bytes client → server, then server → client.
    pub fn pump(&mut self) -> Result<(), rustls::Error> {
        let wire = drain(&mut self.client);
        deliver(&wire, &mut self.server)?;
        let wire = drain(&mut self.server);
        deliver(&wire, &mut self.client)
    }

    /// Sends `message` client → server and back, through the records.
    pub fn echo(&mut self, message: &[u8]) -> Vec<u8> {
        self.client.writer().write_all(message).unwrap();
        self.pump().unwrap();
        let mut got = vec![0; message.len()];
        self.server.reader().read_exact(&mut got).unwrap();
        self.server.writer().write_all(&got).unwrap();
        self.pump().unwrap();
        let mut back = vec![0; message.len()];
        self.client.reader().read_exact(&mut back).unwrap();
        back
    }

    /// The leaf the server presented.
    pub fn server_leaf(&self) -> CertificateDer<'static> {
        self.client.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }
}

/// Either end of a TLS connection.
pub trait End {
    fn wants_write(&self) -> bool;
    fn write_tls(&mut self, out: &mut dyn Write) -> std::io::Result<usize>;
    fn read_tls(&mut self, input: &mut dyn Read) -> std::io::Result<usize>;
    fn process_new_packets(&mut self) -> Result<(), rustls::Error>;
}

macro_rules! end {
    ($conn:ty) => {
        impl End for $conn {
            fn wants_write(&self) -> bool {
                (**self).wants_write()
            }
            fn write_tls(&mut self, out: &mut dyn Write) -> std::io::Result<usize> {
                (**self).write_tls(out)
            }
            fn read_tls(&mut self, input: &mut dyn Read) -> std::io::Result<usize> {
                (**self).read_tls(input)
            }
            fn process_new_packets(&mut self) -> Result<(), rustls::Error> {
                (**self).process_new_packets().map(|_| ())
            }
        }
    };
}

end!(ServerConnection);
end!(ClientConnection);

/// Everything `conn` has to send.
pub fn drain(conn: &mut impl End) -> Vec<u8> {
    let mut wire = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Gives `wire` to `conn`, processing as it goes.
pub fn deliver(wire: &[u8], conn: &mut impl End) -> Result<(), rustls::Error> {
    let mut rest = wire;
    while !rest.is_empty() {
        conn.read_tls(&mut rest).unwrap();
        conn.process_new_packets()?;
    }
    Ok(())
}

/// A ClientHello as a TLS 1.0/1.1-only client sends it: only `version`
/// (TLS 1.0 is 0x0301, 1.1 0x0302), no supported_versions extension.
pub fn legacy_client_hello(version: u16) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&[0x5a; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 4] = [0xc02b, 0xc02f, 0xc013, 0x002f];
    body.extend_from_slice(&8u16.to_be_bytes());
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    let extensions: &[u8] = &[
        0x00, 0x0a, 0x00, 0x06, 0x00, 0x04, 0x00, 0x1d, 0x00, 0x17, // groups
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // point formats
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x08, 0x04, // sig algs
    ];
    body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
    body.extend_from_slice(extensions);
    let mut handshake = vec![1, 0];
    handshake.extend_from_slice(&(body.len() as u16).to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

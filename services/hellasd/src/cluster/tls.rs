//! Mutual TLS between boxes with pinned keys.
//!
//! Boxes have self-signed certificates, so there is no authority to check them against: both
//! sides require the other's certificate and its proof of the key (the TLS 1.3 handshake
//! signature, which rustls checks), and the control layer then compares the certificate's
//! fingerprint with the one pinned at pairing. An unpaired peer is only ever allowed the pairing
//! call, which proves knowledge of a one-time join code bound to this very TLS session.

use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::identity::{self, Identity};

pub struct Tls {
    pub server: tokio_rustls::TlsAcceptor,
    pub client: tokio_rustls::TlsConnector,
}

impl Tls {
    pub fn new(identity: &Identity) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(ProofOfKey(provider.signature_verification_algorithms));
        let cert = || vec![CertificateDer::from(identity.cert_der.clone())];
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key_der.clone()));
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 server")?
            .with_client_cert_verifier(verifier.clone())
            .with_single_cert(cert(), key())
            .context("loading the cluster key into the TLS server")?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS 1.3 client")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(cert(), key())
            .context("loading the cluster key into the TLS client")?;
        Ok(Tls {
            server: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            client: tokio_rustls::TlsConnector::from(Arc::new(client)),
        })
    }

    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("hellas").expect("a valid DNS name")
    }
}

/// The fingerprint of the certificate the other side presented.
pub fn peer_fingerprint(connection: &rustls::CommonState) -> Option<String> {
    connection
        .peer_certificates()
        .and_then(|certs| certs.first())
        .map(|cert| identity::fingerprint(cert))
}

/// Keying material unique to one TLS session, which the pairing proofs are bound to, so a
/// proof seen on one connection is worth nothing on another.
pub fn session_binding<Data>(connection: &rustls::ConnectionCommon<Data>) -> Result<[u8; 32]> {
    connection
        .export_keying_material([0u8; 32], b"EXPORTER-hellas-pairing", None)
        .context("exporting the TLS session's keying material")
}

/// Accepts any certificate whose key signed the handshake; who it belongs to is decided above.
#[derive(Debug)]
struct ProofOfKey(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for ProofOfKey {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

impl ClientCertVerifier for ProofOfKey {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

//! `--starttls`: the rustls client configuration (ring, as the server uses) and the name the
//! server is asked for. The engine drives one `ClientConnection` per session over its socket.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::args::StartTls;

/// What every session of a `--starttls` run hands to `ClientConnection::new`.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    /// Shared by all sessions (and so is its session-resumption cache).
    pub(crate) config: Arc<ClientConfig>,
    /// SNI and the name checked in the certificate.
    pub(crate) name: ServerName<'static>,
}

/// The crypto provider: `ring`, the one the server is built with.
fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates ring's provider for its lack of post-quantum key exchange; the
    // server uses it too (see its tls module), and a load generator wants the same handshakes.
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    // ring's provider lists secp384r1 first, so a rustls peer would send a P-384 key share
    // and pay ring's slow P-384 arithmetic (about 1 ms a handshake). X25519 first, then P-256,
    // as OpenSSL and other TLS stacks order them.
    p.kx_groups = vec![
        rustls::crypto::ring::kx_group::X25519,
        rustls::crypto::ring::kx_group::SECP256R1,
        rustls::crypto::ring::kx_group::SECP384R1,
    ];
    Arc::new(p)
}

impl Client {
    /// The client for `opts` against `host` (the target's host part).
    ///
    /// # Errors
    /// One line: an unreadable or empty CA file, or a name that is no DNS name or address.
    pub(crate) fn new(opts: &StartTls, host: &str) -> Result<Self, String> {
        let name = opts.name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|_| format!("--starttls: {name:?} is not a DNS name or an address"))?
            .to_owned();
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("--starttls: {e}"))?;
        let config = if opts.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        } else {
            let path = opts.ca.as_deref().unwrap_or_else(|| Path::new(""));
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("--tls-ca {}: no certificate", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        Ok(Self {
            config: Arc::new(config),
            name,
        })
    }
}

/// `--tls-insecure`: any certificate chain and name is accepted, but the handshake signature
/// must still be made by the certificate's key (the server proves it holds that key).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

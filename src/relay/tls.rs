//! Outbound STARTTLS for the delivery stage: each route's rustls client configuration, and the
//! handshake that wraps a connection's socket when the sans-IO client asks for it
//! ([`crate::smtp::client::Event::StartTls`]).
//!
//! The policy, per route (`tls` and `ca` in `[routes]`):
//! - `none`: STARTTLS is never sent.
//! - `may` (the default): STARTTLS when the next hop offers it, in clear when it does not.
//!   Without `ca` the certificate is not checked: encryption without authentication, as
//!   Postfix's `may` (an active attacker can strip STARTTLS or present any certificate; a
//!   passive one reads nothing); a handshake that fails is retried in clear at once, on a new
//!   connection, as Postfix does. With `ca` the certificate must chain to that CA and name the
//!   target's host: a hop that offers STARTTLS must then prove who it is, and a failed
//!   handshake defers.
//! - `encrypt`: STARTTLS or nothing. A hop that does not offer it, refuses it, or fails the
//!   handshake gets its recipients deferred with a 4.7.x reply; nothing is sent in clear. The
//!   certificate is verified against `ca` if given, else against the system's trust store
//!   (`rustls-native-certs`: the distribution's `/etc/ssl/certs`, which its ca-certificates
//!   package keeps current and an administrator extends with `update-ca-certificates`, as
//!   Postfix's `smtp_tls_CApath` would; a compiled-in list such as webpki-roots would go stale
//!   with the binary and ignore local CAs).
//!
//! The crypto provider is the server's (`ring`, X25519 first); a test in the server's `tls` checks
//! that the two stay the same. This module does not speak SMTP (the client's STARTTLS rules are
//! in `crate::smtp::client`), present a client certificate, or resume sessions across
//! connections beyond rustls' in-memory cache.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use super::route::{Route, Target, TlsMode};
use crate::smtp::client::TlsPolicy;

/// Longest TLS handshake with a next hop.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection's byte stream: TCP, a unix socket, or TLS over TCP.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// Where a route connects, as far as its TLS is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer<'a> {
    /// A fixed TCP host: the SNI and the name its certificate must carry.
    Host(&'a str),
    /// An `mx` route's hosts: TCP, but each hop's name is known only when it is tried
    /// ([`RouteTls::handshake`]'s `host`).
    MxHosts,
    /// A unix socket: nothing on the wire.
    Unix,
}

/// The crypto provider, the same as the server's ([`crate::crypto::provider`]).
pub fn provider() -> Arc<CryptoProvider> {
    crate::crypto::provider()
}

/// One route's TLS: what the client asks for, and how the handshake checks the hop.
#[derive(Clone)]
pub struct RouteTls {
    /// What the sans-IO client does about STARTTLS.
    pub policy: TlsPolicy,
    /// Set unless the policy is `Never`.
    config: Option<Arc<ClientConfig>>,
    /// SNI and the name the certificate must carry (the target's host).
    name: Option<ServerName<'static>>,
    /// The certificate is checked (`ca`, or `encrypt` with the system's roots).
    verified: bool,
}

impl std::fmt::Debug for RouteTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTls")
            .field("policy", &self.policy)
            .field("name", &self.name)
            .field("verified", &self.verified)
            .finish_non_exhaustive()
    }
}

impl RouteTls {
    /// The TLS of `route`: reads its `ca` file, or the system's trust store for `encrypt`
    /// without `ca`. Called by `check-config` and at the stage's start.
    ///
    /// # Errors
    /// One line: an unreadable `ca`, one without a certificate, `encrypt` without `ca` on a
    /// system without a trust store, or `encrypt` to a unix socket.
    pub fn new(route: &Route) -> Result<Self, String> {
        let peer = match &route.target {
            Target::Smtp(h, _) | Target::Lmtp(h, _) => Peer::Host(h.as_str()),
            Target::Mx(_) => Peer::MxHosts,
            Target::LmtpUnix(_) => Peer::Unix,
        };
        let policy = match (route.tls, peer) {
            (TlsMode::None, _) => TlsPolicy::Never,
            // A local socket: nothing on the wire to protect.
            (TlsMode::May, Peer::Unix) => TlsPolicy::Never,
            (TlsMode::Encrypt, Peer::Unix) => {
                return Err(format!(
                    "route {:?}: tls = \"encrypt\" needs a TCP target, not a unix socket",
                    route.name
                ))
            }
            (TlsMode::May, Peer::Host(_) | Peer::MxHosts) => TlsPolicy::IfOffered,
            (TlsMode::Encrypt, Peer::Host(_) | Peer::MxHosts) => TlsPolicy::Required,
        };
        if policy == TlsPolicy::Never || peer == Peer::Unix {
            return Ok(Self {
                policy,
                config: None,
                name: None,
                verified: false,
            });
        }
        let name = match peer {
            Peer::Host(host) => Some(ServerName::try_from(host.to_string()).map_err(|_| {
                format!(
                    "route {:?}: {host:?} is not a DNS name or an address TLS can check",
                    route.name
                )
            })?),
            // An `mx` route's certificate names are checked per hop.
            Peer::MxHosts | Peer::Unix => None,
        };
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("route {:?}: {e}", route.name))?;
        let roots = match (&route.ca, route.tls) {
            (Some(ca), _) => Some(load_ca(ca).map_err(|e| format!("route {:?}: {e}", route.name))?),
            (None, TlsMode::Encrypt) => Some(system_roots().map_err(|e| {
                format!(
                    "route {:?}: tls = \"encrypt\" without ca: {e} (install ca-certificates, or set ca)",
                    route.name
                )
            })?),
            (None, _) => None,
        };
        let verified = roots.is_some();
        let config = match roots {
            Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        Ok(Self {
            policy,
            config: Some(Arc::new(config)),
            name,
            verified,
        })
    }

    /// A route whose TLS could not be set up at the stage's start (its CA file went away after
    /// the configuration was checked): STARTTLS is required and every handshake fails, so its
    /// mail is deferred, never sent in clear.
    pub fn unusable() -> Self {
        Self {
            policy: TlsPolicy::Required,
            config: None,
            name: None,
            verified: true,
        }
    }

    /// The route falls back to clear text when a handshake fails (`may` without `ca`).
    pub fn clear_after_failure(&self) -> bool {
        self.policy == TlsPolicy::IfOffered && !self.verified
    }

    /// Runs the handshake on `io` (right after the 220 to STARTTLS). `host` is the name to check
    /// the certificate against when the route has no fixed host (an MX host). Returns the
    /// encrypted stream and a description for the log: `TLSv1.3/TLS13_AES_256_GCM_SHA384/verified`.
    ///
    /// # Errors
    /// The reply that defers the recipients: 4.7.5, with rustls' reason (a certificate that
    /// does not verify, no common version or cipher) or a timeout.
    pub(super) async fn handshake(
        &self,
        io: Box<dyn Io>,
        relay: &str,
        host: Option<&str>,
    ) -> Result<(Box<dyn Io>, String), String> {
        let hop_name =
            host.and_then(|h| ServerName::try_from(h.trim_end_matches('.').to_string()).ok());
        let (Some(config), Some(name)) = (&self.config, hop_name.as_ref().or(self.name.as_ref()))
        else {
            return Err(format!(
                "4.7.5 TLS handshake with {relay}: TLS is off for this route"
            ));
        };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name.clone(), io))
            .await
            .map_err(|_| format!("4.7.5 TLS handshake with {relay} timed out"))?
            .map_err(|e| format!("4.7.5 TLS handshake with {relay} failed: {e}"))?;
        let (_, conn) = stream.get_ref();
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "TLS".to_string(),
        };
        let suite = conn
            .negotiated_cipher_suite()
            .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
        let check = if self.verified {
            "verified"
        } else {
            "unverified"
        };
        Ok((Box::new(stream), format!("{version}/{suite}/{check}")))
    }
}

/// The certificates of a PEM file, as trust anchors.
fn load_ca(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("ca {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("ca {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("ca {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("ca {}: no certificate in it", path.display()));
    }
    Ok(roots)
}

/// The system's trust store.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), ToString::to_string);
        return Err(format!("no system CA certificate: {why}"));
    }
    Ok(roots)
}

/// `may` without `ca`: any certificate chain and name is accepted (no authentication), but the
/// handshake signature must still be made by the certificate's key.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::route::{RouteSpec, RouteTable};

    fn route(target: &str, tls: TlsMode, ca: Option<&Path>) -> Route {
        Route::from_spec(
            "x.test",
            &RouteSpec::Full(RouteTable {
                target: target.into(),
                tls,
                concurrency: None,
                helo: None,
                ca: ca.map(Path::to_path_buf),
                verify: None,
            }),
            false,
        )
        .unwrap()
    }

    #[test]
    fn policies() {
        let t = |target, mode| RouteTls::new(&route(target, mode, None));
        assert_eq!(
            t("smtp:[h.test]:25", TlsMode::None).unwrap().policy,
            TlsPolicy::Never
        );
        let may = t("smtp:[127.0.0.1]:25", TlsMode::May).unwrap();
        assert_eq!(may.policy, TlsPolicy::IfOffered);
        assert!(may.clear_after_failure());
        assert_eq!(
            t("lmtp:unix:/run/lmtp", TlsMode::May).unwrap().policy,
            TlsPolicy::Never
        );
        assert!(t("lmtp:unix:/run/lmtp", TlsMode::Encrypt).is_err());
    }

    #[test]
    fn mx_routes_name_no_host_until_a_hop_is_tried() {
        let may = RouteTls::new(&route("mx", TlsMode::May, None)).unwrap();
        assert_eq!(may.policy, TlsPolicy::IfOffered);
        assert!(may.name.is_none() && may.config.is_some() && may.clear_after_failure());
        let none = RouteTls::new(&route("mx:2525", TlsMode::None, None)).unwrap();
        assert_eq!(none.policy, TlsPolicy::Never);
        assert!(none.config.is_none());
    }

    #[test]
    fn ca_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ca.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let r = RouteTls::new(&route("smtp:[h.test]:25", TlsMode::May, Some(&ca))).unwrap();
        assert!(r.verified && !r.clear_after_failure());
        let r = RouteTls::new(&route("smtp:[h.test]:25", TlsMode::Encrypt, Some(&ca))).unwrap();
        assert_eq!(r.policy, TlsPolicy::Required);
        std::fs::write(&ca, "not pem").unwrap();
        let e = RouteTls::new(&route("smtp:[h.test]:25", TlsMode::May, Some(&ca))).unwrap_err();
        assert!(e.contains("no certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        assert!(
            RouteTls::new(&route("smtp:[h.test]:25", TlsMode::Encrypt, Some(&missing))).is_err()
        );
    }
}

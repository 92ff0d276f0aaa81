//! STARTTLS mechanics: certificates, the SNI resolver, SIGHUP reload, and [`TlsConn`], a thin
//! wrapper that drives one `rustls::ServerConnection` over the connection driver's own buffers.
//!
//! - [`load_pairs`] reads the `--tls-cert`/`--tls-key` PEM pairs (chains; RSA or ECDSA keys in
//!   PKCS#8, PKCS#1 or SEC1), checks that each key matches its certificate and that no
//!   certificate has expired, and warns about one expiring within [`EXPIRY_WARNING`].
//!   `check-config`, start-up and reload all go through it.
//! - [`TlsAcceptor`] owns the one `rustls::ServerConfig` (crypto provider `ring`, installed
//!   explicitly, no process default) and a [`SniResolver`] whose certificate set is swapped
//!   atomically by [`TlsAcceptor::reload`]: new handshakes take the new set, sessions in
//!   progress keep what they negotiated. A failed reload keeps the old set.
//! - [`ReloadWatcher`] is the SIGHUP thread (always installed, so a reload without TLS does not
//!   kill the process). It also reloads the recipient table ([`super::recipients`]).
//! - [`TlsConn`] feeds ciphertext in with `read_tls`/`process_new_packets`, hands decrypted
//!   bytes out in bounded chunks, and encrypts replies into a reused ciphertext buffer.
//!
//! Memory per TLS session is bounded: rustls buffers at most one record being deframed
//! (16 KiB + 2 KiB ciphertext overhead), [`PLAINTEXT_LIMIT`] of decrypted input not yet taken,
//! and [`SEND_LIMIT`] of outgoing TLS data; [`TlsConn`] itself adds the plaintext chunk it
//! hands out (at most [`PLAINTEXT_LIMIT`]) and the ciphertext of one reply batch. About 50 KiB
//! at worst, a few KiB for an idle session whose buffers have been drained.
//!
//! This module does not do I/O on sockets (the driver reads and writes), does not speak SMTP
//! (STARTTLS rules are `crate::smtp`'s) and never logs plaintext.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerConnection};
use rustls::sign::CertifiedKey;
use rustls::ProtocolVersion;

use crate::config::{Config, TlsPair, TlsVersion};
use crate::smtp::TlsInfo;

/// `check-config` and start-up warn about a certificate that expires within this time.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);
/// Decrypted input rustls may hold before we take it (rustls' own default, stated here).
pub const PLAINTEXT_LIMIT: usize = 16 * 1024;
/// Outgoing TLS data rustls may queue (replies are small; a batch of pipelined replies is a
/// few hundred bytes).
pub const SEND_LIMIT: usize = 16 * 1024;

/// One loaded certificate/key pair.
#[derive(Debug)]
pub struct LoadedPair {
    /// The chain and signing key, as rustls uses them.
    pub key: Arc<CertifiedKey>,
    /// The leaf certificate's notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a certificate/key pair cannot be used. `Display` is one line naming the file.
#[derive(Debug)]
pub struct TlsLoadError(String);

impl fmt::Display for TlsLoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsLoadError {}

/// The crypto provider, shared with outbound STARTTLS ([`crate::crypto::provider`]).
pub fn provider() -> Arc<CryptoProvider> {
    crate::crypto::provider()
}

/// Loads every pair; `warnings` gets one line per certificate expiring within
/// [`EXPIRY_WARNING`] of `now`.
///
/// # Errors
/// The first unreadable file, PEM without a certificate or key, key that does not match its
/// certificate, or expired certificate.
pub fn load_pairs(
    pairs: &[TlsPair],
    provider: &CryptoProvider,
    now: SystemTime,
    warnings: &mut Vec<String>,
) -> Result<Vec<LoadedPair>, TlsLoadError> {
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    pairs
        .iter()
        .map(|p| {
            let loaded = load_pair(p, provider)?;
            let cert = p.cert.display();
            if loaded.not_after <= now_s {
                return Err(TlsLoadError(format!(
                    "tls certificate {cert} expired on {}",
                    date(loaded.not_after)
                )));
            }
            let warn_s = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
            if loaded.not_after - now_s < warn_s {
                warnings.push(format!(
                    "tls certificate {cert} expires on {}, in less than {} days",
                    date(loaded.not_after),
                    EXPIRY_WARNING.as_secs() / 86_400
                ));
            }
            Ok(loaded)
        })
        .collect()
}

fn load_pair(pair: &TlsPair, provider: &CryptoProvider) -> Result<LoadedPair, TlsLoadError> {
    let cert_pem = read(&pair.cert, "certificate")?;
    let key_pem = read(&pair.key, "key")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            TlsLoadError(format!(
                "tls certificate {}: bad PEM: {e}",
                pair.cert.display()
            ))
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsLoadError(format!(
            "tls certificate {}: no CERTIFICATE in the file",
            pair.cert.display()
        )));
    };
    let not_after = not_after(leaf).ok_or_else(|| {
        TlsLoadError(format!(
            "tls certificate {}: cannot read its validity",
            pair.cert.display()
        ))
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        TlsLoadError(format!(
            "tls key {}: no usable private key (PKCS#8, PKCS#1 or SEC1 PEM): {e}",
            pair.key.display()
        ))
    })?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsLoadError(format!(
            "tls key {} does not fit certificate {}: {e}",
            pair.key.display(),
            pair.cert.display()
        ))
    })?;
    Ok(LoadedPair {
        key: Arc::new(key),
        not_after,
    })
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, TlsLoadError> {
    std::fs::read(path)
        .map_err(|e| TlsLoadError(format!("cannot read tls {what} {}: {e}", path.display())))
}

/// `2025-01-31 12:00:00 UTC`.
fn date(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map_or_else(
        || unix.to_string(),
        |d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// The leaf certificate's notAfter (RFC 5280 §4.1.2.5), seconds since the Unix epoch: a
/// minimal DER walk `Certificate → tbsCertificate → validity`, nothing else is parsed.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, certificate, _) = der(cert.as_ref())?;
    let (_, mut tbs, _) = der(certificate)?;
    // [0] EXPLICIT version is optional.
    if tbs.first() == Some(&0xa0) {
        tbs = der(tbs)?.2;
    }
    let tbs = der(tbs)?.2; // serialNumber
    let tbs = der(tbs)?.2; // signature
    let tbs = der(tbs)?.2; // issuer
    let (_, validity, _) = der(tbs)?;
    let after = der(validity)?.2; // notBefore
    let (tag, time, _) = der(after)?;
    let s = std::str::from_utf8(time).ok()?;
    let s = s.strip_suffix('Z')?;
    let full = match tag {
        // UTCTime: YYMMDDHHMMSS, years 1950..2049.
        0x17 if s.len() == 12 => {
            let yy: u32 = s[..2].parse().ok()?;
            format!("{}{s}", if yy >= 50 { "19" } else { "20" })
        }
        // GeneralizedTime: YYYYMMDDHHMMSS.
        0x18 if s.len() == 14 => s.to_string(),
        _ => return None,
    };
    let n = |r: std::ops::Range<usize>| full.get(r)?.parse::<u32>().ok();
    let year = i32::try_from(n(0..4)?).ok()?;
    chrono::NaiveDate::from_ymd_opt(year, n(4..6)?, n(6..8)?)?
        .and_hms_opt(n(8..10)?, n(10..12)?, n(12..14)?)
        .map(|t| t.and_utc().timestamp())
}

/// One DER element: `(tag, contents, rest)`.
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&len0, mut b) = b.split_first()?;
    let len = if len0 < 0x80 {
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

/// Picks the certificate whose names match the client's SNI; the first pair otherwise.
#[derive(Debug)]
pub struct SniResolver {
    keys: RwLock<Arc<Vec<Arc<CertifiedKey>>>>,
}

impl SniResolver {
    fn current(&self) -> Arc<Vec<Arc<CertifiedKey>>> {
        // A poisoned lock only means a panic during a swap of one Arc: the value is whole.
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, keys: Vec<Arc<CertifiedKey>>) {
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let keys = self.current();
        if let (Some(sni), true) = (hello.server_name(), keys.len() > 1) {
            if let Ok(name) = ServerName::try_from(sni) {
                for key in keys.iter() {
                    let Some(leaf) = key.cert.first() else {
                        continue;
                    };
                    let fits = webpki::EndEntityCert::try_from(leaf)
                        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok());
                    if fits {
                        return Some(key.clone());
                    }
                }
            }
        }
        keys.first().cloned()
    }
}

/// The server side of STARTTLS: one `ServerConfig` for all reactors, reloadable certificates.
#[derive(Debug)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
    resolver: Arc<SniResolver>,
    pairs: Vec<TlsPair>,
    provider: Arc<CryptoProvider>,
}

impl TlsAcceptor {
    /// Builds the acceptor for `config`'s pairs; `None` when none are configured. Warnings
    /// (certificates expiring soon) are logged.
    ///
    /// # Errors
    /// One line: a pair that does not load, or no usable protocol version.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Self>>, TlsLoadError> {
        if config.tls().is_empty() {
            return Ok(None);
        }
        let provider = provider();
        let mut warnings = Vec::new();
        let loaded = load_pairs(config.tls(), &provider, SystemTime::now(), &mut warnings)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let resolver = Arc::new(SniResolver {
            keys: RwLock::new(Arc::new(loaded.into_iter().map(|p| p.key).collect())),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = match config.tls_min_version() {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsLoadError(format!("tls: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // SMTP has no ALPN; no 0-RTT (replayable commands).
        server.max_early_data_size = 0;
        Ok(Some(Arc::new(Self {
            config: Arc::new(server),
            resolver,
            pairs: config.tls().to_vec(),
            provider,
        })))
    }

    /// Reads the certificate files again and swaps them in for new handshakes. Returns how
    /// many pairs are now in use.
    ///
    /// # Errors
    /// Why the new files cannot be used; the old certificates stay.
    pub fn reload(&self) -> Result<usize, TlsLoadError> {
        let mut warnings = Vec::new();
        let loaded = load_pairs(
            &self.pairs,
            &self.provider,
            SystemTime::now(),
            &mut warnings,
        )?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let n = loaded.len();
        self.resolver
            .replace(loaded.into_iter().map(|p| p.key).collect());
        Ok(n)
    }

    /// A new server-side TLS connection with bounded buffers.
    ///
    /// # Errors
    /// rustls could not start one (should not happen with a built config).
    pub fn start(&self) -> Result<TlsConn, rustls::Error> {
        let mut conn = ServerConnection::new(self.config.clone())?;
        conn.set_buffer_limit(Some(SEND_LIMIT));
        Ok(TlsConn {
            conn,
            plain: Vec::new(),
            wire: Vec::new(),
        })
    }
}

/// Why a TLS handshake or session failed, as the statistics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The peer sent a fatal alert.
    ClientAlert,
    /// Anything else rustls refused (not TLS, bad messages, nothing in common).
    Protocol,
}

impl TlsFailure {
    fn of(e: &rustls::Error) -> Self {
        match e {
            rustls::Error::AlertReceived(_) => Self::ClientAlert,
            _ => Self::Protocol,
        }
    }

    /// `client-alert` / `protocol`, for log lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientAlert => "client-alert",
            Self::Protocol => "protocol",
        }
    }
}

/// One connection's TLS state: a `rustls::ServerConnection` driven over the caller's buffers.
pub struct TlsConn {
    conn: ServerConnection,
    /// Decrypted input handed out by [`TlsConn::decrypt`], reused.
    plain: Vec<u8>,
    /// Ciphertext handed out by [`TlsConn::seal`], reused.
    wire: Vec<u8>,
}

impl TlsConn {
    /// Feeds ciphertext from `data` (advancing it) until rustls has decrypted something or
    /// `data` is used up; returns the decrypted bytes (at most [`PLAINTEXT_LIMIT`]), to be
    /// given back with [`TlsConn::recycle`]. Call again while `data` is not empty.
    ///
    /// # Errors
    /// A TLS error; the connection must be closed (after [`TlsConn::write_tls`], which sends
    /// the alert rustls queued).
    pub fn decrypt(&mut self, data: &mut &[u8]) -> Result<Vec<u8>, TlsFailure> {
        let mut plain = std::mem::take(&mut self.plain);
        plain.clear();
        loop {
            let mut took = 0;
            if !data.is_empty() {
                // Reading from a slice cannot fail; rustls refuses only when its own buffer is
                // full, which `process_new_packets` and the drain below resolve.
                took = self.conn.read_tls(data).unwrap_or(0);
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| TlsFailure::of(&e))?;
            if state.plaintext_bytes_to_read() > 0 {
                let _ = self.conn.reader().read_to_end(&mut plain);
            }
            if !plain.is_empty() || data.is_empty() || state.peer_has_closed() {
                return Ok(plain);
            }
            if took == 0 {
                // No progress possible: never spin on input rustls will not take.
                return Err(TlsFailure::Protocol);
            }
        }
    }

    /// Gives the buffer from [`TlsConn::decrypt`] back for reuse.
    pub fn recycle(&mut self, plain: Vec<u8>) {
        self.plain = plain;
    }

    /// Encrypts `plain` (a batch of replies; may be empty) and returns every record rustls
    /// wants to send, to be written and given back with [`TlsConn::recycle_wire`].
    ///
    /// # Errors
    /// More than [`SEND_LIMIT`] queued (the client does not read).
    pub fn seal(&mut self, plain: &[u8]) -> io::Result<Vec<u8>> {
        if !plain.is_empty() {
            self.conn.writer().write_all(plain)?;
        }
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        self.write_tls(&mut wire);
        Ok(wire)
    }

    /// Gives the buffer from [`TlsConn::seal`] back for reuse.
    pub fn recycle_wire(&mut self, wire: Vec<u8>) {
        self.wire = wire;
    }

    /// Appends every TLS record rustls wants to send to `out`.
    pub fn write_tls(&mut self, out: &mut Vec<u8>) {
        while self.conn.wants_write() {
            // Writing into a Vec cannot fail.
            if self.conn.write_tls(out).is_err() {
                break;
            }
        }
    }

    /// Whether rustls has records to send.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Version, cipher and key bits of the finished handshake, for the session.
    pub fn info(&self) -> TlsInfo {
        let version = match self.conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "unknown".to_string(),
        };
        // IANA names (rustls spells the TLS 1.3 suites `TLS13_…`).
        let cipher = self.conn.negotiated_cipher_suite().map_or_else(
            || "unknown".to_string(),
            |s| {
                let name = format!("{:?}", s.suite());
                match name.strip_prefix("TLS13_") {
                    Some(rest) => format!("TLS_{rest}"),
                    None => name,
                }
            },
        );
        let bits = if cipher.contains("AES_128") { 128 } else { 256 };
        TlsInfo {
            version,
            cipher,
            bits,
        }
    }

    /// TLS 1.3 negotiated.
    pub fn is_v13(&self) -> bool {
        self.conn.protocol_version() == Some(ProtocolVersion::TLSv1_3)
    }

    /// The negotiated key exchange group (`X25519`, `secp256r1`, …), for the log.
    pub fn kx_group(&self) -> String {
        self.conn
            .negotiated_key_exchange_group()
            .map_or_else(|| "-".to_string(), |g| format!("{:?}", g.name()))
    }

    /// The SNI the client sent, if any.
    pub fn sni(&self) -> Option<&str> {
        self.conn.server_name()
    }
}

/// The SIGHUP thread: each SIGHUP reloads the certificates (or logs that there is nothing to
/// reload), then the recipient table if there is one. Dropping it stops the thread.
pub struct ReloadWatcher {
    handle: signal_hook::iterator::Handle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReloadWatcher {
    /// Installs the SIGHUP handler.
    ///
    /// # Errors
    /// The handler or the thread could not be set up.
    pub fn start(
        acceptor: Option<Arc<TlsAcceptor>>,
        recipients: Option<Arc<super::recipients::Recipients>>,
    ) -> io::Result<Self> {
        let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
        let handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name("ringmx-reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    match &acceptor {
                        None => tracing::info!(
                            "SIGHUP: no tls certificates configured, nothing to reload"
                        ),
                        Some(a) => match a.reload() {
                            Ok(n) => tracing::info!(
                                "SIGHUP: reloaded {n} tls certificate(s); new handshakes use them"
                            ),
                            Err(e) => tracing::error!(
                                "SIGHUP: tls reload failed, keeping the old certificates: {e}"
                            ),
                        },
                    }
                    if let Some(r) = &recipients {
                        match r.reload() {
                            Ok(loaded) => tracing::info!(
                                "SIGHUP: reloaded recipient table {}: {loaded}; new connections use it",
                                r.path().display()
                            ),
                            Err(e) => tracing::error!(
                                "SIGHUP: recipient table reload failed, keeping the old table: {e}"
                            ),
                        }
                    }
                }
            })?;
        Ok(Self {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for ReloadWatcher {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// X25519 first (ring lists P-384 first, about 1 ms of server CPU per rustls handshake).
    #[test]
    fn x25519_is_the_first_key_exchange_group() {
        let p = provider();
        let groups: Vec<String> = p
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(groups, ["X25519", "secp256r1", "secp384r1"]);
    }

    fn pair(dir: &Path, name: &str, names: &[&str], days: i64) -> TlsPair {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time_now();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        TlsPair { cert: c, key: k }
    }

    fn time_now() -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }

    #[test]
    fn loads_checks_keys_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let p = provider();
        let good = pair(dir.path(), "a", &["mx.example"], 90);
        let mut w = Vec::new();
        let loaded =
            load_pairs(std::slice::from_ref(&good), &p, SystemTime::now(), &mut w).expect("loads");
        assert!(w.is_empty(), "{w:?}");
        let days = (loaded[0].not_after - time_now().unix_timestamp()) / 86_400;
        assert!((89..=90).contains(&days), "{days}");

        let soon = pair(dir.path(), "b", &["mx.example"], 5);
        load_pairs(&[soon], &p, SystemTime::now(), &mut w).expect("loads");
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("expires on"), "{w:?}");

        let old = pair(dir.path(), "c", &["mx.example"], -1);
        let e = load_pairs(&[old], &p, SystemTime::now(), &mut w).unwrap_err();
        assert!(e.to_string().contains("expired"), "{e}");

        let other = pair(dir.path(), "d", &["mx.example"], 90);
        let mismatched = TlsPair {
            cert: good.cert.clone(),
            key: other.key,
        };
        let e = load_pairs(&[mismatched], &p, SystemTime::now(), &mut w).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");

        let missing = TlsPair {
            cert: dir.path().join("nope.pem"),
            key: good.key,
        };
        let e = load_pairs(&[missing], &p, SystemTime::now(), &mut w).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read tls certificate"),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn der_lengths_are_bounded() {
        assert!(der(&[0x30, 0x82, 0xff]).is_none());
        assert!(der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert_eq!(der(&[0x04, 1, 7, 9]), Some((0x04, &[7u8][..], &[9u8][..])));
    }
}

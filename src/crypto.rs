//! The one rustls crypto provider of ringmx, shared by inbound STARTTLS (`server::tls`) and
//! outbound STARTTLS (`relay::tls`), so both sides offer the same suites and key exchange
//! groups. A leaf: it imports nothing else from the crate. It does not load certificates or
//! run handshakes.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The crypto provider: `ring` (see Cargo.toml for why), passed explicitly to every builder.
pub fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates ring's provider because it has no post-quantum key exchange
    // (X25519MLKEM768, aws-lc-rs only). Opportunistic STARTTLS between MTAs negotiates X25519
    // or P-256 today; switching providers is this one line plus the Cargo feature.
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

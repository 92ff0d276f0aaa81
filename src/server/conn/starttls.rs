//! STARTTLS: after the session's 220 the handshake runs with rustls over this connection's
//! reads and writes under the session's deadline, is counted and logged, and the session is
//! told (`start_tls`); from then on every read is decrypted before it is fed (`feed_tls`); a
//! TLS failure sends the alert rustls queued, best effort (`tls_failed`).
//!
//! It does not drop the bytes sent after the STARTTLS line (`drive` in `input` does, before the
//! handshake), seal replies (see `output`) or hold certificates and the rustls wrapper
//! ([`crate::server::tls`]).

use std::time::Instant;

use super::end::End;
use super::input::ReadEvent;
use super::{Conn, COMMAND_READ_SIZE};
use crate::buffers::Buf;
use crate::server::tls::TlsFailure;
use crate::smtp::Closed;
use crate::stats::{ReactorStats, TlsOutcome};

impl Conn<'_> {
    /// Decrypts newly read bytes and feeds the plaintext to the session, in chunks of at most
    /// [`crate::server::tls::PLAINTEXT_LIMIT`].
    pub(super) async fn feed_tls(&mut self, mut data: &[u8]) -> Result<(), End> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            let plain = match tls.decrypt(&mut data) {
                Ok(p) => p,
                Err(f) => return Err(self.tls_failed(f).await),
            };
            let fed = if plain.is_empty() {
                Ok(())
            } else {
                self.feed(&plain).await
            };
            if let Some(tls) = self.tls.as_mut() {
                tls.recycle(plain);
            }
            fed?;
            if data.is_empty() {
                // Anything rustls wants to say (a KeyUpdate answer, an alert).
                return self.write_out().await;
            }
        }
    }

    /// Sends the alert rustls queued (best effort) and names the end.
    async fn tls_failed(&mut self, f: TlsFailure) -> End {
        if let Some(tls) = self.tls.as_mut() {
            if let Ok(wire) = tls.seal(&[]) {
                let _ = self.write_raw(wire).await;
            }
        }
        End::Tls(f)
    }

    /// STARTTLS was answered 220: runs the TLS handshake over this connection's reads and
    /// writes until it completes, fails or passes the session's deadline, then tells the
    /// session. Plaintext that came in the same read as the client's last handshake message is
    /// fed to the session at once.
    pub(super) async fn start_tls(&mut self) -> Result<(), End> {
        let started = Instant::now();
        // The session offers STARTTLS only when the reactor has an acceptor.
        let Some(Ok(conn)) = self.r.tls.as_ref().map(|a| a.start()) else {
            return Err(End::Tls(TlsFailure::Protocol));
        };
        self.tls = Some(Box::new(conn));
        let mut buf = Buf::heap(COMMAND_READ_SIZE);
        let mut early = Vec::new();
        let res = loop {
            let Some(tls) = self.tls.as_mut() else {
                break Err(End::Tls(TlsFailure::Protocol));
            };
            if !tls.is_handshaking() {
                break Ok(());
            }
            match self.read(buf).await {
                ReadEvent::Done(Ok(0), _) => break Err(End::Tls(TlsFailure::Protocol)),
                ReadEvent::Done(Ok(n), b) => {
                    self.bytes_in += n as u64;
                    ReactorStats::add(&self.r.stats.counters.bytes_received, n as u64);
                    let mut data = &b[..n];
                    let mut failed = None;
                    while let Some(tls) = self.tls.as_mut() {
                        match tls.decrypt(&mut data) {
                            Ok(p) => {
                                early.extend_from_slice(&p);
                                tls.recycle(p);
                            }
                            Err(f) => {
                                failed = Some(f);
                                break;
                            }
                        }
                        if data.is_empty() {
                            break;
                        }
                    }
                    if let Some(f) = failed {
                        break Err(self.tls_failed(f).await);
                    }
                    buf = b;
                    // The server's flight (ServerHello … Finished, or TLS 1.2's answers).
                    if let Err(end) = self.write_out().await {
                        break Err(end);
                    }
                }
                ReadEvent::Done(Err(e), _) => break Err(End::Io(e)),
                ReadEvent::Timeout => break Err(End::TlsTimeout),
                // No 421 in the middle of a handshake: the client could not read it.
                ReadEvent::Stop => break Err(End::Closed(Closed::Shutdown)),
            }
        };
        let stats = &self.r.stats;
        let tls = match (res, self.tls.as_ref()) {
            (Ok(()), Some(tls)) => tls,
            (res, _) => {
                let end = res.err().unwrap_or(End::Tls(TlsFailure::Protocol));
                match &end {
                    End::TlsTimeout => stats.tls(TlsOutcome::Timeout),
                    End::Tls(TlsFailure::ClientAlert) => stats.tls(TlsOutcome::ClientAlert),
                    End::Tls(TlsFailure::Protocol) | End::Io(_) => {
                        stats.tls(TlsOutcome::Protocol);
                    }
                    _ => {}
                }
                tracing::info!(
                    "starttls failed from={} reason={} ms={}",
                    self.peer,
                    end.name(),
                    started.elapsed().as_millis()
                );
                return Err(end);
            }
        };
        let info = tls.info();
        stats.tls(TlsOutcome::Completed {
            v13: tls.is_v13(),
            duration: started.elapsed(),
        });
        tracing::info!(
            "starttls from={} version={} cipher={} kx={} sni={} ms={}",
            self.peer,
            info.version,
            info.cipher,
            tls.kx_group(),
            tls.sni().unwrap_or("-"),
            started.elapsed().as_millis()
        );
        self.session.tls_started(Instant::now(), info);
        if early.is_empty() {
            Ok(())
        } else {
            self.feed(&early).await
        }
    }
}

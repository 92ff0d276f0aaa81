//! Output: the batch of replies in `out` written with one `write_all` under the idle timeout
//! (`write_out`; under TLS sealed first, with whatever else rustls has to send), the raw write
//! it, the pregreet refusal and the TLS alert use (`write_raw`), and the deadline of a write
//! (`write_deadline`, which `refuse` uses too).
//!
//! It does not produce replies (the session does) or decide when a batch is complete (see
//! `input`).

use std::time::Instant;

use super::end::End;
use super::Conn;

impl Conn<'_> {
    /// Writes the batch of replies in `out` with one `write_all`, bounded by the idle timeout
    /// (checked by the reactor's sweep, so up to one tick late); under TLS, encrypted (with
    /// whatever else rustls has to send).
    pub(super) async fn write_out(&mut self) -> Result<(), End> {
        let tls_pending = self.tls.as_ref().is_some_and(|t| t.wants_write());
        if self.out.is_empty() && !tls_pending {
            return Ok(());
        }
        self.r.stats.replies(self.session.take_replies());
        if let Some(tls) = self.tls.as_mut() {
            let wire = tls.seal(&self.out).map_err(End::Io)?;
            self.out.clear();
            let wire = self.write_raw(wire).await?;
            if let Some(tls) = self.tls.as_mut() {
                tls.recycle_wire(wire);
            }
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        self.out = self.write_raw(out).await?;
        Ok(())
    }

    /// Writes `buf` with one `write_all`, bounded by the idle timeout; returns it emptied.
    pub(super) async fn write_raw(&self, buf: Vec<u8>) -> Result<Vec<u8>, End> {
        let write = self.stream.write_all(buf);
        match self
            .deadline
            .within(write_deadline(self.r.idle_timeout), write)
            .await
        {
            Ok((Ok(()), mut buf)) => {
                buf.clear();
                Ok(buf)
            }
            Ok((Err(e), _)) => Err(End::Io(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }
}

/// When a write started now must have completed: `idle` from now (`None` if unrepresentable).
/// The one clock read per write; reads take the session's deadline and read no clock.
pub(super) fn write_deadline(idle: std::time::Duration) -> Option<Instant> {
    Instant::now().checked_add(idle)
}

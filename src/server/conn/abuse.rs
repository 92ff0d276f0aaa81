//! What abuse control at the door (docs/abuse.md) asks of the driver: the greet pause and its
//! pregreet check (`greet_pause`), the wait for the DNSBL verdict before the first command
//! (`settle_dnsbl`) and recipient verification (`verify_rcpt`), each with its counters and log
//! lines.
//!
//! It does not decide replies (the session does, from its policy, the verdict and the blocking
//! zone), run the lookups ([`crate::server::dnsbl`], [`crate::relay::verify`]) or keep the rate
//! limits ([`crate::server::rate`]).

use std::io;
use std::time::Instant;

use super::end::End;
use super::{Conn, PREGREET_PEEK};
use crate::relay::verify::{Answer, Source};
use crate::smtp::{Closed, RecipientRefusal, Verdict};
use crate::stats::ReactorStats;

impl Conn<'_> {
    /// `--greet-pause`: writes `220-`, sleeps (cut short if the server stops), then looks
    /// without reading whether the client has sent anything: if so, `554 5.5.1` and
    /// [`End::Pregreet`]. The first input of a PROXY connection (sent after its header but
    /// before our greeting) counts too.
    pub(super) async fn greet_pause(&mut self) -> Result<(), End> {
        crate::smtp::greeting_first_line(&mut self.out, &self.r.hostname);
        self.write_out().await?;
        let pause = self.r.abuse.greet_pause;
        if self.pending.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                // Stopping: end the pause; the loop then closes with 421 after the greeting.
                _ = self.stop.changed(), if self.watch_stop => {}
            }
        }
        let mut peek = [0u8; PREGREET_PEEK];
        let n = if self.pending.is_empty() {
            match crate::sys::peek_nonblocking(&self.stream, &mut peek) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(End::Io(e)),
            }
        } else {
            let n = self.pending.len().min(PREGREET_PEEK);
            peek[..n].copy_from_slice(&self.pending[..n]);
            n
        };
        let seen: String = peek[..n]
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    char::from(b)
                } else {
                    '.'
                }
            })
            .collect();
        tracing::info!(
            "reject from={} reason=pregreet reply=554 5.5.1 sent=\"{seen}\"",
            self.peer
        );
        self.r.stats.replies(crate::smtp::refuse_pregreet(
            &mut self.out,
            &self.r.hostname,
        ));
        let out = std::mem::take(&mut self.out);
        let _ = self.write_raw(out).await;
        Err(End::Pregreet)
    }

    /// The session waits for a RCPT verdict: asks the verifier (a channel send, never
    /// blocking), awaits its answer (bounded by [`Verifier::wait_limit`]), counts, logs, and
    /// hands the verdict to the session.
    ///
    /// [`Verifier::wait_limit`]: crate::relay::verify::Verifier::wait_limit
    pub(super) async fn verify_rcpt(&mut self) -> Result<(), Closed> {
        let Some(address) = self.session.awaiting_verdict().map(str::to_owned) else {
            return Ok(());
        };
        let started = Instant::now();
        let answer = match &self.r.abuse.verify {
            Some(v) => match v.ask(&address) {
                Ok(rx) => match tokio::time::timeout(v.wait_limit(), rx).await {
                    Ok(Ok(a)) => a,
                    _ => Answer::new(Verdict::Unverified, Source::Failed, "no answer in time"),
                },
                Err(a) => a,
            },
            // The session asks only when a verifier is configured.
            None => Answer::new(Verdict::Unverified, Source::Failed, "no verifier"),
        };
        let c = &self.r.stats.counters;
        if answer.probed {
            ReactorStats::inc(&c.verify_probes);
        }
        match answer.source {
            Source::Cache | Source::Stale => ReactorStats::inc(&c.verify_cache_hits),
            Source::Joined => ReactorStats::inc(&c.verify_coalesced),
            Source::Probe | Source::Busy | Source::Failed => {}
        }
        let ms = started.elapsed().as_millis();
        let why = match answer.verdict {
            Verdict::Accepted => {
                tracing::debug!(
                    "verified rcpt=<{address}> client={} source={} ms={ms} reply=\"{}\"",
                    self.peer.ip(),
                    answer.source.name(),
                    answer.detail
                );
                None
            }
            Verdict::Refused => {
                ReactorStats::inc(&c.refused_unverified);
                Some(RecipientRefusal::VerifyRefused)
            }
            Verdict::Unverified => {
                ReactorStats::inc(&c.deferred_unverified);
                Some(RecipientRefusal::Unverified)
            }
        };
        if let Some(why) = why {
            let (code, status) = why.reply();
            tracing::info!(
                "reject rcpt=<{address}> from=<{}> client={} reason={} reply={code} {status} source={} ms={ms} next-hop=\"{}\"",
                self.session.envelope().mail_from,
                self.peer.ip(),
                why.name(),
                answer.source.name(),
                answer.detail
            );
        }
        self.session
            .handle_verdict(Instant::now(), answer.verdict, &mut self.out)
    }

    /// Awaits the DNSBL verdict (bounded by [`crate::server::dnsbl::DNSBL_WAIT`] from the connect; a
    /// task wait, never a blocked reactor) and blocks the client's recipients if it is listed.
    pub(super) async fn settle_dnsbl(&mut self) {
        let (Some(check), Some(d)) = (self.dnsbl.take(), self.r.abuse.dnsbl.clone()) else {
            return;
        };
        let v = d.verdict(check).await;
        if v.failures > 0 {
            ReactorStats::add(&self.r.stats.counters.dnsbl_failures, u64::from(v.failures));
            tracing::info!(
                "dnsbl client={} lookups-failed={} (counted as not listed)",
                self.peer.ip(),
                v.failures
            );
        }
        if !v.listed.is_empty() {
            tracing::info!(
                "dnsbl client={} listed-by={} score={} blocked={}",
                self.peer.ip(),
                v.listed.join(","),
                v.score,
                v.blocked_by.is_some()
            );
        }
        if let Some(zone) = v.blocked_by {
            self.session.block_recipients(&zone);
        }
    }
}

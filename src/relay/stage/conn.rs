//! One outbound connection ([`Conn`]): connecting to a route's target or an MX address (the
//! socket itself is `relay::connect`'s), the
//! greeting and EHLO/LHLO, STARTTLS as the route's TLS says (retried once in clear after a
//! failed handshake under `may` without `ca`), and driving the sans-IO
//! [`crate::smtp::client::Client`] through a transaction, with the stage's timeouts. The
//! message's MAIL parameters come from its stored envelope (`BODY=8BITMIME`, `SMTPUTF8`) and
//! its bytes ([`MailParams::new`]); a message the next hop cannot take fails in the client
//! without being sent.
//!
//! It does not choose which job or host comes next (see `worker`) and does not set up TLS
//! itself (see `relay::tls`).

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::worker::deferred;
use super::{Job, BODY_CHUNK, CONNECT_TIMEOUT, END_OF_DATA_TIMEOUT, READ_BUF, REPLY_TIMEOUT};
use crate::relay::connect;
use crate::relay::mx;
use crate::relay::route::Route;
use crate::relay::tls::{Io, RouteTls};
use crate::smtp::client::{Client, Event, MailParams, Protocol, RcptOutcome, Reply, TlsPolicy};
use crate::stats::DeliveryStats;

/// One outbound connection: the socket, the sans-IO client and its buffers.
pub(super) struct Conn {
    io: Box<dyn Io>,
    pub(super) client: Client,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// `host[addr]:port` or the socket path, for the log.
    pub(super) relay: String,
    /// After STARTTLS: version, cipher suite and whether the certificate was verified.
    pub(super) tls: Option<String>,
    /// The recipient domain it was opened for (an `mx` route's connection).
    pub(super) domain: Option<String>,
}

impl Conn {
    /// Connects, reads the greeting and the EHLO/LHLO reply, and does STARTTLS as the route's
    /// TLS says. A failed handshake under `may` without `ca` is retried once in clear.
    pub(super) async fn open(route: &Route, tls: &RouteTls, helo: &str) -> Result<Self, Reply> {
        Self::with_clear_fallback(tls, &route.target, |policy| async move {
            let c = connect::target(&route.target, Some(CONNECT_TIMEOUT))
                .await
                .map_err(|r| (r, false))?;
            Self::greet(c.io, c.relay, c.protocol, helo, tls, policy, None).await
        })
        .await
    }

    /// Connects to one MX address of `domain`, reads the greeting and the EHLO reply, and does
    /// STARTTLS as the route's TLS says (the certificate checked against the MX host's name). A
    /// failed handshake under `may` without `ca` is retried once in clear.
    pub(super) async fn open_hop(
        hop: &mx::Hop,
        tls: &RouteTls,
        helo: &str,
        domain: &str,
    ) -> Result<Self, Reply> {
        let relay = format!("{}[{}]:{}", hop.host, hop.addr.ip(), hop.addr.port());
        let (relay, host) = (relay.as_str(), hop.host.as_str());
        let mut c = Self::with_clear_fallback(tls, &hop.host, |policy| async move {
            let s = connect::tcp(hop.addr, &relay, Some(CONNECT_TIMEOUT))
                .await
                .map_err(|r| (r, false))?;
            Self::greet(
                Box::new(s),
                relay.into(),
                Protocol::Smtp,
                helo,
                tls,
                policy,
                Some(host),
            )
            .await
        })
        .await?;
        c.domain = Some(domain.to_string());
        Ok(c)
    }

    /// Runs `attempt` (connect and [`Conn::greet`]) with the route's TLS policy and, when its
    /// TLS handshake failed on a route that falls back to clear text, once more without
    /// STARTTLS (logged, naming `name`).
    async fn with_clear_fallback<F, Fut>(
        tls: &RouteTls,
        name: &dyn Display,
        attempt: F,
    ) -> Result<Self, Reply>
    where
        F: Fn(TlsPolicy) -> Fut,
        Fut: Future<Output = Result<Self, (Reply, bool)>>,
    {
        match attempt(tls.policy).await {
            Err((reply, true)) if tls.clear_after_failure() => {
                tracing::warn!("delivery: {reply}; tls = \"may\": trying {name} again in clear");
                attempt(TlsPolicy::Never).await.map_err(|(r, _)| r)
            }
            r => r.map_err(|(r, _)| r),
        }
    }

    /// Reads the greeting and the EHLO/LHLO reply on a new connection, with STARTTLS as
    /// `policy` says (`host`: the name to check the certificate against, for an MX host). The
    /// error says whether the TLS handshake failed.
    async fn greet(
        io: Box<dyn Io>,
        relay: String,
        protocol: Protocol,
        helo: &str,
        tls: &RouteTls,
        policy: TlsPolicy,
        host: Option<&str>,
    ) -> Result<Self, (Reply, bool)> {
        let mut c = Self {
            io,
            client: Client::new(protocol, helo).with_tls(policy),
            out: Vec::new(),
            buf: vec![0; READ_BUF],
            relay,
            tls: None,
            domain: None,
        };
        let mut handshake_failed = false;
        loop {
            match c.next_event().await {
                Event::Ready(_) => return Ok(c),
                Event::Closed(r) => {
                    c.flush().await;
                    return Err((r, handshake_failed));
                }
                Event::StartTls => {
                    // The client saw nothing after the 220: the socket's next bytes are TLS.
                    let plain = std::mem::replace(&mut c.io, Box::new(tokio::io::empty()));
                    match tls.handshake(plain, &c.relay, host).await {
                        Ok((io, desc)) => {
                            c.io = io;
                            c.tls = Some(desc);
                            c.client.tls_established(&mut c.out);
                        }
                        Err(why) => {
                            handshake_failed = true;
                            c.client.lose(&Reply::local(451, why));
                        }
                    }
                }
                _ => {}
            }
        }
    }

    async fn flush(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let res = tokio::time::timeout(REPLY_TIMEOUT, self.io.write_all(&self.out)).await;
        self.out.clear();
        let err = match res {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".into(),
        };
        self.client.lose(&Reply::local(
            451,
            format!("4.4.2 write to {}: {err}", self.relay),
        ));
    }

    /// Writes what the client queued, then reads until it has an event.
    async fn next_event(&mut self) -> Event {
        loop {
            self.flush().await;
            if let Some(e) = self.client.poll_event() {
                return e;
            }
            if self.client.is_closed() {
                return Event::Closed(Reply::local(451, "4.4.2 connection closed"));
            }
            let wait = if self.client.awaiting_end_of_data() {
                END_OF_DATA_TIMEOUT
            } else {
                REPLY_TIMEOUT
            };
            let why = match tokio::time::timeout(wait, self.io.read(&mut self.buf)).await {
                Ok(Ok(0)) => format!("4.4.2 connection closed by {}", self.relay),
                Ok(Ok(n)) => {
                    let (client, buf, out) = (&mut self.client, &self.buf, &mut self.out);
                    client.feed(&buf[..n], out);
                    continue;
                }
                Ok(Err(e)) => format!("4.4.2 read from {}: {e}", self.relay),
                Err(_) => format!("4.4.2 timeout waiting for a reply from {}", self.relay),
            };
            self.client.lose(&Reply::local(451, why));
        }
    }

    /// Feeds the client the replies already here, without waiting: pipelined BDAT chunks
    /// each get one, and reading them as the body goes keeps the next hop from blocking on
    /// its writes while we block on ours.
    async fn read_ready(&mut self) {
        while !self.client.is_closed() {
            // A zero timeout polls the read once: ready bytes, or nothing now.
            match tokio::time::timeout(Duration::ZERO, self.io.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {
                    let (client, buf, out) = (&mut self.client, &self.buf, &mut self.out);
                    client.feed(&buf[..n], out);
                }
                // Nothing ready, or an end or error that the next wait for a reply reports.
                _ => return,
            }
        }
    }

    /// Runs one transaction for `job`.
    pub(super) async fn transact(&mut self, job: &Job) -> Vec<RcptOutcome> {
        while !self.client.is_ready() {
            if let Event::Closed(r) = self.next_event().await {
                return deferred(job, &r);
            }
        }
        // Stale Ready events of the previous transaction.
        while self.client.poll_event().is_some() {}
        let data = match job.msg.read_data() {
            Ok(d) => d,
            Err(e) => {
                return deferred(
                    job,
                    &Reply::local(451, format!("4.3.0 reading the spool: {e}")),
                );
            }
        };
        let env = &job.msg.envelope;
        let rcpts: Vec<String> = job.rcpts.iter().map(|&i| env.rcpts[i].clone()).collect();
        // BODY=8BITMIME and SMTPUTF8 as received; the client refuses (5.6.3, 5.6.7) what the
        // next hop cannot take.
        let params = MailParams::new(&data, env.body_8bitmime, env.smtputf8);
        if self
            .client
            .start(&env.mail_from, &rcpts, &params, &mut self.out)
            .is_err()
        {
            return deferred(job, &Reply::local(451, "4.3.0 connection not ready"));
        }
        loop {
            match self.next_event().await {
                Event::SendBody => {
                    // The last chunk goes with the end (`BDAT n LAST` when chunking).
                    let mut chunks = data.chunks(BODY_CHUNK).peekable();
                    while let Some(chunk) = chunks.next() {
                        if chunks.peek().is_none() {
                            self.client.end_body_with(chunk, &mut self.out);
                        } else {
                            self.client.body(chunk, &mut self.out);
                            self.flush().await;
                            self.read_ready().await;
                        }
                    }
                    if data.is_empty() {
                        self.client.end_body(&mut self.out);
                    }
                }
                Event::Done(o) => return o,
                Event::Closed(r) => return deferred(job, &r),
                Event::Ready(_) | Event::StartTls => {}
            }
        }
    }

    pub(super) async fn quit(mut self, stats: &DeliveryStats) {
        stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        self.client.quit(&mut self.out);
        self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.next_event()).await;
    }
}

//! One SMTP client connection as a state machine, sans-IO: replies and the time come in; the
//! bytes to send (as slices of the run's [`Template`]), acknowledged and failed messages, and
//! "free for another message" come out.
//!
//! It does not touch sockets or read the clock; the engine does both. Call order per connection:
//! [`Session::connected`], then [`Session::handle_input`] with the unread bytes whenever some
//! arrive (it says how many it consumed), [`Session::out_slices`]/[`Session::consume_out`] to
//! write, [`Session::assign`] when it is free, [`Session::finish`] when there is no more work,
//! and [`Session::abandon`] when the connection breaks. With `--starttls` the session sends
//! STARTTLS after EHLO and reports the 220 ([`Status::starttls`]); the engine runs the handshake
//! and calls [`Session::tls_established`], and the dialogue goes on (EHLO again) over TLS.
//!
//! With PIPELINING (RFC 2920) a transaction is one write of MAIL, every RCPT and DATA; the body
//! follows the 354, and the next transaction's group goes in the same write as the body (RFC 2920
//! §3.1 lets message content start a group). Without it, one command per round trip.
//!
//! With `--bdat` (CHUNKING, RFC 3030) the message goes as one `BDAT <n> LAST` and its content:
//! with PIPELINING in the same write as MAIL and every RCPT, the next transaction starting
//! once its reply is in (one round trip per message, like DATA); without, after the last RCPT's
//! reply. With `--proxy` the connection starts with the PROXY header, before the greeting.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use crate::message::{self, Template};
use crate::reply::{self, ReplyError};

/// Most segments queued for one write: body head, body tail, RSET, the next group, QUIT.
pub(crate) const MAX_SEGMENTS: usize = 8;

/// A message handed to a session: its index (the token's counter) and the time the latency of
/// the whole transaction counts from (its intended send time at a fixed `--rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The message number in the run.
    pub(crate) index: u64,
    /// When the message was meant to start.
    pub(crate) start: Instant,
}

/// Where in the dialogue a reply came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    /// The 220 greeting.
    Greeting,
    /// EHLO.
    Ehlo,
    /// HELO (after EHLO was refused).
    Helo,
    /// STARTTLS (expects 220).
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA (expects 354).
    Data,
    /// `BDAT <n> LAST` with the message (expects 250).
    Bdat,
    /// The end of the message data (expects 250).
    Dot,
}

impl Step {
    /// The command name, for reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Greeting => "greeting",
            Self::Ehlo => "EHLO",
            Self::Helo => "HELO",
            Self::StartTls => "STARTTLS",
            Self::Mail => "MAIL",
            Self::Rcpt => "RCPT",
            Self::Data => "DATA",
            Self::Bdat => "BDAT LAST",
            Self::Dot => "end of data",
        }
    }
}

/// Why a message or a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The server answered with an unexpected code.
    Reply {
        /// The step that was answered.
        step: Step,
        /// The reply code.
        code: u16,
    },
    /// The connection was refused (nothing listens).
    Refused,
    /// Connecting failed for another reason.
    Connect,
    /// The server closed or reset the connection in the middle of the dialogue.
    Closed,
    /// No reply within the reply timeout.
    Timeout,
    /// The server sent something that is not a reply, or a reply nobody asked for.
    Protocol(ReplyError),
    /// The TLS handshake failed, or a TLS record did not check out (`--starttls`).
    Tls,
    /// `--bdat`, and the server does not offer CHUNKING.
    NoChunking,
}

/// What a session tells its owner about messages and replies.
pub(crate) trait Observer {
    /// The greeting arrived `latency` after the connection was established.
    fn greeted(&mut self, latency: Duration);
    /// Message `index` got its 250 after the end of data.
    fn acked(&mut self, index: u64, start: Instant, dot_sent: Instant, now: Instant);
    /// Message `index` will not be delivered.
    fn failed(&mut self, index: u64, why: Failure);
    /// A recipient was refused (the message may still go to the others).
    fn rcpt_rejected(&mut self, code: u16);
}

/// The state after some input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Status {
    /// The session can take another message ([`Session::assign`]).
    pub(crate) free: bool,
    /// QUIT was answered: close the connection.
    pub(crate) done: bool,
    /// STARTTLS was answered 220: run the TLS handshake next, then call
    /// [`Session::tls_established`]. Nothing after the 220 was consumed.
    pub(crate) starttls: bool,
}

/// One piece of the next write.
#[derive(Debug, Clone, Copy)]
enum Seg {
    Static(&'static [u8]),
    /// The session's patched copy of the template head.
    Head,
    /// The PROXY header of this connection.
    Proxy,
}

/// A reply we wait for, in order.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(u32),
    Data,
    Dot(DotWait),
    /// The reply to `BDAT <n> LAST`; the envelope stays until it comes.
    Bdat(DotWait),
    Rset,
    Quit,
}

#[derive(Debug, Clone, Copy)]
struct DotWait {
    index: u64,
    start: Instant,
    sent: Instant,
}

/// The transaction whose MAIL/RCPT/DATA replies are outstanding.
#[derive(Debug, Clone, Copy)]
struct Envelope {
    index: u64,
    start: Instant,
    rcpt_ok: u32,
    failure: Option<(Step, u16)>,
}

/// One client connection's SMTP dialogue.
#[derive(Debug)]
pub(crate) struct Session {
    tpl: &'static Template,
    /// `-d`: many messages per connection; otherwise QUIT after the first.
    keep: bool,
    /// Use PIPELINING if the server offers it.
    want_pipelining: bool,
    pipelining: bool,
    /// `--starttls`: upgrade after the first EHLO.
    want_tls: bool,
    /// The TLS handshake is done (EHLO again, no second STARTTLS).
    tls_up: bool,
    /// Greeting and EHLO/HELO are done.
    ready: bool,
    /// A message went out on this connection (matters without `keep`).
    used: bool,
    quit_wanted: bool,
    quit_sent: bool,
    /// A pipelined transaction failed half-way: start the next group with RSET.
    need_rset: bool,
    expect: VecDeque<Expect>,
    env: Option<Envelope>,
    pending: Option<Claim>,
    head: Vec<u8>,
    out: Vec<Seg>,
    out_idx: usize,
    out_off: usize,
    /// A body is queued but not all written: its DATA-end time is taken when the write ends.
    dot_unflushed: bool,
    /// `--proxy`: the header to send first on the next connection (empty: none).
    proxy: Vec<u8>,
    connected_at: Instant,
}

impl Session {
    /// A session for the run's template; `keep` is `-d`, `pipelining` is `--pipelining`.
    pub(crate) fn new(tpl: &'static Template, keep: bool, pipelining: bool, now: Instant) -> Self {
        Self {
            tpl,
            keep,
            want_pipelining: pipelining,
            pipelining: false,
            want_tls: false,
            tls_up: false,
            ready: false,
            used: false,
            quit_wanted: false,
            quit_sent: false,
            need_rset: false,
            expect: VecDeque::with_capacity(tpl.rcpts.len() + 8),
            env: None,
            pending: None,
            head: tpl.head.clone(),
            out: Vec::with_capacity(MAX_SEGMENTS),
            out_idx: 0,
            out_off: 0,
            dot_unflushed: false,
            proxy: Vec::new(),
            connected_at: now,
        }
    }

    /// Every connection upgrades with STARTTLS after EHLO (`--starttls`).
    pub(crate) fn with_starttls(mut self, on: bool) -> Self {
        self.want_tls = on;
        self
    }

    /// The PROXY header to send first on the next connection, to be filled before
    /// [`Session::connected`] (left empty: none).
    pub(crate) fn proxy_header(&mut self) -> &mut Vec<u8> {
        &mut self.proxy
    }

    /// The TCP connection is up: the greeting is next. Keeps a message already assigned.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.pipelining = false;
        self.tls_up = false;
        self.ready = false;
        self.used = false;
        self.quit_wanted = false;
        self.quit_sent = false;
        self.need_rset = false;
        self.expect.clear();
        self.expect.push_back(Expect::Greeting);
        self.env = None;
        self.clear_out();
        if !self.proxy.is_empty() {
            // No reply to it: the server greets only after reading it.
            self.out.push(Seg::Proxy);
        }
        self.connected_at = now;
    }

    /// Gives the session a message: it starts now if the session is ready, else after EHLO.
    pub(crate) fn assign(&mut self, claim: Claim, now: Instant) {
        if self.ready && self.env.is_none() && self.pending.is_none() {
            self.start(claim, now);
        } else {
            self.pending = Some(claim);
        }
    }

    /// No more messages: QUIT as soon as the dialogue allows.
    pub(crate) fn finish(&mut self) {
        self.quit_wanted = true;
        self.maybe_quit();
    }

    /// Whether the session can take a message now.
    pub(crate) fn is_free(&self) -> bool {
        self.ready
            && self.env.is_none()
            && self.pending.is_none()
            && !self.quit_wanted
            && (self.keep || !self.used)
            && (self.pipelining || self.expect.is_empty())
    }

    /// Whether replies are outstanding (a reply timeout applies).
    pub(crate) fn is_waiting(&self) -> bool {
        !self.expect.is_empty()
    }

    /// Whether QUIT has been sent (a close by the server is then no error).
    pub(crate) fn quit_sent(&self) -> bool {
        self.quit_sent
    }

    /// Whether bytes wait to be written.
    pub(crate) fn has_output(&self) -> bool {
        self.out_idx < self.out.len()
    }

    /// Fills `iov` with the unwritten bytes; returns how many slices it filled.
    pub(crate) fn out_slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_SEGMENTS]) -> usize {
        let mut n = 0;
        // At most five segments are ever queued (see MAX_SEGMENTS); more would wait a round.
        for (i, seg) in self.out[self.out_idx..]
            .iter()
            .take(MAX_SEGMENTS)
            .enumerate()
        {
            let bytes = match *seg {
                Seg::Static(s) => s,
                Seg::Head => &self.head,
                Seg::Proxy => &self.proxy,
            };
            let skip = if i == 0 { self.out_off } else { 0 };
            iov[n] = IoSlice::new(&bytes[skip..]);
            n += 1;
        }
        n
    }

    /// `n` bytes of the output were written at `now`.
    pub(crate) fn consume_out(&mut self, mut n: usize, now: Instant) {
        while n > 0 && self.out_idx < self.out.len() {
            let len = match self.out[self.out_idx] {
                Seg::Static(s) => s.len(),
                Seg::Head => self.head.len(),
                Seg::Proxy => self.proxy.len(),
            } - self.out_off;
            if n >= len {
                n -= len;
                self.out_idx += 1;
                self.out_off = 0;
            } else {
                self.out_off += n;
                n = 0;
            }
        }
        if self.out_idx == self.out.len() {
            self.clear_out();
            if self.dot_unflushed {
                self.dot_unflushed = false;
                if let Some(Expect::Dot(w) | Expect::Bdat(w)) = self
                    .expect
                    .iter_mut()
                    .rev()
                    .find(|e| matches!(e, Expect::Dot(_) | Expect::Bdat(_)))
                {
                    w.sent = now;
                }
            }
        }
    }

    /// The TLS handshake after STARTTLS completed: EHLO again (RFC 3207 §4.2: the server
    /// forgot the first one).
    pub(crate) fn tls_established(&mut self) {
        self.tls_up = true;
        self.send(Seg::Static(&self.tpl.ehlo), Expect::Ehlo);
    }

    /// Handles the replies at the front of `input`.
    ///
    /// Returns how many bytes it consumed (the caller keeps the rest, an incomplete reply, for
    /// the next call) and the state afterwards.
    ///
    /// # Errors
    /// A [`Failure`] when the connection must be closed (a refused greeting or EHLO and HELO,
    /// a malformed or unasked-for reply). Call [`Session::abandon`] with it.
    pub(crate) fn handle_input(
        &mut self,
        input: &[u8],
        now: Instant,
        obs: &mut impl Observer,
    ) -> Result<(usize, Status), Failure> {
        let mut used = 0;
        let mut done = false;
        while let Some(r) = reply::parse(&input[used..]).map_err(Failure::Protocol)? {
            used += r.len;
            let Some(exp) = self.expect.pop_front() else {
                return Err(Failure::Protocol(ReplyError::Malformed));
            };
            let ok = r.is_positive();
            match exp {
                Expect::Greeting if ok => {
                    obs.greeted(now.saturating_duration_since(self.connected_at));
                    self.send(Seg::Static(&self.tpl.ehlo), Expect::Ehlo);
                }
                Expect::Greeting => return Err(refusal(Step::Greeting, r.code)),
                Expect::Ehlo if ok && self.want_tls && !self.tls_up => {
                    // A server that does not offer STARTTLS answers 502, which fails the
                    // connection below: a TLS run never falls back to plaintext.
                    self.send(Seg::Static(message::STARTTLS), Expect::StartTls);
                }
                Expect::Ehlo if ok => {
                    if self.tpl.bdat && !r.chunking {
                        return Err(Failure::NoChunking);
                    }
                    self.pipelining = self.want_pipelining && r.pipelining;
                    self.become_ready(now);
                }
                Expect::Ehlo if self.want_tls => return Err(refusal(Step::Ehlo, r.code)),
                Expect::Ehlo if r.code >= 500 => {
                    self.send(Seg::Static(&self.tpl.helo), Expect::Helo);
                }
                Expect::Ehlo => return Err(refusal(Step::Ehlo, r.code)),
                // After HELO there are no extensions, CHUNKING neither.
                Expect::Helo if ok && self.tpl.bdat => return Err(Failure::NoChunking),
                Expect::Helo if ok => {
                    self.pipelining = false;
                    self.become_ready(now);
                }
                Expect::Helo => return Err(refusal(Step::Helo, r.code)),
                Expect::StartTls if r.code == 220 => {
                    if !self.expect.is_empty() {
                        return Err(Failure::Protocol(ReplyError::Malformed));
                    }
                    return Ok((
                        used,
                        Status {
                            starttls: true,
                            ..Status::default()
                        },
                    ));
                }
                Expect::StartTls => return Err(refusal(Step::StartTls, r.code)),
                Expect::Mail => self.on_mail(ok, r.code, obs),
                Expect::Rcpt(i) => self.on_rcpt(i, ok, r.code, now, obs),
                Expect::Data => self.on_data(r.code, now, obs)?,
                Expect::Bdat(w) => self.on_bdat(w, ok, r.code, now, obs),
                Expect::Dot(w) => {
                    if ok {
                        obs.acked(w.index, w.start, w.sent, now);
                    } else {
                        obs.failed(
                            w.index,
                            Failure::Reply {
                                step: Step::Dot,
                                code: r.code,
                            },
                        );
                    }
                    if !self.keep {
                        self.quit_wanted = true;
                    }
                }
                // Any answer to RSET will do: the next MAIL tells whether the server recovered.
                Expect::Rset => {}
                Expect::Quit => done = true,
            }
            self.maybe_quit();
        }
        Ok((
            used,
            Status {
                free: self.is_free(),
                done: done || (self.quit_sent && self.expect.is_empty()),
                starttls: false,
            },
        ))
    }

    /// The connection is gone: every message on it fails with `why`.
    pub(crate) fn abandon(&mut self, why: Failure, obs: &mut impl Observer) {
        // An outstanding BDAT's message is failed with its envelope, below.
        for e in self.expect.drain(..) {
            if let Expect::Dot(w) = e {
                obs.failed(w.index, why);
            }
        }
        if let Some(env) = self.env.take() {
            obs.failed(env.index, why);
        }
        if let Some(c) = self.pending.take() {
            obs.failed(c.index, why);
        }
        self.ready = false;
        self.clear_out();
        self.dot_unflushed = false;
    }

    fn become_ready(&mut self, now: Instant) {
        self.ready = true;
        if let Some(c) = self.pending.take() {
            self.start(c, now);
        }
    }

    fn start(&mut self, claim: Claim, now: Instant) {
        self.used = true;
        self.env = Some(Envelope {
            index: claim.index,
            start: claim.start,
            rcpt_ok: 0,
            failure: None,
        });
        if self.pipelining {
            if self.need_rset {
                self.need_rset = false;
                self.send(Seg::Static(message::RSET), Expect::Rset);
            }
            self.out.push(Seg::Static(&self.tpl.group));
            self.expect.push_back(Expect::Mail);
            for i in 0..self.tpl.rcpts.len() {
                self.expect.push_back(Expect::Rcpt(i as u32));
            }
            if self.tpl.bdat {
                // The group ends with the BDAT line: its chunk follows at once. The previous
                // message was answered, so its head has been written out.
                self.push_chunk(claim.index, claim.start, now);
            } else {
                self.expect.push_back(Expect::Data);
            }
        } else {
            self.send(Seg::Static(&self.tpl.mail), Expect::Mail);
        }
    }

    fn on_mail(&mut self, ok: bool, code: u16, obs: &mut impl Observer) {
        let Some(env) = self.env.as_mut() else {
            return;
        };
        if !ok && env.failure.is_none() {
            env.failure = Some((Step::Mail, code));
        }
        let index = env.index;
        if !self.pipelining {
            if ok {
                self.send(Seg::Static(&self.tpl.rcpts[0]), Expect::Rcpt(0));
            } else {
                // Nothing was started on the server side: no RSET needed.
                self.env = None;
                let step = Step::Mail;
                obs.failed(index, Failure::Reply { step, code });
                self.after_message();
            }
        }
    }

    fn on_rcpt(&mut self, i: u32, ok: bool, code: u16, now: Instant, obs: &mut impl Observer) {
        let Some(env) = self.env.as_mut() else {
            return;
        };
        if ok {
            env.rcpt_ok += 1;
        } else if env.failure.is_none_or(|(s, _)| s == Step::Rcpt) {
            obs.rcpt_rejected(code);
            if env.failure.is_none() {
                env.failure = Some((Step::Rcpt, code));
            }
        }
        if self.pipelining {
            return;
        }
        let next = i as usize + 1;
        if next < self.tpl.rcpts.len() {
            self.send(
                Seg::Static(&self.tpl.rcpts[next]),
                Expect::Rcpt(next as u32),
            );
        } else if env.rcpt_ok > 0 && self.tpl.bdat {
            let (index, start) = (env.index, env.start);
            self.out.push(Seg::Static(&self.tpl.bdat_cmd));
            self.push_chunk(index, start, now);
        } else if env.rcpt_ok > 0 {
            self.send(Seg::Static(message::DATA), Expect::Data);
        } else {
            let (step, code) = env.failure.unwrap_or((Step::Rcpt, code));
            let index = env.index;
            self.env = None;
            obs.failed(index, Failure::Reply { step, code });
            self.send(Seg::Static(message::RSET), Expect::Rset);
            self.after_message();
        }
    }

    fn on_data(&mut self, code: u16, now: Instant, obs: &mut impl Observer) -> Result<(), Failure> {
        let Some(env) = self.env.take() else {
            return Err(Failure::Protocol(ReplyError::Malformed));
        };
        if code == 354 {
            // The server answered DATA only after reading everything before it, so the previous
            // body (and with it the head buffer) has been written out.
            if self
                .out
                .iter()
                .skip(self.out_idx)
                .any(|s| matches!(s, Seg::Head))
            {
                return Err(Failure::Protocol(ReplyError::Malformed));
            }
            for &at in &self.tpl.token_at {
                message::write_index(&mut self.head[at..at + self.tpl.token_len], env.index);
            }
            self.out.push(Seg::Head);
            self.out.push(Seg::Static(&self.tpl.tail));
            self.dot_unflushed = true;
            self.expect.push_back(Expect::Dot(DotWait {
                index: env.index,
                start: env.start,
                sent: now,
            }));
            if !self.keep {
                self.quit_wanted = true;
            }
        } else {
            let (step, code) = env.failure.unwrap_or((Step::Data, code));
            obs.failed(env.index, Failure::Reply { step, code });
            if self.pipelining {
                self.need_rset = true;
            } else {
                self.send(Seg::Static(message::RSET), Expect::Rset);
            }
            self.after_message();
        }
        Ok(())
    }

    /// Queues the message as the chunk of the `BDAT <n> LAST` just queued, with its token.
    fn push_chunk(&mut self, index: u64, start: Instant, now: Instant) {
        for &at in &self.tpl.token_at {
            message::write_index(&mut self.head[at..at + self.tpl.token_len], index);
        }
        self.out.push(Seg::Head);
        self.out.push(Seg::Static(&self.tpl.tail));
        self.dot_unflushed = true;
        self.expect.push_back(Expect::Bdat(DotWait {
            index,
            start,
            sent: now,
        }));
    }

    /// The reply to `BDAT <n> LAST`: the message is acknowledged or failed, and its
    /// transaction is over.
    fn on_bdat(&mut self, w: DotWait, ok: bool, code: u16, now: Instant, obs: &mut impl Observer) {
        let env = self.env.take();
        if ok {
            obs.acked(w.index, w.start, w.sent, now);
        } else {
            // Refused because MAIL or every RCPT was: report that, not the BDAT's 503/554.
            let (step, code) = match env {
                Some(e) if e.rcpt_ok == 0 => e.failure.unwrap_or((Step::Bdat, code)),
                _ => (Step::Bdat, code),
            };
            obs.failed(w.index, Failure::Reply { step, code });
            if self.pipelining {
                self.need_rset = true;
            } else {
                self.send(Seg::Static(message::RSET), Expect::Rset);
            }
        }
        self.after_message();
    }

    fn after_message(&mut self) {
        if !self.keep {
            self.quit_wanted = true;
        }
    }

    fn maybe_quit(&mut self) {
        if self.quit_wanted
            && !self.quit_sent
            && self.ready
            && self.env.is_none()
            && self.pending.is_none()
            && (self.pipelining || self.expect.is_empty())
        {
            self.quit_sent = true;
            self.send(Seg::Static(message::QUIT), Expect::Quit);
        }
    }

    fn send(&mut self, seg: Seg, expect: Expect) {
        self.out.push(seg);
        self.expect.push_back(expect);
    }

    fn clear_out(&mut self) {
        self.out.clear();
        self.out_idx = 0;
        self.out_off = 0;
    }
}

fn refusal(step: Step, code: u16) -> Failure {
    Failure::Reply { step, code }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{RunId, Shape};

    #[derive(Default)]
    struct Log {
        greeted: u32,
        acked: Vec<u64>,
        failed: Vec<(u64, Failure)>,
        rejected: Vec<u16>,
    }

    impl Observer for Log {
        fn greeted(&mut self, _: Duration) {
            self.greeted += 1;
        }
        fn acked(&mut self, index: u64, _: Instant, _: Instant, _: Instant) {
            self.acked.push(index);
        }
        fn failed(&mut self, index: u64, why: Failure) {
            self.failed.push((index, why));
        }
        fn rcpt_rejected(&mut self, code: u16) {
            self.rejected.push(code);
        }
    }

    fn template(recipients: u32) -> &'static Template {
        make_template(recipients, false)
    }

    fn make_template(recipients: u32, bdat: bool) -> &'static Template {
        let shape = Shape {
            from: "s@b.test".into(),
            to: "r@b.test".into(),
            recipients,
            helo: "b.test".into(),
            subject: None,
            size: 200,
        };
        Box::leak(Box::new(Template::new(&shape, &RunId::new(1, 2, 3), bdat)))
    }

    /// Takes everything the session wants to write, as text.
    fn drain(s: &mut Session, now: Instant) -> String {
        let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
        let n = s.out_slices(&mut iov);
        let bytes: Vec<u8> = iov[..n].iter().flat_map(|s| s.iter().copied()).collect();
        s.consume_out(bytes.len(), now);
        String::from_utf8(bytes).expect("ascii")
    }

    fn feed(s: &mut Session, input: &str, log: &mut Log) -> Status {
        let (used, st) = s
            .handle_input(input.as_bytes(), Instant::now(), log)
            .expect("no failure");
        assert_eq!(used, input.len(), "all consumed");
        st
    }

    fn claim(index: u64) -> Claim {
        Claim {
            index,
            start: Instant::now(),
        }
    }

    const EHLO_PIPE: &str = "250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n";

    #[test]
    fn pipelined_reused_connection_sends_groups_and_chains_the_next() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(2), true, true, now);
        s.connected(now);
        s.assign(claim(7), now);
        assert_eq!(drain(&mut s, now), "");
        feed(&mut s, "220 hi\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "EHLO b.test\r\n");
        let st = feed(&mut s, EHLO_PIPE, &mut log);
        assert!(!st.free);
        assert_eq!(
            drain(&mut s, now),
            "MAIL FROM:<s@b.test>\r\nRCPT TO:<1r@b.test>\r\nRCPT TO:<2r@b.test>\r\nDATA\r\n"
        );
        // Replies split across reads: the incomplete tail is not consumed.
        let (used, st) = s
            .handle_input(b"250 ok\r\n250 ok\r\n25", now, &mut log)
            .expect("ok");
        assert_eq!((used, st.free), (16, false));
        let st = feed(&mut s, "250 ok\r\n354 go\r\n", &mut log);
        assert!(st.free, "body queued: the next group may follow it");
        s.assign(claim(8), now);
        let wire = drain(&mut s, now);
        assert!(wire.contains("Message-ID: <1-3-00000.0000000007@b.test>"));
        assert!(wire.contains("\r\n.\r\nMAIL FROM:<s@b.test>\r\n"));
        assert!(wire.ends_with("DATA\r\n"));
        feed(
            &mut s,
            "250 queued\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
            &mut log,
        );
        assert_eq!(log.acked, vec![7]);
        let wire = drain(&mut s, now);
        assert!(wire.contains("token 1-3-00000.0000000008\r\n"));
        s.finish();
        assert!(drain(&mut s, now).ends_with("QUIT\r\n"));
        let st = feed(&mut s, "250 queued\r\n221 bye\r\n", &mut log);
        assert!(st.done);
        assert_eq!(log.acked, vec![7, 8]);
        assert_eq!(log.greeted, 1);
        assert!(log.failed.is_empty());
    }

    const EHLO_CHUNKING: &str = "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE\r\n";

    #[test]
    fn bdat_pipelined_after_rcpt_with_the_proxy_header_first() {
        let now = Instant::now();
        let mut log = Log::default();
        let tpl = make_template(1, true);
        let mut s = Session::new(tpl, true, true, now);
        s.proxy_header()
            .extend_from_slice(b"PROXY TCP4 192.0.2.1 127.0.0.1 1234 25\r\n");
        s.connected(now);
        s.assign(claim(7), now);
        assert_eq!(
            drain(&mut s, now),
            "PROXY TCP4 192.0.2.1 127.0.0.1 1234 25\r\n"
        );
        feed(&mut s, "220 hi\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "EHLO b.test\r\n");
        assert!(!feed(&mut s, EHLO_CHUNKING, &mut log).free);
        let wire = drain(&mut s, now);
        let cmd = format!("BDAT {} LAST\r\n", tpl.message_len);
        let group = format!("MAIL FROM:<s@b.test>\r\nRCPT TO:<r@b.test>\r\n{cmd}");
        assert!(wire.starts_with(&group), "{wire}");
        let msg = &wire[group.len()..];
        assert_eq!(msg.len(), tpl.message_len);
        assert!(msg.contains("Message-ID: <1-3-00000.0000000007@b.test>"));
        assert!(msg.contains("\r\n.leading dot"), "not dot-stuffed");
        assert!(!msg.ends_with("\r\n.\r\n"), "no terminator");
        // Not free until the chunk is answered: one message in flight per connection.
        assert!(!feed(&mut s, "250 ok\r\n250 ok\r\n", &mut log).free);
        assert!(feed(&mut s, "250 queued\r\n", &mut log).free);
        assert_eq!(log.acked, vec![7]);
        s.assign(claim(8), now);
        let wire = drain(&mut s, now);
        assert!(wire.starts_with(&group));
        assert!(wire.contains("token 1-3-00000.0000000008\r\n"));
        // A refused recipient: the BDAT is refused too, and the failure names the RCPT.
        feed(
            &mut s,
            "250 ok\r\n550 no\r\n503 no valid recipients\r\n",
            &mut log,
        );
        assert_eq!(
            log.failed,
            vec![(
                8,
                Failure::Reply {
                    step: Step::Rcpt,
                    code: 550
                }
            )]
        );
        s.assign(claim(9), now);
        assert!(drain(&mut s, now).starts_with("RSET\r\nMAIL FROM"));
        feed(
            &mut s,
            "250 ok\r\n250 ok\r\n250 ok\r\n552 too big\r\n",
            &mut log,
        );
        assert_eq!(
            log.failed[1],
            (
                9,
                Failure::Reply {
                    step: Step::Bdat,
                    code: 552
                }
            )
        );
        s.finish();
        assert_eq!(drain(&mut s, now), "QUIT\r\n");
        assert!(feed(&mut s, "221 bye\r\n", &mut log).done);
    }

    #[test]
    fn bdat_without_pipelining_waits_for_rcpt_and_needs_chunking() {
        let now = Instant::now();
        let mut log = Log::default();
        let tpl = make_template(2, true);
        let mut s = Session::new(tpl, false, false, now);
        s.connected(now);
        s.assign(claim(3), now);
        feed(&mut s, "220 hi\r\n", &mut log);
        drain(&mut s, now);
        feed(&mut s, EHLO_CHUNKING, &mut log);
        assert_eq!(drain(&mut s, now), "MAIL FROM:<s@b.test>\r\n");
        feed(&mut s, "250 ok\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "RCPT TO:<1r@b.test>\r\n");
        feed(&mut s, "250 ok\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "RCPT TO:<2r@b.test>\r\n");
        feed(&mut s, "250 ok\r\n", &mut log);
        let wire = drain(&mut s, now);
        let cmd = format!("BDAT {} LAST\r\n", tpl.message_len);
        assert!(wire.starts_with(&cmd));
        assert_eq!(wire.len(), cmd.len() + tpl.message_len);
        feed(&mut s, "250 queued\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "QUIT\r\n");
        assert!(feed(&mut s, "221 bye\r\n", &mut log).done);
        assert_eq!(log.acked, vec![3]);

        // A server without CHUNKING (or one that only takes HELO) cannot take --bdat.
        let mut s = Session::new(tpl, true, true, now);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        assert_eq!(
            s.handle_input(EHLO_PIPE.as_bytes(), now, &mut log),
            Err(Failure::NoChunking)
        );
        let mut s = Session::new(tpl, true, true, now);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        feed(&mut s, "502 no\r\n", &mut log);
        assert_eq!(
            s.handle_input(b"250 hi\r\n", now, &mut log),
            Err(Failure::NoChunking)
        );
    }

    #[test]
    fn starttls_after_ehlo_then_ehlo_again_before_any_mail() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(1), true, true, now).with_starttls(true);
        s.connected(now);
        s.assign(claim(3), now);
        feed(&mut s, "220 hi\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "EHLO b.test\r\n");
        let st = feed(
            &mut s,
            "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
            &mut log,
        );
        assert!(!st.free && !st.starttls);
        assert_eq!(drain(&mut s, now), "STARTTLS\r\n", "no MAIL in clear");
        // The 220 is the last thing read in clear: the caller starts the handshake.
        let (used, st) = s
            .handle_input(b"220 go ahead\r\n", now, &mut log)
            .expect("ok");
        assert_eq!((used, st.starttls, st.free), (14, true, false));
        assert_eq!(drain(&mut s, now), "");
        s.tls_established();
        assert_eq!(drain(&mut s, now), "EHLO b.test\r\n");
        feed(&mut s, EHLO_PIPE, &mut log);
        assert!(drain(&mut s, now).starts_with("MAIL FROM:<s@b.test>\r\n"));
        assert!(log.failed.is_empty());

        // Reconnected: STARTTLS again; a refusal fails the connection (no fallback).
        s.abandon(Failure::Closed, &mut log);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        drain(&mut s, now);
        feed(&mut s, EHLO_PIPE, &mut log);
        assert_eq!(drain(&mut s, now), "STARTTLS\r\n");
        let err = s
            .handle_input(b"502 5.5.1 not offered\r\n", now, &mut log)
            .expect_err("refused");
        assert_eq!(
            err,
            Failure::Reply {
                step: Step::StartTls,
                code: 502
            }
        );
    }

    #[test]
    fn lockstep_without_pipelining_and_new_connection_mode_quits() {
        let now = Instant::now();
        let mut log = Log::default();
        // Server does not advertise PIPELINING.
        let mut s = Session::new(template(1), false, true, now);
        s.connected(now);
        s.assign(claim(1), now);
        feed(&mut s, "220 hi\r\n", &mut log);
        drain(&mut s, now);
        feed(&mut s, "250-mx\r\n250 SIZE\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "MAIL FROM:<s@b.test>\r\n");
        feed(&mut s, "250 ok\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "RCPT TO:<r@b.test>\r\n");
        feed(&mut s, "250 ok\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "DATA\r\n");
        let st = feed(&mut s, "354 go\r\n", &mut log);
        assert!(!st.free);
        assert!(drain(&mut s, now).ends_with("\r\n.\r\n"));
        let st = feed(&mut s, "250 ok\r\n", &mut log);
        assert!(!st.free, "one message per connection without -d");
        assert_eq!(drain(&mut s, now), "QUIT\r\n");
        assert!(feed(&mut s, "221 bye\r\n", &mut log).done);
        assert_eq!(log.acked, vec![1]);
    }

    #[test]
    fn pipelined_new_connection_mode_sends_quit_with_the_body() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(1), false, true, now);
        s.connected(now);
        s.assign(claim(3), now);
        feed(&mut s, "220 hi\r\n", &mut log);
        feed(&mut s, EHLO_PIPE, &mut log);
        drain(&mut s, now);
        feed(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n", &mut log);
        assert!(drain(&mut s, now).ends_with("\r\n.\r\nQUIT\r\n"));
        assert!(feed(&mut s, "250 ok\r\n221 bye\r\n", &mut log).done);
        assert_eq!(log.acked, vec![3]);
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo_without_pipelining() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(1), true, true, now);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        drain(&mut s, now);
        feed(&mut s, "502 no EHLO\r\n", &mut log);
        assert_eq!(drain(&mut s, now), "HELO b.test\r\n");
        assert!(feed(&mut s, "250 hi\r\n", &mut log).free);
        s.assign(claim(0), now);
        assert_eq!(drain(&mut s, now), "MAIL FROM:<s@b.test>\r\n");
    }

    #[test]
    fn rejections_are_counted_by_code_and_pipelined_retry_starts_with_rset() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(2), true, true, now);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        feed(&mut s, EHLO_PIPE, &mut log);
        drain(&mut s, now);
        s.assign(claim(1), now);
        drain(&mut s, now);
        let st = feed(
            &mut s,
            "250 ok\r\n550 no such user\r\n550 no such user\r\n554 no valid recipients\r\n",
            &mut log,
        );
        assert!(st.free);
        assert_eq!(log.rejected, vec![550, 550]);
        assert_eq!(
            log.failed,
            vec![(
                1,
                Failure::Reply {
                    step: Step::Rcpt,
                    code: 550
                }
            )]
        );
        s.assign(claim(2), now);
        assert!(drain(&mut s, now).starts_with("RSET\r\nMAIL FROM"));
        // One accepted recipient is enough for the message to go.
        feed(
            &mut s,
            "250 ok\r\n250 ok\r\n250 ok\r\n452 full\r\n354 go\r\n",
            &mut log,
        );
        drain(&mut s, now);
        feed(&mut s, "250 ok\r\n", &mut log);
        assert_eq!(log.acked, vec![2]);
        assert_eq!(log.rejected, vec![550, 550, 452]);
    }

    #[test]
    fn refused_greeting_and_garbage_are_errors_and_abandon_fails_in_flight() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(1), true, true, now);
        s.connected(now);
        s.assign(claim(9), now);
        let err = s.handle_input(b"554 go away\r\n", now, &mut log);
        assert_eq!(
            err,
            Err(Failure::Reply {
                step: Step::Greeting,
                code: 554
            })
        );
        s.abandon(Failure::Closed, &mut log);
        assert_eq!(log.failed, vec![(9, Failure::Closed)]);

        let mut s = Session::new(template(1), true, true, now);
        s.connected(now);
        assert!(matches!(
            s.handle_input(b"HTTP/1.1 400 Bad\r\n", now, &mut log),
            Err(Failure::Protocol(_))
        ));
        // A reply nobody asked for.
        let mut s = Session::new(template(1), true, true, now);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        feed(&mut s, EHLO_PIPE, &mut log);
        assert!(s.handle_input(b"250 extra\r\n", now, &mut log).is_err());
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let now = Instant::now();
        let mut log = Log::default();
        let mut s = Session::new(template(1), true, true, now);
        s.connected(now);
        feed(&mut s, "220 hi\r\n", &mut log);
        feed(&mut s, EHLO_PIPE, &mut log);
        drain(&mut s, now);
        s.assign(claim(4), now);
        drain(&mut s, now);
        feed(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n", &mut log);
        let mut whole = Vec::new();
        while s.has_output() {
            let mut iov = [IoSlice::new(&[]); MAX_SEGMENTS];
            let n = s.out_slices(&mut iov);
            let take = iov[0].len().min(37);
            whole.extend_from_slice(&iov[0][..take]);
            let _ = n;
            s.consume_out(take, now);
        }
        let expect = [s.tpl.head.len(), s.tpl.tail.len()].iter().sum::<usize>();
        assert_eq!(whole.len(), expect);
        assert!(whole.ends_with(b"\r\n.\r\n"));
        assert!(s.is_waiting());
    }
}

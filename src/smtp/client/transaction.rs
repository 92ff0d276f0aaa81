//! One transaction on a ready connection: `Client::start` (MAIL FROM with the message's
//! parameters, or no transaction at all when the server cannot take the message: needs
//! SMTPUTF8 or 8BITMIME it does not offer; then the RCPTs, then DATA,
//! or BDAT chunks when CHUNKING is offered too: as one pipelined group when the server offers
//! PIPELINING, RFC 2920 §3.1, else one command per reply) and `Client::probe`; the replies to
//! MAIL, RCPT and DATA; the body (dot-stuffed after DATA's 354, or sent as `BDAT` chunks, the
//! last one `BDAT n LAST`); the replies after the end of data (SMTP: one for the transaction;
//! LMTP: one per accepted recipient, RFC 2033); and one outcome per recipient.
//!
//! It does not read or frame replies, or match them to the commands they answer (the queue of
//! expected replies and its dispatch are in `client.rs`), and does not handle the greeting,
//! EHLO/LHLO, STARTTLS, QUIT or a lost connection (also `client.rs`).

use super::{
    command, Client, Event, Expect, MailParams, Protocol, RcptOutcome, Reply, ReplyClass,
    StartError, State, Status, Txn,
};

impl Client {
    /// Starts a transaction: MAIL FROM:<`from`> with the parameters of `params` the server
    /// offers (`SIZE=` when the size is known, `BODY=8BITMIME`, `SMTPUTF8`) and RCPT TO for each
    /// of `rcpts`, pipelined with DATA when the server offers PIPELINING.
    ///
    /// A message the server cannot take (it needs SMTPUTF8 or 8BITMIME and the server does not
    /// offer it; see the module docs) is not sent: nothing is written, [`Event::Done`] fails
    /// every recipient with `554 5.6.7` or `554 5.6.3`, and the client stays ready.
    ///
    /// # Errors
    /// [`StartError`]: not ready, or no recipients.
    pub fn start(
        &mut self,
        from: &str,
        rcpts: &[String],
        params: &MailParams,
        out: &mut Vec<u8>,
    ) -> Result<(), StartError> {
        if self.state != State::Ready {
            return Err(StartError::NotReady);
        }
        if rcpts.is_empty() {
            return Err(StartError::NoRecipients);
        }
        if let Some(reply) = self.cannot_take(from, rcpts, params) {
            let failed = RcptOutcome {
                status: Status::of(&reply),
                reply,
            };
            self.events
                .push_back(Event::Done(vec![failed; rcpts.len()]));
            return Ok(());
        }
        let mut mail = format!("MAIL FROM:<{from}>");
        if let (Some(_), Some(n)) = (self.ext.size, params.size) {
            mail.push_str(&format!(" SIZE={n}"));
        }
        if params.body_8bitmime && self.ext.eightbitmime {
            mail.push_str(" BODY=8BITMIME");
        }
        if params.smtputf8 && self.ext.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        command(out, &mail);
        self.expect.push_back(Expect::Mail);
        let mut t = Txn {
            rcpts: rcpts.to_vec(),
            outcomes: vec![None; rcpts.len()],
            bol: true,
            ..Txn::default()
        };
        if self.ext.pipelining {
            for (i, r) in rcpts.iter().enumerate() {
                command(out, &format!("RCPT TO:<{r}>"));
                self.expect.push_back(Expect::Rcpt(i));
            }
            t.next_rcpt = rcpts.len();
            t.data_sent = true;
            if self.ext.chunking {
                // RFC 3030 §4.2: BDAT chunks may follow the RCPTs at once; a chunk sent after
                // a refused MAIL or with no recipient accepted is refused and changes nothing.
                t.bdat = true;
                self.txn = Some(t);
                self.state = State::Body;
                self.events.push_back(Event::SendBody);
                return Ok(());
            }
            command(out, "DATA");
            self.expect.push_back(Expect::Data);
        }
        self.txn = Some(t);
        self.state = State::Transaction;
        Ok(())
    }

    /// Asks whether the server takes `rcpt` without sending mail: `MAIL FROM:<>`, `RCPT
    /// TO:<rcpt>`, `RSET` (pipelined when the server offers PIPELINING, else one by one).
    /// [`Event::Done`] then carries one outcome: the RCPT reply (or the MAIL reply, if MAIL was
    /// refused), `Delivered` meaning "would be accepted"; [`Event::Ready`] follows the reply to
    /// RSET, and the connection can probe again.
    ///
    /// A non-ASCII `rcpt` needs SMTPUTF8 (RFC 6531): MAIL then says `SMTPUTF8`, and a server
    /// that does not offer it is not asked: [`Event::Done`] comes at once with `553 5.6.7`
    /// (failed: no mail to that address can go to this server) and the client stays ready.
    ///
    /// # Errors
    /// [`StartError::NotReady`] when not ready.
    pub fn probe(&mut self, rcpt: &str, out: &mut Vec<u8>) -> Result<(), StartError> {
        if self.state != State::Ready {
            return Err(StartError::NotReady);
        }
        if rcpt.is_ascii() {
            command(out, "MAIL FROM:<>");
        } else if self.ext.smtputf8 {
            command(out, "MAIL FROM:<> SMTPUTF8");
        } else {
            let reply = Reply::local(
                553,
                "5.6.7 a non-ASCII address needs SMTPUTF8, which the next hop does not offer",
            );
            self.events.push_back(Event::Done(vec![RcptOutcome {
                status: Status::of(&reply),
                reply,
            }]));
            return Ok(());
        }
        self.expect.push_back(Expect::Mail);
        let mut t = Txn {
            rcpts: vec![rcpt.to_owned()],
            outcomes: vec![None],
            probe: true,
            ..Txn::default()
        };
        if self.ext.pipelining {
            command(out, &format!("RCPT TO:<{rcpt}>"));
            self.expect.push_back(Expect::Rcpt(0));
            command(out, "RSET");
            self.expect.push_back(Expect::Rset);
            t.next_rcpt = 1;
            // Every command of the probe is out (`data_sent` means that here).
            t.data_sent = true;
        }
        self.txn = Some(t);
        self.state = State::Transaction;
        Ok(())
    }

    /// Why the server cannot take a message from `from` to `rcpts` with `params` (the local
    /// reply that fails every recipient), or `None`: it can.
    fn cannot_take(&self, from: &str, rcpts: &[String], params: &MailParams) -> Option<Reply> {
        let needs_smtputf8 = params.smtputf8
            && (!from.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()) || params.eight_bit_header);
        if needs_smtputf8 && !self.ext.smtputf8 {
            return Some(Reply::local(
                554,
                "5.6.7 the message needs SMTPUTF8 (a non-ASCII address or header field), which the next hop does not offer; nothing sent",
            ));
        }
        if params.body_8bitmime && params.eight_bit && !self.ext.eightbitmime {
            return Some(Reply::local(
                554,
                "5.6.3 the message has 8-bit content (BODY=8BITMIME) and the next hop does not offer 8BITMIME; conversion is not supported, nothing sent",
            ));
        }
        None
    }

    pub(super) fn mail_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if reply.class() != ReplyClass::Positive {
            t.mail_refused = Some(reply);
            if !t.data_sent {
                self.end_transaction(out);
            }
            return;
        }
        if !t.data_sent {
            self.send_next_rcpt(out);
        }
    }

    fn send_next_rcpt(&mut self, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.next_rcpt < t.rcpts.len() {
            command(out, &format!("RCPT TO:<{}>", t.rcpts[t.next_rcpt]));
            self.expect.push_back(Expect::Rcpt(t.next_rcpt));
            t.next_rcpt += 1;
        } else if t.probe || t.accepted.is_empty() {
            self.end_transaction(out);
        } else {
            command(out, "DATA");
            self.expect.push_back(Expect::Data);
            t.data_sent = true;
        }
    }

    pub(super) fn rcpt_reply(&mut self, i: usize, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.mail_refused.is_some() {
            // MAIL decides; RCPT replies after a refused MAIL (pipelined) say nothing new.
        } else if t.probe {
            t.outcomes[i] = Some(RcptOutcome {
                status: Status::of(&reply),
                reply,
            });
        } else if reply.class() == ReplyClass::Positive {
            t.accepted.push(i);
        } else {
            t.outcomes[i] = Some(RcptOutcome {
                status: Status::of(&reply),
                reply,
            });
        }
        if t.probe && t.data_sent {
            // Pipelined probe: RSET is already on its way; its reply makes us ready.
            if let Some(t) = self.txn.take() {
                self.events.push_back(Event::Done(finish(t)));
            }
        } else if !t.data_sent {
            self.send_next_rcpt(out);
        }
    }

    pub(super) fn data_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if reply.code == 354 {
            if t.mail_refused.is_some() || t.accepted.is_empty() {
                // RFC 2920 §3.1: a server should refuse DATA without a valid recipient; if
                // it did not, end the empty data at once; nothing can be delivered.
                t.empty_body = true;
                out.extend_from_slice(b".\r\n");
                self.expect.push_back(Expect::EndOfData(None));
                self.state = State::Transaction;
                return;
            }
            self.state = State::Body;
            self.events.push_back(Event::SendBody);
            return;
        }
        // DATA refused: it decides every recipient accepted at RCPT (a refused MAIL or
        // unaccepted recipients are decided by their own replies).
        if t.mail_refused.is_none() {
            for &i in &t.accepted {
                t.outcomes[i] = Some(RcptOutcome {
                    status: Status::of(&reply),
                    reply: reply.clone(),
                });
            }
        }
        self.end_transaction(out);
    }

    /// Streams body bytes (the stored message, CRLF line ends), dot-stuffed (RFC 5321
    /// §4.5.2), into `out`. Call after [`Event::SendBody`], any number of times.
    pub fn body(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        if self.state != State::Body {
            return;
        }
        let Some(t) = self.txn.as_mut() else { return };
        if bytes.is_empty() {
            return;
        }
        if t.bdat {
            command(out, &format!("BDAT {}", bytes.len()));
            out.extend_from_slice(bytes);
            self.expect.push_back(Expect::Bdat);
            return;
        }
        t.prev = if bytes.len() >= 2 {
            Some(bytes[bytes.len() - 2])
        } else {
            t.last
        };
        t.last = bytes.last().copied();
        out.reserve(bytes.len() + 8);
        while !bytes.is_empty() {
            if t.bol && bytes[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    out.extend_from_slice(&bytes[..=nl]);
                    bytes = &bytes[nl + 1..];
                    t.bol = true;
                }
                None => {
                    out.extend_from_slice(bytes);
                    t.bol = false;
                    bytes = &[];
                }
            }
        }
    }

    /// Ends the body: a CRLF if it did not end with one, then `.` CRLF (with BDAT: `BDAT 0
    /// LAST`).
    pub fn end_body(&mut self, out: &mut Vec<u8>) {
        self.end_body_with(&[], out);
    }

    /// Sends `last`, the end of the body, and ends it: with DATA as [`Client::body`] then
    /// [`Client::end_body`]; with BDAT as one `BDAT n LAST` chunk (the message as it is, no
    /// CRLF added).
    pub fn end_body_with(&mut self, last: &[u8], out: &mut Vec<u8>) {
        if self.state != State::Body {
            return;
        }
        if self.txn.as_ref().is_some_and(|t| t.bdat) {
            command(out, &format!("BDAT {} LAST", last.len()));
            out.extend_from_slice(last);
            self.expect.push_back(Expect::BdatLast);
            self.state = State::Transaction;
            return;
        }
        self.body(last, out);
        let Some(t) = self.txn.as_mut() else { return };
        let ends_crlf = t.last.is_none() || (t.prev == Some(b'\r') && t.last == Some(b'\n'));
        if !ends_crlf {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        match self.protocol {
            Protocol::Smtp => self.expect.push_back(Expect::EndOfData(None)),
            Protocol::Lmtp => {
                for &i in &t.accepted {
                    self.expect.push_back(Expect::EndOfData(Some(i)));
                }
            }
        }
        self.state = State::Transaction;
    }

    pub(super) fn bdat_reply(&mut self, reply: Reply) {
        let Some(t) = self.txn.as_mut() else { return };
        if reply.class() != ReplyClass::Positive && t.bdat_failed.is_none() {
            t.bdat_failed = Some(reply);
        }
    }

    pub(super) fn bdat_last_reply(&mut self, reply: Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        let nothing_accepted = t.mail_refused.is_some() || t.accepted.is_empty();
        if reply.class() != ReplyClass::Positive && t.bdat_failed.is_none() && nothing_accepted {
            // The expected refusal of a transaction without a recipient: nothing to undo.
        } else if reply.class() != ReplyClass::Positive && t.bdat_failed.is_none() {
            t.bdat_failed = Some(reply.clone());
        }
        if nothing_accepted {
            t.empty_body = true;
            self.end_reply(None, &reply, out);
            return;
        }
        if let Some(failed) = t.bdat_failed.clone() {
            // A chunk was refused: the transaction failed as a whole (RFC 3030 §2), and an
            // LMTP server sends one reply for it, not one per recipient.
            for &i in &t.accepted {
                t.outcomes[i] = Some(RcptOutcome {
                    status: Status::of(&failed),
                    reply: failed.clone(),
                });
            }
            t.empty_body = true;
            self.end_reply(None, &reply, out);
            return;
        }
        match self.protocol {
            Protocol::Smtp => self.end_reply(None, &reply, out),
            Protocol::Lmtp => {
                let accepted = t.accepted.clone();
                // One reply per accepted recipient: this is the first; the others follow.
                for &i in accepted.iter().skip(1).rev() {
                    self.expect.push_front(Expect::EndOfData(Some(i)));
                }
                self.end_reply(accepted.first().copied(), &reply, out);
            }
        }
    }

    pub(super) fn end_reply(&mut self, which: Option<usize>, reply: &Reply, out: &mut Vec<u8>) {
        let Some(t) = self.txn.as_mut() else { return };
        if t.empty_body {
            // Nothing was accepted: the outcomes are already decided.
        } else {
            let targets: Vec<usize> = match which {
                Some(i) => vec![i],
                None => t.accepted.clone(),
            };
            for i in targets {
                t.outcomes[i] = Some(RcptOutcome {
                    status: Status::of(reply),
                    reply: reply.clone(),
                });
            }
        }
        if !self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::EndOfData(_)))
        {
            let failed_bdat = self.txn.as_ref().is_some_and(|t| t.bdat_failed.is_some());
            if failed_bdat {
                // After a refused chunk the server's state is not known: start over with RSET.
                self.end_transaction(out);
                return;
            }
            if let Some(t) = self.txn.take() {
                self.events.push_back(Event::Done(finish(t)));
            }
            self.ready();
        }
    }

    /// Ends a transaction that never reached the body (every reply to it has come): reports
    /// it and sends RSET.
    fn end_transaction(&mut self, out: &mut Vec<u8>) {
        let Some(t) = self.txn.take() else { return };
        self.events.push_back(Event::Done(finish(t)));
        command(out, "RSET");
        self.expect.push_back(Expect::Rset);
        self.state = State::Transaction;
    }
}

pub(super) fn finish(mut t: Txn) -> Vec<RcptOutcome> {
    if let Some(r) = t.mail_refused.take() {
        for o in &mut t.outcomes {
            *o = Some(RcptOutcome {
                status: Status::of(&r),
                reply: r.clone(),
            });
        }
    }
    t.outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| RcptOutcome {
                status: Status::Deferred,
                reply: Reply::local(451, "4.3.0 no reply for this recipient"),
            })
        })
        .collect()
}

//! Transcript tests for the client: scripted next-hop replies go in (split at every byte where
//! it matters), and the commands sent and the events must come out: greeting, EHLO and the HELO
//! fallback, PIPELINING or one command at a time, STARTTLS, dot-stuffed DATA and pipelined BDAT,
//! LMTP's reply per recipient, probes, lost connections, the reply helpers; the MAIL parameters
//! (`SIZE=`, `BODY=8BITMIME`, `SMTPUTF8`) and the messages not sent for want of them (5.6.7,
//! 5.6.3). No sockets: the drivers (the delivery stage, the verifier) and the TLS handshake are
//! not tested here.

use super::*;

fn rcpts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_string()).collect()
}

/// The parameters of a 7-bit message of `size` octets received without BODY= or SMTPUTF8.
fn sized(size: Option<u64>) -> MailParams {
    MailParams {
        size,
        ..MailParams::default()
    }
}

/// Feeds `server` in pieces split at `splits`, collecting everything the client sent and
/// every event; calls `on_event` so a test can react (start, body).
fn run(
    c: &mut Client,
    server: &[u8],
    splits: &[usize],
    mut on_event: impl FnMut(&mut Client, &Event, &mut Vec<u8>),
) -> (Vec<u8>, Vec<Event>) {
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut cuts: Vec<usize> = splits.to_vec();
    cuts.push(server.len());
    // A real server answers only what was sent: hand the client one line (or the part
    // of it inside this piece) at a time and let the test react in between.
    for cut in cuts {
        for piece in server[at..cut].split_inclusive(|&b| b == b'\n') {
            c.feed(piece, &mut out);
            while let Some(e) = c.poll_event() {
                on_event(c, &e, &mut out);
                events.push(e);
            }
        }
        at = cut;
    }
    (out, events)
}

fn smtp_driver(body: &'static [u8]) -> impl FnMut(&mut Client, &Event, &mut Vec<u8>) {
    let mut started = false;
    move |c, e, out| match e {
        Event::Ready(_) if !started => {
            started = true;
            c.start(
                "s@a.test",
                &rcpts(&["x@b.test", "y@b.test"]),
                &sized(Some(5)),
                out,
            )
            .unwrap();
        }
        Event::Ready(_) => c.quit(out),
        Event::SendBody => {
            c.body(body, out);
            c.end_body(out);
        }
        _ => {}
    }
}

const PIPELINED: &[u8] = b"220 hop.test ESMTP\r\n\
    250-hop.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n\
    250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.0 <y@b.test>: mailbox busy\r\n354 go\r\n\
    250 2.0.0 Ok: queued as X\r\n221 2.0.0 Bye\r\n";

/// Probes `a@b.test` then `c@b.test` on one connection, then quits.
fn probe_driver() -> impl FnMut(&mut Client, &Event, &mut Vec<u8>) {
    let mut probes = ["a@b.test", "c@b.test"].into_iter();
    move |c, e, out| {
        if let Event::Ready(_) = e {
            match probes.next() {
                Some(r) => c.probe(r, out).unwrap(),
                None => c.quit(out),
            }
        }
    }
}

fn done_codes(events: &[Event]) -> Vec<(u16, Status)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Done(o) => Some((o[0].reply.code, o[0].status)),
            _ => None,
        })
        .collect()
}

#[test]
fn probes_pipelined_and_one_by_one_reuse_the_connection() {
    let pipelined = b"220 x\r\n250-x\r\n250 PIPELINING\r\n\
        250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n\
        250 2.1.0 Ok\r\n550 5.1.1 <c@b.test>: User unknown\r\n250 2.0.0 Ok\r\n221 bye\r\n";
    let lmtp = b"220 x\r\n250 x\r\n\
        250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.0.0 Ok\r\n\
        250 2.1.0 Ok\r\n451 4.3.0 try later\r\n250 2.0.0 Ok\r\n221 bye\r\n";
    let expect = "MAIL FROM:<>\r\nRCPT TO:<a@b.test>\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<c@b.test>\r\nRSET\r\nQUIT\r\n";
    for split in 0..=pipelined.len() {
        let mut c = Client::new(Protocol::Smtp, "mx");
        let (out, events) = run(&mut c, pipelined, &[split], probe_driver());
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("EHLO mx\r\n{expect}")
        );
        assert_eq!(
            done_codes(&events),
            [(250, Status::Delivered), (550, Status::Failed)]
        );
    }
    let mut c = Client::new(Protocol::Lmtp, "mx");
    let (out, events) = run(&mut c, lmtp, &[], probe_driver());
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("LHLO mx\r\n{expect}")
    );
    assert_eq!(
        done_codes(&events),
        [(250, Status::Delivered), (451, Status::Deferred)]
    );
    assert!(c.is_closed());
}

#[test]
fn probe_with_refused_mail_reports_the_mail_reply() {
    let server = b"220 x\r\n250-x\r\n250 PIPELINING\r\n550 5.7.1 no null sender\r\n503 5.5.1 need MAIL\r\n250 Ok\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let mut once = true;
    let (_, events) = run(&mut c, server, &[], |c, e, out| {
        if matches!(e, Event::Ready(_)) && std::mem::take(&mut once) {
            c.probe("a@b.test", out).unwrap();
        }
    });
    assert_eq!(done_codes(&events), [(550, Status::Failed)]);
    assert!(c.is_ready());
    assert_eq!(c.probe("x@y", &mut Vec::new()), Ok(()));
    assert_eq!(c.probe("x@y", &mut Vec::new()), Err(StartError::NotReady));
}

#[test]
fn pipelined_transaction_at_every_split() {
    let expect_out = b"EHLO mx.test\r\nMAIL FROM:<s@a.test> SIZE=5\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nDATA\r\n..hi\r\nyo\r\n.\r\nQUIT\r\n";
    for split in 0..=PIPELINED.len() {
        let mut c = Client::new(Protocol::Smtp, "mx.test");
        let (out, events) = run(&mut c, PIPELINED, &[split], smtp_driver(b".hi\r\nyo"));
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(expect_out),
            "split {split}"
        );
        let Event::Ready(ext) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            *ext,
            Extensions {
                pipelining: true,
                size: Some(1000),
                chunking: false,
                starttls: true,
                eightbitmime: true,
                smtputf8: true
            }
        );
        let done: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Event::Done(o) => Some(o.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0][0].status, Status::Delivered);
        assert_eq!(done[0][0].reply.to_string(), "250 2.0.0 Ok: queued as X");
        assert_eq!(done[0][1].status, Status::Deferred);
        assert_eq!(done[0][1].reply.dsn(), "4.2.0");
        assert!(matches!(events.last(), Some(Event::Closed(r)) if r.code == 221));
        assert!(c.is_closed());
    }
}

#[test]
fn without_pipelining_commands_go_one_by_one_and_refused_rcpt_is_failed() {
    let server =
        b"220 hi\r\n250 hop\r\n250 ok\r\n550 5.1.1 no such user\r\n250 ok\r\n354 go\r\n250 ok\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx.test");
    let mut out = Vec::new();
    let mut log = Vec::new();
    let mut started = false;
    // Feed one reply line at a time and record what the client sent after each.
    for line in server.split_inclusive(|&b| b == b'\n') {
        c.feed(line, &mut out);
        log.push(String::from_utf8_lossy(&out).into_owned());
        out.clear();
        while let Some(e) = c.poll_event() {
            match e {
                Event::Ready(_) if !started => {
                    started = true;
                    c.start("", &rcpts(&["x@b", "y@b"]), &sized(Some(3)), &mut out)
                        .unwrap();
                }
                Event::SendBody => {
                    c.body(b"abc\r\n", &mut out);
                    c.end_body(&mut out);
                }
                Event::Done(o) => {
                    assert_eq!(o[0].status, Status::Failed);
                    assert_eq!(o[0].reply.dsn(), "5.1.1");
                    assert_eq!(o[1].status, Status::Delivered);
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            log.push(String::from_utf8_lossy(&out).into_owned());
            out.clear();
        }
    }
    let all: String = log.concat();
    // No SIZE= without the SIZE keyword; RCPT waits for MAIL's reply.
    assert_eq!(
        all,
        "EHLO mx.test\r\nMAIL FROM:<>\r\nRCPT TO:<x@b>\r\nRCPT TO:<y@b>\r\nDATA\r\nabc\r\n.\r\n"
    );
    assert!(c.is_ready());
}

#[test]
fn lmtp_has_one_reply_per_accepted_recipient() {
    let server = b"220 lmtp\r\n250-lmtp\r\n250 PIPELINING\r\n250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n250 2.0.0 <a> saved\r\n452 4.2.2 over quota\r\n";
    for split in 0..=server.len() {
        let mut c = Client::new(Protocol::Lmtp, "mx");
        let mut done = None;
        let (out, _) = run(&mut c, server, &[split], |c, e, out| match e {
            Event::Ready(_) if done.is_none() => {
                c.start("s@x", &rcpts(&["a", "b", "c"]), &sized(None), out)
                    .unwrap();
                done = Some(Vec::new());
            }
            Event::SendBody => {
                c.body(b"m\r\n", out);
                c.end_body(out);
            }
            Event::Done(o) => done = Some(o.clone()),
            _ => {}
        });
        assert!(String::from_utf8_lossy(&out).starts_with("LHLO mx\r\n"));
        let o = done.unwrap();
        assert_eq!(
            o.iter().map(|o| o.status).collect::<Vec<_>>(),
            [Status::Delivered, Status::Failed, Status::Deferred],
            "split {split}"
        );
        assert_eq!(o[2].reply.to_string(), "452 4.2.2 over quota");
    }
}

#[test]
fn refused_mail_decides_every_recipient_and_rset_follows() {
    let server = b"220 x\r\n250-x\r\n250 PIPELINING\r\n451 4.3.0 try later\r\n503 5.5.1 no\r\n554 5.5.1 no valid recipients\r\n250 reset\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let mut outcomes = None;
    let (out, events) = run(&mut c, server, &[], |c, e, out| match e {
        Event::Ready(_) if outcomes.is_none() => {
            c.start("s@x", &rcpts(&["a@y"]), &sized(None), out).unwrap();
            outcomes = Some(Vec::new());
        }
        Event::Done(o) => outcomes = Some(o.clone()),
        _ => {}
    });
    assert!(String::from_utf8_lossy(&out).ends_with("DATA\r\nRSET\r\n"));
    let o = outcomes.unwrap();
    assert_eq!(o[0].status, Status::Deferred);
    assert_eq!(o[0].reply.code, 451);
    assert!(matches!(events.last(), Some(Event::Ready(_))));
}

#[test]
fn connection_lost_defers_the_undecided_and_closes() {
    let server = b"220 x\r\n250 x\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let (_, _) = run(&mut c, server, &[], |c, e, out| match e {
        Event::Ready(_) => c
            .start("s@x", &rcpts(&["a@y", "b@y"]), &sized(None), out)
            .unwrap(),
        Event::SendBody => c.body(b"partial", out),
        _ => {}
    });
    c.lose(&Reply::local(451, "4.4.2 lost connection"));
    let Some(Event::Done(o)) = c.poll_event() else {
        panic!()
    };
    assert_eq!(o[0].status, Status::Failed);
    assert_eq!(o[1].status, Status::Deferred);
    assert_eq!(o[1].reply.to_string(), "451 4.4.2 lost connection");
    assert!(matches!(c.poll_event(), Some(Event::Closed(_))));
    assert!(c.is_closed());
}

#[test]
fn greeting_refused_421_and_garbage_close() {
    for (server, code) in [
        (&b"554 5.7.1 go away\r\n"[..], 554),
        (b"220 x\r\n421 4.3.2 shutting down\r\n", 421),
        (b"220 x\r\nhello there\r\n", 451),
    ] {
        let mut c = Client::new(Protocol::Smtp, "mx");
        let (_, events) = run(&mut c, server, &[], |_, _, _| {});
        assert!(
            matches!(events.last(), Some(Event::Closed(r)) if r.code == code),
            "{events:?}"
        );
    }
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut c = Client::new(Protocol::Smtp, "mx");
    let (out, events) = run(
        &mut c,
        b"220 x\r\n502 no ehlo\r\n250 hi\r\n",
        &[],
        |_, _, _| {},
    );
    assert_eq!(out, b"EHLO mx\r\nHELO mx\r\n");
    assert_eq!(events, [Event::Ready(Extensions::default())]);
}

#[test]
fn dot_stuffing_across_chunks_and_final_crlf() {
    let body: &[u8] = b".a\r\n.\r\nb\r\n..c\r\nend";
    let want: &[u8] = b"..a\r\n..\r\nb\r\n...c\r\nend\r\n.\r\n";
    for split in 0..=body.len() {
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut out = Vec::new();
        c.feed(b"220 x\r\n250 x\r\n", &mut out);
        c.start("s", &rcpts(&["r"]), &sized(None), &mut out)
            .unwrap();
        c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n", &mut out);
        out.clear();
        c.body(&body[..split], &mut out);
        c.body(&body[split..], &mut out);
        c.end_body(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(want),
            "split {split}"
        );
    }
}

const STARTTLS_HOP: &[u8] =
    b"220 hop.test ESMTP\r\n250-hop.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n\
    220 2.0.0 go ahead\r\n250-hop.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n\
    250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 queued\r\n";

#[test]
fn starttls_then_ehlo_again_forgetting_the_clear_text_extensions_at_every_split() {
    for split in 0..=STARTTLS_HOP.len() {
        let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::Required);
        let mut handshakes = 0;
        let mut started = false;
        let (out, events) = run(&mut c, STARTTLS_HOP, &[split], |c, e, out| match e {
            Event::StartTls => {
                handshakes += 1;
                c.tls_established(out);
            }
            Event::Ready(_) if !started => {
                started = true;
                c.start("s@x", &rcpts(&["a@y"]), &sized(Some(3)), out)
                    .unwrap();
            }
            Event::SendBody => c.end_body_with(b"m\r\n", out),
            _ => {}
        });
        assert_eq!(handshakes, 1);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "EHLO mx\r\nSTARTTLS\r\nEHLO mx\r\nMAIL FROM:<s@x> SIZE=3\r\nRCPT TO:<a@y>\r\nDATA\r\nm\r\n.\r\n",
            "split {split}"
        );
        let ready: Vec<_> = events
            .iter()
            .take_while(|e| !matches!(e, Event::Done(_)))
            .filter_map(|e| match e {
                Event::Ready(x) => Some(x.clone()),
                _ => None,
            })
            .collect();
        // One Ready, after TLS, with what the server said over TLS only.
        assert_eq!(ready.len(), 1);
        assert!(!ready[0].starttls && ready[0].size == Some(100));
        assert!(c.is_tls());
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Done(o) if o[0].status == Status::Delivered)));
    }
}

#[test]
fn bytes_after_the_220_to_starttls_are_an_injection() {
    for tail in [&b"250 injected\r\n"[..], b"25", b"\r\n"] {
        let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::IfOffered);
        let mut out = Vec::new();
        c.feed(b"220 x\r\n250-x\r\n250 STARTTLS\r\n", &mut out);
        assert_eq!(out, b"EHLO mx\r\nSTARTTLS\r\n");
        let mut server = b"220 go ahead\r\n".to_vec();
        server.extend_from_slice(tail);
        c.feed(&server, &mut out);
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert!(
            matches!(&events[..], [Event::Closed(r)] if r.code == 451 && r.to_string().contains("after the 220")),
            "{events:?}"
        );
        assert!(c.is_closed() && !c.is_tls());
    }
    // Clear text fed between the 220 and the handshake is refused too.
    let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::IfOffered);
    let mut out = Vec::new();
    c.feed(b"220 x\r\n250-x\r\n250 STARTTLS\r\n220 go\r\n", &mut out);
    assert_eq!(c.poll_event(), Some(Event::StartTls));
    c.feed(b"250 late\r\n", &mut out);
    assert!(matches!(c.poll_event(), Some(Event::Closed(r)) if r.code == 451));
}

#[test]
fn required_tls_without_starttls_quits_with_4_7_4() {
    for server in [
        &b"220 x\r\n250-x\r\n250 PIPELINING\r\n"[..],
        b"220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n",
        b"220 x\r\n502 5.5.1 no EHLO\r\n",
    ] {
        let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::Required);
        let (out, events) = run(&mut c, server, &[], |_, _, _| {});
        assert!(String::from_utf8_lossy(&out).ends_with("QUIT\r\n"));
        assert!(!String::from_utf8_lossy(&out).contains("HELO"));
        assert!(
            matches!(events.last(), Some(Event::Closed(r)) if r.code == 451 && r.dsn() == "4.7.4"),
            "{events:?}"
        );
    }
    // Opportunistic: a refusal or no offer leaves the session in clear, ready.
    for server in [
        &b"220 x\r\n250-x\r\n250 PIPELINING\r\n"[..],
        b"220 x\r\n250-x\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n",
    ] {
        let mut c = Client::new(Protocol::Smtp, "mx").with_tls(TlsPolicy::IfOffered);
        let (_, events) = run(&mut c, server, &[], |_, _, _| {});
        assert!(matches!(events.last(), Some(Event::Ready(_))), "{events:?}");
        assert!(!c.is_tls());
    }
    // Never: STARTTLS offered but not sent.
    let mut c = Client::new(Protocol::Smtp, "mx");
    let (out, _) = run(
        &mut c,
        b"220 x\r\n250-x\r\n250 STARTTLS\r\n",
        &[],
        |_, _, _| {},
    );
    assert_eq!(out, b"EHLO mx\r\n");
}

const CHUNKING: &[u8] = b"220 hop\r\n250-hop\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SIZE\r\n\
    250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.0 <y@b.test>: busy\r\n250 2.0.0 4 octets\r\n\
    250 2.0.0 queued as Y\r\n221 bye\r\n";

#[test]
fn bdat_pipelined_without_dot_stuffing_at_every_split() {
    for split in 0..=CHUNKING.len() {
        let mut c = Client::new(Protocol::Smtp, "mx");
        let mut started = false;
        let (out, events) = run(&mut c, CHUNKING, &[split], |c, e, out| match e {
            Event::Ready(_) if !started => {
                started = true;
                c.start(
                    "s@a",
                    &rcpts(&["x@b.test", "y@b.test"]),
                    &sized(Some(7)),
                    out,
                )
                .unwrap();
            }
            Event::Ready(_) => c.quit(out),
            Event::SendBody => {
                c.body(b".hi\n", out);
                c.end_body_with(b".\r\n", out);
            }
            _ => {}
        });
        assert_eq!(
            String::from_utf8_lossy(&out),
            "EHLO mx\r\nMAIL FROM:<s@a> SIZE=7\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<y@b.test>\r\nBDAT 4\r\n.hi\nBDAT 3 LAST\r\n.\r\nQUIT\r\n",
            "split {split}"
        );
        let Some(Event::Done(o)) = events.iter().find(|e| matches!(e, Event::Done(_))) else {
            panic!("{events:?}")
        };
        assert_eq!(o[0].status, Status::Delivered);
        assert_eq!(o[0].reply.to_string(), "250 2.0.0 queued as Y");
        assert_eq!(o[1].status, Status::Deferred);
        assert!(matches!(events.last(), Some(Event::Closed(r)) if r.code == 221));
    }
}

#[test]
fn lmtp_bdat_last_has_one_reply_per_accepted_recipient() {
    let server = b"220 lmtp\r\n250-lmtp\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n250 2.0.0 <a> saved\r\n452 4.2.2 over quota\r\n250 2.0.0 reset\r\n";
    for split in 0..=server.len() {
        let mut c = Client::new(Protocol::Lmtp, "mx");
        let mut done = None;
        let (out, events) = run(&mut c, server, &[split], |c, e, out| match e {
            Event::Ready(_) if done.is_none() => {
                c.start("s@x", &rcpts(&["a", "b", "c"]), &sized(None), out)
                    .unwrap();
                done = Some(Vec::new());
            }
            Event::SendBody => c.end_body_with(b"m\r\n", out),
            Event::Done(o) => done = Some(o.clone()),
            _ => {}
        });
        assert_eq!(
            String::from_utf8_lossy(&out),
            "LHLO mx\r\nMAIL FROM:<s@x>\r\nRCPT TO:<a>\r\nRCPT TO:<b>\r\nRCPT TO:<c>\r\nBDAT 3 LAST\r\nm\r\n"
        );
        let o = done.unwrap();
        assert_eq!(
            o.iter().map(|o| o.status).collect::<Vec<_>>(),
            [Status::Delivered, Status::Failed, Status::Deferred],
            "split {split}"
        );
        assert_eq!(o[2].reply.to_string(), "452 4.2.2 over quota");
        // The stray 250 after the last expected reply is a protocol error: it proves the
        // client expected exactly two replies after BDAT LAST.
        assert!(matches!(events.last(), Some(Event::Closed(r)) if r.code == 451));
    }
}

#[test]
fn refused_chunk_decides_the_transaction_and_rset_follows() {
    let server = b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n552 5.3.4 too big\r\n552 5.3.4 too big\r\n250 reset\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let mut outcomes = None;
    let (out, events) = run(&mut c, server, &[], |c, e, out| match e {
        Event::Ready(_) if outcomes.is_none() => {
            c.start("s@x", &rcpts(&["a@y"]), &sized(None), out).unwrap();
            outcomes = Some(Vec::new());
        }
        Event::SendBody => {
            c.body(b"abc", out);
            c.end_body_with(b"def", out);
        }
        Event::Done(o) => outcomes = Some(o.clone()),
        _ => {}
    });
    assert!(String::from_utf8_lossy(&out).ends_with("BDAT 3 LAST\r\ndefRSET\r\n"));
    let o = outcomes.unwrap();
    assert_eq!(o[0].status, Status::Failed);
    assert_eq!(o[0].reply.dsn(), "5.3.4");
    assert!(matches!(events.last(), Some(Event::Ready(_))));
    // Every recipient refused: BDAT LAST's refusal changes nothing, no RSET needed.
    let server = b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 CHUNKING\r\n250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let mut outcomes = None;
    let (out, events) = run(&mut c, server, &[], |c, e, out| match e {
        Event::Ready(_) if outcomes.is_none() => {
            c.start("s@x", &rcpts(&["a@y"]), &sized(None), out).unwrap();
            outcomes = Some(Vec::new());
        }
        Event::SendBody => c.end_body(out),
        Event::Done(o) => outcomes = Some(o.clone()),
        _ => {}
    });
    assert!(String::from_utf8_lossy(&out).ends_with("BDAT 0 LAST\r\n"));
    assert_eq!(outcomes.unwrap()[0].reply.dsn(), "5.1.1");
    assert!(matches!(events.last(), Some(Event::Ready(_))));
}

#[test]
fn chunking_without_pipelining_uses_data() {
    let server = b"220 x\r\n250-x\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let mut started = false;
    let (out, _) = run(&mut c, server, &[], |c, e, out| match e {
        Event::Ready(_) if !started => {
            started = true;
            c.start("s@x", &rcpts(&["a@y"]), &sized(None), out).unwrap();
        }
        Event::SendBody => c.end_body_with(b".x\r\n", out),
        _ => {}
    });
    assert!(String::from_utf8_lossy(&out).ends_with("DATA\r\n..x\r\n.\r\n"));
}

#[test]
fn reply_helpers() {
    let r = Reply {
        code: 550,
        lines: vec!["5.7.1 denied".into(), "more".into()],
    };
    assert_eq!(r.class(), ReplyClass::Permanent);
    assert_eq!(r.enhanced(), Some("5.7.1"));
    assert_eq!(r.to_string(), "550 5.7.1 denied more");
    assert_eq!(Reply::local(421, "busy").dsn(), "4.0.0");
    assert_eq!(Status::of(&Reply::local(250, "")), Status::Delivered);
}

#[test]
fn a_connection_lost_after_the_end_of_the_body_is_told_apart() {
    // Lost while the final reply is awaited: the hop may have the message.
    let server = b"220 hop.test ESMTP\r\n250-hop.test\r\n250 PIPELINING\r\n\
        250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n";
    let mut c = Client::new(Protocol::Smtp, "me.test");
    let (_, events) = run(&mut c, server, &[], smtp_driver(b"hi\r\n"));
    assert!(events.iter().any(|e| matches!(e, Event::SendBody)));
    assert!(c.awaiting_end_of_data());
    assert!(!c.lost_after_data());
    c.lose(&Reply::local(451, "4.4.2 timeout"));
    assert!(c.lost_after_data());
    assert!(!c.awaiting_end_of_data());

    // Lost before the body: the hop cannot have it.
    let server = b"220 hop.test ESMTP\r\n250-hop.test\r\n250 PIPELINING\r\n250 2.1.0 Ok\r\n";
    let mut c = Client::new(Protocol::Smtp, "me.test");
    run(&mut c, server, &[], smtp_driver(b"hi\r\n"));
    assert!(!c.awaiting_end_of_data());
    c.lose(&Reply::local(451, "4.4.2 timeout"));
    assert!(!c.lost_after_data());
}

/// A client past the greeting and EHLO (LHLO) of a server offering `keywords`.
fn ready_client(protocol: Protocol, keywords: &[&str]) -> Client {
    let mut c = Client::new(protocol, "mx");
    let mut server = String::from("220 x\r\n");
    let mut lines = vec!["x"];
    lines.extend_from_slice(keywords);
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        server.push_str(&format!("250{sep}{l}\r\n"));
    }
    let mut out = Vec::new();
    c.feed(server.as_bytes(), &mut out);
    assert!(c.is_ready(), "{server}");
    while c.poll_event().is_some() {}
    c
}

/// What `start` sends (up to the end of the MAIL line) and its immediate outcomes, if any.
fn start_with(
    c: &mut Client,
    from: &str,
    to: &[&str],
    params: &MailParams,
) -> (String, Option<Vec<RcptOutcome>>) {
    let mut out = Vec::new();
    c.start(from, &rcpts(to), params, &mut out).unwrap();
    let mail = String::from_utf8_lossy(&out)
        .split("\r\n")
        .next()
        .unwrap_or_default()
        .to_string();
    let done = match c.poll_event() {
        Some(Event::Done(o)) => Some(o),
        None => None,
        Some(e) => panic!("{e:?}"),
    };
    (mail, done)
}

#[test]
fn mail_params_look_at_the_header_section_and_the_body() {
    let p = MailParams::new(b"Subject: hi\r\n\r\nplain\r\n", true, true);
    assert_eq!(
        p,
        MailParams {
            size: Some(22),
            body_8bitmime: true,
            smtputf8: true,
            eight_bit: false,
            eight_bit_header: false
        }
    );
    let p = MailParams::new("Subject: hi\r\n\r\ncaf\u{e9}\r\n".as_bytes(), true, false);
    assert!(p.eight_bit && !p.eight_bit_header);
    // A non-ASCII octet past the first empty line is body, even one that looks like a header.
    let p = MailParams::new("A: b\r\n\r\nC: d\u{e9}\r\n\r\n".as_bytes(), false, true);
    assert!(p.eight_bit && !p.eight_bit_header);
    let p = MailParams::new(
        "Subject: gr\u{fc}\u{df}e\r\n\r\nx\r\n".as_bytes(),
        false,
        true,
    );
    assert!(p.eight_bit && p.eight_bit_header);
    // No empty line: all header; an empty line first: all body.
    assert!(MailParams::new("A: \u{e9}".as_bytes(), false, false).eight_bit_header);
    let p = MailParams::new("\r\n\u{e9}\r\n".as_bytes(), false, false);
    assert!(p.eight_bit && !p.eight_bit_header);
    assert_eq!(MailParams::new(b"", false, false).size, Some(0));
}

#[test]
fn mail_passes_on_body_and_smtputf8_when_the_server_offers_them() {
    let all = MailParams {
        size: Some(5),
        body_8bitmime: true,
        smtputf8: true,
        eight_bit: true,
        eight_bit_header: true,
    };
    for protocol in [Protocol::Smtp, Protocol::Lmtp] {
        let mut c = ready_client(protocol, &["PIPELINING", "SIZE", "8BITMIME", "SMTPUTF8"]);
        let (mail, done) = start_with(&mut c, "j\u{f6}rg@a.test", &["r@b.test"], &all);
        assert_eq!(
            mail,
            "MAIL FROM:<j\u{f6}rg@a.test> SIZE=5 BODY=8BITMIME SMTPUTF8"
        );
        assert_eq!(done, None);
    }
    // Declared but not needed: 8-bit content to an 8BITMIME server, an ASCII envelope and
    // header without SMTPUTF8 (no parameter for a keyword not offered).
    let mut c = ready_client(Protocol::Smtp, &["8BITMIME"]);
    let p = MailParams {
        eight_bit_header: false,
        ..all
    };
    let (mail, done) = start_with(&mut c, "s@a.test", &["r@b.test"], &p);
    assert_eq!(mail, "MAIL FROM:<s@a.test> BODY=8BITMIME");
    assert_eq!(done, None);
    // Declared 8BITMIME, 7-bit content, a server without 8BITMIME: plain MAIL.
    let mut c = ready_client(Protocol::Smtp, &["PIPELINING"]);
    let p = MailParams {
        size: None,
        body_8bitmime: true,
        smtputf8: true,
        eight_bit: false,
        eight_bit_header: false,
    };
    let (mail, done) = start_with(&mut c, "s@a.test", &["r@b.test"], &p);
    assert_eq!(mail, "MAIL FROM:<s@a.test>");
    assert_eq!(done, None);
    // Not declared: no parameter even to a server offering both, 8-bit or not (sent as it is).
    let mut c = ready_client(Protocol::Smtp, &["8BITMIME", "SMTPUTF8"]);
    let p = MailParams {
        eight_bit: true,
        ..MailParams::default()
    };
    let (mail, done) = start_with(&mut c, "s@a.test", &["r@b.test"], &p);
    assert_eq!(mail, "MAIL FROM:<s@a.test>");
    assert_eq!(done, None);
    let mut c = ready_client(Protocol::Smtp, &[]);
    let (mail, done) = start_with(&mut c, "s@a.test", &["r@b.test"], &p);
    assert_eq!(mail, "MAIL FROM:<s@a.test>");
    assert_eq!(done, None);
}

/// Every outcome failed with this code and enhanced status.
fn all_failed(done: Option<Vec<RcptOutcome>>, n: usize, code: u16, dsn: &str) {
    let done = done.expect("decided at once");
    assert_eq!(done.len(), n);
    for o in done {
        assert_eq!(o.status, Status::Failed);
        assert_eq!(
            (o.reply.code, o.reply.dsn().as_str()),
            (code, dsn),
            "{}",
            o.reply
        );
    }
}

#[test]
fn a_message_needing_smtputf8_is_not_sent_to_a_server_without_it() {
    let utf8 = MailParams {
        size: Some(9),
        smtputf8: true,
        ..MailParams::default()
    };
    let cases: [(&str, &[&str], MailParams); 3] = [
        ("j\u{f6}rg@a.test", &["r@b.test"], utf8),
        ("s@a.test", &["r@b.test", "\u{e9}l\u{e8}ve@b.test"], utf8),
        (
            "s@a.test",
            &["r@b.test"],
            MailParams {
                eight_bit: true,
                eight_bit_header: true,
                ..utf8
            },
        ),
    ];
    for protocol in [Protocol::Smtp, Protocol::Lmtp] {
        for (from, to, p) in &cases {
            let mut c = ready_client(protocol, &["PIPELINING", "8BITMIME", "SIZE"]);
            let mut out = Vec::new();
            c.start(from, &rcpts(to), p, &mut out).unwrap();
            assert!(
                out.is_empty(),
                "nothing sent: {}",
                String::from_utf8_lossy(&out)
            );
            let Some(Event::Done(o)) = c.poll_event() else {
                panic!("no outcome")
            };
            all_failed(Some(o), to.len(), 554, "5.6.7");
            assert!(c.poll_event().is_none());
            // Still ready: the next message goes on the same connection.
            assert!(c.is_ready());
            let (mail, done) = start_with(&mut c, "s@a.test", &["r@b.test"], &sized(None));
            assert_eq!(mail, "MAIL FROM:<s@a.test>");
            assert_eq!(done, None);
        }
    }
    // The same messages with SMTPUTF8 offered go, with the parameter.
    for (from, to, p) in &cases {
        let mut c = ready_client(Protocol::Smtp, &["8BITMIME", "SMTPUTF8"]);
        let (mail, done) = start_with(&mut c, from, to, p);
        assert_eq!(mail, format!("MAIL FROM:<{from}> SMTPUTF8"));
        assert_eq!(done, None);
    }
    // After HELO (no keywords at all) as well.
    let mut c = Client::new(Protocol::Smtp, "mx");
    c.feed(b"220 x\r\n502 no\r\n250 hi\r\n", &mut Vec::new());
    while c.poll_event().is_some() {}
    let (mail, done) = start_with(&mut c, "j\u{f6}rg@a.test", &["r@b.test"], &utf8);
    assert_eq!(mail, "");
    all_failed(done, 1, 554, "5.6.7");
}

#[test]
fn eight_bit_content_declared_8bitmime_is_not_sent_to_a_server_without_8bitmime() {
    let eight = MailParams {
        size: Some(9),
        body_8bitmime: true,
        eight_bit: true,
        ..MailParams::default()
    };
    for protocol in [Protocol::Smtp, Protocol::Lmtp] {
        let mut c = ready_client(protocol, &["PIPELINING", "SMTPUTF8"]);
        let (mail, done) = start_with(&mut c, "s@a.test", &["a@b.test", "c@b.test"], &eight);
        assert_eq!(mail, "");
        all_failed(done, 2, 554, "5.6.3");
        assert!(c.is_ready());
    }
    // SMTPUTF8 decides first when both are missing.
    let mut c = ready_client(Protocol::Smtp, &[]);
    let both = MailParams {
        smtputf8: true,
        ..eight
    };
    let (_, done) = start_with(&mut c, "j\u{f6}rg@a.test", &["r@b.test"], &both);
    all_failed(done, 1, 554, "5.6.7");
    // The whole transaction to an 8BITMIME server, pipelined, with BODY=8BITMIME.
    let server = b"220 x\r\n250-x\r\n250-PIPELINING\r\n250 8BITMIME\r\n\
        250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 Ok\r\n";
    let mut c = Client::new(Protocol::Smtp, "mx");
    let body = "Subject: x\r\n\r\ncaf\u{e9}\r\n".as_bytes();
    let mut done = None;
    let (out, _) = run(&mut c, server, &[], |c, e, out| match e {
        Event::Ready(_) if done.is_none() => {
            c.start(
                "s@a.test",
                &rcpts(&["r@b.test"]),
                &MailParams::new(body, true, false),
                out,
            )
            .unwrap();
            done = Some(Vec::new());
        }
        Event::SendBody => c.end_body_with(body, out),
        Event::Done(o) => done = Some(o.clone()),
        _ => {}
    });
    let mut want =
        b"EHLO mx\r\nMAIL FROM:<s@a.test> BODY=8BITMIME\r\nRCPT TO:<r@b.test>\r\nDATA\r\n".to_vec();
    want.extend_from_slice(body);
    want.extend_from_slice(b".\r\n");
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(done.unwrap()[0].status, Status::Delivered);
}

#[test]
fn probes_of_non_ascii_addresses_need_smtputf8() {
    let mut c = ready_client(Protocol::Smtp, &["PIPELINING", "SMTPUTF8"]);
    let mut out = Vec::new();
    c.probe("\u{e9}l\u{e8}ve@b.test", &mut out).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out),
        "MAIL FROM:<> SMTPUTF8\r\nRCPT TO:<\u{e9}l\u{e8}ve@b.test>\r\nRSET\r\n"
    );
    for protocol in [Protocol::Smtp, Protocol::Lmtp] {
        let mut c = ready_client(protocol, &["PIPELINING", "8BITMIME"]);
        let mut out = Vec::new();
        c.probe("\u{e9}l\u{e8}ve@b.test", &mut out).unwrap();
        assert!(out.is_empty(), "not asked");
        let Some(Event::Done(o)) = c.poll_event() else {
            panic!("no outcome")
        };
        all_failed(Some(o), 1, 553, "5.6.7");
        assert!(c.is_ready());
        // An ASCII address is probed as before.
        c.probe("a@b.test", &mut out).unwrap();
        assert!(String::from_utf8_lossy(&out).starts_with("MAIL FROM:<>\r\n"));
    }
}

//! Recipient verification (`--verify-recipients`) against a real next hop: a private Postfix
//! smtpd on loopback whose `check_recipient_access` table knows some addresses of the domain
//! and refuses the rest with 550 5.1.1. Accepted and refused recipients, pipelined RCPTs
//! answered in order, a next hop that is down (450 4.1.1), the cache answering the second
//! time without a probe (the stats counters and Postfix's own log), connection reuse, a
//! dictionary attack from many sessions at once (coalesced, cached, over at most the pool's
//! connections), and an expired answer used when the next hop goes down. Then the same against
//! a private Dovecot LMTP server, over TCP and over its unix socket, which does not offer
//! SMTPUTF8: a non-ASCII recipient is refused there without a probe.

use std::time::{Duration, Instant};

use crate::deliver::WAIT;
use crate::dovecot::{dovecot_usable, Dovecot};
use crate::postfix::{free_loopback_port, maillog_when, postfix_usable, Postfix};
use crate::require_io_uring;
use crate::util::{Client, Server, DOMAIN};

fn counter(server: &Server, name: &str) -> u64 {
    server.stats_json()["total"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// How many lines of `log` contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A private Postfix whose smtpd takes `known@` and `other@` the test domain and refuses every
/// other address there with 550 5.1.1 (and does not slow down or drop a session for its
/// refusals, as a mailbox server that the MX verifies against should be set up).
fn mailbox_server() -> Postfix {
    // Postfix never delivers here (nothing is sent past RCPT); it only needs a relayhost.
    let unused = free_loopback_port();
    Postfix::start(
        unused,
        "smtpd_recipient_restrictions = check_recipient_access texthash:{DIR}/rcpt_access, permit\n\
         smtpd_soft_error_limit = 1000\n\
         smtpd_hard_error_limit = 1000\n",
        |dir| {
            std::fs::write(
                dir.join("rcpt_access"),
                format!(
                    "known@{DOMAIN} OK\nother@{DOMAIN} OK\n{DOMAIN} 550 5.1.1 User unknown in the test table\n"
                ),
            )
            .unwrap();
        },
    )
}

/// A ringmx verifying every route, with the test domain routed to `postfix` and `down.test` to
/// a port nothing listens on; `extra` are more config lines (before `[routes]`).
fn verifying_server(postfix: &Postfix, extra: &str) -> (Server, tempfile::TempDir) {
    let down = free_loopback_port();
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("ringmx.toml");
    std::fs::write(
        &config,
        format!(
            "verify-recipients = true\nverify-timeout = 3\n{extra}\n[routes]\n\"{DOMAIN}\" = \"smtp:[127.0.0.1]:{}\"\n\"down.test\" = \"smtp:[{}]:{}\"\n",
            postfix.smtpd.port(),
            down.ip(),
            down.port()
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--domain",
        "down.test",
        "--config",
        config.to_str().unwrap(),
    ]);
    (server, files)
}

#[test]
fn recipients_are_verified_with_a_postfix_next_hop_and_cached() {
    require_io_uring!();
    if !postfix_usable() {
        return;
    }
    let postfix = mailbox_server();
    let (server, _files) = verifying_server(&postfix, "");
    assert!(
        server.log().contains("recipient verification on routes"),
        "{}",
        server.log()
    );

    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    c.expect(&format!("RCPT TO:<known@{DOMAIN}>"), 250);
    let text = c.expect(&format!("RCPT TO:<nobody@{DOMAIN}>"), 550);
    assert_eq!(
        text,
        format!("550 5.1.1 <nobody@{DOMAIN}>: Recipient address rejected: User unknown\r\n")
    );
    // Pipelined: two new addresses (probed) and a cached one, answered in order.
    c.send(
        format!(
            "RCPT TO:<other@{DOMAIN}>\r\nRCPT TO:<nobody2@{DOMAIN}>\r\nRCPT TO:<Known@{DOMAIN}>\r\nNOOP\r\n"
        )
        .as_bytes(),
    );
    let codes: Vec<u16> = (0..4).map(|_| c.reply().0).collect();
    assert_eq!(codes, [250, 550, 250, 250]);
    assert_eq!(counter(&server, "verify_probes"), 4);
    assert_eq!(counter(&server, "verify_cache_hits"), 1);
    // The second time, from the cache: no probe.
    c.expect(&format!("RCPT TO:<known@{DOMAIN}>"), 250);
    c.expect(&format!("RCPT TO:<NOBODY@{DOMAIN}>"), 550);
    assert_eq!(counter(&server, "verify_probes"), 4);
    assert_eq!(counter(&server, "verify_cache_hits"), 3);
    // The next hop of down.test is down: try again later.
    let text = c.expect("RCPT TO:<x@down.test>", 450);
    assert_eq!(
        text,
        "450 4.1.1 <x@down.test>: Recipient address rejected: unverified address: try again later\r\n"
    );
    c.expect("RSET", 250);
    c.expect("QUIT", 221);

    assert_eq!(counter(&server, "verify_probes"), 5);
    assert_eq!(counter(&server, "refused_unverified"), 3);
    assert_eq!(counter(&server, "deferred_unverified"), 1);
    // The log thread may lag behind the replies: wait for the first and the last line.
    let refused = format!(
        "reject rcpt=<nobody@{DOMAIN}> from=<s@example.org> client=127.0.0.1 reason=verify-refused reply=550 5.1.1 source=probe"
    );
    let unverified = "reason=unverified reply=450 4.1.1 source=failed";
    server.log_when(&refused, 1, WAIT);
    let log = server.log_when(unverified, 1, WAIT);
    assert!(
        log.contains(&refused) && log.contains("User unknown in the test table"),
        "the next hop's reply is logged:\n{log}"
    );
    assert!(log.contains(unverified), "{log}");
    // Postfix saw each unknown address once, and all probes came over at most the pool's
    // connections (reused: MAIL FROM:<>, RCPT, RSET each time).
    let maillog = maillog_when(&postfix, "reject: RCPT from", 2);
    assert_eq!(
        count(&maillog, &format!("to=<nobody@{DOMAIN}>")),
        1,
        "{maillog}"
    );
    assert_eq!(
        count(&maillog, &format!("to=<nobody2@{DOMAIN}>")),
        1,
        "{maillog}"
    );
    // (Postfix::start's readiness check connects once and closes at once.)
    let connects =
        count(&maillog, ": connect from ") - count(&maillog, "lost connection after CONNECT");
    assert!(
        (1..=2).contains(&connects),
        "{connects} probe connections:\n{maillog}"
    );
}

#[test]
fn a_dictionary_attack_from_many_sessions_is_coalesced_and_cached() {
    require_io_uring!();
    if !postfix_usable() {
        return;
    }
    const SESSIONS: usize = 16;
    const RCPTS: usize = 8;
    const UNKNOWN: usize = 12;
    let postfix = mailbox_server();
    let (server, _files) = verifying_server(&postfix, "");
    // Every session asks, pipelined, for a mix of the same few addresses, all at once.
    let address = |s: usize, j: usize| {
        if (s + j) % 4 == 0 {
            format!("known@{DOMAIN}")
        } else {
            format!("u{}@{DOMAIN}", (s * 5 + j) % UNKNOWN)
        }
    };
    let threads: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let addr = server.addr;
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.expect("EHLO client.test", 250);
                let mut batch = String::from("MAIL FROM:<s@example.org>\r\n");
                for j in 0..RCPTS {
                    batch.push_str(&format!("RCPT TO:<{}>\r\n", address(s, j)));
                }
                batch.push_str("QUIT\r\n");
                c.send(batch.as_bytes());
                let replies: Vec<(u16, String)> = (0..RCPTS + 2).map(|_| c.reply()).collect();
                (s, replies)
            })
        })
        .collect();
    let mut distinct = std::collections::HashSet::new();
    for t in threads {
        let (s, replies) = t.join().unwrap();
        assert_eq!(replies[0].0, 250);
        for j in 0..RCPTS {
            let a = address(s, j);
            let (code, text) = &replies[j + 1];
            let want = if a.starts_with("known@") { 250 } else { 550 };
            assert_eq!(*code, want, "session {s} RCPT {a}: {text}");
            if want == 550 {
                assert!(text.contains(&format!("<{a}>")), "in order: {a} got {text}");
            }
            distinct.insert(a);
        }
        assert_eq!(replies[RCPTS + 1].0, 221);
    }
    let total = (SESSIONS * RCPTS) as u64;
    let probes = counter(&server, "verify_probes");
    let others = counter(&server, "verify_cache_hits") + counter(&server, "verify_coalesced");
    assert_eq!(probes, distinct.len() as u64, "one probe per address");
    assert_eq!(probes + others, total);
    assert_eq!(counter(&server, "deferred_unverified"), 0);
    // Postfix saw each address once, over at most the pool's two connections.
    let maillog = maillog_when(&postfix, "reject: RCPT from", distinct.len() - 1);
    for a in &distinct {
        let n = count(&maillog, &format!("to=<{a}>"));
        assert!(n <= 1, "{a} probed {n} times:\n{maillog}");
    }
    // (Postfix::start's readiness check connects once and closes at once.)
    let connects =
        count(&maillog, ": connect from ") - count(&maillog, "lost connection after CONNECT");
    assert!(
        (1..=2).contains(&connects),
        "{connects} probe connections:\n{maillog}"
    );
}

#[test]
fn an_expired_answer_stands_in_when_the_next_hop_is_down() {
    require_io_uring!();
    if !postfix_usable() {
        return;
    }
    let postfix = mailbox_server();
    let (server, _files) = verifying_server(
        &postfix,
        "verify-cache-accept = 1\nverify-cache-refuse = 1\n",
    );
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    c.expect(&format!("RCPT TO:<known@{DOMAIN}>"), 250);
    c.expect(&format!("RCPT TO:<nobody@{DOMAIN}>"), 550);
    // The answers expire; then the mailbox server goes away.
    drop(postfix);
    std::thread::sleep(Duration::from_millis(1200));
    c.expect(&format!("RCPT TO:<known@{DOMAIN}>"), 250);
    c.expect(&format!("RCPT TO:<nobody@{DOMAIN}>"), 550);
    // Never asked before: nothing to stand in.
    c.expect(&format!("RCPT TO:<new@{DOMAIN}>"), 450);
    c.expect("QUIT", 221);
    assert_eq!(counter(&server, "verify_probes"), 5);
    assert_eq!(counter(&server, "verify_cache_hits"), 2);
    assert_eq!(counter(&server, "deferred_unverified"), 1);
    let stale = format!(
        "reject rcpt=<nobody@{DOMAIN}> from=<s@example.org> client=127.0.0.1 reason=verify-refused reply=550 5.1.1 source=stale"
    );
    let log = server.log_when(&stale, 1, WAIT);
    assert!(log.contains(&stale), "{log}");
}

#[test]
fn recipients_are_verified_with_dovecot_lmtp_over_tcp_and_unix_socket() {
    require_io_uring!();
    if !dovecot_usable() {
        return;
    }
    let dovecot = Dovecot::start(&[&format!("known@{DOMAIN}"), "known@tcp.test"]);
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("ringmx.toml");
    std::fs::write(
        &config,
        format!(
            "[routes]\n\"{DOMAIN}\" = {{ target = \"lmtp:unix:{}\", verify = true }}\n\"tcp.test\" = {{ target = \"lmtp:[127.0.0.1]:{}\", verify = true }}\n\"plain.test\" = \"lmtp:[127.0.0.1]:{}\"\n",
            dovecot.socket().display(),
            dovecot.port,
            dovecot.port
        ),
    )
    .unwrap();
    let server = Server::start(&[
        "--domain",
        "tcp.test",
        "--domain",
        "plain.test",
        "--config",
        config.to_str().unwrap(),
    ]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org>", 250);
    for domain in [DOMAIN, "tcp.test"] {
        c.expect(&format!("RCPT TO:<known@{domain}>"), 250);
        let text = c.expect(&format!("RCPT TO:<nobody@{domain}>"), 550);
        assert_eq!(
            text,
            format!("550 5.1.1 <nobody@{domain}>: Recipient address rejected: User unknown\r\n")
        );
        c.expect(&format!("RCPT TO:<nobody@{domain}>"), 550);
    }
    // A route without verify is not asked.
    c.expect("RCPT TO:<nobody@plain.test>", 250);
    c.expect("RSET", 250);
    c.expect("QUIT", 221);
    assert_eq!(counter(&server, "verify_probes"), 4);
    assert_eq!(counter(&server, "verify_cache_hits"), 2);
    assert_eq!(counter(&server, "refused_unverified"), 4);
    let log = server.log_when("User doesn't exist", 1, WAIT);
    assert!(
        log.contains("User doesn't exist"),
        "Dovecot's reply is logged:\n{log}"
    );
    // Two routes: a connection each (LHLO once, then MAIL/RCPT/RSET per probe).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut dlog = dovecot.log();
    while count(&dlog, "Connect from") < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        dlog = dovecot.log();
    }
    assert_eq!(
        count(&dlog, "Connect from"),
        3,
        "1 readiness check + 2 routes:\n{dlog}"
    );
}

#[test]
fn a_silent_next_hop_gets_two_connections_a_bounded_queue_and_450_at_once_beyond() {
    require_io_uring!();
    const SESSIONS: usize = 80;
    // The verifier's bounds (src/relay/verify.rs): probes in flight and queued per route.
    const IN_FLIGHT: usize = 2;
    const QUEUED: usize = 64;
    // A next hop that accepts connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    silent.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        // Counts the connections, and the most open at once (a closed one peeks 0 bytes).
        std::thread::spawn(move || {
            let (mut open, mut total, mut most) = (Vec::new(), 0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((s, _)) = silent.accept() {
                    s.set_nonblocking(true).unwrap();
                    open.push(s);
                    total += 1;
                }
                open.retain(|s| !matches!(s.peek(&mut [0u8; 1]), Ok(0)));
                most = most.max(open.len());
                std::thread::sleep(Duration::from_millis(5));
            }
            (total, most)
        })
    };
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("ringmx.toml");
    std::fs::write(
        &config,
        format!("verify-recipients = true\nverify-timeout = 2\n\n[routes]\n\"{DOMAIN}\" = \"smtp:[127.0.0.1]:{port}\"\n"),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    // Every session connects and greets first, then all ask at once, each a new address.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(SESSIONS));
    let threads: Vec<_> = (0..SESSIONS)
        .map(|i| {
            let addr = server.addr;
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut c = Client::greeted(addr);
                c.expect("EHLO client.test", 250);
                c.expect("MAIL FROM:<s@example.org>", 250);
                barrier.wait();
                let asked = Instant::now();
                let (code, text) = c.cmd(&format!("RCPT TO:<guess{i}@{DOMAIN}>"));
                let took = asked.elapsed();
                c.expect("QUIT", 221);
                (code, text, took)
            })
        })
        .collect();
    let results: Vec<(u16, String, Duration)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (connections, most_at_once) = holder.join().unwrap();
    for (code, text, _) in &results {
        assert_eq!(*code, 450, "{text}");
        assert!(text.starts_with("450 4.1.1 <guess"), "{text}");
    }
    let at_once = results
        .iter()
        .filter(|(_, _, took)| *took < Duration::from_millis(1500))
        .count();
    let waited = results
        .iter()
        .filter(|(_, _, took)| *took >= Duration::from_millis(1900))
        .count();
    // Those beyond the bounds are answered at once; the others waited for the timeout.
    assert_eq!(at_once, SESSIONS - IN_FLIGHT - QUEUED, "{results:?}");
    assert_eq!(waited, IN_FLIGHT + QUEUED, "{results:?}");
    // Never more than the pool at once (when the first two time out, the next queued
    // addresses are probed: the work goes on, two at a time).
    assert_eq!(
        most_at_once, IN_FLIGHT,
        "{connections} connections to the silent next hop, {most_at_once} at once"
    );
    let log = server.log_when("source=busy", SESSIONS - IN_FLIGHT - QUEUED, WAIT);
    assert_eq!(
        count(&log, "source=busy"),
        SESSIONS - IN_FLIGHT - QUEUED,
        "{log}"
    );
    assert_eq!(counter(&server, "deferred_unverified"), SESSIONS as u64);
}

/// A non-ASCII address needs SMTPUTF8 on the probe's MAIL; Dovecot 2.3's LMTP does not offer
/// it, so the address is refused without asking (the client's own `553 5.6.7`, in the log):
/// mail to it could not be delivered there. An ASCII address on the same route is probed.
#[test]
fn a_non_ascii_recipient_is_refused_unasked_by_a_next_hop_without_smtputf8() {
    require_io_uring!();
    if !dovecot_usable() {
        return;
    }
    let dovecot = Dovecot::start(&[&format!("known@{DOMAIN}")]);
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("ringmx.toml");
    std::fs::write(
        &config,
        format!(
            "[routes]\n\"{DOMAIN}\" = {{ target = \"lmtp:[127.0.0.1]:{}\", verify = true }}\n",
            dovecot.port
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut c = Client::greeted(server.addr);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@example.org> SMTPUTF8", 250);
    c.expect(&format!("RCPT TO:<j\u{f6}rg@{DOMAIN}>"), 550);
    c.expect(&format!("RCPT TO:<known@{DOMAIN}>"), 250);
    c.expect("QUIT", 221);
    let log = server.log_when("553 5.6.7", 1, WAIT);
    assert!(
        log.contains("reason=verify-refused") && log.contains("553 5.6.7"),
        "{log}"
    );
}

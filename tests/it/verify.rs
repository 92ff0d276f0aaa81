//! Recipient verification (`--verify-recipients`) against a real next hop: a private Postfix
//! smtpd on loopback whose `check_recipient_access` table knows some addresses of the domain
//! and refuses the rest with 550 5.1.1. Accepted and refused recipients, pipelined RCPTs
//! answered in order, a next hop that is down (450 4.1.1), the cache answering the second
//! time without a probe (the stats counters and Postfix's own log), and connection reuse.

use std::time::{Duration, Instant};

use crate::postfix::{free_loopback_port, postfix_usable, Postfix};
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

/// Waits until Postfix's log has `n` lines with `needle` (postlogd writes it asynchronously).
fn maillog_when(postfix: &Postfix, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = postfix.maillog();
        if count(&log, needle) >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn recipients_are_verified_with_a_postfix_next_hop_and_cached() {
    require_io_uring!();
    if !postfix_usable() {
        return;
    }
    // Postfix never delivers here (nothing is sent past RCPT); it only needs a relayhost.
    let unused = free_loopback_port();
    let postfix = Postfix::start(
        unused,
        "smtpd_recipient_restrictions = check_recipient_access texthash:{DIR}/rcpt_access, permit\n",
        |dir| {
            std::fs::write(
                dir.join("rcpt_access"),
                format!(
                    "known@{DOMAIN} OK\nother@{DOMAIN} OK\n{DOMAIN} 550 5.1.1 User unknown in the test table\n"
                ),
            )
            .unwrap();
        },
    );
    // A route whose next hop is down: nothing listens on this port.
    let down = free_loopback_port();
    let files = tempfile::tempdir().unwrap();
    let config = files.path().join("ringmx.toml");
    std::fs::write(
        &config,
        format!(
            "verify-recipients = true\nverify-timeout = 3\n\n[routes]\n\"{DOMAIN}\" = \"smtp:[127.0.0.1]:{}\"\n\"down.test\" = \"smtp:[{}]:{}\"\n",
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
    let log = server.log();
    assert!(
        log.contains(&format!(
            "reject rcpt=<nobody@{DOMAIN}> from=<s@example.org> client=127.0.0.1 reason=verify-refused reply=550 5.1.1 source=probe"
        )) && log.contains("User unknown in the test table"),
        "the next hop's reply is logged:\n{log}"
    );
    assert!(
        log.contains("reason=unverified reply=450 4.1.1 source=failed"),
        "{log}"
    );
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
    let connects = count(&maillog, ": connect from ");
    assert!(
        (1..=2).contains(&connects),
        "{connects} probe connections:\n{maillog}"
    );
}

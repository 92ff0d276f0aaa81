//! Shutdown with busy pipelining clients: SIGTERM must not wait out the grace period while
//! clients keep starting new transactions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{body_with_subject, spool_ls, Client, Server, DOMAIN};

/// A client that, like a pipelining MTA, sends the next transaction's MAIL/RCPT/DATA in the same
/// write as the previous body and terminator, so there is always a command waiting.
fn pipelining_client(addr: std::net::SocketAddr, acked: Arc<AtomicUsize>) -> Option<(u16, String)> {
    let mut c = Client::try_connect(addr).ok()?;
    if !matches!(c.try_reply(), Ok((220, _))) {
        return None;
    }
    c.try_send(b"EHLO pipe.example.org\r\n").ok()?;
    let _ = c.try_reply().ok()?;
    let envelope = format!("MAIL FROM:<s@example.org>\r\nRCPT TO:<r@{DOMAIN}>\r\nDATA\r\n");
    let mut body = body_with_subject("pipelined", &"text ".repeat(100));
    body.extend_from_slice(b".\r\n");
    body.extend_from_slice(envelope.as_bytes());
    c.try_send(envelope.as_bytes()).ok()?;
    loop {
        // 250 MAIL, 250 RCPT, 354 DATA (or the 421 that ends it all).
        for _ in 0..3 {
            match c.try_reply() {
                Ok((250 | 354, _)) => {}
                Ok(other) => return Some(other),
                Err(_) => return None,
            }
        }
        c.try_send(&body).ok()?;
        match c.try_reply() {
            Ok((250, _)) => {
                acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(other) => return Some(other),
            Err(_) => return None,
        }
    }
}

#[test]
fn sigterm_stops_pipelining_clients_after_their_current_message() {
    require_io_uring!();
    let mut server = Server::start(&[]);
    let acked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let addr = server.addr;
            let acked = acked.clone();
            std::thread::spawn(move || pipelining_client(addr, acked))
        })
        .collect();
    let t0 = Instant::now();
    while acked.load(Ordering::SeqCst) < 200 && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        acked.load(Ordering::SeqCst) >= 200,
        "clients did not get going"
    );
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", server.log());
    // The grace period (10 s) is for messages in flight, not for new transactions: the server
    // must not wait it out (the bound leaves room for a loaded machine, not for the grace).
    assert!(took < Duration::from_secs(9), "shutdown took {took:?}");
    for c in clients {
        let last = c.join().expect("client thread");
        if let Some((code, text)) = last {
            assert_eq!(code, 421, "last reply: {code} {text}");
            assert!(text.contains("4.3.2"), "last reply: {code} {text}");
        }
    }
    let stored = spool_ls(&server.spool()).lines().count();
    assert!(
        stored >= acked.load(Ordering::SeqCst),
        "stored {stored} < acked"
    );
}

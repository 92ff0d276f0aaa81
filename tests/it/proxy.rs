//! The PROXY protocol over loopback with raw sockets: v1 and v2 headers from a trusted
//! balancer (split across writes), LOCAL health checks, missing and late headers, per-IP limits
//! on the original address, and untrusted peers whose PROXY line is an unknown command.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::require_io_uring;
use crate::util::{spool_cat, Client, Server, DOMAIN};

const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY header (TCP over IPv4) from `src` to 127.0.0.1:25.
fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&25u16.to_be_bytes());
    h
}

/// A v2 LOCAL header (the balancer's own health check).
fn v2_local() -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x20, 0x00, 0, 0]);
    h
}

/// Connects, sends `header` a few octets per write, and expects the greeting.
fn proxied(server: &Server, header: &[u8]) -> Client {
    let mut c = Client::connect(server.addr);
    for piece in header.chunks(5) {
        c.stream.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let (code, text) = c.reply();
    assert_eq!(code, 220, "{text}");
    c
}

fn counter(server: &Server, name: &str) -> u64 {
    server.stats_json()["total"]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name}"))
}

fn deliver(c: &mut Client, subject: &str) -> String {
    c.expect("EHLO balanced.example", 250);
    let body = crate::util::body_with_subject(subject, "via a balancer");
    let (code, text) = c.send_message("a@example.org", &format!("r@{DOMAIN}"), &body);
    assert_eq!(code, 250, "{text}");
    text.trim_end().rsplit(' ').next().unwrap().to_owned()
}

#[test]
fn v1_and_v2_headers_split_across_writes_set_the_client_address() {
    require_io_uring!();
    let server = Server::start(&["--proxy-protocol-from", "127.0.0.0/8"]);
    let mut c = proxied(&server, b"PROXY TCP4 192.0.2.9 127.0.0.1 40000 25\r\n");
    let id1 = deliver(&mut c, "v1");
    c.expect("QUIT", 221);
    let mut c = proxied(&server, &v2_tcp4([198, 51, 100, 23], 40001));
    let id2 = deliver(&mut c, "v2");
    c.expect("QUIT", 221);
    let mut c = proxied(&server, b"PROXY TCP6 2001:db8::7 ::1 40002 25\r\n");
    let id3 = deliver(&mut c, "v1 ipv6");
    c.expect("QUIT", 221);
    for (id, addr) in [
        (&id1, "([192.0.2.9])"),
        (&id2, "([198.51.100.23])"),
        (&id3, "([IPv6:2001:db8::7])"),
    ] {
        let stored = String::from_utf8_lossy(&spool_cat(&server.spool(), id)).into_owned();
        assert!(
            stored.starts_with("Received: from balanced.example "),
            "{stored}"
        );
        assert!(stored.contains(addr), "{addr} not in {stored}");
    }
    let log = server.log_when("client=192.0.2.9", 2, Duration::from_secs(5));
    for needle in [
        "client=192.0.2.9:40000 header=v1",
        "client=198.51.100.23:40001 header=v2",
        "connect from=192.0.2.9:40000",
        "client=192.0.2.9",
    ] {
        assert!(log.contains(needle), "{needle} not in\n{log}");
    }
}

#[test]
fn header_and_first_command_in_one_write_and_local_health_checks() {
    require_io_uring!();
    let server = Server::start(&["--proxy-protocol-from", "127.0.0.1/32"]);
    // The header and an early QUIT in one segment: the QUIT is the session's first input.
    let mut c = Client::connect(server.addr);
    c.send(b"PROXY TCP4 192.0.2.44 127.0.0.1 1 25\r\nQUIT\r\n");
    assert_eq!(c.reply().0, 220);
    assert_eq!(c.reply().0, 221);
    // v2 LOCAL and v1 UNKNOWN are served with the balancer's own address.
    let mut c = proxied(&server, &v2_local());
    c.expect("NOOP", 250);
    c.expect("QUIT", 221);
    let mut c = proxied(&server, b"PROXY UNKNOWN\r\n");
    c.expect("QUIT", 221);
    let log = server.log_when("client=127.0.0.1:", 2, Duration::from_secs(5));
    assert!(log.contains("client=192.0.2.44:1 header=v1"), "{log}");
    assert_eq!(log.matches("client=127.0.0.1:").count(), 2, "{log}");
}

#[test]
fn missing_malformed_or_late_headers_close_the_connection_and_are_counted() {
    require_io_uring!();
    let server = Server::start(&[
        "--proxy-protocol-from",
        "127.0.0.0/8",
        "--idle-timeout",
        "1",
    ]);
    let mut c = Client::connect(server.addr);
    c.send(b"EHLO no-header.example\r\n");
    assert!(c.closed_within(Duration::from_secs(5)));
    let mut c = Client::connect(server.addr);
    c.send(b"PROXY TCP4 999.1.1.1 127.0.0.1 1 25\r\n");
    assert!(c.closed_within(Duration::from_secs(5)));
    // Before connecting: the server's idle timer cannot have started earlier.
    let t = Instant::now();
    let mut c = Client::connect(server.addr);
    c.send(b"PROXY TCP4 192.0."); // then nothing: cut at the idle timeout
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter(&server, "connections_proxy_failed") < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(counter(&server, "connections_proxy_failed"), 3);
    let log = server.log_when("closed: ", 3, Duration::from_secs(5));
    assert_eq!(log.matches("closed: ").count(), 3, "{log}");
    assert!(
        log.contains("no PROXY header within the idle timeout"),
        "{log}"
    );
}

#[test]
fn per_ip_limit_applies_to_the_original_address() {
    require_io_uring!();
    let server = Server::start(&[
        "--proxy-protocol-from",
        "127.0.0.0/8",
        "--max-connections-per-ip",
        "1",
    ]);
    let _first = proxied(&server, &v2_tcp4([192, 0, 2, 50], 1));
    let mut second = Client::connect(server.addr);
    second.send(&v2_tcp4([192, 0, 2, 50], 2));
    let (code, text) = second.reply();
    assert_eq!(code, 421, "{text}");
    // Another original client behind the same balancer is admitted.
    let mut other = proxied(&server, &v2_tcp4([192, 0, 2, 51], 3));
    other.expect("QUIT", 221);
    assert_eq!(counter(&server, "connections_refused_per_ip"), 1);
}

#[test]
fn untrusted_peers_get_500_for_a_proxy_line() {
    require_io_uring!();
    let server = Server::start(&["--proxy-protocol-from", "10.0.0.0/8"]);
    let mut c = Client::greeted(server.addr);
    let (code, _) = c.cmd("PROXY TCP4 192.0.2.9 127.0.0.1 40000 25");
    assert_eq!(code, 500);
    c.expect("QUIT", 221);
    assert!(!server.log().contains("header=v"));
}

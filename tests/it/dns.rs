//! Tests against a real DNS server: `dnsmasq` started by each test on 127.0.0.1 and a free
//! port (no upstream, no hosts file, only the records the test gives), killed by pid. MX
//! routes deliver to Postfix's `smtp-sink` instances on several 127.0.0.x addresses sharing
//! one port (`mx:PORT`); DNSBL tests connect from several 127.0.0.x source addresses.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::deliver::{
    deferred_count, dumps, files, free_port, nix_is_root, queue, send, wait_for,
    wait_sink_listening, WAIT,
};
use crate::require_io_uring;
use crate::util::{require_tool, Client, Server, DOMAIN};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
const SINK: &str = "/usr/sbin/smtp-sink";

/// A port on 127.0.0.1 free for UDP and for TCP both (dnsmasq listens on both; bound, then
/// released).
fn free_udp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A private `dnsmasq` answering only `records` (dnsmasq config lines such as
/// `mx-host=a.test,mx.a.test,10`) for names under `.test` (NXDOMAIN for the others).
pub(crate) struct Dnsmasq {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Dnsmasq {
    pub(crate) fn start(dir: &Path, port: u16, records: &[String]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let conf: PathBuf = dir.join("dnsmasq.conf");
        let mut text = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             no-daemon\npid-file=\nlocal=/test/\n"
        );
        for r in records {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(&conf, text).unwrap();
        let mut cmd = Command::new(DNSMASQ);
        cmd.arg(format!("--conf-file={}", conf.display()));
        if nix_is_root() {
            cmd.arg("--user=root");
        }
        let log = dir.join("dnsmasq.log");
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Generous: the suite runs many servers at once on a small machine.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers(addr) {
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dnsmasq did not start ({exited:?}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a DNS server answers at `addr` (an A query for `ready.test`).
fn answers(addr: SocketAddr) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["ready", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if s.send_to(&q, addr).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[..2] == [0x12, 0x34])
}

/// `smtp-sink` on `ip:port`, dumping each transaction into `dump` (killed on drop).
struct Sink(Child);

impl Sink {
    fn start(ip: &str, port: u16, dump: &Path) -> Self {
        std::fs::create_dir_all(dump).unwrap();
        let mut cmd = Command::new(SINK);
        if nix_is_root() {
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .arg("-d")
            .arg(format!("{}/%Y%m%d%H%M%S.", dump.display()))
            .arg(format!("{ip}:{port}"))
            .arg("100")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut sink = Self(child);
        wait_sink_listening(&mut sink.0, ip.parse().unwrap(), port);
        sink
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A ringmx relaying every domain of `domains` by MX on port `mx_port`, asking `dns`.
fn mx_server(domains: &[&str], mx_port: u16, dns: SocketAddr, extra: &[&str]) -> Server {
    let route = format!("mx:{mx_port}");
    let dns = dns.to_string();
    let mut args = vec![
        "--relay-to",
        &route,
        "--dns-server",
        &dns,
        "--retry-first",
        "1",
    ];
    for d in domains {
        args.extend(["--domain", d]);
    }
    args.extend(extra);
    Server::start(&args)
}

fn requires() {
    require_tool(DNSMASQ, "dnsmasq-base");
    require_tool(SINK, "postfix");
}

#[test]
fn mx_falls_back_from_a_refusing_preferred_host_to_the_next() {
    require_io_uring!();
    requires();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    // mx1 (preference 10) has nothing listening: connections are refused.
    let dns = Dnsmasq::start(
        &tmp.path().join("dns"),
        free_udp_port(),
        &[
            "mx-host=two.test,mx1.two.test,10".into(),
            "mx-host=two.test,mx2.two.test,20".into(),
            "host-record=mx1.two.test,127.0.0.2".into(),
            "host-record=mx2.two.test,127.0.0.3".into(),
        ],
    );
    let dump = tmp.path().join("mx2");
    let _mx2 = Sink::start("127.0.0.3", port, &dump);
    let server = mx_server(&["two.test"], port, dns.addr, &[]);
    send(&server, 3, "user@two.test");
    wait_for("3 messages at mx2", || dumps(&dump).len() >= 3);
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    // The delivery lines come from the log thread, maybe after the queue is empty.
    server.log_when("trying the next MX address", 1, WAIT);
    let log = server.log_when("relay=mx2.two.test[127.0.0.3]", 1, WAIT);
    assert!(
        log.contains("relay=mx2.two.test[127.0.0.3]"),
        "delivered by mx2: {log}"
    );
    assert!(
        log.contains("mx1.two.test[127.0.0.2]") && log.contains("trying the next MX address"),
        "mx1 was tried first: {log}"
    );
}

#[test]
fn mx_equal_preferences_share_the_load() {
    require_io_uring!();
    requires();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dns = Dnsmasq::start(
        &tmp.path().join("dns"),
        free_udp_port(),
        &[
            "mx-host=eq.test,a.eq.test,10".into(),
            "mx-host=eq.test,b.eq.test,10".into(),
            "host-record=a.eq.test,127.0.0.4".into(),
            "host-record=b.eq.test,127.0.0.5".into(),
        ],
    );
    let (da, db) = (tmp.path().join("a"), tmp.path().join("b"));
    let _a = Sink::start("127.0.0.4", port, &da);
    let _b = Sink::start("127.0.0.5", port, &db);
    // 16 workers, each with its own connection to a host picked at random: with 32 messages
    // handed to them in turn, one host alone would have a chance of 2^-15.
    let conf = tmp.path().join("routes.toml");
    std::fs::write(
        &conf,
        format!("[routes]\n\"*\" = {{ target = \"mx:{port}\", concurrency = 16 }}\n"),
    )
    .unwrap();
    let dns_addr = dns.addr.to_string();
    let server = Server::start(&[
        "--domain",
        "eq.test",
        "--dns-server",
        &dns_addr,
        "--config",
        conf.to_str().unwrap(),
    ]);
    let n = 32;
    send(&server, n, "user@eq.test");
    wait_for("every message at a sink", || {
        dumps(&da).len() + dumps(&db).len() >= n
    });
    let (a, b) = (files(&da).len(), files(&db).len());
    assert_eq!(a + b, n, "no duplicates");
    assert!(a > 0 && b > 0, "both hosts get mail: a={a} b={b}");
}

#[test]
fn mx_no_mx_uses_the_address_and_null_mx_fails_at_once() {
    require_io_uring!();
    requires();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dns = Dnsmasq::start(
        &tmp.path().join("dns"),
        free_udp_port(),
        &[
            "host-record=amx.test,127.0.0.6".into(),
            "mx-host=null.test,.,0".into(),
            "mx-host=loop.test,mx.example.test,10".into(),
            "host-record=mx.example.test,127.0.0.9".into(),
            // The senders' domain: the DSNs go there, by MX like any mail.
            "mx-host=src.test,mx.src.test,10".into(),
            "host-record=mx.src.test,127.0.0.10".into(),
        ],
    );
    let dump = tmp.path().join("amx");
    let _sink = Sink::start("127.0.0.6", port, &dump);
    let bounces = tmp.path().join("bounces");
    let _sender_mx = Sink::start("127.0.0.10", port, &bounces);
    // Bounces go to remote senders by MX: the "*" route.
    let cfg = tmp.path().join("routes.toml");
    std::fs::write(&cfg, format!("[routes]\n\"*\" = \"mx:{port}\"\n")).unwrap();
    let server = mx_server(
        &["amx.test", "null.test", "loop.test", "gone.test"],
        port,
        dns.addr,
        &["--config", cfg.to_str().unwrap()],
    );
    send(&server, 1, "user@amx.test");
    wait_for("the message at the domain's A address", || {
        dumps(&dump).len() == 1
    });
    send(&server, 1, "user@null.test");
    send(&server, 1, "user@loop.test");
    send(&server, 1, "user@gone.test");
    // Each fails at once (one attempt, nothing deferred) and bounces to s@src.test's MX.
    let deadline = Instant::now() + Duration::from_secs(30);
    while dumps(&bounces).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for 3 DSNs at the sender's MX: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dsns: Vec<String> = dumps(&bounces)
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let all = dsns.join("\n----\n");
    for d in &dsns {
        assert!(d.contains("report-type=delivery-status"), "{d}");
        assert!(d.contains("Action: failed"), "{d}");
    }
    assert!(all.contains("5.1.10"), "null MX: {all}");
    assert!(all.contains("loops back to myself"), "loop: {all}");
    assert!(all.contains("5.4.6"), "loop: {all}");
    assert!(all.contains("5.1.2"), "NXDOMAIN: {all}");
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
    assert_eq!(files(&dump).len(), 1);
}

#[test]
fn mx_dns_down_defers_then_delivers_when_it_comes_back() {
    require_io_uring!();
    requires();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let dns_port = free_udp_port();
    let dns_addr: SocketAddr = format!("127.0.0.1:{dns_port}").parse().unwrap();
    let dump = tmp.path().join("mx");
    let _sink = Sink::start("127.0.0.7", port, &dump);
    let server = mx_server(&["back.test"], port, dns_addr, &[]);
    send(&server, 2, "user@back.test");
    wait_for("deferred for DNS", || deferred_count(&server.spool()) == 2);
    let deferred = queue(&server.spool(), &["ls", "--deferred", "--json"]);
    assert!(deferred.contains("4.4.3"), "{deferred}");
    assert!(files(&dump).is_empty());
    let _dns = Dnsmasq::start(
        &tmp.path().join("dns"),
        dns_port,
        &[
            "mx-host=back.test,mx.back.test,10".into(),
            "host-record=mx.back.test,127.0.0.7".into(),
        ],
    );
    wait_for("both messages delivered once DNS is back", || {
        dumps(&dump).len() >= 2
    });
    wait_for("queue empty", || queue(&server.spool(), &["ls"]).is_empty());
}

/// Connects from `src`, greets, sends MAIL and two RCPTs; returns the two RCPT replies.
fn rcpts_from(server: &Server, src: &str) -> [(u16, String); 2] {
    let mut c = Client::connect_from(src.parse().unwrap(), server.addr);
    assert_eq!(c.reply().0, 220);
    c.expect("EHLO client.test", 250);
    c.expect("MAIL FROM:<s@src.test>", 250);
    let a = c.cmd(&format!("RCPT TO:<a@{DOMAIN}>"));
    let b = c.cmd(&format!("RCPT TO:<b@{DOMAIN}>"));
    c.expect("QUIT", 221);
    [a, b]
}

#[test]
fn dnsbl_listed_clients_get_554_at_every_rcpt_others_pass_and_trusted_skip() {
    require_io_uring!();
    require_tool(DNSMASQ, "dnsmasq-base");
    let tmp = tempfile::tempdir().unwrap();
    let dns = Dnsmasq::start(
        &tmp.path().join("dns"),
        free_udp_port(),
        &[
            // 127.0.0.2 is listed by bl.test; 127.0.0.4 by weak.test only (weight 1 of 2).
            "host-record=2.0.0.127.bl.test,127.0.0.2".into(),
            "host-record=4.0.0.127.weak.test,127.0.0.2".into(),
        ],
    );
    let dns_addr = dns.addr.to_string();
    let server = Server::start(&[
        "--dns-server",
        &dns_addr,
        "--dnsbl",
        "bl.test*2",
        "--dnsbl",
        "weak.test",
        "--dnsbl-threshold",
        "2",
    ]);
    let blocked = "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test";
    for (code, text) in rcpts_from(&server, "127.0.0.2") {
        assert_eq!((code, text.trim_end()), (554, blocked));
    }
    for (code, text) in rcpts_from(&server, "127.0.0.3") {
        assert_eq!(code, 250, "unlisted: {text}");
    }
    for (code, text) in rcpts_from(&server, "127.0.0.4") {
        assert_eq!(code, 250, "listed below the threshold: {text}");
    }
    let v = server.stats_json();
    assert_eq!(
        v["total"]["counters"]["refused_dnsbl"].as_u64(),
        Some(2),
        "{v}"
    );
    assert_eq!(
        v["total"]["counters"]["dnsbl_failures"].as_u64(),
        Some(0),
        "{v}"
    );
    let rejected = format!(
        "reject rcpt=<a@{DOMAIN}> from=<s@src.test> client=127.0.0.2 reason=dnsbl reply=554 5.7.1"
    );
    let weak = "dnsbl client=127.0.0.4 listed-by=weak.test score=1 blocked=false";
    server.log_when(&rejected, 1, WAIT);
    let log = server.log_when(weak, 1, WAIT);
    assert!(log.contains(&rejected), "{log}");
    assert!(log.contains(weak), "{log}");
    let text = server.stats(&[]);
    assert!(text.contains("dnsbl 2"), "{text}");
    let prom = server.stats(&["--prometheus"]);
    assert!(prom.contains("ringmx_refused_dnsbl_total"), "{prom}");

    // A trusted client is not looked up.
    let trusted = Server::start(&[
        "--dns-server",
        &dns_addr,
        "--dnsbl",
        "bl.test",
        "--trusted-networks",
        "127.0.0.2",
    ]);
    for (code, text) in rcpts_from(&trusted, "127.0.0.2") {
        assert_eq!(code, 250, "trusted: {text}");
    }
}

#[test]
fn dnsbl_with_the_dns_server_down_fails_open_and_counts_it() {
    require_io_uring!();
    let port = free_udp_port();
    let dns_addr = format!("127.0.0.1:{port}");
    let server = Server::start(&["--dns-server", &dns_addr, "--dnsbl", "bl.test"]);
    for (code, text) in rcpts_from(&server, "127.0.0.2") {
        assert_eq!(code, 250, "fails open: {text}");
    }
    let v = server.stats_json();
    assert_eq!(
        v["total"]["counters"]["refused_dnsbl"].as_u64(),
        Some(0),
        "{v}"
    );
    assert_eq!(
        v["total"]["counters"]["dnsbl_failures"].as_u64(),
        Some(1),
        "{v}"
    );
}

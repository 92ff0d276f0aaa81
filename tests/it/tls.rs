//! STARTTLS against `ringmx serve` over loopback: real clients (Python's smtplib, swaks,
//! openssl s_client) and a rustls client for the attacks (command injection, garbage instead
//! of a ClientHello, a stalled handshake), SNI selection and SIGHUP reload. Certificates come
//! from a test CA generated here with rcgen; no key is committed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::postfix::{maillog_when, postfix_usable, Postfix};
use crate::require_io_uring;
use crate::util::{
    self, assert_stored, assert_stored_bytes, body_with_subject, require_tool, run_tool, spool_cat,
    swaks, Client, Server, DOMAIN, RINGMX,
};

/// A test CA and the certificates it signs.
pub(crate) struct Ca {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: CertificateDer<'static>,
}

impl Ca {
    pub(crate) fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ringmx test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `<name>.pem` (leaf, then the CA: a full chain) and `<name>.key` for `names`,
    /// valid for `days` more days; returns the paths and the leaf's DER.
    pub(crate) fn leaf(
        &self,
        dir: &Path,
        name: &str,
        names: &[&str],
        days: i64,
    ) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let ca_pem = pem(&self.der);
        let c = dir.join(format!("{name}.pem"));
        let k = dir.join(format!("{name}.key"));
        std::fs::write(&c, format!("{}{ca_pem}", cert.pem())).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().clone())
    }

    /// The CA certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        pem(&self.der)
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = ringmx::server::tls::provider();
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // A resumed session shows the certificate of the first handshake; these tests look at
        // what the server sends now.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

fn pem(der: &CertificateDer<'_>) -> String {
    use std::fmt::Write as _;
    let b64 = base64(der.as_ref());
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        let _ = writeln!(s, "{}", std::str::from_utf8(chunk).unwrap());
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// A server with one certificate for `mx.example.test`; returns it with its CA and cert paths.
fn tls_server(extra: &[&str]) -> (Server, Ca, tempfile::TempDir) {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k, _) = ca.leaf(dir.path(), "mx", &["mx.example.test"], 90);
    let mut args = vec![
        "--tls-cert".to_string(),
        c.display().to_string(),
        "--tls-key".to_string(),
        k.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Server::start(&args), ca, dir)
}

/// A blocking plaintext SMTP client that can switch to TLS.
struct Plain {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Plain {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Self { stream, reader };
        assert_eq!(c.reply().0, 220);
        c
    }

    fn reply(&mut self) -> (u16, String) {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            assert!(line.len() >= 4, "short reply {line:?}");
            all.push_str(&line);
            if line.as_bytes()[3] == b' ' {
                return (line[..3].parse().unwrap(), all);
            }
        }
    }

    fn cmd(&mut self, line: &str) -> (u16, String) {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\r\n").unwrap();
        self.reply()
    }

    fn closed_within(&mut self, timeout: Duration) -> bool {
        util::closed_within(&self.stream, &mut self.reader, timeout)
    }

    /// Runs the handshake (the 220 to STARTTLS already read) as `sni`.
    fn into_tls(
        self,
        config: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        assert!(self.reader.buffer().is_empty(), "bytes after the 220");
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut s = rustls::StreamOwned::new(conn, self.stream);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("TLS handshake");
        }
        s
    }
}

fn tls_reply(s: &mut impl Read) -> (u16, String) {
    let mut all = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        s.read_exact(&mut byte).unwrap();
        all.push(byte[0]);
        if all.ends_with(b"\r\n") {
            let text = String::from_utf8(all.clone()).unwrap();
            let last = text.trim_end().rsplit("\r\n").next().unwrap().to_string();
            if last.as_bytes().get(3) == Some(&b' ') {
                return (last[..3].parse().unwrap(), text);
            }
        }
    }
}

fn tls_cmd<S: Read + Write>(s: &mut S, line: &str) -> (u16, String) {
    s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
    s.flush().unwrap();
    tls_reply(s)
}

fn counter(server: &Server, name: &str) -> u64 {
    server.stats_json()["total"]["counters"][name]
        .as_u64()
        .unwrap()
}

fn assert_esmtps(server: &Server, body: &[u8]) {
    assert!(
        server.wait_log("accepted id=", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), 1, "{}", server.log());
    assert_stored(&server.spool(), &ids[0], body);
    let stored = String::from_utf8_lossy(&spool_cat(&server.spool(), &ids[0])).into_owned();
    assert!(stored.contains(" with ESMTPS id "), "{stored}");
    assert!(stored.contains("(using TLSv1."), "{stored}");
    assert!(stored.contains(" with cipher TLS_"), "{stored}");
}

#[test]
fn starttls_is_not_offered_without_certificates() {
    require_io_uring!();
    let server = Server::start(&[]);
    let mut c = Plain::connect(server.addr);
    let (_, ehlo) = c.cmd("EHLO client.example");
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert_eq!(c.cmd("STARTTLS").0, 502);
}

#[test]
fn python_smtplib_starttls_delivers_esmtps() {
    require_io_uring!();
    require_tool("/usr/bin/python3", "python3");
    let (server, _ca, dir) = tls_server(&[]);
    let body = body_with_subject("over tls", "Hello over TLS.\r\n.leading dot\r\nGrüße");
    let path = dir.path().join("m.eml");
    std::fs::write(&path, &body).unwrap();
    let script = r#"
import smtplib, ssl, sys
host, port, path, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
data = open(path, 'rb').read()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with smtplib.SMTP(host, port, local_hostname='py.example.org', timeout=10) as s:
    s.ehlo()
    assert s.has_extn('starttls'), 'no STARTTLS'
    code, _ = s.starttls(context=ctx)
    assert code == 220, code
    s.ehlo()
    assert not s.has_extn('starttls'), 'STARTTLS offered twice'
    refused = s.sendmail('py@example.org', [rcpt], data)
    assert not refused, refused
print('sent')
"#;
    let out = run_tool(
        Command::new("python3")
            .args(["-c", script, "127.0.0.1", &server.addr.port().to_string()])
            .arg(&path)
            .arg(format!("rcpt@{DOMAIN}")),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "{out:?}\n{}", server.log());
    assert_esmtps(&server, &body);
    assert_eq!(counter(&server, "tls_handshakes"), 1);
    assert_eq!(counter(&server, "tls_sessions_v13"), 1);
    let log = server.log_when("version=TLSv1.3", 1, Duration::from_secs(10));
    assert!(
        log.contains("starttls from=") && log.contains("version=TLSv1.3"),
        "{log}"
    );
    let text = server.stats(&[]);
    assert!(text.contains("tls          handshakes 1"), "{text}");
    let prom = server.stats(&["--prometheus"]);
    assert!(
        prom.contains("ringmx_tls_handshake_seconds_count"),
        "{prom}"
    );
}

#[test]
fn swaks_tls_delivers_esmtps() {
    require_io_uring!();
    require_tool("/usr/bin/swaks", "swaks");
    let has_ssl = Command::new("perl")
        .args(["-MNet::SSLeay", "-e", "1"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_ssl {
        eprintln!("SKIPPED: swaks --tls needs Net::SSLeay (libnet-ssleay-perl)");
        return;
    }
    let (server, _ca, dir) = tls_server(&[]);
    let body = body_with_subject("swaks tls", "Hello from swaks over TLS.");
    let path = dir.path().join("swaks.eml");
    std::fs::write(&path, &body[..body.len() - 2]).unwrap();
    swaks(&server, &path, &["--tls"]);
    assert_esmtps(&server, &body);
}

#[test]
fn openssl_s_client_starttls_delivers_esmtps() {
    require_io_uring!();
    require_tool("/usr/bin/openssl", "openssl");
    let (server, _ca, _dir) = tls_server(&["--tls-min-version", "1.2"]);
    let body = body_with_subject("openssl tls", "Hello from s_client.");
    let mut script = format!(
        "EHLO s-client.example.org\nMAIL FROM:<ossl@example.org>\nRCPT TO:<rcpt@{DOMAIN}>\nDATA\n"
    );
    script.push_str(&String::from_utf8_lossy(&body).replace("\r\n", "\n"));
    script.push_str(".\nQUIT\n");
    let mut child = Command::new("openssl")
        .args(["s_client", "-starttls", "smtp", "-crlf", "-quiet"])
        .args(["-tls1_2", "-servername", "mx.example.test"])
        .args(["-connect", &server.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // s_client sends stdin only once TLS is up; it exits when the server closes after QUIT.
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("openssl s_client did not finish\n{}", server.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("250 2.0.0 Ok queued as"),
        "{stdout}\n{}",
        server.log()
    );
    assert_esmtps(&server, &body);
    assert_eq!(counter(&server, "tls_sessions_v12"), 1);
    let stored = spool_cat(&server.spool(), &server.accepted_ids()[0]);
    assert!(String::from_utf8_lossy(&stored).contains("(using TLSv1.2 with cipher"));
}

#[test]
fn bytes_after_starttls_are_discarded_and_the_session_reset() {
    require_io_uring!();
    let (server, ca, _dir) = tls_server(&[]);
    let mut c = Plain::connect(server.addr);
    let (code, ehlo) = c.cmd("EHLO client.example");
    assert_eq!(code, 250);
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    // CVE-2011-0411: a MAIL in the same write as STARTTLS.
    let injected = "MAIL FROM:<x@y>\r\n";
    c.stream
        .write_all(format!("STARTTLS\r\n{injected}").as_bytes())
        .unwrap();
    let (code, text) = c.reply();
    assert_eq!(code, 220, "{text}");
    assert!(text.starts_with("220 2.0.0 Ready to start TLS"), "{text}");
    let mut s = c.into_tls(ca.client_config(), "mx.example.test");
    // Had the injected MAIL run, this would be 503 5.5.1 nested MAIL; it is "send EHLO first".
    let (code, text) = tls_cmd(&mut s, "MAIL FROM:<a@example.org>");
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("HELO/EHLO"), "{text}");
    let (code, ehlo) = tls_cmd(&mut s, "EHLO client.example");
    assert_eq!(code, 250);
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    let (code, text) = tls_cmd(&mut s, "STARTTLS");
    assert_eq!((code, text.contains("5.5.1")), (503, true), "{text}");
    assert_eq!(tls_cmd(&mut s, "QUIT").0, 221);
    assert_eq!(
        counter(&server, "tls_discarded_bytes"),
        injected.len() as u64
    );
    assert!(
        server.wait_log("discarded=17", Duration::from_secs(10)),
        "{}",
        server.log()
    );
}

#[test]
fn a_stalled_handshake_is_cut_off() {
    require_io_uring!();
    let (server, _ca, _dir) = tls_server(&["--tls-handshake-timeout", "1"]);
    let mut c = Plain::connect(server.addr);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("STARTTLS").0, 220);
    // Half a ClientHello record header, then silence.
    c.stream.write_all(&[0x16, 0x03]).unwrap();
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(counter(&server, "tls_failed_timeout"), 1);
    assert!(server.wait_log("reason=tls-timeout", Duration::from_secs(5)));
}

#[test]
fn garbage_instead_of_a_client_hello_closes() {
    require_io_uring!();
    let (server, _ca, _dir) = tls_server(&[]);
    let mut c = Plain::connect(server.addr);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("STARTTLS").0, 220);
    c.stream.write_all(b"EHLO not-tls.example\r\n").unwrap();
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(server.wait_log("reason=tls-protocol-error", Duration::from_secs(5)));
    assert_eq!(counter(&server, "tls_failed_protocol"), 1);
    // The reactor is fine: the next client is served.
    let mut c = Plain::connect(server.addr);
    assert_eq!(c.cmd("EHLO client.example").0, 250);
}

/// Handshakes as `sni` and returns the leaf certificate the server sent.
fn served_cert(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> CertificateDer<'static> {
    let mut c = Plain::connect(addr);
    c.cmd("EHLO client.example");
    assert_eq!(c.cmd("STARTTLS").0, 220);
    let mut s = c.into_tls(config, sni);
    let leaf = s.conn.peer_certificates().unwrap()[0].clone().into_owned();
    assert_eq!(tls_cmd(&mut s, "QUIT").0, 221);
    leaf
}

#[test]
fn sni_picks_the_matching_certificate() {
    require_io_uring!();
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c1, k1, d1) = ca.leaf(dir.path(), "a", &["mx.example.test"], 90);
    let (c2, k2, d2) = ca.leaf(dir.path(), "b", &["mx.other.test", "*.wild.test"], 90);
    let p = |p: &PathBuf| p.display().to_string();
    let server = Server::start(&[
        "--tls-cert",
        &p(&c1),
        "--tls-key",
        &p(&k1),
        "--tls-cert",
        &p(&c2),
        "--tls-key",
        &p(&k2),
    ]);
    let config = ca.client_config();
    assert_eq!(
        served_cert(server.addr, config.clone(), "mx.example.test"),
        d1
    );
    assert_eq!(
        served_cert(server.addr, config.clone(), "mx.other.test"),
        d2
    );
    assert_eq!(served_cert(server.addr, config, "x.wild.test"), d2);
}

#[test]
fn sighup_reloads_certificates_and_keeps_them_on_failure() {
    require_io_uring!();
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k, d1) = ca.leaf(dir.path(), "live", &["mx.example.test"], 90);
    let server = Server::start(&[
        "--tls-cert",
        &c.display().to_string(),
        "--tls-key",
        &k.display().to_string(),
    ]);
    let config = ca.client_config();
    assert_eq!(
        served_cert(server.addr, config.clone(), "mx.example.test"),
        d1
    );
    // A session in progress keeps working across the reload.
    let mut open = Plain::connect(server.addr);
    open.cmd("EHLO client.example");
    assert_eq!(open.cmd("STARTTLS").0, 220);
    let mut open = open.into_tls(config.clone(), "mx.example.test");

    let (_, _, d2) = ca.leaf(dir.path(), "live", &["mx.example.test"], 60);
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_log("reloaded 1 tls certificate", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert_eq!(
        served_cert(server.addr, config.clone(), "mx.example.test"),
        d2
    );
    assert_eq!(tls_cmd(&mut open, "EHLO client.example").0, 250);

    std::fs::write(&k, "not a key\n").unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_log("tls reload failed", Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert_eq!(served_cert(server.addr, config, "mx.example.test"), d2);
    assert_eq!(tls_cmd(&mut open, "QUIT").0, 221);
}

#[test]
fn check_config_loads_the_certificates() {
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (good_c, good_k, _) = ca.leaf(dir.path(), "good", &["mx.example.test"], 90);
    let (soon_c, soon_k, _) = ca.leaf(dir.path(), "soon", &["mx.example.test"], 3);
    let (old_c, old_k, _) = ca.leaf(dir.path(), "old", &["mx.example.test"], -2);
    let check = |c: &Path, k: &Path| {
        Command::new(RINGMX)
            .args([
                "check-config",
                "--domain",
                DOMAIN,
                "--hostname",
                "mx.example.test",
            ])
            .arg("--spool")
            .arg(dir.path().join("spool"))
            .arg("--tls-cert")
            .arg(c)
            .arg("--tls-key")
            .arg(k)
            .output()
            .unwrap()
    };
    let out = check(&good_c, &good_k);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls-pairs=1"));

    let out = check(&soon_c, &soon_k);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: tls certificate"));

    for (c, k, why) in [
        (&old_c, &old_k, "expired"),
        (&good_c, &soon_k, "does not fit"),
        (
            &good_c,
            &dir.path().join("missing.key"),
            "cannot read tls key",
        ),
    ] {
        let out = check(c, k);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

/// Message `i` of the Postfix relay test (CRLF lines, not dot-stuffed): headers Postfix leaves
/// alone (so it only prepends its `Received:`), and bodies that vary in what a relay could
/// damage: leading dots, a lone `.` line, 8-bit UTF-8, 998-byte lines, trailing blanks,
/// SMTP commands in the body, MIME with base64, and sizes from a few bytes to 200 KiB.
fn relay_message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: <sender{i}@example.org>\r\nTo: <rcpt@{DOMAIN}>\r\nSubject: relay {i}\r\n\
         Message-ID: <relay-{i}@example.org>\r\nDate: Mon, 7 Dec 2026 04:00:00 +0000\r\n"
    );
    let mut rng = i as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    match i % 8 {
        0 => m.push_str(&format!("\r\nShort message {i}.\r\n")),
        1 => m.push_str(&format!(
            "\r\n.\r\n..\r\n. one dot and a space\r\n...three\r\n.\r\nend {i}\r\n"
        )),
        2 => m.push_str(&format!(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln, {i}. 日本語のテキスト. Ελληνικά.\r\n"
        )),
        3 => {
            m.push_str("\r\n");
            for c in ['a', 'b', 'c'] {
                m.push_str(&c.to_string().repeat(998));
                m.push_str("\r\n");
            }
        }
        4 => {
            m.push_str("\r\n");
            let size = 1024 * (1 + i % 200);
            let mut n = 0;
            while m.len() < size {
                n += 1;
                let len = (next() % 200) as usize;
                let line: String = (0..len)
                    .map(|_| char::from(b' ' + (next() % 95) as u8))
                    .collect();
                m.push_str(&format!("{n:05} {line}\r\n"));
            }
        }
        5 => {
            m.push_str(
                "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
                 --b\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n\
                 --b\r\nContent-Type: application/octet-stream\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\n",
            );
            let bytes: Vec<u8> = (0..3000 + 57 * i).map(|_| next() as u8).collect();
            for chunk in bytes.chunks(57) {
                m.push_str(&base64(chunk));
                m.push_str("\r\n");
            }
            m.push_str("--b--\r\n");
        }
        6 => m.push_str(&format!(
            "\r\ntrailing blanks  \r\n\ttab first\r\n\r\n\r\nFrom the start of a line\r\n\
             >From quoted\r\nlast line {i} \t\r\n"
        )),
        _ => m.push_str(&format!(
            "\r\nA body that looks like SMTP:\r\n.\r\nMAIL FROM:<evil@example.org>\r\n\
             RCPT TO:<victim@{DOMAIN}>\r\nDATA\r\nQUIT\r\nend {i}\r\n"
        )),
    }
    m.into_bytes()
}

/// Dot-stuffs `body` (CRLF lines) for DATA.
fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

#[test]
fn postfix_relays_200_messages_over_starttls_with_encrypt() {
    require_io_uring!();
    if !postfix_usable() {
        return;
    }
    const MESSAGES: usize = 200;
    let (server, ca, _dir) = tls_server(&[]);
    let postfix = Postfix::start(
        server.addr,
        "smtp_tls_security_level = encrypt\n\
         smtp_tls_CAfile = {DIR}/ca.pem\n\
         smtp_tls_loglevel = 1\n",
        |dir| std::fs::write(dir.join("ca.pem"), pem(&ca.der)).unwrap(),
    );
    let messages: Vec<Vec<u8>> = (0..MESSAGES).map(relay_message).collect();
    // Into Postfix's smtpd on loopback, 50 per connection.
    for batch in (0..MESSAGES).collect::<Vec<_>>().chunks(50) {
        let mut c = Client::greeted(postfix.smtpd);
        c.expect("EHLO inject.example.org", 250);
        for &i in batch {
            let (code, text) = c.send_message(
                &format!("sender{i}@example.org"),
                &format!("rcpt{}@{DOMAIN}", i % 7),
                &dot_stuff(&messages[i]),
            );
            assert_eq!(code, 250, "postfix refused message {i}: {text}");
        }
        c.expect("QUIT", 221);
    }
    // Postfix relays them to ringmx, each over STARTTLS.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while counter(&server, "messages_accepted") < MESSAGES as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {MESSAGES} messages arrived within 120 s\nqueue:\n{}\nmaillog:\n{}\nringmx:\n{}",
            counter(&server, "messages_accepted"),
            postfix.queue_listing(),
            postfix.maillog(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ids = server.accepted_ids();
    assert_eq!(ids.len(), MESSAGES, "{}", server.log());
    let mut seen = [false; MESSAGES];
    for id in &ids {
        let stored = spool_cat(&server.spool(), id);
        let text = String::from_utf8_lossy(&stored);
        let i: usize = text
            .split("Message-ID: <relay-")
            .nth(1)
            .and_then(|rest| rest.split('@').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("message {id} has no test Message-ID:\n{text}"));
        assert!(!seen[i], "message {i} arrived twice");
        seen[i] = true;
        // Our Received: (ESMTPS, TLS 1.3), Postfix's, then exactly what was injected.
        assert_stored_bytes(id, &stored, &messages[i]);
        let ours = text.split("\r\nReceived:").next().unwrap();
        assert!(ours.contains(" with ESMTPS id "), "{ours}");
        assert!(ours.contains("(using TLSv1.3 with cipher TLS_"), "{ours}");
        assert!(
            text.contains("by relay.example.org (Postfix) with ESMTP id"),
            "{text}"
        );
    }
    assert!(seen.iter().all(|&s| s));
    let log = maillog_when(
        &postfix,
        "Trusted TLS connection established to 127.0.0.1",
        1,
    );
    assert!(
        log.contains("Trusted TLS connection established to 127.0.0.1"),
        "{log}"
    );
    assert!(
        !log.contains("status=deferred") && !log.contains("status=bounced"),
        "{log}"
    );
    assert_eq!(counter(&server, "tls_failed_protocol"), 0);
}

#[test]
fn handshakes_keep_succeeding_while_sighup_swaps_certificates() {
    require_io_uring!();
    const SWAPS: usize = 15;
    let ca = Ca::new();
    let dir = tempfile::tempdir().unwrap();
    let (c, k, first) = ca.leaf(dir.path(), "live", &["mx.example.test"], 90);
    let server = Server::start(&[
        "--tls-cert",
        &c.display().to_string(),
        "--tls-key",
        &k.display().to_string(),
    ]);
    let config = ca.client_config();
    // Every certificate the server may serve: added before the SIGHUP that installs it.
    let issued = Arc::new(std::sync::Mutex::new(vec![first]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A session that negotiated before the swaps and stays open through them.
    let mut open = Plain::connect(server.addr);
    open.cmd("EHLO client.example");
    assert_eq!(open.cmd("STARTTLS").0, 220);
    let mut open = open.into_tls(config.clone(), "mx.example.test");

    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (addr, config, stop) = (server.addr, config.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut served = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    served.push(served_cert(addr, config.clone(), "mx.example.test"));
                }
                served
            })
        })
        .collect();

    let reloads = || {
        server
            .log()
            .lines()
            .filter(|l| l.contains("reloaded 1 tls certificate"))
            .count()
    };
    for n in 1..=SWAPS {
        // Written elsewhere and renamed over the live files (as certbot's symlink swap does):
        // a reload never sees a half-written file.
        let (nc, nk, der) = ca.leaf(dir.path(), "next", &["mx.example.test"], 90);
        issued.lock().unwrap().push(der);
        std::fs::rename(&nc, &c).unwrap();
        std::fs::rename(&nk, &k).unwrap();
        server.signal(libc::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while reloads() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "reload {n} not logged\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let served: Vec<CertificateDer<'static>> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("a handshake failed during the swaps"))
        .collect();

    let issued = issued.lock().unwrap();
    assert!(served.iter().all(|d| issued.contains(d)));
    let distinct = issued.iter().filter(|d| served.contains(d)).count();
    assert!(
        distinct > SWAPS / 2,
        "{} handshakes saw only {distinct} of {} certificates",
        served.len(),
        issued.len()
    );
    assert!(
        !server.log().contains("tls reload failed"),
        "{}",
        server.log()
    );
    assert_eq!(counter(&server, "tls_failed_protocol"), 0);
    // The last certificate is the one served now; the early session still works.
    assert_eq!(
        &served_cert(server.addr, config, "mx.example.test"),
        issued.last().unwrap()
    );
    assert_eq!(tls_cmd(&mut open, "EHLO client.example").0, 250);
    assert_eq!(tls_cmd(&mut open, "QUIT").0, 221);
    eprintln!(
        "{} handshakes during {SWAPS} reloads, {distinct} certificates seen",
        served.len()
    );
}

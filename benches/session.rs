//! Benchmarks of the sans-IO SMTP session: whole transcripts through `Session::handle_input`,
//! as the driver would feed them, with a sink that only counts bytes.
//!
//! Run: `cargo bench --bench session -- --warm-up-time 1 --measurement-time 3`

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_main, Criterion, Throughput};
use ringmx::smtp::{BodySink, Envelope, Phase, Rejection, Session, SessionConfig};

/// Counts what the spool would get.
#[derive(Default)]
struct CountingSink {
    messages: usize,
    body_bytes: usize,
}

impl BodySink for CountingSink {
    fn begin(&mut self, _: &Envelope) {
        self.messages += 1;
    }
    fn segment(&mut self, bytes: &[u8]) {
        self.body_bytes += bytes.len();
    }
    fn end(&mut self, _: &Envelope, outcome: Result<(), Rejection>) {
        assert_eq!(outcome, Ok(()));
    }
}

/// EHLO, `messages` × (MAIL, 10 RCPT, DATA, `body_lines` lines of 76 characters), QUIT.
fn transcript(messages: usize, body_lines: usize) -> (Vec<u8>, usize) {
    let mut t = b"EHLO client.example\r\n".to_vec();
    let mut body = 0;
    for _ in 0..messages {
        t.extend_from_slice(b"MAIL FROM:<sender@client.example> SIZE=5000 BODY=8BITMIME\r\n");
        for r in 0..10 {
            t.extend_from_slice(format!("RCPT TO:<user{r}@local.example>\r\n").as_bytes());
        }
        t.extend_from_slice(b"DATA\r\n");
        for i in 0..body_lines {
            let line = format!("{:0>76}\r\n", i);
            body += line.len();
            t.extend_from_slice(line.as_bytes());
        }
        t.extend_from_slice(b".\r\n");
    }
    t.extend_from_slice(b"QUIT\r\n");
    (t, body)
}

/// Feeds `input` in `chunk`-sized reads like the driver (unconsumed bytes are kept and moved to
/// the front before the next read), committing every message at once.
fn drive(
    config: &Arc<SessionConfig>,
    input: &[u8],
    chunk: usize,
    out: &mut Vec<u8>,
) -> CountingSink {
    let now = Instant::now();
    let mut session = Session::new(config.clone(), IpAddr::V4(Ipv4Addr::LOCALHOST), now);
    let mut sink = CountingSink::default();
    out.clear();
    session.greeting(out);
    let mut held: Vec<u8> = Vec::with_capacity(chunk + 512);
    for piece in input.chunks(chunk) {
        held.extend_from_slice(piece);
        let mut start = 0;
        loop {
            match session.handle_input(now, &held[start..], out, &mut sink) {
                Ok(n) => {
                    start += n;
                    if session.phase() == Phase::AwaitingCommit {
                        session.handle_commit(now, Ok("0123456789AB"), out);
                        continue;
                    }
                    break;
                }
                Err(_) => return sink,
            }
        }
        held.drain(..start);
    }
    sink
}

fn bench_session(c: &mut Criterion) {
    let config = Arc::new(SessionConfig::new(
        "mx.local.example",
        vec!["local.example".into()],
    ));
    let mut group = c.benchmark_group("session");
    let mut out = Vec::with_capacity(64 * 1024);
    for (name, messages, lines, chunk) in [
        ("transcript_10rcpt", 1, 50, 4096),
        ("pipelined_100msgs_10rcpt", 100, 50, 65536),
        ("commands_only_100msgs_10rcpt", 100, 0, 65536),
    ] {
        let (input, body) = transcript(messages, lines);
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let sink = drive(&config, &input, chunk, &mut out);
                assert_eq!((sink.messages, sink.body_bytes), (messages, body));
                assert!(out.ends_with(b"221 2.0.0 Bye\r\n"));
            })
        });
    }
    group.finish();
}

mod group {
    // criterion_group! generates an undocumented pub fn.
    #![allow(missing_docs)]
    criterion::criterion_group!(benches, super::bench_session);
}

criterion_main!(group::benches);

//! Benchmarks of the recipient table (`ringmx::smtp::RecipientTable`) with 1,000,000 addresses:
//! what a RCPT pays for a hit, a miss that falls through to the `@domain` search, and a hit in
//! another case (folded while comparing); and what building the table from its text costs.
//! Also the rate-limit check a MAIL or RCPT pays (`ringmx::server::rate`).
//!
//! Run: `cargo bench --bench recipients -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_main, Criterion};
use ringmx::server::rate::{RateKind, RateLimits};
use ringmx::smtp::RecipientTable;

const N: usize = 1_000_000;

fn text() -> String {
    let mut t = String::with_capacity(N * 28);
    for i in 0..N {
        t.push_str(&format!("user{i:07}@example.test\n"));
    }
    t.push_str("@wild.example\n");
    t
}

fn lookup(c: &mut Criterion) {
    let table = RecipientTable::parse(text().as_bytes()).unwrap();
    c.bench_function("recipients/1M/hit", |b| {
        b.iter(|| table.accepts(black_box("user0654321@example.test"), "example.test"));
    });
    c.bench_function("recipients/1M/hit_mixed_case", |b| {
        b.iter(|| table.accepts(black_box("User0654321@Example.TEST"), "Example.TEST"));
    });
    c.bench_function("recipients/1M/miss", |b| {
        b.iter(|| table.accepts(black_box("nobody@example.test"), "example.test"));
    });
    c.bench_function("recipients/1M/wildcard", |b| {
        b.iter(|| table.accepts(black_box("anyone@wild.example"), "wild.example"));
    });
}

fn build(c: &mut Criterion) {
    let t = text();
    let mut g = c.benchmark_group("recipients");
    g.sample_size(10);
    g.bench_function("1M/parse", |b| {
        b.iter(|| RecipientTable::parse(black_box(t.as_bytes())).unwrap());
    });
    g.finish();
}

fn rate(c: &mut Criterion) {
    let now = Instant::now();
    let limits = RateLimits::new(0, 0, u32::MAX, now).unwrap();
    let mut i = 0u32;
    c.bench_function("rate/allow", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i & 0xffff)));
            limits.allow_kind(RateKind::Recipient, black_box(client), now)
        });
    });
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    lookup(&mut c);
    build(&mut c);
    rate(&mut c);
}

criterion_main!(benches);

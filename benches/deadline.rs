//! Benchmarks of the coarse connection deadlines (`ringmx::server::deadline`): what a
//! connection pays per read or write (arm, one pending poll of the expiry, disarm), and what a
//! reactor's ticker pays per sweep with many connections registered.
//!
//! Run: `cargo bench --bench deadline -- --warm-up-time 1 --measurement-time 3`

use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use criterion::{criterion_main, BatchSize, Criterion};
use ringmx::server::deadline::{Deadline, Sweep};

fn per_operation(c: &mut Criterion) {
    let sweep = Sweep::new();
    let d = sweep.register();
    let at = Some(Instant::now() + Duration::from_secs(300));
    let waker = Waker::noop();
    c.bench_function("deadline/arm_poll_disarm", |b| {
        b.iter(|| {
            d.arm(std::hint::black_box(at));
            let mut f = pin!(d.expired());
            let _ = f.as_mut().poll(&mut Context::from_waker(waker));
            d.disarm();
        });
    });
}

fn sweep_many(c: &mut Criterion) {
    let now = Instant::now();
    let sweep = Sweep::new();
    // Armed, none due: the common case of a tick.
    let held: Vec<Rc<Deadline>> = (0..10_000)
        .map(|_| {
            let d = sweep.register();
            d.arm(Some(now + Duration::from_secs(300)));
            d
        })
        .collect();
    c.bench_function("deadline/sweep_10000_none_due", |b| {
        b.iter(|| sweep.sweep(std::hint::black_box(now)));
    });
    drop(held);
    c.bench_function("deadline/register_drop_prune_1000", |b| {
        b.iter_batched(
            Sweep::new,
            |s| {
                for _ in 0..1000 {
                    drop(s.register());
                }
                s.sweep(now)
            },
            BatchSize::SmallInput,
        );
    });
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    per_operation(&mut c);
    sweep_many(&mut c);
}

criterion_main!(benches);

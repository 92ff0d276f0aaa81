//! A route's workers: each takes [`Job`]s from the route's queue, keeps one connection open
//! while jobs keep coming (closing it after [`CONN_IDLE`] without one) and reports an
//! [`Outcome`] per job. For an `mx` route it looks the recipients' domain up and tries the MX
//! addresses in turn until one takes the transaction.
//!
//! It does not speak SMTP itself (see `conn`) or record outcomes (the stage does, see
//! `outcomes`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::sync::Mutex;

use super::conn::Conn;
use super::{Job, Outcome, CONN_IDLE};
use crate::dns::Resolver;
use crate::relay::mx::{self, LocalHost};
use crate::relay::route::{Route, Target};
use crate::relay::tls::RouteTls;
use crate::smtp::client::{RcptOutcome, Reply, Status};
use crate::stats::DeliveryStats;

/// What the workers of an `mx` route need besides the route.
#[derive(Debug, Clone)]
pub(super) struct MxContext {
    pub(super) resolver: Option<Resolver>,
    pub(super) me: Arc<LocalHost>,
}

/// What a route's workers share: the route, its index, its TLS, MX lookups and HELO name.
pub(super) struct WorkerRoute {
    pub(super) index: usize,
    pub(super) route: Arc<Route>,
    pub(super) tls: Arc<RouteTls>,
    pub(super) mx: MxContext,
    pub(super) helo: String,
}

/// One of a route's `concurrency` workers: takes jobs, keeps one connection while they come.
pub(super) async fn worker(
    ctx: WorkerRoute,
    jobs: Arc<Mutex<UnboundedReceiver<Job>>>,
    done: UnboundedSender<Outcome>,
    stats: Arc<DeliveryStats>,
) {
    let WorkerRoute {
        index,
        route,
        tls,
        mx,
        helo,
    } = ctx;
    let mut conn: Option<Conn> = None;
    loop {
        let job = {
            let mut rx = jobs.lock().await;
            if conn.is_some() {
                match tokio::time::timeout(CONN_IDLE, rx.recv()).await {
                    Ok(Some(j)) => Some(j),
                    Ok(None) => return,
                    Err(_) => None,
                }
            } else {
                match rx.recv().await {
                    Some(j) => Some(j),
                    None => return,
                }
            }
        };
        let Some(job) = job else {
            if let Some(c) = conn.take() {
                c.quit(&stats).await;
            }
            continue;
        };
        let waited = job.queued_at.elapsed();
        let t0 = Instant::now();
        let mut relay = route.target.to_string();
        let mut connect_time = Duration::ZERO;
        let mut tls_used = None;
        let results = if let Target::Mx(port) = route.target {
            // A kept connection serves later jobs of the same domain only.
            if conn.as_ref().is_some_and(|c| c.domain != job.domain) {
                if let Some(c) = conn.take() {
                    c.quit(&stats).await;
                }
            }
            match conn.as_mut() {
                Some(c) => {
                    relay = c.relay.clone();
                    tls_used = c.tls.clone();
                    c.transact(&job).await
                }
                None => {
                    let d = deliver_mx(&job, port, &tls, &helo, &mx, &stats).await;
                    relay = d.relay;
                    connect_time = d.connect_time;
                    conn = d.conn;
                    tls_used = conn.as_ref().and_then(|c| c.tls.clone());
                    d.results
                }
            }
        } else {
            if conn.is_none() {
                match Conn::open(&route, &tls, &helo).await {
                    Ok(c) => {
                        connect_time = t0.elapsed();
                        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
                        stats.connections_active.fetch_add(1, Ordering::Relaxed);
                        conn = Some(c);
                    }
                    Err(reply) => {
                        let _ = done.send(Outcome {
                            id: job.msg.id,
                            route: index,
                            results: deferred(&job, &reply),
                            rcpts: job.rcpts,
                            relay,
                            tls: None,
                            delays: [waited, t0.elapsed(), Duration::ZERO],
                        });
                        continue;
                    }
                }
            }
            match conn.as_mut() {
                Some(c) => {
                    relay = c.relay.clone();
                    tls_used = c.tls.clone();
                    c.transact(&job).await
                }
                None => deferred(&job, &Reply::local(451, "4.4.1 no connection")),
            }
        };
        let transaction = t0.elapsed().saturating_sub(connect_time);
        if conn.as_ref().is_some_and(|c| c.client.is_closed()) {
            conn = None;
            stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = done.send(Outcome {
            id: job.msg.id,
            route: index,
            results,
            rcpts: job.rcpts,
            relay,
            tls: tls_used,
            delays: [waited, connect_time, transaction],
        });
    }
}

/// What [`deliver_mx`] did.
struct MxDelivery {
    results: Vec<RcptOutcome>,
    relay: String,
    connect_time: Duration,
    /// The connection that took the transaction, kept for the domain's next job.
    conn: Option<Conn>,
}

/// Delivers `job` to its domain's MX hosts: resolves them, then tries each address until one
/// takes the transaction (a transaction whose recipients were all deferred moves on to the
/// next address).
async fn deliver_mx(
    job: &Job,
    port: u16,
    tls: &RouteTls,
    helo: &str,
    mx: &MxContext,
    stats: &DeliveryStats,
) -> MxDelivery {
    let domain = job.domain.clone().unwrap_or_default();
    let mut out = MxDelivery {
        results: Vec::new(),
        relay: "none".into(),
        connect_time: Duration::ZERO,
        conn: None,
    };
    let Some(resolver) = &mx.resolver else {
        out.results = deferred(job, &Reply::local(451, "4.3.5 no DNS resolver"));
        return out;
    };
    let hops = match mx::resolve(resolver, &domain, port, &mx.me).await {
        Ok(h) => h,
        Err(reply) => {
            out.results = replied(job, &reply);
            return out;
        }
    };
    let t0 = Instant::now();
    for hop in hops {
        let mut c = match Conn::open_hop(&hop, tls, helo, &domain).await {
            Ok(c) => c,
            Err(reply) => {
                tracing::info!(
                    "delivery id={} domain={domain} host={}[{}] not accepting: {reply}; trying the next MX address",
                    job.msg.id,
                    hop.host,
                    hop.addr
                );
                out.relay = format!("{}[{}]:{}", hop.host, hop.addr.ip(), hop.addr.port());
                out.results = deferred(job, &reply);
                continue;
            }
        };
        out.connect_time = t0.elapsed();
        stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        stats.connections_active.fetch_add(1, Ordering::Relaxed);
        out.relay = c.relay.clone();
        out.results = c.transact(job).await;
        if out.results.iter().any(|r| r.status != Status::Deferred) {
            out.conn = Some(c);
            return out;
        }
        let lost_after_data = c.client.lost_after_data();
        if c.client.is_closed() {
            stats.connections_active.fetch_sub(1, Ordering::Relaxed);
        } else {
            c.quit(stats).await;
        }
        if lost_after_data {
            // The host may have taken it: a retry later, not the next MX now.
            tracing::info!(
                "delivery id={} domain={domain} host={}[{}] lost after the end of the data; not trying the next MX now (the message may arrive twice)",
                job.msg.id,
                hop.host,
                hop.addr
            );
            return out;
        }
    }
    out
}

/// Every recipient of `job` gets `reply`: failed for a 5xx, else deferred.
fn replied(job: &Job, reply: &Reply) -> Vec<RcptOutcome> {
    let status = if reply.code >= 500 {
        Status::Failed
    } else {
        Status::Deferred
    };
    job.rcpts
        .iter()
        .map(|_| RcptOutcome {
            status,
            reply: reply.clone(),
        })
        .collect()
}

pub(super) fn deferred(job: &Job, reply: &Reply) -> Vec<RcptOutcome> {
    job.rcpts
        .iter()
        .map(|_| RcptOutcome {
            status: Status::Deferred,
            reply: reply.clone(),
        })
        .collect()
}

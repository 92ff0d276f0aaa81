//! The operator's commands from the control socket ([`crate::relay::control`]): `queue retry`
//! makes pending recipients due now, `queue delete` appends a durable Deleted record and
//! finishes the message, `queue bounce` fails the pending recipients through the same path as
//! an expiry.
//!
//! It does not serve the socket or parse the commands (see `relay::control`).

use std::time::{Duration, Instant, SystemTime};

use super::{Outcome, Stage};
use crate::relay::control::{self, Command, Refusal};
use crate::relay::queue::{self, RcptState};
use crate::smtp::client::{RcptOutcome, Reply, Status};
use crate::spool::frame::unix_us;
use crate::spool::id::MessageId;
use crate::spool::journal::RecordKind;

impl Stage {
    /// A command from the control socket (`ringmx queue retry|delete`).
    pub(super) async fn control(&mut self, req: control::Request) {
        let res = match req.command {
            Command::Retry(Some(id)) => match self.queue.get_mut(&id) {
                Some(m) if !m.deleted => {
                    let n = m.retry_now();
                    if n > 0 {
                        self.due.push(0, id);
                    }
                    tracing::info!("delivery id={id} retry requested: {n} recipient(s) due now");
                    Ok(n)
                }
                _ => Err(Refusal::NotQueued(id)),
            },
            Command::Retry(None) => {
                let mut n = 0;
                for (id, m) in &mut self.queue {
                    let k = m.retry_now();
                    if k > 0 {
                        self.due.push(0, *id);
                        n += k;
                    }
                }
                tracing::info!(
                    "delivery: retry of every message requested: {n} recipient(s) due now"
                );
                Ok(n)
            }
            Command::Delete(id) => self.delete(id).await,
            Command::Bounce(id) => self.bounce_now(id).await,
        };
        let _ = req.reply.send(res);
    }

    /// Deletes a queued message: a durable Deleted record first, then it leaves the queue (a
    /// transaction already under way for it is not interrupted; its outcome is ignored).
    async fn delete(&mut self, id: MessageId) -> Result<usize, Refusal> {
        let left = match self.queue.get(&id) {
            Some(m) if !m.deleted => m
                .rcpts
                .iter()
                .filter(|r| r.state != RcptState::Delivered)
                .count(),
            _ => return Err(Refusal::NotQueued(id)),
        };
        let rec = queue::record(
            RecordKind::Deleted,
            id,
            0,
            unix_us(SystemTime::now()),
            0,
            0,
            "deleted by the operator".into(),
        );
        // Behind the records still owed to the journal, if any: written in order.
        if let Err(e) = self.append_owed(vec![rec.clone()], Instant::now()).await {
            tracing::error!("delivery journal: {e}; message {id} is not deleted");
            return Err(Refusal::Other(format!(
                "the delivery journal could not record the deletion: {e}"
            )));
        }
        if let Some(m) = self.queue.get_mut(&id) {
            m.apply(&rec);
        }
        tracing::info!(
            "delivery id={id} deleted by the operator: {left} recipient(s) will not be delivered"
        );
        self.finish(id);
        self.reclaim();
        Ok(left)
    }

    /// `queue bounce`: the message's pending recipients fail now, through the same path as an
    /// expiry (a DSN spooled before the failures are recorded). Recipients in a transaction
    /// under way keep its outcome.
    async fn bounce_now(&mut self, id: MessageId) -> Result<usize, Refusal> {
        let rcpts: Vec<usize> = match self.queue.get(&id) {
            Some(m) if !m.deleted => m
                .rcpts
                .iter()
                .enumerate()
                .filter(|(i, r)| {
                    r.state == RcptState::Pending && !self.in_flight.contains(&(id, *i))
                })
                .map(|(i, _)| i)
                .collect(),
            _ => return Err(Refusal::NotQueued(id)),
        };
        let n = rcpts.len();
        let outcomes = rcpts
            .into_iter()
            .map(|i| Outcome {
                id,
                route: usize::MAX,
                rcpts: vec![i],
                results: vec![RcptOutcome {
                    status: Status::Failed,
                    reply: Reply::local(550, "5.0.0 returned to the sender by the postmaster"),
                }],
                relay: "none".into(),
                tls: None,
                delays: [Duration::ZERO; 3],
            })
            .collect();
        tracing::info!("delivery id={id} bounce requested: {n} recipient(s) fail now");
        self.apply(outcomes).await;
        Ok(n)
    }
}

//! A batch's way through the relay: published with its confirms left in
//! flight, settled, its confirmed rows marked while the next batch is claimed.

use std::collections::VecDeque;

use futures::future::BoxFuture;
use tokio::time::Instant;
use tracing::Span;

use super::{Passed, Relay, links::Lost, plan::Plan};
use crate::{
    handover::{self, Taking},
    ownership::{Claim, Ownership, PendingRow},
    publisher::{Outcome, Publisher},
};

/// A published batch and the future that yields the broker's answers.
pub(super) struct Batch {
    rows: Vec<PendingRow>,
    settle: BoxFuture<'static, (Vec<Outcome>, Option<String>)>,
    /// With OpenTelemetry, each row's publish span context; empty without.
    contexts: Vec<Option<String>>,
}

/// The rows of the batches in flight, oldest first.
pub(super) fn outstanding(in_flight: &VecDeque<Batch>) -> Vec<&[PendingRow]> {
    in_flight.iter().map(|batch| batch.rows.as_slice()).collect()
}

impl Relay {
    /// Takes what `claim`, started at `started`, returned: the plan learns of
    /// the rows, which are published at once. Whether there were any.
    pub(super) async fn take_claimed(
        &self,
        publisher: &Publisher,
        plan: &mut Plan,
        in_flight: &mut VecDeque<Batch>,
        claim: &Claim,
        claimed: Result<Vec<PendingRow>, sqlx::Error>,
        started: Instant,
    ) -> Result<bool, Lost> {
        let rows = claimed.map_err(Lost::Claiming)?;
        plan.claimed(claim, &rows, started);
        if rows.is_empty() {
            return Ok(false);
        }
        in_flight.push_back(self.publish(publisher, rows, started).await);
        Ok(true)
    }

    /// Waits for the oldest batch's confirms (`early`: or a wake-up, which
    /// leaves the batch in flight), marks the rows the broker confirmed and
    /// meanwhile, when the plan says so, claims and publishes the next batch.
    pub(super) async fn settle(
        &self,
        ownership: &mut Ownership,
        publisher: &Publisher,
        plan: &mut Plan,
        in_flight: &mut VecDeque<Batch>,
        early: bool,
        may_claim: bool,
    ) -> Result<Passed, Lost> {
        let Some(front) = in_flight.front_mut() else { return Ok(Passed::Again) };
        let settling = Instant::now();
        let (outcomes, broken) = if early {
            tokio::select! {
                settled = &mut front.settle => settled,
                // Rows handed over, or a claim wanted: the next pass sees which.
                _ = self.local.waker.notified() => return Ok(Passed::Again),
            }
        } else {
            (&mut front.settle).await
        };
        let batch = in_flight.pop_front().expect("the batch just settled");
        let marking = Instant::now();
        let rows = batch.rows;
        let confirmed: Vec<i64> =
            rows.iter().zip(&outcomes).filter(|(_, o)| **o == Outcome::Confirmed).map(|(r, _)| r.id).collect();
        // The next batch is claimed while this one is marked, each on its own connection.
        let next = plan
            .claim_beside(Instant::now(), in_flight.len(), may_claim, broken.is_some())
            .then(|| plan.claim(Instant::now(), &outstanding(in_flight), &rows));
        let archive = !self.config.retention.is_zero();
        // They close when both statements are done: with a claim beside, a little late.
        let spans = self.mark_spans(&batch.contexts, &outcomes, confirmed.len());
        let (marked, claimed) = ownership.mark_and_claim(&confirmed, archive, next.as_ref()).await;
        drop(spans);
        let marked = marked.map_err(|err| Lost::Marking { err, rows: confirmed.len() })?;
        self.deleted.add(marked);
        tracing::debug!(
            rows = confirmed.len(),
            settle_us = (marking - settling).as_micros() as u64,
            mark_us = marking.elapsed().as_micros() as u64,
            "marked outbox batch"
        );
        if let Some(claim) = &next {
            self.take_claimed(publisher, plan, in_flight, claim, claimed, marking).await?;
        }
        let rejected = self.record_outcomes(ownership, &rows, &outcomes).await;
        Ok(Passed::Settled { broken, rejected })
    }

    /// Publishes the rows writers handed over that may go out now (see
    /// [`crate::handover`]); a refused row, or a claim someone wanted, makes
    /// the plan claim at its next step. `open`: whether to take any.
    pub(super) async fn take_handed(
        &self,
        ownership: &Ownership,
        publisher: &Publisher,
        plan: &mut Plan,
        in_flight: &mut VecDeque<Batch>,
        open: bool,
    ) {
        let (handed, wanted) = self.local.handover.take();
        let mut claim = wanted;
        if !handed.is_empty() {
            let now = Instant::now();
            let taking = Taking {
                owned: ownership.partitions(),
                claimed_up_to: plan.claimed_up_to(),
                outstanding: outstanding(in_flight).iter().flat_map(|rows| rows.iter().map(|r| r.id)).collect(),
                open: open && plan.light(now),
            };
            let (rows, refused) = handover::accept(handed, taking);
            claim |= refused;
            if !rows.is_empty() {
                plan.handed(&rows, now);
                in_flight.push_back(self.publish(publisher, rows, now).await);
            }
        }
        if claim {
            plan.woken();
        }
    }

    /// Publishes claimed `rows` (claimed from `claiming` on), confirms left in flight.
    async fn publish(&self, publisher: &Publisher, rows: Vec<PendingRow>, claiming: Instant) -> Batch {
        self.metrics.batch(rows.len());
        let publishing = Instant::now();
        let mut flight = publisher.publish(&rows, &self.config.app_id).await;
        tracing::debug!(
            rows = rows.len(),
            claim_us = (publishing - claiming).as_micros() as u64,
            publish_us = publishing.elapsed().as_micros() as u64,
            "published outbox batch"
        );
        let contexts = flight.take_contexts();
        Batch { rows, settle: Box::pin(flight.settle(self.config.confirm_timeout)), contexts }
    }

    /// Counts each row's outcome and records on refused rows why; whether any was refused.
    async fn record_outcomes(&self, ownership: &mut Ownership, rows: &[PendingRow], outcomes: &[Outcome]) -> bool {
        let mut unconfirmed = 0;
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                Outcome::Confirmed => self.metrics.confirmed(row),
                Outcome::Unknown => unconfirmed += 1,
                Outcome::Rejected(_) => self.metrics.failed("rejected", 1),
            }
        }
        self.metrics.failed("unconfirmed", unconfirmed);
        let mut rejected = false;
        for (row, outcome) in rows.iter().zip(outcomes) {
            if let Outcome::Rejected(reason) = outcome {
                rejected = true;
                tracing::error!(event_id = %row.event_id, outbox_id = row.id, exchange = %row.exchange,
                    routing_key = %row.routing_key, reason = %reason, "broker refused an outbox message; it stays pending");
                if let Err(err) = ownership.record_failure(&[row.id], reason).await {
                    tracing::warn!(error = %err, "relay could not record a publish failure");
                }
            }
        }
        rejected
    }

    /// With OpenTelemetry, a span per confirmed row, child of its publish
    /// span, for the statement that marks the `batch_size` confirmed rows done;
    /// without it, nothing (`contexts` is empty).
    fn mark_spans(&self, contexts: &[Option<String>], outcomes: &[Outcome], batch_size: usize) -> Vec<Span> {
        contexts
            .iter()
            .zip(outcomes)
            .filter(|(_, outcome)| **outcome == Outcome::Confirmed)
            .map(|(context, _)| {
                let span = self.db.span(&Span::none(), "DELETE", "outbox_messages", batch_size);
                telemetry::set_parent(&span, context.as_deref());
                span
            })
            .collect()
    }
}

//! What the dispatcher knows of each endpoint: the deliveries it has claimed
//! and not yet sent, its attempts in flight, how long they take, and its
//! circuit breaker. A fast endpoint's deliveries are claimed ahead (up to
//! about [`QUEUE_TIME`] of its work), so one claim feeds many attempts; a slow
//! one's only as many as it has slots.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::claim::{Claimed, Room};

/// How much of an endpoint's work is claimed ahead, at its recent pace.
const QUEUE_TIME: Duration = Duration::from_millis(100);
/// At most this many times its concurrency is claimed ahead for one endpoint.
const MAX_AHEAD: usize = 64;
/// A claim leaves room for deliveries of this many endpoints it holds nothing
/// of (each up to its concurrency), beside those it does.
const NEW_ENDPOINTS: usize = 16;
/// An endpoint with nothing to do is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// A claimed delivery waiting for a slot.
pub(crate) struct Queued {
    pub(crate) delivery: Claimed,
    pub(crate) claimed_at: Instant,
}

/// One endpoint's state in this replica.
#[derive(Default)]
pub(crate) struct Endpoint {
    pub(crate) queued: VecDeque<Queued>,
    pub(crate) in_flight: usize,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    /// The recent attempts' duration, smoothed.
    pace: Option<Duration>,
    last_active: Option<Instant>,
}

impl Endpoint {
    fn outstanding(&self) -> usize {
        self.queued.len() + self.in_flight
    }

    /// Claimed deliveries it may hold (queued and in flight).
    fn depth(&self, concurrency: usize) -> usize {
        match self.pace {
            Some(pace) if !pace.is_zero() => {
                let ahead = (QUEUE_TIME.as_secs_f64() / pace.as_secs_f64() * concurrency as f64) as usize;
                ahead.clamp(concurrency, concurrency * MAX_AHEAD)
            }
            Some(_) => concurrency * MAX_AHEAD,
            None => concurrency,
        }
    }

    /// Attempts it may start now.
    pub(crate) fn slots(&self, concurrency: usize, now: Instant) -> usize {
        match self.open_until {
            Some(until) if until > now => 0,
            // Half-open: one probe at a time.
            Some(_) => usize::from(self.in_flight == 0),
            None => concurrency.saturating_sub(self.in_flight),
        }
    }
}

/// What finishing an attempt changed.
#[derive(Default)]
pub(crate) struct Finished {
    /// The endpoint's queued deliveries, if its circuit just opened: they are
    /// to be given back, not sent.
    pub(crate) given_back: Vec<Queued>,
    /// Whether a claim may now take more of the endpoint's deliveries.
    pub(crate) claimable: bool,
}

/// Every endpoint this replica has deliveries of, or recently had.
pub(crate) struct Endpoints {
    by_id: HashMap<Uuid, Endpoint>,
    concurrency: usize,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
}

impl Endpoints {
    pub(crate) fn new(concurrency: usize, breaker_threshold: u32, breaker_cooldown: Duration) -> Self {
        Self { by_id: HashMap::new(), concurrency, breaker_threshold, breaker_cooldown }
    }

    #[cfg(test)]
    fn get_mut(&mut self, id: &Uuid) -> Option<&mut Endpoint> {
        self.by_id.get_mut(id)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&Uuid, &mut Endpoint)> {
        self.by_id.iter_mut()
    }

    /// Claimed deliveries held, queued or in flight.
    pub(crate) fn outstanding(&self) -> usize {
        self.by_id.values().map(Endpoint::outstanding).sum()
    }

    /// Queues deliveries claimed (or handed over) just now behind their endpoints' others.
    pub(crate) fn queue(&mut self, deliveries: impl IntoIterator<Item = Claimed>) {
        let claimed_at = Instant::now();
        for delivery in deliveries {
            let endpoint = self.by_id.entry(delivery.endpoint_id).or_default();
            endpoint.last_active = Some(claimed_at);
            endpoint.queued.push_back(Queued { delivery, claimed_at });
        }
    }

    /// How many more deliveries a claim may take for `endpoint`; None while
    /// its circuit is open, or until it has used half its depth, so that a
    /// busy endpoint is claimed for in batches and not after every attempt.
    fn free(&self, endpoint: &Endpoint, now: Instant) -> Option<usize> {
        let depth = match endpoint.open_until {
            Some(until) if until > now => return None,
            Some(_) => 1,
            None => endpoint.depth(self.concurrency),
        };
        let free = depth.saturating_sub(endpoint.outstanding());
        let waiting = free == 0 || (endpoint.outstanding() > 0 && free < depth.div_ceil(2));
        (!waiting).then_some(free)
    }

    /// What the next claim may take, with `total` free in all: no more than
    /// the endpoints it knows have room for, and some for others, so that the
    /// claim locks few rows it then leaves.
    pub(crate) fn room(&self, total: usize) -> Room {
        let now = Instant::now();
        let mut room = Room { per_endpoint: self.concurrency as i32, ..Room::default() };
        let mut known = 0;
        for (id, endpoint) in &self.by_id {
            match self.free(endpoint, now) {
                None => room.full.push(*id),
                Some(free) if free != self.concurrency => {
                    known += free;
                    room.busy.push((*id, free as i32));
                }
                Some(_) => {}
            }
        }
        room.total = total.min(known + self.concurrency * NEW_ENDPOINTS) as i64;
        room
    }

    /// A finished attempt: frees its slot, learns its pace and moves the breaker.
    pub(crate) fn finished(&mut self, id: Uuid, duration: Duration, delivered: bool, failed: bool) -> Finished {
        let now = Instant::now();
        let Some(endpoint) = self.by_id.get(&id) else { return Finished::default() };
        let was_free = self.free(endpoint, now).is_some();
        let (threshold, cooldown) = (self.breaker_threshold, self.breaker_cooldown);
        let Some(endpoint) = self.by_id.get_mut(&id) else { return Finished::default() };
        endpoint.in_flight = endpoint.in_flight.saturating_sub(1);
        endpoint.last_active = Some(now);
        endpoint.pace = Some(match endpoint.pace {
            Some(pace) => pace.mul_f64(0.8) + duration.mul_f64(0.2),
            None => duration,
        });
        let mut given_back = Vec::new();
        if delivered {
            endpoint.consecutive_failures = 0;
            endpoint.open_until = None;
        } else if failed {
            endpoint.consecutive_failures += 1;
            if endpoint.consecutive_failures >= threshold {
                let opening = endpoint.open_until.is_none_or(|until| until <= now);
                if endpoint.open_until.is_none() {
                    tracing::warn!(endpoint_id = %id, failures = endpoint.consecutive_failures, "circuit opened: holding the endpoint's deliveries");
                }
                endpoint.open_until = Some(now + cooldown);
                if opening {
                    given_back = endpoint.queued.drain(..).collect();
                }
            }
        }
        let endpoint = &self.by_id[&id];
        Finished { given_back, claimable: !was_free && self.free(endpoint, now).is_some() }
    }

    /// Endpoints that are to be handed no more deliveries: their breaker is
    /// not closed, or they hold all they may.
    pub(crate) fn refusing(&self) -> Vec<Uuid> {
        self.by_id
            .iter()
            .filter(|(_, e)| e.open_until.is_some() || e.outstanding() >= e.depth(self.concurrency))
            .map(|(id, _)| *id)
            .collect()
    }

    /// When the first open circuit closes for a probe.
    pub(crate) fn next_probe(&self) -> Option<Instant> {
        let now = Instant::now();
        self.by_id.values().filter_map(|e| e.open_until).filter(|until| *until > now).min()
    }

    /// Forgets endpoints with nothing held, a closed circuit and nothing done for a while.
    pub(crate) fn forget_idle(&mut self) {
        let now = Instant::now();
        self.by_id.retain(|_, e| {
            e.outstanding() > 0
                || e.open_until.is_some()
                || e.consecutive_failures > 0
                || e.last_active.is_some_and(|at| now.duration_since(at) < FORGET_AFTER)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(endpoint_id: Uuid) -> Claimed {
        Claimed::of_endpoint(endpoint_id)
    }

    #[test]
    fn a_fast_endpoint_is_claimed_ahead_and_a_slow_one_only_for_its_slots() {
        let mut endpoints = Endpoints::new(4, 5, Duration::from_secs(30));
        let (fast, slow) = (Uuid::from_u128(1), Uuid::from_u128(2));
        for id in [fast, slow] {
            endpoints.queue([claimed(id)]);
            endpoints.get_mut(&id).expect("queued").queued.pop_front();
            endpoints.get_mut(&id).expect("queued").in_flight += 1;
        }
        endpoints.finished(fast, Duration::from_micros(200), true, false);
        endpoints.finished(slow, Duration::from_secs(2), true, false);
        let room = endpoints.room(1000);
        assert_eq!(room.busy, vec![(fast, 256)]);
        assert_eq!(room.total, 256 + 4 * 16, "what the fast one can take, and room for new ones");
        assert_eq!(endpoints.room(100).total, 100);
        assert!(room.full.is_empty(), "{:?}", room.full);
        // The slow one has its concurrency's room, which is what an unknown endpoint gets.
        assert_eq!(room.per_endpoint, 4);
    }

    #[test]
    fn an_endpoint_is_topped_up_only_after_using_half_its_depth() {
        let mut endpoints = Endpoints::new(4, 5, Duration::from_secs(30));
        let id = Uuid::from_u128(1);
        for _ in 0..3 {
            endpoints.queue([claimed(id)]);
        }
        // Depth 4 (no pace yet), 3 held: 1 free, under half.
        assert_eq!(endpoints.room(100).full, vec![id]);
        endpoints.get_mut(&id).expect("queued").queued.pop_front();
        endpoints.get_mut(&id).expect("queued").in_flight += 1;
        // Its first attempt finishing frees a slot: half free, claimable again.
        let finished = endpoints.finished(id, Duration::from_secs(1), true, false);
        assert!(finished.claimable);
        assert_eq!(endpoints.room(100).busy, vec![(id, 2)]);
        assert!(!endpoints.finished(id, Duration::from_secs(1), true, false).claimable, "already was");
    }

    #[test]
    fn the_circuit_opens_after_the_threshold_hands_back_the_queue_and_lets_one_probe_through() {
        let mut endpoints = Endpoints::new(4, 2, Duration::from_millis(30));
        let id = Uuid::from_u128(1);
        for _ in 0..5 {
            endpoints.queue([claimed(id)]);
        }
        endpoints.get_mut(&id).expect("queued").in_flight = 2;
        assert!(endpoints.finished(id, Duration::from_millis(1), false, true).given_back.is_empty());
        let given_back = endpoints.finished(id, Duration::from_millis(1), false, true).given_back;
        assert_eq!(given_back.len(), 5);
        let now = Instant::now();
        assert_eq!(endpoints.get_mut(&id).expect("known").slots(4, now), 0);
        assert_eq!(endpoints.room(100).full, vec![id]);
        assert!(endpoints.next_probe().is_some());
        std::thread::sleep(Duration::from_millis(40));
        let endpoint = endpoints.get_mut(&id).expect("known");
        assert_eq!(endpoint.slots(4, Instant::now()), 1, "half-open: one probe");
        assert_eq!(endpoints.room(100).busy, vec![(id, 1)]);
        // The probe succeeds: closed again, full slots.
        endpoints.get_mut(&id).expect("known").in_flight = 1;
        endpoints.finished(id, Duration::from_millis(1), true, false);
        assert_eq!(endpoints.get_mut(&id).expect("known").slots(4, Instant::now()), 4);
    }
}

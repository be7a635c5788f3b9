//! The order saga, orchestrated by Orders: ProcessPayment, then (for an
//! order with lines) ReserveInventory, then COMPLETED; a declined payment
//! fails the order, refused stock refunds the payment first, and a step
//! without a reply by its deadline fails the order TIMED_OUT and undoes
//! whatever may have happened, re-sending the compensations until answered.
//!
//! * [`state`]: the pure transition function.
//! * [`store`]: applies it under the saga row's lock, with the outbox rows.
//! * [`replies`]: the inbox handler of the participants' replies.
//! * [`timers`]: the sweep of step deadlines and compensation re-sends.
//! * [`metrics`]: started, completed, failed, durations and the gauges.

pub mod metrics;
pub mod replies;
pub mod state;
pub mod store;
pub mod timers;

pub use metrics::SagaMetrics;
pub use replies::ReplyHandler;
pub use store::Store;

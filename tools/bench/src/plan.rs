//! How long each phase runs in each mode.

use std::time::Duration;

pub(crate) struct Plan {
    pub(crate) pg_ceiling: Duration,
    pub(crate) amqp_messages: usize,
    pub(crate) levels: Vec<usize>,
    pub(crate) level: Duration,
    pub(crate) relay_on: Duration,
    pub(crate) rates: Vec<f64>,
    pub(crate) rate_window: Duration,
    pub(crate) drain_orders: u64,
    /// The pipeline search starts at this many orders/s, or at this share of
    /// the two-insert ceiling when that is more.
    pub(crate) pipeline_start: f64,
    pub(crate) pipeline_start_share: f64,
    pub(crate) search_steps: usize,
    /// Sustain this rate instead of searching for one (`--pipeline-rate`).
    pub(crate) pipeline_rate: Option<f64>,
    pub(crate) probe: Duration,
    pub(crate) sustained: Duration,
    /// How long delivery may take after a load window before the run fails.
    pub(crate) settle: Duration,
    /// Orders whose webhooks wait for the dispatcher, to measure its sustained rate.
    pub(crate) webhook_backlog: u64,
}

impl Plan {
    pub(crate) fn new(mode: &str) -> Self {
        let s = Duration::from_secs;
        match mode {
            // A few seconds, for CI: every phase runs, none is measured seriously.
            "smoke" => Self {
                pg_ceiling: s(1),
                amqp_messages: 2_000,
                levels: vec![8, 32],
                level: s(1),
                relay_on: s(1),
                rates: vec![100.0],
                rate_window: s(2),
                drain_orders: 500,
                pipeline_start: 200.0,
                pipeline_start_share: 0.0,
                search_steps: 1,
                pipeline_rate: None,
                probe: s(1),
                sustained: s(2),
                settle: s(30),
                webhook_backlog: 300,
            },
            "quick" => Self {
                pg_ceiling: s(5),
                amqp_messages: 20_000,
                levels: vec![1, 8, 32, 64],
                level: s(5),
                relay_on: s(8),
                rates: vec![100.0, 1_000.0],
                rate_window: s(10),
                drain_orders: 20_000,
                pipeline_start: 800.0,
                pipeline_start_share: 0.3,
                search_steps: 7,
                pipeline_rate: None,
                probe: s(6),
                sustained: s(20),
                settle: s(60),
                webhook_backlog: 5_000,
            },
            _ => Self {
                pg_ceiling: s(15),
                amqp_messages: 100_000,
                levels: vec![1, 8, 32, 64],
                level: s(15),
                relay_on: s(20),
                rates: vec![100.0, 1_000.0],
                rate_window: s(30),
                drain_orders: 50_000,
                pipeline_start: 800.0,
                pipeline_start_share: 0.3,
                search_steps: 10,
                pipeline_rate: None,
                probe: s(10),
                sustained: s(60),
                settle: s(120),
                webhook_backlog: 20_000,
            },
        }
    }
}

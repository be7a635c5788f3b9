//! How fast work is arriving, smoothed so that a short burst does not read as
//! heavy load: the relay and the inbox consumer both gather work into fuller
//! batches only while it arrives fast, and keep the lowest latency otherwise.

use std::time::Duration;

use tokio::time::Instant;

/// Items a second, as an exponentially decaying rate over about
/// [`ARRIVAL_WINDOW`], fed with the size of each batch as it is taken.
#[derive(Debug, Default)]
pub struct ArrivalRate {
    last: Option<Instant>,
    per_s: f64,
}

/// The time constant of [`ArrivalRate`].
pub const ARRIVAL_WINDOW: Duration = Duration::from_millis(250);

impl ArrivalRate {
    /// Counts `items` taken at `at` and returns the new estimate.
    pub fn update(&mut self, items: usize, at: Instant) -> f64 {
        let window = ARRIVAL_WINDOW.as_secs_f64();
        let elapsed = self.last.replace(at).map_or(0.0, |last| at.saturating_duration_since(last).as_secs_f64());
        self.per_s = self.per_s * (-elapsed / window).exp() + items as f64 / window;
        self.per_s
    }

    /// The estimate as of the last update, decayed to `at`, without counting anything.
    pub fn at(&self, at: Instant) -> f64 {
        let elapsed = self.last.map_or(0.0, |last| at.saturating_duration_since(last).as_secs_f64());
        self.per_s * (-elapsed / ARRIVAL_WINDOW.as_secs_f64()).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds batches of `items` every `every` for a second; returns the highest estimate.
    fn highest(items: usize, every: Duration) -> f64 {
        let (mut rate, start) = (ArrivalRate::default(), Instant::now());
        (0..(1_000 / every.as_millis() as u32)).map(|i| rate.update(items, start + every * i)).fold(0.0, f64::max)
    }

    #[test]
    fn the_arrival_rate_follows_steady_load() {
        // 1,000 items a second in batches of 5 every 5 ms, or of 20 every 20 ms.
        for (items, every) in [(5, 5), (20, 20)] {
            let mut rate = ArrivalRate::default();
            let start = Instant::now();
            let mut last = 0.0;
            for i in 0..200 {
                last = rate.update(items, start + Duration::from_millis(every * i));
            }
            assert!((900.0..1_150.0).contains(&last), "{items} every {every} ms read as {last:.0}/s");
        }
    }

    #[test]
    fn a_burst_at_light_load_does_not_read_as_heavy() {
        // 1,000 a second, arriving as 25 items every 25 ms: still under 1,500.
        assert!(highest(25, Duration::from_millis(25)) < 1_500.0);
        // 100 a second one at a time never comes close.
        assert!(highest(1, Duration::from_millis(10)) < 150.0);
        // 3,000 a second does cross it.
        assert!(highest(30, Duration::from_millis(10)) > 1_500.0);
    }

    #[test]
    fn an_idle_gap_brings_the_rate_down() {
        let (mut rate, start) = (ArrivalRate::default(), Instant::now());
        for i in 0..100 {
            rate.update(30, start + Duration::from_millis(10 * i));
        }
        let quiet = start + Duration::from_millis(990 + 2_000);
        assert!(rate.at(quiet) < 100.0, "{:.0}/s after two idle seconds", rate.at(quiet));
        let after_gap = rate.update(1, quiet);
        assert!(after_gap < 100.0, "{after_gap:.0}/s after two idle seconds");
    }
}

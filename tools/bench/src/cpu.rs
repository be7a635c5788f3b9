//! CPU time by process over a window, from `/proc` (Linux): where each order's
//! cost goes when the pipeline runs, so a profile of the saturated machine
//! is part of every report instead of a one-off measurement.

use std::collections::BTreeMap;

/// The processes an order costs CPU in, by the name each goes by in
/// `/proc/<pid>/stat`: Postgres (every backend and helper), RabbitMQ's Erlang
/// VM, the services (the saga's participants too), and this bench (the load generator).
const GROUPS: [(&str, &str); 6] = [
    ("postgres", "postgres"),
    ("beam.smp", "rabbitmq"),
    ("orders", "orders"),
    ("notifications", "notifications"),
    ("payments", "payments"),
    ("inventory", "inventory"),
];

/// `/proc` counts CPU time in USER_HZ ticks, 100 a second on Linux whatever the kernel's own tick.
const TICKS_PER_SECOND: f64 = 100.0;

/// Clock ticks used so far, per process with its group. A process that exits
/// during a window takes its ticks with it (its share of the window is not
/// counted, so windows should be steady); one that starts counts from zero.
#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSnapshot {
    ticks: BTreeMap<u32, (&'static str, u64)>,
    at: Option<std::time::Instant>,
}

impl CpuSnapshot {
    pub(crate) fn take() -> Self {
        let mut ticks: BTreeMap<u32, (&'static str, u64)> = BTreeMap::new();
        let own = std::process::id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else { return Self::default() };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
            let Ok(number) = pid.parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
            let command = &stat[open + 1..close];
            let group = if pid == own {
                Some("bench")
            } else {
                GROUPS.iter().find(|(comm, _)| *comm == command).map(|(_, group)| *group)
            };
            let Some(group) = group else { continue };
            // After the command: state is field 3; utime and stime are fields 14 and 15.
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let used = fields
                .get(11)
                .zip(fields.get(12))
                .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?));
            ticks.insert(number, (group, used.unwrap_or(0)));
        }
        Self { ticks, at: Some(std::time::Instant::now()) }
    }

    /// CPU microseconds per unit of work (`units` done between `self` and
    /// `later`) for each group and in total, and the share of the machine's
    /// cores the groups kept busy.
    pub(crate) fn per_unit(&self, later: &Self, units: u64) -> serde_json::Value {
        let tick_us = 1e6 / TICKS_PER_SECOND;
        // Per process, so that one exiting during the window (a backend whose
        // client disconnected) does not take the others' time off its group.
        let mut used: BTreeMap<&str, u64> = BTreeMap::new();
        for (pid, (group, ticks)) in &later.ticks {
            let before = self.ticks.get(pid).filter(|(was, _)| was == group).map_or(0, |(_, t)| *t);
            *used.entry(group).or_default() += ticks.saturating_sub(before);
        }
        let mut out = serde_json::Map::new();
        let mut total = 0.0;
        for group in GROUPS.iter().map(|(_, group)| *group).chain(["bench"]) {
            let us = used.get(group).copied().unwrap_or(0) as f64 * tick_us;
            if us == 0.0 && matches!(group, "payments" | "inventory") {
                // Not running (every phase but the saga's).
                continue;
            }
            total += us;
            out.insert(group.into(), crate::report::round(us / units.max(1) as f64, 0).into());
        }
        out.insert("total".into(), crate::report::round(total / units.max(1) as f64, 0).into());
        if let (Some(from), Some(to)) = (self.at, later.at) {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let busy = total / 1e6 / (to - from).as_secs_f64() / cores;
            out.insert("busy_share_of_cores".into(), crate::report::round(busy, 2).into());
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(processes: &[(u32, &'static str, u64)]) -> CpuSnapshot {
        CpuSnapshot { ticks: processes.iter().map(|(pid, group, ticks)| (*pid, (*group, *ticks))).collect(), at: None }
    }

    #[test]
    fn a_process_that_exits_takes_only_its_own_time_with_it() {
        // Backend 2 (500 ticks before the window) exits during it; backend 1
        // uses 30 ticks and backend 3 starts and uses 10: Postgres used 40,
        // where a per-group sum would read 140 - 600, so nothing.
        let before = snapshot(&[(1, "postgres", 100), (2, "postgres", 500), (9, "orders", 7)]);
        let after = snapshot(&[(1, "postgres", 130), (3, "postgres", 10), (9, "orders", 27)]);
        let per_unit = before.per_unit(&after, 4);
        // One tick is 10,000 us: 40 ticks over 4 units, 20 ticks over 4.
        assert_eq!(per_unit["postgres"], 100_000.0);
        assert_eq!(per_unit["orders"], 50_000.0);
        assert_eq!(per_unit["total"], 150_000.0);
    }

    #[test]
    fn a_reused_pid_in_another_group_counts_from_zero() {
        let before = snapshot(&[(5, "orders", 300)]);
        let after = snapshot(&[(5, "postgres", 20)]);
        let per_unit = before.per_unit(&after, 1);
        assert_eq!(per_unit["postgres"], 200_000.0);
        assert_eq!(per_unit["orders"], 0.0);
    }
}

//! Load drivers for the platform. Each is a binary that starts what it measures (on loopback,
//! bounded in time and count) and prints its figures; BENCHMARKS.md records them with the
//! command and the machine.
//!
//! Micro-benchmarks of single functions live beside their crates (`tr31/benches`).

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// Percentiles of latencies given in nanoseconds (sorts them).
pub fn percentiles(latencies: &mut [u64]) -> Percentiles {
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let max = latencies.len() - 1;
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index from a fraction of a length"
        )]
        let i = ((max as f64) * q).round() as usize;
        #[allow(
            clippy::cast_precision_loss,
            reason = "nanoseconds to microseconds for display"
        )]
        let v = latencies.get(i.min(max)).copied().unwrap_or(0) as f64 / 1000.0;
        v
    };
    Percentiles {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
    }
}

/// CPU time (user and system) a process has used so far, from `/proc/<pid>/stat`; `None` where
/// there is no such file (not Linux, or the process is gone).
///
/// Throughput on a shared or virtual machine moves by several percent from one minute to the
/// next; the CPU a process spends per operation moves less within such a stretch (not across
/// them), and says which process a difference between two builds is in. The figures are in
/// clock ticks of `USER_HZ`, which Linux fixes at 100 for `/proc` whatever the kernel's own
/// tick rate: 10 ms steps, under 1 % of a 10-second run of a busy process.
pub fn cpu_time(pid: u32) -> Option<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks_of(&stat).map(|t| std::time::Duration::from_millis(t * 10))
}

/// utime + stime from a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses
/// and may hold spaces or parentheses itself, so fields are counted from its last `)`: state is
/// the first after it, utime and stime the twelfth and thirteenth (fields 14 and 15).
fn ticks_of(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of several processes between two moments: `start` once, `per_op` at the end.
#[derive(Debug)]
pub struct CpuMeter {
    /// Each process's name, id and CPU time at the start.
    processes: Vec<(String, u32, std::time::Duration)>,
    started: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring each named process (those already gone are left out).
    pub fn start<S: Into<String>>(processes: impl IntoIterator<Item = (S, u32)>) -> Self {
        Self {
            processes: processes
                .into_iter()
                .filter_map(|(name, pid)| Some((name.into(), pid, cpu_time(pid)?)))
                .collect(),
            started: std::time::Instant::now(),
        }
    }

    /// One line: each process's CPU per operation (microseconds) and its share of a core, over
    /// the `ops` operations done since [`CpuMeter::start`].
    pub fn per_op(&self, ops: u64, what: &str) -> String {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        if ops == 0 {
            return format!("CPU per {what}: none done");
        }
        let parts: Vec<String> = self
            .processes
            .iter()
            .filter_map(|(name, pid, before)| {
                let used = cpu_time(*pid)?.saturating_sub(*before).as_secs_f64();
                #[allow(clippy::cast_precision_loss, reason = "a count for display")]
                let per = used * 1e6 / (ops as f64);
                Some(format!("{name} {per:.2} us ({:.2} cores)", used / wall))
            })
            .collect();
        format!("CPU per {what}: {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let mut v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.p999), (501.0, 900.0, 990.0, 999.0));
        assert_eq!(percentiles(&mut []).p50, 0.0);
    }

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces_and_parentheses() {
        // Fields 14 and 15 (utime, stime) are 700 and 55; the name holds ") (" and spaces.
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 900 0 0 0 700 55 0 0 20 0 3 0 \
                    100 2000000 500 18446744073709551615";
        assert_eq!(ticks_of(line), Some(755));
        assert_eq!(ticks_of("4242 (short) S 1"), None);
        assert_eq!(ticks_of("no parentheses"), None);
        // This process's own figure grows while it spins (the fields read are the CPU times).
        let me = cpu_time(std::process::id()).expect("this process's own stat");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        let grown = loop {
            x = std::hint::black_box(x.wrapping_add(1));
            if x.is_multiple_of(100_000) {
                let now = cpu_time(std::process::id()).unwrap_or_default();
                if now >= me + std::time::Duration::from_millis(30) {
                    break true;
                }
                if spin.elapsed() > std::time::Duration::from_secs(10) {
                    break false;
                }
            }
        };
        assert!(grown, "30 ms of spinning did not show in utime + stime");
    }
}

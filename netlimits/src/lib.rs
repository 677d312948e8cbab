//! What a server's accept loop needs so that running out of descriptors degrades it instead of
//! burning it: a connection cap fitted under `RLIMIT_NOFILE`, and a back-off with one log line
//! per interval when `accept` fails. Shared by `api` (TCP) and `keyd` (a Unix socket), which
//! had the same defect: retrying a failing `accept` at once spins a core and floods the log.

use std::io;
use std::time::{Duration, Instant};

/// Raises the soft descriptor limit to the hard one and returns the connection cap that fits
/// under it with `reserved` descriptors left for everything else (files, sockets, logs):
/// `wanted`, or less when the limit is lower (then a warning names `LimitNOFILE`).
pub fn fit_to_fd_limit(wanted: usize, reserved: u64) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let fits = usize::try_from(soft.saturating_sub(reserved).max(16)).unwrap_or(usize::MAX);
    if fits < wanted {
        tracing::warn!(
            max_connections = wanted,
            serving = fits,
            nofile = soft,
            "the descriptor limit is too low for max_connections; raise LimitNOFILE"
        );
        fits
    } else {
        wanted
    }
}

/// What the accept loop does after a failed `accept`.
#[derive(Debug)]
pub struct AcceptBackoff {
    delay: Duration,
    suppressed: u64,
    last_log: Option<Instant>,
}

/// Longest pause between two `accept` attempts while they keep failing.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one log line per this interval, however often `accept` fails.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Default for AcceptBackoff {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            suppressed: 0,
            last_log: None,
        }
    }
}

impl AcceptBackoff {
    /// Records a failure and returns how long to wait before the next `accept`. Errors about
    /// one connection (reset before it was accepted) need no pause; running out of descriptors
    /// or memory does, doubling from 10 ms to a second.
    pub fn failed(&mut self, e: &io::Error, now: Instant) -> Duration {
        let per_connection = matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::Interrupted
        );
        self.delay = if per_connection {
            Duration::ZERO
        } else {
            (self.delay * 2).clamp(Duration::from_millis(10), MAX_DELAY)
        };
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL)
        {
            tracing::warn!(
                error = %e,
                repeated = self.suppressed,
                pause_ms = self.delay.as_millis(),
                "accept failed (one line per 10 s at most)"
            );
            self.last_log = Some(now);
            self.suppressed = 0;
        } else {
            self.suppressed += 1;
        }
        self.delay
    }

    /// An `accept` succeeded: the next failure starts the back-off afresh.
    pub const fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = AcceptBackoff::default();
        let t = Instant::now();
        let emfile = io::Error::from_raw_os_error(24);
        let delays: Vec<_> = (0..9).map(|_| b.failed(&emfile, t).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(b.suppressed, 8, "one line for nine failures within 10 s");
        let reset = io::Error::from(io::ErrorKind::ConnectionAborted);
        assert_eq!(b.failed(&reset, t), Duration::ZERO);
        b.succeeded();
        assert_eq!(b.failed(&emfile, t + LOG_INTERVAL).as_millis(), 10);
        assert_eq!(b.suppressed, 0, "a new interval logs again");
    }
}

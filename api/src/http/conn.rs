//! How many connections the server holds, from whom, and what it does when `accept` fails.
//!
//! Every connection costs a file descriptor. A server that accepts until the process runs out
//! of them cannot open its database, its keyd socket or the next connection, and a server that
//! retries a failing `accept` at once spins a core and floods its log. So: a global cap below
//! what `RLIMIT_NOFILE` allows (connections beyond it wait in the kernel's listen queue), a
//! per-client cap so one address cannot take them all, and an exponential back-off with one
//! log line per interval when `accept` fails.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for everything that is not a client connection: the database and its
/// journal, keyd's sockets, the JWKS client, logs, the listener itself.
const RESERVED_FDS: u64 = 128;

/// Raises the soft descriptor limit to the hard one and returns the connection cap that fits
/// under it: `wanted`, or less when the limit is lower (then a warning names `LimitNOFILE`).
pub fn fit_to_fd_limit(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let fits = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
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

/// The connection caps: a global count and a count per client address.
#[derive(Debug)]
pub struct Limits {
    total: Arc<Semaphore>,
    per_client: Mutex<HashMap<IpAddr, usize>>,
    max_per_client: usize,
}

/// One admitted connection; dropping it gives its places back.
#[derive(Debug)]
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    limits: Arc<Limits>,
}

impl Limits {
    /// `max` connections in all, `max_per_client` from one address (0: no per-client cap).
    pub fn new(max: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(max.max(1))),
            per_client: Mutex::new(HashMap::new()),
            max_per_client,
        })
    }

    /// Waits for a free place (the caller accepts only after it has one, so connections
    /// beyond the cap stay in the listen queue instead of taking descriptors).
    pub async fn place(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.total).acquire_owned().await.ok()
    }

    /// Admits a connection from `ip` holding `permit`, or `None` when that client already
    /// holds its share.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, permit: OwnedSemaphorePermit) -> Option<Admitted> {
        let ip = client_of(ip);
        if self.max_per_client > 0 {
            let mut counts = self
                .per_client
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = counts.entry(ip).or_insert(0);
            if *n >= self.max_per_client {
                return None;
            }
            *n += 1;
        }
        Some(Admitted {
            _permit: permit,
            ip,
            limits: Arc::clone(self),
        })
    }

    /// Connections currently held by the client `ip` counts for.
    pub fn held_by(&self, ip: IpAddr) -> usize {
        let ip = client_of(ip);
        self.per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.limits.max_per_client == 0 {
            return;
        }
        let mut counts = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// The client an address counts for: an IPv4 address itself (also when written as an
/// IPv4-mapped IPv6 address), and for IPv6 its /64, since one host is routinely given a whole
/// /64 and could otherwise open its share from every address in it.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                for s in segments.iter_mut().skip(4) {
                    *s = 0;
                }
                IpAddr::V6(std::net::Ipv6Addr::from(segments))
            }
        },
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

    #[tokio::test]
    async fn per_client_cap_and_release() {
        let limits = Limits::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = limits.admit(a, limits.place().await.unwrap()).unwrap();
        let _second = limits.admit(a, limits.place().await.unwrap()).unwrap();
        assert!(limits.admit(a, limits.place().await.unwrap()).is_none());
        // The refused connection gave its global place back; b still gets one.
        let _third = limits.admit(b, limits.place().await.unwrap()).unwrap();
        assert_eq!((limits.held_by(a), limits.held_by(b)), (2, 1));
        // The global cap is full: the next place waits until a connection ends.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), limits.place())
                .await
                .is_err()
        );
        drop(first);
        assert_eq!(limits.held_by(a), 1);
        assert!(limits.admit(a, limits.place().await.unwrap()).is_some());
    }

    #[tokio::test]
    async fn an_ipv6_slash_64_is_one_client() {
        let limits = Limits::new(10, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _one = limits.admit(a, limits.place().await.unwrap()).unwrap();
        let _two = limits.admit(b, limits.place().await.unwrap()).unwrap();
        assert!(limits.admit(b, limits.place().await.unwrap()).is_none());
        assert!(
            limits
                .admit(elsewhere, limits.place().await.unwrap())
                .is_some()
        );
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(client_of(mapped), IpAddr::from([127, 0, 0, 1]));
    }

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

//! How many connections the server holds, from whom, and what it does when `accept` fails.
//!
//! Every connection costs a file descriptor. A server that accepts until the process runs out
//! of them cannot open its database, its keyd socket or the next connection, and a server that
//! retries a failing `accept` at once spins a core and floods its log. So: a global cap below
//! what `RLIMIT_NOFILE` allows (connections beyond it wait in the kernel's listen queue), a
//! per-client cap so one address cannot take them all, and an exponential back-off with one
//! log line per interval when `accept` fails.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Descriptors kept for everything that is not a client connection: the database and its
/// journal, keyd's sockets, the JWKS client, logs, the listener itself.
const RESERVED_FDS: u64 = 128;

/// Raises the soft descriptor limit to the hard one and returns the connection cap that fits
/// under it (see [`netlimits::fit_to_fd_limit`]).
pub fn fit_to_fd_limit(wanted: usize) -> usize {
    netlimits::fit_to_fd_limit(wanted, RESERVED_FDS)
}

pub use netlimits::AcceptBackoff;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}

//! Fault injection: what the platform's link must survive from a real acquirer host.
//!
//! Every fault acts on the *answer*: the host still decides and records the request (a real
//! host that approved a purchase and lost the answer has still approved it, which is why the
//! platform reverses unanswered purchases), then delays, withholds, spoils or cuts off the
//! response. "Next N" faults count down as requests arrive; per-STAN faults hold until cleared.
//! The fraction is drawn from a seeded generator so a failing run can be replayed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use acqlink::Stan;

/// The faults in force. `Default` is none at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Waited before every response (the per-STAN latency wins where set).
    pub latency: Duration,
    /// Latency for the responses to requests with these STANs.
    pub stan_latency: HashMap<Stan, Duration>,
    /// Requests with these STANs are never answered.
    pub drop_stans: HashSet<Stan>,
    /// The next this many requests are never answered.
    pub drop_next: u32,
    /// Each request is left unanswered with this probability (0.0 to 1.0).
    pub drop_fraction: f64,
    /// Requests with these STANs are answered with a wrong MAC.
    pub bad_mac_stans: HashSet<Stan>,
    /// The next this many requests are answered with a wrong MAC.
    pub bad_mac_next: u32,
    /// The connections that carry the next this many requests are closed instead of answering.
    pub close_next: u32,
}

/// What a fault does to one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Nothing: answer normally.
    None,
    /// Withhold the answer.
    Drop,
    /// Answer with a wrong MAC.
    BadMac,
    /// Close the connection instead.
    Close,
}

/// The faults and the generator the fraction is drawn from.
#[derive(Debug)]
pub(crate) struct FaultState {
    pub(crate) faults: Faults,
    rng: u64,
}

impl FaultState {
    pub(crate) fn new(faults: Faults, seed: u64) -> Self {
        Self {
            faults,
            // xorshift has one fixed point, zero; any other seed is a full-period start.
            rng: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// The fault for the request with this STAN (none for a request without one), counting
    /// down the "next N" faults it uses. Closing wins over dropping, which wins over a bad MAC.
    pub(crate) fn decide(&mut self, stan: Option<Stan>) -> Injected {
        let f = &mut self.faults;
        if f.close_next > 0 {
            f.close_next -= 1;
            return Injected::Close;
        }
        if stan.is_some_and(|s| f.drop_stans.contains(&s)) {
            return Injected::Drop;
        }
        if f.drop_next > 0 {
            f.drop_next -= 1;
            return Injected::Drop;
        }
        if f.drop_fraction > 0.0 && self.draw() < self.faults.drop_fraction {
            return Injected::Drop;
        }
        let f = &mut self.faults;
        if stan.is_some_and(|s| f.bad_mac_stans.contains(&s)) {
            return Injected::BadMac;
        }
        if f.bad_mac_next > 0 {
            f.bad_mac_next -= 1;
            return Injected::BadMac;
        }
        Injected::None
    }

    /// The latency before answering the request with this STAN.
    pub(crate) fn latency(&self, stan: Option<Stan>) -> Duration {
        stan.and_then(|s| self.faults.stan_latency.get(&s).copied())
            .unwrap_or(self.faults.latency)
    }

    /// A uniform draw in [0, 1) from xorshift64* (plenty for a test's coin flips; not for keys).
    fn draw(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let high = u32::try_from(x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32).unwrap_or(0);
        f64::from(high) / 4_294_967_296.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stan(n: u32) -> Stan {
        Stan::new(n).unwrap()
    }

    #[test]
    fn order_and_countdown() {
        let mut faults = Faults {
            close_next: 1,
            drop_next: 1,
            bad_mac_next: 1,
            ..Faults::default()
        };
        faults.drop_stans.insert(stan(7));
        faults.bad_mac_stans.insert(stan(8));
        let mut s = FaultState::new(faults, 1);
        assert_eq!(s.decide(Some(stan(7))), Injected::Close);
        assert_eq!(s.decide(Some(stan(7))), Injected::Drop);
        assert_eq!(s.decide(Some(stan(1))), Injected::Drop);
        assert_eq!(s.decide(Some(stan(1))), Injected::BadMac);
        assert_eq!(s.decide(Some(stan(1))), Injected::None);
        assert_eq!(s.decide(Some(stan(8))), Injected::BadMac);
        assert_eq!(
            s.decide(Some(stan(7))),
            Injected::Drop,
            "per-STAN faults stay"
        );
        assert_eq!(s.decide(None), Injected::None);
    }

    #[test]
    fn fraction_is_roughly_kept_and_reproducible() {
        let run = |seed| {
            let faults = Faults {
                drop_fraction: 0.25,
                ..Faults::default()
            };
            let mut s = FaultState::new(faults, seed);
            (0..4000)
                .map(|_| s.decide(None) == Injected::Drop)
                .collect::<Vec<_>>()
        };
        let a = run(42);
        assert_eq!(a, run(42));
        let dropped = a.iter().filter(|d| **d).count();
        assert!((800..1200).contains(&dropped), "{dropped}");
        assert_ne!(a, run(0));
    }

    #[test]
    fn latency_per_stan_wins() {
        let mut faults = Faults {
            latency: Duration::from_millis(5),
            ..Faults::default()
        };
        faults
            .stan_latency
            .insert(stan(3), Duration::from_millis(50));
        let s = FaultState::new(faults, 1);
        assert_eq!(s.latency(Some(stan(3))), Duration::from_millis(50));
        assert_eq!(s.latency(Some(stan(4))), Duration::from_millis(5));
        assert_eq!(s.latency(None), Duration::from_millis(5));
    }
}

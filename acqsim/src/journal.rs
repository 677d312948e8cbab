//! What the host received and what it did about it, for tests to inspect.
//!
//! The journal holds no card data: no PAN, no PIN block, no key. It is bounded
//! ([`JOURNAL_CAPACITY`] entries, oldest dropped first) so that a long-running simulator under
//! load does not grow without end; the [`Counters`] and the reversal records are not trimmed.

use std::collections::{HashMap, VecDeque};

use acqlink::Mti;

pub use crate::cards::PinCheck;

/// The most journal entries kept.
pub const JOURNAL_CAPACITY: usize = 100_000;
/// The most purchases remembered for matching reversals against.
pub(crate) const PURCHASE_CAPACITY: usize = 100_000;

/// What became of the answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Answered, with a good MAC.
    Answered,
    /// Not answered: a drop fault, or section 8's time-out card.
    Dropped,
    /// Answered with a wrong MAC: a fault, or section 8's processor-error card.
    BadMac,
    /// The connection was closed instead of answering.
    Closed,
    /// Not answerable: DE 11 or DE 41 missing, so no response could be matched to it.
    Unanswerable,
}

/// One request the host accepted (its MAC verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Order of arrival over the simulator's life, from 1.
    pub seq: u64,
    /// Which connection it came on (numbered from 1 in order of acceptance).
    pub connection: u64,
    /// The request's MTI.
    pub mti: Mti,
    /// DE 11 as received.
    pub stan: Option<String>,
    /// DE 41 as received.
    pub terminal_id: Option<String>,
    /// DE 37 as received.
    pub rrn: Option<String>,
    /// DE 3 as received.
    pub processing_code: Option<String>,
    /// DE 4 as a number.
    pub amount: Option<u64>,
    /// DE 14 (`YYMM`) as received: the card's expiry, which a refund carries again.
    pub expiry: Option<String>,
    /// DE 39 of the response built (also when it was then dropped or sent with a bad MAC);
    /// `None` when no response was built.
    pub response_code: Option<String>,
    /// DE 38 of an approval.
    pub authorization_id: Option<String>,
    /// What the PIN check found.
    pub pin: PinCheck,
    /// What became of the response.
    pub delivery: Delivery,
}

/// Running totals since the simulator started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received (whatever became of them).
    pub received: u64,
    /// Requests ignored because their MAC did not verify under the ZAK.
    pub mac_failures: u64,
    /// Frames that did not decode, carried no MAC, or were not requests.
    pub malformed: u64,
    /// Responses sent with a good MAC.
    pub answered: u64,
    /// Responses withheld (drop faults, the time-out card, unanswerable requests).
    pub dropped: u64,
    /// Responses sent with a wrong MAC.
    pub bad_mac: u64,
    /// Connections the host closed: a close fault, or [`crate::Simulator::close_connections`].
    pub closed: u64,
    /// Connections accepted.
    pub connections: u64,
}

/// The reversal of one original request, as DE 90 names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    /// DE 41 of the reversal (the original's terminal).
    pub terminal_id: String,
    /// The original's MTI (DE 90, characters 1-4).
    pub original_mti: String,
    /// The original's STAN (DE 90, 5-10).
    pub original_stan: String,
    /// The original's DE 7 (DE 90, 11-20).
    pub original_transmission: String,
    /// DE 37 of the reversal (the original's RRN).
    pub rrn: Option<String>,
    /// Whether the host had seen the original request.
    pub original_seen: bool,
    /// DE 39 the host had decided for the original, if seen.
    pub original_response: Option<String>,
    /// How many `0400`/`0401` arrived for it.
    pub requests: u32,
}

/// Identifies a request on a link: DE 41, DE 11, DE 7.
pub(crate) type TxnKey = (String, String, String);

/// A purchase the host decided, kept to match reversals against.
#[derive(Debug, Clone)]
pub(crate) struct Purchase {
    /// `None` for a request the host decided not to answer (section 8's time-out card).
    pub(crate) response_code: Option<String>,
}

/// The mutable record: journal, counters, purchases, reversals.
#[derive(Debug, Default)]
pub(crate) struct Record {
    pub(crate) entries: VecDeque<Entry>,
    pub(crate) next_seq: u64,
    pub(crate) counters: Counters,
    purchases: HashMap<TxnKey, Purchase>,
    purchase_order: VecDeque<TxnKey>,
    /// Reversals by the original they reverse.
    pub(crate) reversals: HashMap<TxnKey, Reversal>,
    /// Order the reversals were first seen in.
    pub(crate) reversal_order: Vec<TxnKey>,
    /// The DE 39 answered to each reversal request, by the reversal's own key, so a `0401`
    /// repeat gets exactly what its `0400` got.
    pub(crate) reversal_answers: HashMap<TxnKey, String>,
}

impl Record {
    /// Adds an entry, numbering it and trimming the oldest past the capacity.
    pub(crate) fn push(&mut self, mut entry: Entry) {
        self.next_seq += 1;
        entry.seq = self.next_seq;
        match entry.delivery {
            Delivery::Answered => self.counters.answered += 1,
            Delivery::Dropped | Delivery::Unanswerable => self.counters.dropped += 1,
            Delivery::BadMac => self.counters.bad_mac += 1,
            // Counted when the connection really closes (see `Counters::closed`).
            Delivery::Closed => {}
        }
        if self.entries.len() >= JOURNAL_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    /// Remembers a decided purchase.
    pub(crate) fn remember_purchase(&mut self, key: TxnKey, purchase: Purchase) {
        if self.purchase_order.len() >= PURCHASE_CAPACITY
            && let Some(old) = self.purchase_order.pop_front()
        {
            self.purchases.remove(&old);
        }
        if self.purchases.insert(key.clone(), purchase).is_none() {
            self.purchase_order.push_back(key);
        }
    }

    /// The purchase with this key, if remembered.
    pub(crate) fn purchase(&self, key: &TxnKey) -> Option<&Purchase> {
        self.purchases.get(key)
    }

    /// The reversals, in the order first seen.
    pub(crate) fn reversals(&self) -> Vec<Reversal> {
        self.reversal_order
            .iter()
            .filter_map(|k| self.reversals.get(k).cloned())
            .collect()
    }
}

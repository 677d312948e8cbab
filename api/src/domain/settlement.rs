//! Settlement (contract section 8): a batch closes a merchant's approved charges.
//!
//! A batch holds the lock of every charge it settles (refunds and cancels hold their charge's
//! lock across the processor call and the commit), so it sees and writes each charge's latest
//! state, and two concurrent batches never settle one charge twice.

use serde::{Deserialize, Serialize};

use crate::domain::charges::{Charge, ChargeStatus, Engine, Txn};
use crate::domain::events;
use crate::domain::model::{Amount, Merchant};
use crate::error::{ApiError, Code};
use crate::store::db::{self, Record};
use crate::wire::fields::MAX_MINOR;
use crate::wire::ids;

/// A settlement batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    /// `st_…`.
    pub settlement_id: String,
    /// Its merchant.
    pub merchant_id: String,
    /// Charges settled.
    pub count: u64,
    /// Σ (amount + tip − refunded).
    pub total: Amount,
    /// Unix seconds.
    pub created_at: i64,
    /// When the batch left settleable charges for the next one (its total would have passed
    /// the 12 digits of the money format): the creation time of the oldest left.
    #[serde(default)]
    pub left_from: Option<i64>,
}

impl Settlement {
    /// Where the next batch may stop looking back: charges older than this were settled by
    /// this batch or could not be (still pending), unless this batch left some.
    fn next_cutoff(&self, margin: i64) -> i64 {
        let cut = self.created_at - margin;
        self.left_from.map_or(cut, |left| cut.min(left))
    }
}

/// The charges one batch takes, oldest first, while the total stays within the money format;
/// returns them, the total, and the creation time of the oldest charge left out.
fn fill_batch(mut open: Vec<Charge>) -> (Vec<Charge>, u64, Option<i64>) {
    open.sort_by(|a, b| (a.created_at, &a.charge_id).cmp(&(b.created_at, &b.charge_id)));
    let mut total = 0u64;
    let mut taken = Vec::with_capacity(open.len());
    let mut left_from: Option<i64> = None;
    for c in open {
        let net = c.total().saturating_sub(c.amount_refunded);
        match total.checked_add(net).filter(|t| *t <= MAX_MINOR) {
            Some(t) => {
                total = t;
                taken.push(c);
            }
            None => {
                left_from = Some(left_from.map_or(c.created_at, |l| l.min(c.created_at)));
            }
        }
    }
    (taken, total, left_from)
}

impl Record for Settlement {
    const KIND: &'static str = "settlement";
    fn id(&self) -> &str {
        &self.settlement_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("settlements".into(), self.merchant_id.clone())]
    }
}

/// How long after a charge was created its outcome can still arrive (seconds): charges older
/// than the newest by more than this are settled, one way or the other.
fn outcome_window(engine: &Engine) -> i64 {
    i64::try_from(engine.timeout.as_secs()).unwrap_or(60) + 120
}

/// Closes the merchant's batch: every settleable charge (approved or partially refunded, not
/// yet settled) that fits the money format gets `settled_at`; approved ones become `settled`.
/// A charge whose cancel the processor has sent and not yet seen acknowledged
/// ([`crate::domain::processor::Processor::cancels_pending`]) is left out: it becomes
/// `cancelled` when the acknowledgement comes, which is never a charge to settle.
///
/// # Errors
/// 409 if the charges changed under the batch, 503 when storage is down.
pub async fn settle(
    engine: &Engine,
    merchant: &Merchant,
    now: i64,
) -> Result<Settlement, ApiError> {
    // No merchant-wide lock: stripes are never nested (a settle key could share a stripe with a
    // charge and wait on itself). Holding every candidate's stripe at once (`lock_many`, in
    // order) serialises concurrent settlements of the same charges; the second finds them
    // settled when it re-reads.
    let settleable = |c: &Charge| {
        c.settled_at.is_none()
            && matches!(
                c.status,
                ChargeStatus::Approved | ChargeStatus::PartiallyRefunded
            )
    };
    // Every charge older than the last batch was settled by it or could not be; only a charge
    // still pending at that moment (its outcome came later) can be older, hence the margin.
    let margin = outcome_window(engine);
    let cutoff = engine
        .db
        .page::<Settlement>("settlements", &merchant.id, None, 1)
        .await?
        .items
        .first()
        .map(|s| s.next_cutoff(margin));
    let mut candidates: Vec<String> = Vec::new();
    engine
        .db
        .walk::<Txn>("transactions", &merchant.id, |t| {
            if let Txn::Charge(c) = t {
                if cutoff.is_some_and(|cut| c.created_at < cut) {
                    return Ok(false);
                }
                if settleable(&c) {
                    candidates.push(c.charge_id);
                }
            }
            Ok(true)
        })
        .await?;
    // Refunds and cancels hold their charge's lock across the processor call and the commit;
    // holding every candidate's lock, the batch sees (and writes) each charge's latest state.
    let _charge_guards = engine.locks.lock_many(&candidates).await?;
    // A charge whose cancel was sent to the acquirer and not yet acknowledged stays
    // `approved` until its `0410` (spec 12.6); it is on its way to `cancelled`, so the batch
    // leaves it out (read under the locks: a cancel holds its charge's lock until its
    // reversal is durable).
    let cancelling = engine.processor.cancels_pending().await?;
    let mut open = Vec::with_capacity(candidates.len());
    let mut versions = std::collections::HashMap::with_capacity(candidates.len());
    for id in &candidates {
        if cancelling.contains(id) {
            tracing::info!(charge_id = %id, "not settled: its cancel awaits the acquirer");
            continue;
        }
        if let Some((c, version)) = engine.db.get_versioned::<Charge>(id).await?
            && settleable(&c)
        {
            versions.insert(c.charge_id.clone(), version);
            open.push(c);
        }
    }
    // A total beyond 12 digits cannot be written as money: the batch takes the oldest charges
    // that fit and says `has_more`; the next settlement takes the rest.
    let (open, total, left_from) = fill_batch(open);
    let mut writes = Vec::with_capacity(open.len() * 2 + 1);
    for c in &open {
        // Written over the version read under the locks: should a lock have been lost (a
        // node paused past its lease), the batch fails rather than settle a changed charge.
        if let Some(v) = versions.get(&c.charge_id) {
            writes.push(db::expect::<Charge>(&c.charge_id, *v));
        }
        let mut c = c.clone();
        c.settled_at = Some(now);
        if c.status == ChargeStatus::Approved {
            c.status = ChargeStatus::Settled;
        }
        writes.push(db::put(&c)?);
    }
    let settlement = Settlement {
        settlement_id: ids::time_ordered("st_")?,
        merchant_id: merchant.id.clone(),
        count: open.len() as u64,
        total: Amount {
            value: total,
            currency: merchant.currency.clone(),
        },
        created_at: now,
        left_from,
    };
    writes.push(db::put(&settlement)?);
    writes.extend(events::event(
        events::EventType::SettlementCreated,
        &settlement,
        now,
    )?);
    engine
        .db
        .commit(
            writes,
            ApiError::new(Code::Conflict, "charges changed; try again"),
        )
        .await?;
    Ok(settlement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(id: &str, status: ChargeStatus, created_at: i64) -> Charge {
        crate::domain::charges::tests::charge(id, status, created_at)
    }

    #[test]
    fn a_batch_never_passes_twelve_digits() {
        let big = |id: &str, at: i64| {
            let mut c = charge(id, ChargeStatus::Approved, at);
            c.amount.value = MAX_MINOR;
            c
        };
        let small = charge("ch_0000000cSMALL00000000000", ChargeStatus::Approved, 30);
        let (taken, total, left) = fill_batch(vec![
            big("ch_0000000bBIG200000000000", 20),
            small.clone(),
            big("ch_0000000aBIG100000000000", 10),
        ]);
        let ids: Vec<_> = taken.iter().map(|c| c.charge_id.as_str()).collect();
        assert_eq!(
            ids,
            ["ch_0000000aBIG100000000000"],
            "oldest first, the rest left"
        );
        assert_eq!((total, left), (MAX_MINOR, Some(20)));
        let (taken, total, left) = fill_batch(vec![big("ch_0000000bBIG200000000000", 20), small]);
        assert_eq!((taken.len(), total, left), (1, MAX_MINOR, Some(30)));
        let s = Settlement {
            settlement_id: "st_x".into(),
            merchant_id: "m".into(),
            count: 1,
            total: Amount {
                value: total,
                currency: "EUR".into(),
            },
            created_at: 1000,
            left_from: left,
        };
        assert_eq!(s.to_json()["has_more"], true);
        assert_eq!(
            s.next_cutoff(100),
            30,
            "the next batch looks back to what was left"
        );
        let (taken, total, left) = fill_batch(Vec::new());
        assert_eq!((taken.len(), total, left), (0, 0, None));
    }
}

//! Reversals (spec 12.6): the `0400` sent for a purchase that went unanswered, for an approved
//! charge being cancelled, for a charge whose outcome was lost, and for an unanswered refund;
//! repeated as `0401` (same STAN, same DE 7) with back-off until a `0410` arrives.
//!
//! A reversal is durable: its record ([`Reversal`], table `reversals`) is written before the
//! first send and deleted only after the `0410`, so a process killed in between leaves it for
//! the next start, whose housekeeping sends it again ([`resend_pending`]). Sending is at least
//! once; a repeat of a reversal the acquirer already has is answered as the first was, which is
//! what ISO 8583's `0401` is for. Each pending reversal in this process is one task, which
//! holds the reversal's STAN for its whole life so no other request can take it.
//!
//! A cancel waits for its reversal's first `0410` for the processor time-out; if that passes,
//! the cancel answers 502 and the charge stays `approved`, but the reversal goes on, and when
//! its `0410` does arrive the charge becomes `cancelled` then
//! ([`crate::domain::charges::recovery::cancel_reversed`]).

use std::collections::HashSet;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use acqlink::Stan;
use keyd_proto::message::PanOpen;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::Shared;
use super::link::{NoAnswer, StanHold};
use super::messages::{self, Clock, Original};
use crate::error::{ApiError, Code};
use crate::keyd::KeydError;
use crate::store::db::{self, Record};

/// Why a request is reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reason {
    /// A purchase's `0210` did not come in time.
    Timeout,
    /// An approved charge is cancelled.
    Cancel,
    /// A charge's outcome was never stored (recovery).
    Lost,
    /// A refund's `0210` did not come in time.
    RefundTimeout,
}

/// A reversal not yet acknowledged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Reversal {
    /// The reversed charge's id, or `<charge id>/<STAN><DE 7>` for a refund request.
    pub(crate) id: String,
    /// The charge it concerns.
    pub(crate) charge_id: String,
    /// Why.
    pub(crate) reason: Reason,
    /// The request reversed (its PAN sealed by keyd).
    pub(crate) original: Original,
    /// The reversal's own DE 11, kept by every repeat.
    pub(crate) stan: String,
    /// The reversal's own DE 7, kept by every repeat.
    pub(crate) transmission: String,
    /// Sent so far (`0400` the first time, `0401` after).
    pub(crate) attempts: u32,
    /// Unix seconds of the last send.
    pub(crate) sent_at: Option<i64>,
    /// Unix seconds.
    pub(crate) created_at: i64,
}

impl Record for Reversal {
    const KIND: &'static str = "reversal";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// When to send a reversal again: `first` after the first unanswered send, doubling, at most
/// `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    /// The wait after the first unanswered send.
    pub(crate) first: Duration,
    /// The longest wait.
    pub(crate) max: Duration,
}

impl Retry {
    /// The wait after `attempts` unanswered sends (1 or more).
    pub(crate) fn after(self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(20);
        self.first
            .saturating_mul(1 << doublings)
            .min(self.max.max(self.first))
    }
}

/// Starts the reversal with this id (or joins the one under way, or resumes a stored one);
/// the receiver turns `true` when its `0410` has arrived. Answers once the reversal is durable.
///
/// # Errors
/// Why it could not be made durable or started (storage, no free STAN): the caller keeps what
/// it has (a pending charge) so that recovery tries again.
pub(super) async fn reverse(
    shared: &Arc<Shared>,
    id: String,
    charge_id: &str,
    reason: Reason,
    original: &Original,
) -> Result<watch::Receiver<bool>, String> {
    if let Some(ack) = active(shared, &id) {
        return Ok(ack);
    }
    let unavailable = |e: ApiError| format!("storage: {}", e.message());
    if let Some(stored) = shared.db.get::<Reversal>(&id).await.map_err(unavailable)? {
        return resume(shared, stored);
    }
    let hold = shared.link.hold_new().ok_or("no free STAN")?;
    let record = Reversal {
        id,
        charge_id: charge_id.to_owned(),
        reason,
        original: original.clone(),
        stan: hold.stan().to_string(),
        transmission: Clock::now().transmission,
        attempts: 0,
        sent_at: None,
        created_at: crate::wire::time::now(),
    };
    let writes = vec![
        db::absent::<Reversal>(&record.id),
        db::put(&record).map_err(unavailable)?,
    ];
    match shared
        .db
        .commit(writes, ApiError::new(Code::Conflict, "reversal exists"))
        .await
    {
        Ok(()) => Ok(spawn(shared, record, hold)),
        // Made by another caller in between: join or resume that one.
        Err(e) if e.code() == Code::Conflict => {
            drop(hold);
            if let Some(ack) = active(shared, &record.id) {
                return Ok(ack);
            }
            match shared.db.get::<Reversal>(&record.id).await {
                Ok(Some(stored)) => resume(shared, stored),
                _ => Err("reversal record changed under us".to_owned()),
            }
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Sends every stored reversal no task of this process is sending (those a previous start
/// left, or whose STAN was busy last time). Run by housekeeping.
pub(super) async fn resend_pending(shared: &Arc<Shared>) {
    let mut pending = Vec::new();
    let walked = shared
        .db
        .walk_back::<Reversal>(|r| {
            pending.push(r);
            Ok(true)
        })
        .await;
    if let Err(e) = walked {
        tracing::warn!(error = %e, "cannot read pending reversals; will retry");
        return;
    }
    for record in pending {
        if active(shared, &record.id).is_some() {
            continue;
        }
        let (charge_id, attempts) = (record.charge_id.clone(), record.attempts);
        match resume(shared, record) {
            Ok(_) => tracing::info!(%charge_id, attempts, "resending a pending reversal"),
            Err(why) => tracing::info!(%charge_id, %why, "pending reversal not resent yet"),
        }
    }
}

/// The charges whose cancel reversal awaits its `0410` (stored ones: whichever node or start
/// is sending them), for settlement to leave alone.
///
/// # Errors
/// 503 when the reversals cannot be read.
pub(super) async fn cancels_pending(shared: &Shared) -> Result<HashSet<String>, ApiError> {
    let mut charges = HashSet::new();
    shared
        .db
        .walk_back::<Reversal>(|r| {
            if r.reason == Reason::Cancel {
                charges.insert(r.charge_id);
            }
            Ok(true)
        })
        .await?;
    Ok(charges)
}

/// The acknowledgement of a reversal this process is sending.
fn active(shared: &Shared, id: &str) -> Option<watch::Receiver<bool>> {
    shared
        .active
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(id)
        .cloned()
}

/// Starts sending a stored reversal again, with its own STAN.
fn resume(shared: &Arc<Shared>, record: Reversal) -> Result<watch::Receiver<bool>, String> {
    let stan = Stan::parse(&record.stan).map_err(|e| e.to_string())?;
    let hold = shared
        .link
        .hold(stan)
        .ok_or("its STAN is in use; will retry")?;
    Ok(spawn(shared, record, hold))
}

/// One task per reversal (a second start of the same one joins the first).
fn spawn(shared: &Arc<Shared>, record: Reversal, hold: StanHold) -> watch::Receiver<bool> {
    let mut active = shared.active.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(ack) = active.get(&record.id) {
        return ack.clone();
    }
    let (tx, rx) = watch::channel(false);
    active.insert(record.id.clone(), rx.clone());
    tokio::spawn(run(Arc::clone(shared), record, hold, tx));
    rx
}

/// Sends the reversal until a `0410` comes, then finishes it.
async fn run(shared: Arc<Shared>, mut record: Reversal, hold: StanHold, ack: watch::Sender<bool>) {
    let mut pan: Option<Zeroizing<String>> = None;
    let mut pan_lost = false;
    loop {
        if pan.is_none() && !pan_lost {
            match open_pan(&shared, &record.original.sealed_pan).await {
                // A reversal carries no DE 14: the PAN alone.
                Ok(card) => pan = Some(Zeroizing::new(messages::split_card(&card).0.to_owned())),
                Err(KeydError::Refused(_)) => {
                    tracing::error!(charge_id = %record.charge_id,
                        "the sealed PAN does not open; reversing without DE 2");
                    pan_lost = true;
                }
                Err(KeydError::Unavailable) => {
                    // Nothing can be sent without keyd (the MAC needs it too): wait and retry.
                    tokio::time::sleep(shared.retry.after(record.attempts.max(1))).await;
                    continue;
                }
            }
        }
        record.attempts += 1;
        record.sent_at = Some(crate::wire::time::now());
        persist(&shared, &record).await;
        let message = messages::reversal(
            &record.original,
            pan.as_deref().map(String::as_str),
            &record.stan,
            &record.transmission,
            record.attempts > 1,
        );
        let answer = match message {
            Ok(m) => {
                let deadline = Instant::now() + shared.link.timeout();
                shared.link.exchange(&hold, m, deadline).await
            }
            Err(e) => {
                tracing::error!(error = %e, charge_id = %record.charge_id, "cannot build the reversal");
                Err(NoAnswer::NotSent("cannot build the reversal"))
            }
        };
        match answer {
            Ok(response) => {
                tracing::info!(charge_id = %record.charge_id, reason = ?record.reason,
                    attempts = record.attempts,
                    de39 = response.get(acqlink::De::ResponseCode).unwrap_or("-"),
                    "reversal acknowledged");
                break;
            }
            Err(why) => {
                let wait = shared.retry.after(record.attempts);
                tracing::warn!(charge_id = %record.charge_id, reason = ?record.reason,
                    attempts = record.attempts, ?why, retry_in_ms = wait.as_millis(),
                    "reversal unanswered; will repeat it");
                tokio::time::sleep(wait).await;
            }
        }
    }
    let _ = ack.send(true);
    finish(&shared, &record).await;
    shared
        .active
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&record.id);
    drop(hold);
}

/// After the `0410`: a cancel whose caller gave up moves its charge now; then the record goes.
/// A failure leaves the record, so the next start repeats the reversal (harmless) and
/// finishes it then.
async fn finish(shared: &Shared, record: &Reversal) {
    if record.reason == Reason::Cancel
        && let Err(e) = crate::domain::charges::recovery::cancel_reversed(
            &shared.db,
            &shared.locks,
            &record.charge_id,
        )
        .await
    {
        tracing::error!(charge_id = %record.charge_id, error = %e,
            "cannot record the acknowledged cancel; the next start repeats it");
        return;
    }
    let deleted = shared
        .db
        .commit(
            vec![db::delete::<Reversal>(&record.id)],
            ApiError::new(Code::Conflict, "reversal"),
        )
        .await;
    if let Err(e) = deleted {
        tracing::warn!(charge_id = %record.charge_id, error = %e,
            "cannot delete an acknowledged reversal; the next start repeats it");
    }
}

/// Stores the attempt count before a send (best effort: a lost count only means a later
/// start sends `0400` where `0401` would do, which the acquirer answers the same).
async fn persist(shared: &Shared, record: &Reversal) {
    let Ok(write) = db::put(record) else { return };
    if let Err(e) = shared
        .db
        .commit(vec![write], ApiError::new(Code::Conflict, "reversal"))
        .await
    {
        tracing::warn!(charge_id = %record.charge_id, error = %e, "cannot store a reversal attempt");
    }
}

/// A PAN sealed by keyd (with `=YYMM` when its expiry was sealed with it), opened by keyd.
pub(super) async fn open_pan(
    shared: &Shared,
    sealed_hex: &str,
) -> Result<Zeroizing<String>, KeydError> {
    let sealed =
        hex::decode(sealed_hex).map_err(|_| KeydError::Refused(keyd_proto::Status::AUTH_FAILED))?;
    let opened = shared.keyd.call(&PanOpen { sealed }).await?;
    std::str::from_utf8(opened.pan.expose())
        .map(|p| Zeroizing::new(p.to_owned()))
        .map_err(|_| KeydError::Refused(keyd_proto::Status::AUTH_FAILED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap() {
        let r = Retry {
            first: Duration::from_millis(500),
            max: Duration::from_secs(3),
        };
        let waits: Vec<u128> = (1..=6).map(|n| r.after(n).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000, 3000]);
        assert_eq!(r.after(u32::MAX).as_millis(), 3000);
    }
}

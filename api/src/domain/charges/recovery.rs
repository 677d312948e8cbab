//! Charges whose request was lost: found, voided and failed, beside live traffic, without a
//! row of bookkeeping per charge.
//!
//! A charge is written `pending` before the processor hears of it, and its outcome after. What
//! can leave it pending: the process dies in between, or the request is dropped with its
//! connection. Each start of the process (a [`Boot`]) keeps, in memory, the charges it is
//! making ([`InFlight`]) and those whose request ended without an outcome (orphans); and, in
//! the store, a *checkpoint*: a time before which every charge this start made has its outcome,
//! with the time it last wrote it (`seen_at`). The checkpoint is written when the process
//! starts and every recovery round (5 s), so a charge costs nothing extra on the hot path (an
//! earlier design wrote and deleted a marker row per charge: about 15 % of the whole-charge
//! throughput).
//!
//! A recovery round:
//! 1. resolves this process's orphans;
//! 2. when asked to look at the others (one node at a time does: the caller holds the
//!    `recovery` lease), scans the charges made since the oldest checkpoint of every other
//!    start (newest first, by time-ordered id, down to the checkpoint less a margin) and
//!    resolves every pending one that this process is not making and that no live request can
//!    still be making; then drops the records of the starts that are gone;
//! 3. writes this process's checkpoint.
//!
//! Which pending charges may be another live request's: on a store of its own (SQLite, under
//! its lock file) none — every other start is a process that is gone. On a store shared by
//! several nodes, any charge younger than the processor deadline and [`OUTLIVE`], since the
//! charge's node may be alive and still waiting for its processor; older ones are resolved
//! whoever made them. A start whose `seen_at` is older than [`GONE_AFTER`] is a node that
//! died (or was stopped), and its record is dropped once its charges are resolved. So a
//! charge lost with its node is failed within the deadline, the margin and a round or two.
//!
//! Resolving a charge: ask the processor to void whatever it may have authorised (a void of
//! something it never saw is harmless), then store the charge `failed` if it is still pending
//! (a read-check-write against the stored version). A late outcome cannot overwrite recovery:
//! on one node because recovery never resolves a charge whose request may still run; with
//! several, because the outcome is written only over the pending charge as first written
//! (`charges::create`). If the processor cannot be reached, the charge stays pending and the
//! next round tries again; every step can be interrupted and rerun, by any node.
//!
//! Pending charges older than this design (no start record covers them) are found once per
//! store by a full scan.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::{Charge, ChargeStatus, Engine, processor_deadline};
use crate::domain::events;
use crate::domain::processor::{VoidReason, VoidRequest};
use crate::error::{ApiError, Code};
use crate::store::db::{self, Record};

/// Seconds scanned before a checkpoint (clock steps, second granularity).
const MARGIN: i64 = 10;

/// With several nodes: how long past the processor deadline a pending charge may still be
/// another node's live request (its last commit, clocks a few seconds apart).
pub const OUTLIVE: i64 = 30;

/// With several nodes: a start that has not written its checkpoint for this long is gone
/// (rounds are every 5 s).
pub const GONE_AFTER: i64 = 60;

/// One start of the API process.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Random, unique per start.
    pub id: String,
    /// Unix seconds.
    pub started_at: i64,
}

/// A start of the process as the store remembers it: every charge it made before
/// `checkpoint` has its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootRecord {
    /// [`Boot::id`].
    pub id: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds (see the type).
    pub checkpoint: i64,
    /// Unix seconds: when the start last wrote its checkpoint.
    pub seen_at: i64,
}

impl Record for BootRecord {
    const KIND: &'static str = "boot";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

#[derive(Debug, Default)]
struct Charges {
    /// Being made: charge id → created_at.
    making: HashMap<String, i64>,
    /// Made by this process, request ended without an outcome: charge id → created_at.
    orphans: HashMap<String, i64>,
}

/// The charges this process is making, and those it left without an outcome.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<Charges>>);

/// Holds a charge in [`InFlight`] while its request runs. Dropped without [`Making::done`]
/// (the request failed or was dropped half-way), the charge becomes an orphan that the next
/// recovery round resolves.
#[derive(Debug)]
pub struct Making {
    set: InFlight,
    charge_id: String,
    done: bool,
}

impl InFlight {
    /// Marks a charge as being made until the returned guard drops.
    pub fn start(&self, charge: &Charge) -> Making {
        self.lock()
            .making
            .insert(charge.charge_id.clone(), charge.created_at);
        Making {
            set: self.clone(),
            charge_id: charge.charge_id.clone(),
            done: false,
        }
    }

    fn is_making(&self, charge_id: &str) -> bool {
        self.lock().making.contains_key(charge_id)
    }

    fn orphans(&self) -> Vec<String> {
        self.lock().orphans.keys().cloned().collect()
    }

    fn forget(&self, charge_id: &str) {
        self.lock().orphans.remove(charge_id);
    }

    /// The oldest charge not yet resolved, or `now`.
    fn checkpoint(&self, now: i64) -> i64 {
        let charges = self.lock();
        charges
            .making
            .values()
            .chain(charges.orphans.values())
            .copied()
            .fold(now, i64::min)
    }

    fn lock(&self) -> MutexGuard<'_, Charges> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Making {
    /// The outcome is stored (or recovery has the charge): nothing left to do.
    pub fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Making {
    fn drop(&mut self) {
        let mut charges = self.set.lock();
        if let Some(created_at) = charges.making.remove(&self.charge_id)
            && !self.done
        {
            charges.orphans.insert(self.charge_id.clone(), created_at);
        }
    }
}

/// How many starts wrote their checkpoint in the last 30 s (every live node writes it every
/// few seconds): the nodes sharing the store now, at least 1.
///
/// # Errors
/// 503 when storage is down.
pub async fn live_nodes(engine: &Engine, now: i64) -> Result<usize, ApiError> {
    let mut n = 0;
    engine
        .db
        .walk_back::<BootRecord>(|b| {
            if b.seen_at >= now - 30 {
                n += 1;
            }
            Ok(true)
        })
        .await?;
    Ok(n.max(1))
}

/// Records this start with its checkpoint; done before the first charge is served.
///
/// # Errors
/// 503 when storage is down.
pub async fn register(engine: &Engine) -> Result<(), ApiError> {
    checkpoint(engine, engine.boot.started_at).await
}

async fn checkpoint(engine: &Engine, now: i64) -> Result<(), ApiError> {
    let record = BootRecord {
        id: engine.boot.id.clone(),
        started_at: engine.boot.started_at,
        checkpoint: engine.in_flight.checkpoint(now),
        seen_at: now,
    };
    engine
        .db
        .commit(
            vec![db::put(&record)?],
            ApiError::new(Code::Conflict, "checkpoint"),
        )
        .await
}

/// One round; returns how many charges it resolved. `others`: look at other starts' charges
/// too (the caller holds the `recovery` lease, or the store is its own).
///
/// # Errors
/// 503 if the store cannot be read or written.
pub async fn recover(engine: &Engine, now: i64, others: bool) -> Result<usize, ApiError> {
    let mut resolved = 0;
    for id in engine.in_flight.orphans() {
        match resolve(engine, &id).await? {
            Outcome::Resolved => resolved += 1,
            Outcome::NothingToDo => {}
            Outcome::Retry => continue,
        }
        engine.in_flight.forget(&id);
    }
    if others {
        resolved += recover_others(engine, now).await?;
    }
    checkpoint(engine, now).await?;
    Ok(resolved)
}

/// Step 2 of a round (see the module docs).
async fn recover_others(engine: &Engine, now: i64) -> Result<usize, ApiError> {
    let shared = engine.db.store().shared();
    // Only charges no live request can still be making: all of them on a store of its own.
    let made_before = if shared {
        let deadline = i64::try_from(processor_deadline(engine).as_secs()).unwrap_or(i64::MAX / 4);
        now - deadline - OUTLIVE
    } else {
        i64::MAX
    };
    let mut resolved = 0;
    if !legacy_done(engine).await? {
        let (n, complete) = resolve_since(engine, None, made_before).await?;
        resolved += n;
        if complete {
            engine
                .db
                .commit(
                    vec![db::claim(LEGACY.0, LEGACY.1, "done")],
                    ApiError::new(Code::Conflict, "legacy scan"),
                )
                .await?;
        }
    }
    let mut others = Vec::new();
    engine
        .db
        .walk_back::<BootRecord>(|b| {
            if b.id != engine.boot.id {
                others.push(b);
            }
            Ok(true)
        })
        .await?;
    if let Some(from) = others.iter().map(|b| b.checkpoint).min() {
        let (n, complete) = resolve_since(engine, Some(from - MARGIN), made_before).await?;
        resolved += n;
        // A start that is gone has no charge younger than its last round: once the scan has
        // covered up to that round, its record can go.
        let gone: Vec<_> = others
            .iter()
            .filter(|b| !shared || (b.seen_at < now - GONE_AFTER && b.seen_at < made_before))
            .map(|b| db::delete::<BootRecord>(&b.id))
            .collect();
        if complete && !gone.is_empty() {
            engine
                .db
                .commit(gone, ApiError::new(Code::Conflict, "boots"))
                .await?;
        }
    }
    Ok(resolved)
}

const LEGACY: (&str, &str) = ("migration", "pending-charges-before-checkpoints");

async fn legacy_done(engine: &Engine) -> Result<bool, ApiError> {
    Ok(engine.db.owner(LEGACY.0, LEGACY.1).await?.is_some())
}

/// Resolves every pending charge made since `from` (all, for `None`) and before
/// `made_before` that this process is not making; returns how many it resolved and whether
/// none is left to retry.
async fn resolve_since(
    engine: &Engine,
    from: Option<i64>,
    made_before: i64,
) -> Result<(usize, bool), ApiError> {
    let mut pending = Vec::new();
    engine
        .db
        .walk_back::<Charge>(|c| {
            if from.is_some_and(|f| c.created_at < f) {
                return Ok(false);
            }
            if c.status == ChargeStatus::Pending
                && c.created_at < made_before
                && !engine.in_flight.is_making(&c.charge_id)
            {
                pending.push(c.charge_id);
            }
            Ok(true)
        })
        .await?;
    let mut resolved = 0;
    let mut complete = true;
    for id in pending {
        match resolve(engine, &id).await? {
            Outcome::Resolved => resolved += 1,
            Outcome::NothingToDo => {}
            Outcome::Retry => complete = false,
        }
    }
    Ok((resolved, complete))
}

enum Outcome {
    Resolved,
    NothingToDo,
    Retry,
}

/// Voids and fails one charge, if it is still pending.
async fn resolve(engine: &Engine, charge_id: &str) -> Result<Outcome, ApiError> {
    let charge = match engine.db.get::<Charge>(charge_id).await? {
        Some(c) if c.status == ChargeStatus::Pending => c,
        _ => return Ok(Outcome::NothingToDo),
    };
    let void = engine.processor.void(VoidRequest {
        charge_id: charge_id.to_owned(),
        processor_reference: String::new(),
        processor_data: charge.processor_data,
        reason: VoidReason::Lost,
    });
    match tokio::time::timeout(processor_deadline(engine), void).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(charge_id, error = %e, "void of a lost charge failed; will retry");
            return Ok(Outcome::Retry);
        }
        Err(_) => {
            tracing::warn!(charge_id, "void of a lost charge timed out; will retry");
            return Ok(Outcome::Retry);
        }
    }
    let mut changed = false;
    let result = engine
        .db
        .update::<Charge>(charge_id, |c| {
            changed = c.status == ChargeStatus::Pending;
            if !changed {
                return Ok(Vec::new());
            }
            c.status = ChargeStatus::Failed;
            events::charge_event(c, crate::wire::time::now())
        })
        .await;
    match result {
        Ok(_) if changed => {
            tracing::info!(charge_id, "lost charge voided and failed");
            Ok(Outcome::Resolved)
        }
        Ok(_) => Ok(Outcome::NothingToDo),
        Err(e) if e.code() == Code::Conflict => Ok(Outcome::Retry),
        Err(e) => Err(e),
    }
}

/// A cancel whose reversal the processor acknowledged only after the cancel request had given
/// up (answered 502, charge left `approved`): the charge becomes `cancelled` now, under its
/// lock like any cancel. A charge that moved on meanwhile (refunded, settled) is left as it is
/// and logged for reconciliation: the acquirer has reversed what the platform still counts.
///
/// # Errors
/// 503 when storage is down (the caller retries).
pub async fn cancel_reversed(
    db: &db::Db,
    locks: &crate::domain::locks::Locks,
    charge_id: &str,
) -> Result<(), ApiError> {
    let _guard = locks.lock(charge_id).await?;
    let Some(charge) = db.get::<Charge>(charge_id).await? else {
        return Ok(());
    };
    match charge.status {
        ChargeStatus::Cancelled => Ok(()),
        ChargeStatus::Approved if charge.settled_at.is_none() && charge.refunds.is_empty() => {
            db.update::<Charge>(charge_id, |c| {
                c.status = ChargeStatus::Cancelled;
                events::charge_event(c, crate::wire::time::now())
            })
            .await?;
            tracing::info!(
                charge_id,
                "charge cancelled by a late reversal acknowledgement"
            );
            Ok(())
        }
        status => {
            tracing::error!(
                charge_id,
                status = status.as_str(),
                "the acquirer acknowledged a cancel of a charge that has moved on; reconcile"
            );
            Ok(())
        }
    }
}

//! Charges whose request was lost: found, taken over, voided and failed, beside live traffic.
//!
//! A charge is written `pending` before the processor hears of it, together with a
//! [`PendingCharge`] marker; the request that made it writes the outcome and removes the
//! marker in one commit that *expects the marker unchanged*. A crash between the two leaves a
//! marker behind, and this module resolves it:
//!
//! 1. A marker older than any live request can be (the processor deadline and a margin), or
//!    one recovery already took over, is due. Markers are listed by scanning their kind, so
//!    every one is found, however old and however many restarts left it.
//! 2. Recovery takes the marker over (marks it, expecting it unmarked). From then on the
//!    request that made the charge, if it is somehow still alive, cannot write its outcome:
//!    its commit expects the unmarked marker, fails, and it answers 502/`5020`. So a charge is
//!    never both voided at the processor and stored approved.
//! 3. The processor is asked to void whatever it may have authorised (a void of something it
//!    never saw is harmless); if it cannot be reached, the marker stays taken over and the next
//!    round tries again.
//! 4. The charge becomes `failed` and the marker goes, in one commit expecting both as read.
//!
//! Recovery runs every few seconds (see `housekeeping`), several charges at a time, and can
//! be interrupted at any step: each step is a precondition-guarded commit, so a rerun picks up
//! where the last one stopped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::{Charge, ChargeStatus, Engine, processor_deadline};
use crate::domain::processor::VoidRequest;
use crate::error::{ApiError, Code};
use crate::store::db::{self, Record};

/// Seconds beyond the processor deadline before a pending charge is taken to be orphaned.
const MARGIN: i64 = 10;
/// Charges resolved at once.
const PARALLEL: usize = 16;

/// One start of the API process: work it leaves behind (a pending charge) names it, so a later
/// process knows the work's owner is gone.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Random, unique per start.
    pub id: String,
    /// Unix seconds.
    pub started_at: i64,
}

/// The charges this process is making: a request that has written its pending charge and not
/// yet its outcome. Recovery never takes one of these over, however long the request takes.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Holds a charge in [`InFlight`] while its request runs (also when the request is dropped
/// half-way: then the charge becomes recovery's at once).
#[derive(Debug)]
pub struct Making {
    set: InFlight,
    charge_id: String,
}

impl InFlight {
    /// Marks a charge as being made until the returned guard drops.
    pub fn start(&self, charge_id: &str) -> Making {
        self.lock().insert(charge_id.to_owned());
        Making {
            set: self.clone(),
            charge_id: charge_id.to_owned(),
        }
    }

    fn contains(&self, charge_id: &str) -> bool {
        self.lock().contains(charge_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Making {
    fn drop(&mut self) {
        self.set.lock().remove(&self.charge_id);
    }
}

/// Says that a charge's outcome is not written yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCharge {
    /// The charge.
    pub charge_id: String,
    /// When the charge was made (Unix seconds).
    pub created_at: i64,
    /// The API process that made it ([`Boot`]; empty for charges made before
    /// markers existed).
    #[serde(default)]
    pub boot: String,
    /// When recovery took the charge over, if it did.
    #[serde(default)]
    pub recovering_since: Option<i64>,
}

impl PendingCharge {
    /// The marker of a charge being made by this process.
    pub fn of(charge: &Charge, boot: &Boot) -> Self {
        Self {
            charge_id: charge.charge_id.clone(),
            created_at: charge.created_at,
            boot: boot.id.clone(),
            recovering_since: None,
        }
    }

    /// Whether no live request can still write this charge's outcome: recovery took it over;
    /// or this process made it and its request is no longer running (it finished without
    /// writing, or was dropped with its connection); or another process made it before this
    /// one started, so that process is gone.
    ///
    /// "Gone" holds for one API process per store, which the store's lock file enforces.
    /// Several nodes on one store will need each node's liveness (a lease) instead; until
    /// then a marker of another start made after this one is left to the age rule.
    fn due(&self, boot: &Boot, in_flight: &InFlight, now: i64, due_after: i64) -> bool {
        if self.recovering_since.is_some() {
            return true;
        }
        if self.boot == boot.id {
            return !in_flight.contains(&self.charge_id);
        }
        self.created_at <= boot.started_at || now - self.created_at > due_after
    }
}

impl Record for PendingCharge {
    const KIND: &'static str = "pending_charge";
    fn id(&self) -> &str {
        &self.charge_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        // No index: markers are found by scanning their kind (ids start with their time), which
        // keeps a charge's cost at one row written and one deleted.
        Vec::new()
    }
}

/// The error the outcome commit answers when recovery took the charge over meanwhile.
pub(super) fn taken_over() -> ApiError {
    ApiError::new(Code::Conflict, "charge taken over by recovery")
}

/// One round: resolves every due pending charge; returns how many it resolved.
///
/// # Errors
/// 503 if the store cannot be read.
pub async fn recover(engine: &Engine, now: i64) -> Result<usize, ApiError> {
    let due_after = i64::try_from(processor_deadline(engine).as_secs()).unwrap_or(60) + MARGIN;
    let mut due = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let batch = engine
            .db
            .scan_back::<PendingCharge>(before.as_deref(), 500)?;
        let exhausted = batch.len() < 500;
        before = batch.last().map(|m| m.charge_id.clone());
        due.extend(
            batch
                .into_iter()
                .filter(|m| m.due(&engine.boot, &engine.in_flight, now, due_after)),
        );
        if exhausted || before.is_none() {
            break;
        }
    }
    let mut resolved = 0;
    let mut running = JoinSet::new();
    let mut due = due.into_iter();
    loop {
        while running.len() < PARALLEL {
            let Some(marker) = due.next() else { break };
            let engine = engine.clone();
            running.spawn(async move { resolve(&engine, marker, now).await });
        }
        match running.join_next().await {
            Some(Ok(Ok(true))) => resolved += 1,
            Some(Ok(Ok(false))) => {}
            Some(Ok(Err(e))) => tracing::warn!(error = %e, "pending charge not resolved yet"),
            Some(Err(e)) => tracing::error!(error = %e, "pending-charge task failed"),
            None => break,
        }
    }
    Ok(resolved)
}

/// Resolves one charge; `false` when another writer got there first or the processor could
/// not be reached (the next round tries again).
async fn resolve(engine: &Engine, marker: PendingCharge, now: i64) -> Result<bool, ApiError> {
    let lost = || ApiError::new(Code::Conflict, "pending charge changed");
    let mine = if marker.recovering_since.is_some() {
        marker
    } else {
        let mut mine = marker.clone();
        mine.recovering_since = Some(now);
        let take = vec![db::expect(&marker)?, db::put(&mine)?];
        match engine.db.commit(take, lost()).await {
            Ok(()) => mine,
            Err(e) if e.code() == Code::Conflict => return Ok(false),
            Err(e) => return Err(e),
        }
    };
    let charge = engine.db.get::<Charge>(&mine.charge_id)?;
    if charge
        .as_ref()
        .is_none_or(|c| c.status != ChargeStatus::Pending)
    {
        // The outcome is there already (or the charge is gone): nothing to void, only the
        // marker to remove.
        let writes = vec![
            db::expect(&mine)?,
            db::delete::<PendingCharge>(&mine.charge_id),
        ];
        // Failing here leaves the marker for the next round.
        let _ = engine.db.commit(writes, lost()).await;
        return Ok(false);
    }
    let void = engine.processor.void(VoidRequest {
        charge_id: mine.charge_id.clone(),
        processor_reference: String::new(),
    });
    match tokio::time::timeout(processor_deadline(engine), void).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(charge_id = %mine.charge_id, error = %e, "void of a lost charge failed; will retry");
            return Ok(false);
        }
        Err(_) => {
            tracing::warn!(charge_id = %mine.charge_id, "void of a lost charge timed out; will retry");
            return Ok(false);
        }
    }
    let mut writes = vec![
        db::expect(&mine)?,
        db::delete::<PendingCharge>(&mine.charge_id),
    ];
    if let Some(charge) = engine
        .db
        .get::<Charge>(&mine.charge_id)?
        .filter(|c| c.status == ChargeStatus::Pending)
    {
        // The marker, taken over above, is the lock: the request that made the charge can no
        // longer write it, so the charge as read now is what it is.
        let mut failed = charge;
        failed.status = ChargeStatus::Failed;
        writes.push(db::put(&failed)?);
    }
    match engine.db.commit(writes, lost()).await {
        Ok(()) => {
            tracing::info!(charge_id = %mine.charge_id, "lost charge voided and failed");
            Ok(true)
        }
        Err(e) if e.code() == Code::Conflict => Ok(false),
        Err(e) => Err(e),
    }
}

/// Gives every `pending` charge written before markers existed a marker, once per store.
///
/// # Errors
/// 503 if the store cannot be read or written.
pub async fn mark_unmarked(engine: &Engine) -> Result<usize, ApiError> {
    const DONE: (&str, &str) = ("migration", "pending-charge-markers");
    if engine.db.owner(DONE.0, DONE.1)?.is_some() {
        return Ok(0);
    }
    let mut marked = 0;
    let mut before: Option<String> = None;
    loop {
        let batch = engine.db.scan_back::<Charge>(before.as_deref(), 500)?;
        let Some(last) = batch.last() else { break };
        before = Some(last.charge_id.clone());
        let exhausted = batch.len() < 500;
        for c in batch.iter().filter(|c| c.status == ChargeStatus::Pending) {
            if engine.db.get::<PendingCharge>(&c.charge_id)?.is_some() {
                continue;
            }
            // A request finishing meanwhile may leave this marker on a charge that has its
            // outcome; recovery then sees the outcome and only removes the marker.
            let writes = vec![
                db::absent::<PendingCharge>(&c.charge_id),
                db::put(&PendingCharge {
                    boot: String::new(),
                    ..PendingCharge::of(c, &engine.boot)
                })?,
            ];
            match engine
                .db
                .commit(writes, ApiError::new(Code::Conflict, "marking"))
                .await
            {
                Ok(()) => marked += 1,
                Err(e) if e.code() == Code::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        if exhausted {
            break;
        }
    }
    engine
        .db
        .commit(
            vec![db::claim(DONE.0, DONE.1, "done")],
            ApiError::new(Code::Conflict, "marking"),
        )
        .await?;
    Ok(marked)
}

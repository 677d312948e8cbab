//! Work the API does on its own: resolving charges whose request was lost, the processor's
//! own work (an acquirer link's pending reversals), marking silent terminals offline (every
//! round, so a terminal goes offline within three heartbeat intervals and [`RECOVERY_EVERY`]),
//! and sweeping expired nonces, idempotent answers and attestation tokens.
//!
//! Recovery runs every few seconds from the start, beside live traffic (it is safe there: see
//! `charges::recovery`), so a charge left `pending` by a crash is resolved within the
//! processor deadline and a few seconds, however many restarts it took. The sweeps run every
//! minute.
//!
//! Every node resolves its own lost charges and writes its own checkpoint. The rest — other
//! nodes' lost charges, the processor's work, the sweeps — is done by one node at a time: the
//! one holding the `housekeeping` lease ([`crate::domain::lease`]), renewed every round. A
//! leader that dies stops renewing it, and another node takes over within [`LEAD_FOR`] and a
//! round. On a store of its own (SQLite) there is no one to take turns with: the process does
//! it all, from its first round — a restart must not wait out its dead predecessor's lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::domain::lease;
use crate::request::Services;

/// How often recovery looks for lost charges.
const RECOVERY_EVERY: Duration = Duration::from_secs(5);
/// How often new audit entries are linked into the chain.
const AUDIT_EVERY: Duration = Duration::from_secs(1);
/// How often the sweeps run.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long the housekeeping lease lasts unless renewed (seconds): a few rounds.
pub const LEAD_FOR: i64 = 15;
/// The lease's name.
const LEASE: &str = "housekeeping";

/// Runs for the life of the process.
pub async fn run(app: Arc<Services>) {
    let leading = Arc::new(AtomicBool::new(false));
    tokio::spawn(recovery(Arc::clone(&app), Arc::clone(&leading)));
    tokio::spawn(audit_chain(Arc::clone(&app), Arc::clone(&leading)));
    sweeps(app, leading).await;
}

/// Links new audit entries into the chain every second, on the node that leads (see
/// `domain::audit`).
async fn audit_chain(app: Arc<Services>, leading: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(AUDIT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !leading.load(Ordering::Relaxed) && app.db.store().shared() {
            continue;
        }
        if let Err(e) = crate::domain::audit::link(&app.db, &app.keyd).await {
            tracing::warn!(error = %e, "audit entries not linked; will retry");
        }
    }
}

async fn recovery(app: Arc<Services>, leading: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(RECOVERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leadership = lease::Leadership::new(LEASE, LEAD_FOR);
    loop {
        tick.tick().await;
        let now = crate::wire::time::now();
        let lead = leadership.renew(&app.db, &app.charges.boot.id, now).await;
        leading.store(lead, Ordering::Relaxed);
        // The nodes sharing each rate limit (see `http::ratelimit`).
        if app.db.store().shared() {
            match crate::domain::charges::recovery::live_nodes(&app.charges, now).await {
                Ok(n) => app.live_nodes.store(n, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "live nodes not counted"),
            }
        }
        // The processor's own work first (an acquirer link resends pending reversals), so a
        // start picks up what the last one left before it resolves lost charges.
        if lead {
            app.charges.processor.housekeeping().await;
            let heartbeat = app.config.platform.heartbeat_secs;
            match crate::pos::heartbeats::sweep_silent(&app.db, heartbeat, now).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(count = n, "silent terminals marked offline"),
                Err(e) => tracing::warn!(error = %e, "offline sweep failed; will retry"),
            }
        }
        match crate::domain::charges::recovery::recover(&app.charges, now, lead).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                count = n,
                "charges whose request was lost voided and failed"
            ),
            Err(e) => tracing::error!(error = %e, "pending-charge recovery failed"),
        }
    }
}

async fn sweeps(app: Arc<Services>, leading: Arc<AtomicBool>) {
    let (mut hour, mut minute, mut web_hour) = (0, 0, 0);
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let now = crate::wire::time::now();
        // Every node forgets old nonces in memory; one deletes them from the store.
        app.replay.forget(now);
        if !leading.load(Ordering::Relaxed) {
            continue;
        }
        app.replay.sweep(&app.db, now).await;
        hour = crate::domain::idem::sweep(&app.db, hour, now).await;
        minute = crate::pos::sweep_attestations(&app.db, minute, now).await;
        web_hour = crate::domain::websessions::sweep(&app.db, web_hour, now).await;
    }
}

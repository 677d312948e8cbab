//! Work the API does on its own: resolving charges whose request was lost, the processor's
//! own work (an acquirer link's pending reversals), and sweeping expired nonces, idempotent
//! answers and attestation tokens.
//!
//! Recovery runs every few seconds from the start, beside live traffic (it is safe there: see
//! `charges::recovery`), so a charge left `pending` by a crash is resolved within the
//! processor deadline and a few seconds, however many restarts it took. The sweeps run every
//! minute.

use std::sync::Arc;
use std::time::Duration;

use crate::request::Services;

/// How often recovery looks for lost charges.
const RECOVERY_EVERY: Duration = Duration::from_secs(5);
/// How often the sweeps run.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs for the life of the process.
pub async fn run(app: Arc<Services>) {
    tokio::spawn(recovery(Arc::clone(&app)));
    sweeps(app).await;
}

async fn recovery(app: Arc<Services>) {
    let mut tick = tokio::time::interval(RECOVERY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The processor's own work first (an acquirer link resends pending reversals), so a
        // start picks up what the last one left before it resolves lost charges.
        app.charges.processor.housekeeping().await;
        match crate::domain::charges::recovery::recover(&app.charges, crate::wire::time::now())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                count = n,
                "charges whose request was lost voided and failed"
            ),
            Err(e) => tracing::error!(error = %e, "pending-charge recovery failed"),
        }
    }
}

async fn sweeps(app: Arc<Services>) {
    let (mut hour, mut minute) = (0, 0);
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let now = crate::wire::time::now();
        app.replay.sweep(&app.db, now).await;
        hour = crate::domain::idem::sweep(&app.db, hour, now).await;
        minute = crate::pos::sweep_attestations(&app.db, minute, now).await;
    }
}

//! Terminals telling the platform they are alive (`POST /pos/heartbeat`) and asking for their
//! app's latest version (`POST /pos/update-check`); the sweep that marks silent terminals
//! offline; the app versions the operator publishes per device model.
//!
//! Both calls are signed and enveloped like a charge (contract sections 4 and 5): the same
//! checks in the same order, so a forged or replayed heartbeat is refused as a forged or
//! replayed charge is. A terminal is `online` from its heartbeat and `offline` once three
//! intervals (`platform.heartbeat_secs`) pass without one; each change is an event.

use serde_json::{Map, Value, json};

use super::Terminals;
use super::charges::{Open, commit_nonce, signed};
use super::envelope;
use crate::domain::events::{EventType, event};
use crate::domain::model::{AppVersion, Connectivity, Device};
use crate::error::ApiError;
use crate::request::Call;
use crate::store::db::Db;
use crate::wire::body::{self, Int, Text};
use crate::wire::fields::AppVersionText;
use crate::wire::ids;
use crate::wire::time::rfc3339;

crate::enum_field! {
    /// How the terminal reaches the platform.
    pub enum Network { Wifi = "wifi", Ethernet = "ethernet", Cellular = "cellular" }
}

crate::body! {
    /// The decrypted payload of `POST /pos/heartbeat`.
    #[derive(Debug)]
    pub struct Heartbeat {
        /// The app version running.
        pub app_version: AppVersionText,
        /// Battery charge in percent (absent on mains-powered terminals).
        pub battery_pct: Option<Int<0, 100>>,
        /// How it is connected.
        pub network: Option<Network>,
        /// The last charge it made, if any.
        pub last_charge_id: Option<Text<64>>,
    }
}

crate::body! {
    /// The decrypted payload of `POST /pos/update-check`.
    #[derive(Debug)]
    pub struct UpdateCheck {
        /// The app version running.
        pub app_version: AppVersionText,
    }
}

/// `POST /pos/heartbeat`: the device is online, with what it reported.
pub async fn heartbeat(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let mut s = signed(
        app,
        call,
        "POST",
        "/pos/heartbeat",
        Some(Open::Envelope),
        true,
    )
    .await?;
    let (inner, _) = s.inner.take().unwrap_or_default();
    let beat: Heartbeat = match body::from_value(Value::Object(inner)) {
        Ok(b) => b,
        Err(e) => {
            commit_nonce(app, &mut s).await;
            return Err(e);
        }
    };
    let mut report = Map::new();
    if let Some(b) = &beat.battery_pct {
        report.insert("battery_pct".into(), b.0.into());
    }
    if let Some(n) = beat.network {
        report.insert("network".into(), n.as_str().into());
    }
    if let Some(c) = &beat.last_charge_id {
        report.insert("last_charge_id".into(), c.0.clone().into());
    }
    let version = String::from(beat.app_version);
    let nonce: Vec<_> = s.nonce.take().into_iter().flatten().collect();
    let now = call.now;
    app.db
        .update::<Device>(&s.device.device_id, |d| {
            let was = d.connectivity;
            d.last_seen_at = Some(now);
            d.app_version = Some(version.clone());
            d.connectivity = Some(Connectivity::Online);
            d.heartbeat = Some(report.clone());
            let mut writes = nonce.clone();
            if was != Some(Connectivity::Online) {
                writes.extend(event(EventType::DeviceOnline, &*d, now)?);
            }
            Ok(writes)
        })
        .await?;
    let answer = json!({
        "received_at": rfc3339(now),
        "heartbeat_sec": app.platform.heartbeat_secs,
    });
    envelope::seal(app.keyd, &s.set.msk_key_id, &answer).await
}

/// `POST /pos/update-check`: the latest app for the device's model, and whether the terminal
/// must update. Answered to an app below the minimum too: it is how such an app learns it
/// must update.
pub async fn update_check(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let mut s = signed(
        app,
        call,
        "POST",
        "/pos/update-check",
        Some(Open::Envelope),
        false,
    )
    .await?;
    commit_nonce(app, &mut s).await;
    let (inner, _) = s.inner.take().unwrap_or_default();
    let asked: UpdateCheck = body::from_value(Value::Object(inner))?;
    let running = ids::pos_version(&asked.app_version).unwrap_or_default();
    let published = app.db.get::<AppVersion>(&s.device.model).await?;
    let minimum = published
        .as_ref()
        .and_then(|p| p.min_supported_version.as_deref())
        .unwrap_or(&app.platform.min_supported_version);
    let minimum = ids::pos_version(minimum).unwrap_or_default();
    let latest = published
        .as_ref()
        .and_then(|p| ids::pos_version(&p.latest_version));
    let answer = json!({
        "model": s.device.model,
        "app_version": String::from(asked.app_version),
        "latest_version": published.as_ref().map(|p| p.latest_version.clone()),
        "url": published.as_ref().map(|p| p.url.clone()),
        "update_available": latest.is_some_and(|l| l > running),
        "mandatory": running < minimum,
        "update_check_sec": app.platform.update_check_secs,
    });
    envelope::seal(app.keyd, &s.set.msk_key_id, &answer).await
}

/// Marks offline every online device silent for three intervals, each with its event;
/// returns how many. Run by the node doing housekeeping, every few seconds.
///
/// # Errors
/// 503 when the store is down.
pub async fn sweep_silent(db: &Db, heartbeat_secs: u64, now: i64) -> Result<usize, ApiError> {
    let window = i64::try_from(heartbeat_secs.saturating_mul(3)).unwrap_or(i64::MAX);
    let cutoff = now.saturating_sub(window);
    let page = db
        .page::<Device>("devices_silent", &cutoff.to_string(), None, 500)
        .await?;
    let mut n = 0;
    for device in page.items {
        let mut changed = false;
        db.update::<Device>(&device.device_id, |d| {
            changed = d.connectivity == Some(Connectivity::Online)
                && d.last_seen_at.is_none_or(|at| at < cutoff);
            if !changed {
                return Ok(Vec::new());
            }
            d.connectivity = Some(Connectivity::Offline);
            event(EventType::DeviceOffline, &*d, now)
        })
        .await?;
        n += usize::from(changed);
    }
    Ok(n)
}

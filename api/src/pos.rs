//! The POS lifecycle (contract sections 4, 6 and 7): header checks, activation, attestation and
//! the calls a terminal makes before it may charge. Each handler runs its checks in exactly the
//! contract's order, because the order decides which error a client sees.

pub mod charges;
pub mod envelope;
pub mod heartbeats;
pub mod replies;

/// What terminal handlers work with: records, keyd, used nonces, per-device locks, keyed
/// requests, the charge engine and the platform's settings. Bearer tokens are not here: the
/// one bearer call of the terminal protocol (`/pos/claim`) gets its principal from the
/// request, like every other.
#[derive(Debug, Clone, Copy)]
pub struct Terminals<'a> {
    /// Records.
    pub db: &'a db::Db,
    /// The key service.
    pub keyd: &'a Keyd,
    /// The platform's own settings.
    pub platform: &'a PlatformConfig,
    /// Used nonces.
    pub replay: &'a Replay,
    /// Per-device serialisation of read-check-write sequences.
    pub locks: &'a Locks,
    /// Keyed requests in progress.
    pub idempotency: &'a Idempotency,
    /// The charge engine.
    pub charges: &'a ChargeEngine,
}

impl<'a> Terminals<'a> {
    /// The terminal protocol's part of the services.
    pub fn of(s: &'a Services) -> Self {
        Self {
            db: &s.db,
            keyd: &s.keyd,
            platform: &s.config.platform,
            replay: &s.replay,
            locks: &s.locks,
            idempotency: &s.idempotency,
            charges: &s.charges,
        }
    }
}

use base64::Engine;
use keyd_proto::Status;
use keyd_proto::message::{AttestVerify, KeySetCreate, KeySetExport};
use serde_json::{Value, json};

use crate::auth::authz::{Action, authorize};
use crate::config::PlatformConfig;
use crate::domain::charges::Engine as ChargeEngine;
use crate::domain::events::{self, EventType};
use crate::domain::idem::Idempotency;
use crate::domain::locks::Locks;
use crate::domain::model::{
    Attestation, Device, DeviceStatus, KeySetRef, Location, Merchant, PairingCode, PairingStatus,
    Reseller,
};
use crate::domain::replay::Replay;
use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::keyd::KeydError;
use crate::request::{Call, Services};

use crate::store::db;
use crate::wire::body;
use crate::wire::fields::{DeviceId, Id};
use crate::wire::ids;
use crate::wire::reply;
use crate::wire::time::rfc3339;

const PAIRING_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const PAIRING_TTL: i64 = 300;
const PAIRING_PER_HOUR: usize = 10;
const ATTESTATION_TTL: i64 = 300;
const KEY_SET_LIFETIME: i64 = 365 * 86_400;
/// After a new key set is delivered, the previous one still verifies charges for this long.
pub const KEY_SET_GRACE: i64 = 86_400;

fn header_error(name: &str) -> ApiError {
    ApiError::new(
        Code::HeaderInvalid,
        format!("header {name} is missing or malformed"),
    )
}

/// `Viopay-POS/MAJOR.MINOR.PATCH` with an optional ` (…)` comment.
pub fn user_agent_version(ua: &str) -> Option<(u32, u32, u32)> {
    let rest = ua.strip_prefix("Viopay-POS/")?;
    let (version, comment) = match rest.split_once(' ') {
        Some((v, c)) => (v, Some(c)),
        None => (rest, None),
    };
    if let Some(c) = comment
        && !(c.starts_with('(') && c.ends_with(')'))
    {
        return None;
    }
    ids::pos_version(version)
}

/// The POS headers every terminal call carries; `check_version` is false only for bootstrap.
///
/// # Errors
/// 400/`4001` for a missing or malformed header, 400/`4003` for an old app.
pub fn pos_headers(
    app: &Terminals<'_>,
    call: &Call<'_>,
    check_version: bool,
) -> Result<(), ApiError> {
    let version = call
        .header("user-agent")
        .and_then(user_agent_version)
        .ok_or_else(|| header_error("User-Agent"))?;
    if call.header("x-client-type") != Some("pos") {
        return Err(header_error("X-Client-Type"));
    }
    let min = ids::pos_version(&app.platform.min_supported_version).unwrap_or_default();
    if check_version && version < min {
        return Err(ApiError::new(
            Code::AppVersion,
            format!(
                "app version below the minimum supported ({})",
                app.platform.min_supported_version
            ),
        ));
    }
    Ok(())
}

/// `X-Device-Id`, well-formed.
fn device_header(call: &Call<'_>) -> Result<String, ApiError> {
    call.header("x-device-id")
        .filter(|d| ids::is_device_id(d))
        .map(str::to_owned)
        .ok_or_else(|| header_error("X-Device-Id"))
}

/// A header that must be present; `valid` checks its form.
pub fn required<'c>(
    call: &'c Call<'_>,
    name: &str,
    valid: impl Fn(&str) -> bool,
) -> Result<&'c str, ApiError> {
    call.header(name)
        .filter(|v| valid(v))
        .ok_or_else(|| header_error(name))
}

/// `X-Timestamp`: RFC 3339 (as the public docs say), or Unix seconds.
pub fn timestamp(text: &str) -> Option<i64> {
    if !text.is_empty() && text.len() <= 12 && text.bytes().all(|c| c.is_ascii_digit()) {
        return text.parse().ok();
    }
    crate::wire::time::parse_rfc3339(text)
}

/// `X-Signature: v1=<base64 of 32 bytes>`.
pub fn signature(text: &str) -> Option<[u8; 32]> {
    let b64 = text.strip_prefix("v1=")?;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .ok()?
        .try_into()
        .ok()
}

fn device_state(ok: bool) -> Result<(), ApiError> {
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            Code::DeviceState,
            "the device is not in the state this call needs",
        ))
    }
}

/// Activation calls: POS headers, then a registered `X-Device-Id`.
async fn activation(
    app: &Terminals<'_>,
    call: &Call<'_>,
    check_version: bool,
) -> Result<Device, ApiError> {
    pos_headers(app, call, check_version)?;
    let id = device_header(call)?;
    app.db.find(&id).await
}

/// `POST /pos/bootstrap`.
pub async fn bootstrap(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = activation(app, call, false).await?;
    device_state(device.status != DeviceStatus::Disabled)?;
    Ok(reply::json(&replies::BootstrapReply {
        status: "ok",
        server_time: reply::Time(call.now),
        min_supported_version: &app.platform.min_supported_version,
    }))
}

/// `GET /pos/status`.
pub async fn status(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = activation(app, call, true).await?;
    use replies::PairingCodeStatus as S;
    let code_status = match &device.pairing_code {
        None => S::None,
        Some(code) => match app.db.get::<PairingCode>(code).await? {
            Some(c) if c.device_id == device.device_id => match c.status(call.now) {
                PairingStatus::Pending => S::Pending,
                PairingStatus::Used => S::Used,
                PairingStatus::Expired => S::Expired,
            },
            _ => S::None,
        },
    };
    Ok(reply::json(&replies::StatusReply {
        device_status: reply::OneOf(device.status),
        is_claimed: matches!(
            device.status,
            DeviceStatus::Claimed | DeviceStatus::Activated
        ),
        pairing_code_status: reply::OneOf(code_status),
    }))
}

/// `POST /pos/pairing-code`: six characters, five minutes, one pending per device, ten an hour.
pub async fn pairing_code(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = activation(app, call, true).await?;
    device_state(device.status == DeviceStatus::Inactive)?;
    let _guard = app.locks.lock(&device.device_id).await?;
    let device: Device = app.db.find(&device.device_id).await?;
    device_state(device.status == DeviceStatus::Inactive)?;
    let now = call.now;
    let recent: Vec<i64> = device
        .pairing_issued
        .iter()
        .copied()
        .filter(|t| now - t < 3600)
        .collect();
    if recent.len() >= PAIRING_PER_HOUR {
        let oldest = recent.iter().min().copied().unwrap_or(now);
        return Err(
            ApiError::new(Code::RateLimited, "too many pairing codes this hour")
                .with_retry_after(u64::try_from(oldest + 3600 - now).unwrap_or(1).max(1)),
        );
    }
    // A value is not handed out again while pending, nor within a day of ceasing to be.
    let mut chosen = None;
    for _ in 0..32 {
        let code: String = ids::random_bytes::<6>()?
            .iter()
            .filter_map(|b| PAIRING_ALPHABET.get(usize::from(b % 32)))
            .map(|&c| char::from(c))
            .collect();
        let previous = app.db.get_versioned::<PairingCode>(&code).await?;
        let free = previous
            .as_ref()
            .is_none_or(|(p, _)| p.ended(now).is_some_and(|ended| now - ended >= 86_400));
        if free {
            chosen = Some((code, previous));
            break;
        }
    }
    let (code, previous) = chosen.ok_or_else(|| ApiError::internal(&"no free pairing code"))?;
    let record = PairingCode {
        code: code.clone(),
        device_id: device.device_id.clone(),
        status: PairingStatus::Pending,
        created_at: now,
        expires_at: now + PAIRING_TTL,
        ended_at: None,
    };
    let mut writes = vec![match &previous {
        None => db::absent::<PairingCode>(&code),
        Some((_, version)) => db::expect::<PairingCode>(&code, *version),
    }];
    writes.push(db::put(&record)?);
    if let Some(old) = &device.pairing_code
        && let Some(mut old) = app.db.get::<PairingCode>(old).await?
        && old.device_id == device.device_id
        && old.status(now) == PairingStatus::Pending
    {
        old.status = PairingStatus::Expired;
        old.ended_at = Some(now);
        writes.push(db::put(&old)?);
    }
    let mut recent = recent;
    recent.push(now);
    let taken = ApiError::new(Code::Conflict, "try again");
    app.db
        .update::<Device>(&device.device_id, move |d| {
            device_state(d.status == DeviceStatus::Inactive)?;
            d.pairing_code = Some(code.clone());
            d.pairing_issued.clone_from(&recent);
            // Cloned, not taken: a retry after another writer changed the device must write
            // the pairing code again, or the device would name a code never stored.
            Ok(writes.clone())
        })
        .await
        .map_err(|e| if e.code() == Code::Conflict { taken } else { e })?;
    Ok(reply::json(&replies::PairingCodeReply {
        pairing_code: &record.code,
        expires_in_sec: PAIRING_TTL,
    }))
}

crate::string_field!(
    /// A pairing code as a terminal shows it.
    PairingCodeText,
    |c: &str| c.len() == 6 && c.bytes().all(|b| PAIRING_ALPHABET.contains(&b)),
    "six characters of the pairing alphabet",
    {"type": "string", "pattern": "^[ABCDEFGHJKLMNPQRSTUVWXYZ23456789]{6}$"}
);

crate::body! {
    /// `POST /pos/claim`.
    #[derive(Debug)]
    pub struct Claim {
        /// The code the terminal shows.
        pub pairing_code: PairingCodeText,
        /// When given, must be the code's device.
        pub device_id: Option<DeviceId>,
        /// Where the device will stand.
        pub location_id: Option<Id>,
    }
}

/// `POST /pos/claim` (bearer): a merchant's user pairs a device with the code it shows.
pub async fn claim(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let Claim {
        pairing_code,
        device_id,
        location_id,
    } = body::parse(&call.body)?;
    let code = String::from(pairing_code);
    let device_id = device_id.map(String::from);
    let location_id = location_id.map(String::from);
    let (pairing, version) = app
        .db
        .get_versioned::<PairingCode>(&code)
        .await?
        .ok_or_else(ApiError::not_found)?;
    match pairing.status(call.now) {
        PairingStatus::Expired => {
            return Err(ApiError::new(Code::PairingExpired, "pairing code expired"));
        }
        PairingStatus::Used => {
            return Err(ApiError::new(
                Code::PairingUsed,
                "pairing code already used",
            ));
        }
        PairingStatus::Pending => {}
    }
    let device: Device = app.db.find(&pairing.device_id).await?;
    let merchant: Merchant = app.db.find(&device.merchant_id).await?;
    authorize(p, Action::Operate, &merchant.tenancy())?;
    if device_id.as_deref().is_some_and(|d| d != device.device_id) {
        return Err(ApiError::field(
            "device_id",
            "not the device this code pairs",
        ));
    }
    if let Some(l) = &location_id {
        crate::domain::model::check_location(app.db, &merchant.id, l).await?;
    }
    device_state(device.status == DeviceStatus::Inactive)?;
    let _guard = app.locks.lock(&device.device_id).await?;
    let terminal_id = match &device.terminal_id {
        Some(t) => t.clone(),
        None => new_terminal_id(app, &device.device_id).await?,
    };
    let now = call.now;
    let mut used = pairing.clone();
    used.status = PairingStatus::Used;
    used.ended_at = Some(now);
    let expect_code = db::expect::<PairingCode>(&pairing.code, version);
    let put_code = db::put(&used)?;
    let tid = terminal_id.clone();
    let updated = app
        .db
        .update::<Device>(&device.device_id, move |d| {
            if d.status != DeviceStatus::Inactive {
                return Err(ApiError::new(
                    Code::DeviceState,
                    "the device is not inactive",
                ));
            }
            d.status = DeviceStatus::Claimed;
            d.terminal_id = Some(tid.clone());
            if let Some(l) = &location_id {
                d.location_id = Some(l.clone());
            }
            d.updated_at = now;
            let mut writes = vec![expect_code.clone(), put_code.clone()];
            writes.extend(events::event(EventType::DeviceClaimed, &*d, now)?);
            Ok(writes)
        })
        .await
        .map_err(|e| match e.code() {
            // The code was used by a concurrent claim.
            Code::Conflict => ApiError::new(Code::PairingUsed, "pairing code already used"),
            _ => e,
        })?;
    Ok(reply::json(&replies::ClaimReply {
        status: "claimed",
        device_id: &updated.device_id,
        terminal_id: Some(&terminal_id),
    }))
}

/// A fresh `TID-` + 6 digits, claimed platform-wide for the device's life.
async fn new_terminal_id(app: &Terminals<'_>, device_id: &str) -> Result<String, ApiError> {
    for _ in 0..64 {
        let n = u32::from_be_bytes(ids::random_bytes::<4>()?) % 1_000_000;
        let tid = format!("TID-{n:06}");
        if app.db.owner("terminal_id", &tid).await?.is_some() {
            continue;
        }
        let claimed = app
            .db
            .commit(
                vec![db::claim("terminal_id", &tid, device_id)],
                ApiError::new(Code::Conflict, "taken"),
            )
            .await;
        match claimed {
            Ok(()) => return Ok(tid),
            Err(e) if e.code() == Code::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::internal(&"terminal id space exhausted"))
}

/// `POST /pos/attest`: the identity-key signature earns a five-minute attestation token.
pub async fn attest(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    pos_headers(app, call, true)?;
    let device_id = device_header(call)?;
    let key_id = required(call, "x-key-id", |k| (1..=128).contains(&k.len()))?;
    let ts_text = required(call, "x-timestamp", |t| timestamp(t).is_some())?;
    let nonce = required(call, "x-nonce", crate::domain::replay::valid_nonce)?;
    let sig = signature(required(call, "x-signature", |s| signature(s).is_some())?)
        .ok_or_else(|| header_error("X-Signature"))?;
    let device: Device = app.db.find(&device_id).await?;
    device_state(matches!(
        device.status,
        DeviceStatus::Claimed | DeviceStatus::Activated
    ))?;
    let message = format!("{device_id}\n{key_id}\n{ts_text}\n{nonce}");
    let verdict = app
        .keyd
        .call(&AttestVerify {
            device_id: device_id.clone(),
            key_id: key_id.to_owned(),
            message: message.into_bytes(),
            signature: sig,
        })
        .await;
    match verdict {
        Ok(_) => {}
        Err(KeydError::Unavailable) => return Err(KeydError::unavailable()),
        Err(KeydError::Refused(_)) => return Err(bad_signature()),
    }
    let ts = timestamp(ts_text).unwrap_or_default();
    if call.now - ts > 300 || ts - call.now > 60 {
        return Err(ApiError::new(
            Code::TimestampWindow,
            "X-Timestamp outside the window",
        ));
    }
    let nonce_write = app.replay.take(&device_id, nonce, call.now)?;
    let token = format!("att_{}", ids::random_alnum(43)?);
    let record = Attestation {
        hash: token_hash(&token),
        device_id: device_id.clone(),
        epoch: device.auth_epoch,
        expires_at: call.now + ATTESTATION_TTL,
    };
    app.db
        .commit(
            [Vec::from(nonce_write), vec![db::put(&record)?]].concat(),
            ApiError::new(Code::Conflict, "try again"),
        )
        .await?;
    Ok(reply::json(&replies::AttestReply {
        status: "attested",
        attestation_token: reply::ShownOnce(&token),
        expires_in_sec: ATTESTATION_TTL,
    }))
}

/// Deletes expired attestation tokens (minute buckets of their expiry) up to a minute ago,
/// from `from_minute` on; returns the next bucket to look at.
pub async fn sweep_attestations(db: &db::Db, from_minute: i64, now: i64) -> i64 {
    let last = now / 60 - 1;
    db.delete_buckets::<Attestation>("attestation_minute", from_minute.max(last - 24 * 60), last)
        .await
}

/// The one answer for every signature failure.
pub fn bad_signature() -> ApiError {
    ApiError::new(
        Code::SignatureInvalid,
        "signature invalid, key unknown or revoked, or terminal unknown",
    )
}

fn token_hash(token: &str) -> String {
    hex::encode_upper(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

/// Attestation-token calls: POS headers, then the token (every failure one 4014), then the
/// device state.
///
/// # Errors
/// 4001/4003, 4014, 4092.
pub async fn attested(app: &Terminals<'_>, call: &Call<'_>) -> Result<Device, ApiError> {
    pos_headers(app, call, true)?;
    let bad = || {
        ApiError::new(
            Code::AttestationInvalid,
            "attestation token missing, unknown, expired or not this device's",
        )
    };
    let token = call
        .header("authorization")
        .and_then(|h| h.strip_prefix("Attestation "))
        .map(str::trim)
        .filter(|t| ids::is_prefixed(t, "att_", 32) && t.len() <= 128)
        .ok_or_else(bad)?;
    let device_id = device_header(call)?;
    let record = app
        .db
        .get::<Attestation>(&token_hash(token))
        .await?
        .filter(|a| a.expires_at > call.now && a.device_id == device_id)
        .ok_or_else(bad)?;
    let device = app
        .db
        .get::<Device>(&device_id)
        .await?
        .filter(|d| d.auth_epoch == record.epoch)
        .ok_or_else(bad)?;
    device_state(matches!(
        device.status,
        DeviceStatus::Claimed | DeviceStatus::Activated
    ))?;
    Ok(device)
}

/// `POST /pos/keys`: the device's key set as TR-31 version D blocks (made on first call, after
/// expiry, or after a scheduled rotation).
pub async fn keys(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = attested(app, call).await?;
    let set = current_key_set(app, &device, call.now).await?;
    let export = app
        .keyd
        .call(&KeySetExport {
            device_id: device.device_id.clone(),
            key_set_id: set.key_set_id.clone(),
        })
        .await
        .map_err(|e| keyd_failure(e, "key export"))?;
    let keys = export
        .keys
        .iter()
        .map(|k| {
            let usage = match k.kind.as_str() {
                "tmk" | "kek" => "key-encryption",
                "tpk" => "pin-encryption",
                "mac" => "mac",
                _ => "data-encryption",
            };
            let key = replies::DeliveredKey {
                key_id: &k.key_id,
                key_block: base64::engine::general_purpose::STANDARD.encode(k.key_block.as_bytes()),
                usage,
                kcv: hex::encode_upper(k.kcv),
                wrapped_under: &k.wrapped_under,
            };
            (k.kind.as_str(), key)
        })
        .collect();
    Ok(reply::json(&replies::KeysReply {
        key_set: replies::KeySetInfo {
            key_set_id: &set.key_set_id,
            issued_at: reply::Time(set.issued_at),
            expires_at: reply::Time(set.expires_at),
        },
        transport: replies::Transport {
            format: "TR31",
            encryption: "AES-256",
            wrapped_under: "kek",
        },
        keys: replies::DeliveredKeys(keys),
    }))
}

fn keyd_failure(e: KeydError, what: &str) -> ApiError {
    match e {
        KeydError::Unavailable => KeydError::unavailable(),
        KeydError::Refused(Status::NOT_FOUND) => ApiError::new(
            Code::DeviceState,
            "the key service has no keys for this device",
        ),
        KeydError::Refused(s) => ApiError::internal(&format!("keyd refused {what}: {s}")),
    }
}

/// The set to deliver: the current one, or a new one when there is none, it expired, or a
/// rotation was scheduled. One device at a time, so two calls cannot make two sets.
async fn current_key_set(
    app: &Terminals<'_>,
    device: &Device,
    now: i64,
) -> Result<KeySetRef, ApiError> {
    let _guard = app.locks.lock(&device.device_id).await?;
    let device: Device = app.db.find(&device.device_id).await?;
    if let Some(set) = &device.key_set
        && set.expires_at > now
        && !device.rotate_keys
    {
        return Ok(set.clone());
    }
    let info = app
        .keyd
        .call(&KeySetCreate {
            device_id: device.device_id.clone(),
        })
        .await
        .map_err(|e| keyd_failure(e, "key-set creation"))?;
    let find = |kind: &str| {
        info.keys
            .iter()
            .find(|k| k.kind == kind)
            .ok_or_else(|| ApiError::internal(&format!("keyd key set without {kind}")))
    };
    let (mac, msk, tdk, tpk) = (find("mac")?, find("msk")?, find("tdk")?, find("tpk")?);
    let set = KeySetRef {
        key_set_id: info.key_set_id.clone(),
        issued_at: now,
        expires_at: now + KEY_SET_LIFETIME,
        delivered_at: now,
        mac_key_id: mac.key_id.clone(),
        msk_key_id: msk.key_id.clone(),
        msk_kcv: hex::encode_upper(msk.kcv),
        tdk_key_id: tdk.key_id.clone(),
        tpk_key_id: Some(tpk.key_id.clone()),
    };
    let new = set.clone();
    app.db
        .update::<Device>(&device.device_id, move |d| {
            d.previous_key_set = d.key_set.take();
            d.key_set = Some(new.clone());
            d.rotate_keys = false;
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(set)
}

/// The config JSON of section 7.
async fn config_json(app: &Terminals<'_>, device: &Device) -> Result<Value, ApiError> {
    let merchant: Merchant = app.db.find(&device.merchant_id).await?;
    let reseller: Option<Reseller> = app.db.get(&merchant.reseller_id).await?;
    let location = match &device.location_id {
        Some(l) => app.db.get::<Location>(l).await?.map(|l| {
            json!({"location_id": l.id, "name": l.name, "address": l.address,
                   "timezone": l.timezone})
        }),
        None => None,
    };
    let branding = reseller.and_then(|r| r.branding).unwrap_or_default();
    let field = |k: &str| branding.get(k).cloned().unwrap_or(Value::Null);
    let money = |v: u64| json!({"value": v.to_string(), "currency": merchant.currency});
    Ok(json!({
        "terminal": {"terminal_id": device.terminal_id, "device_id": device.device_id,
                     "label": device.label},
        "merchant": {"merchant_id": merchant.id, "name": merchant.name,
                     "merchant_key": merchant.merchant_key, "mcc": merchant.mcc,
                     "country": merchant.country, "currency": merchant.currency,
                     "tip_info": merchant.tip_info, "tax_info": merchant.tax_info,
                     "surcharge_info": merchant.surcharge_info},
        "location": location,
        "emv": {"aids": ["A0000000031010", "A0000000041010", "A000000025010801", "A0000001524010"],
                "terminal_capabilities": "E0F8C8", "terminal_type": "22"},
        "security": {"pin_required_above": money(5_000), "contactless_limit": money(crate::domain::charges::CONTACTLESS_LIMIT),
                     "fallback_allowed": false},
        "branding": {"theme": field("theme"), "logo_url": field("logo_url"),
                     "primary_color": field("primary_color")},
        "intervals": {"heartbeat_sec": app.platform.heartbeat_secs,
                      "update_check_sec": app.platform.update_check_secs},
    }))
}

fn need_key_set(device: &Device) -> Result<KeySetRef, ApiError> {
    device.key_set.clone().ok_or_else(|| {
        ApiError::new(
            Code::DeviceState,
            "the device has no key set yet: POST /pos/keys first",
        )
    })
}

/// `POST /pos/config`.
pub async fn config(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = attested(app, call).await?;
    let set = need_key_set(&device)?;
    envelope::seal(app.keyd, &set.msk_key_id, &config_json(app, &device).await?).await
}

/// Platform defaults of the terminal parameters.
fn platform_parameters() -> Value {
    json!({
        "acquirers": [{"id": "sim", "name": "Simulator", "host": "simulator"}],
        "ca_public_keys": [
            {"rid": "A000000003", "index": "92", "exponent": "03", "algorithm": "RSA", "hash": "SHA-1"},
            {"rid": "A000000004", "index": "05", "exponent": "03", "algorithm": "RSA", "hash": "SHA-1"},
        ],
        "emv_kernels": {
            "visa": {"aid": "A0000000031010", "kernel_id": 3, "floor_limit": "0"},
            "mastercard": {"aid": "A0000000041010", "kernel_id": 2, "floor_limit": "0"},
        },
        "contactless": {"enabled": true, "limit": "5000", "cvm_limit": "5000"},
        "receipt": {"print": true, "email": false},
    })
}

/// Defaults by device model (none yet beyond the platform's).
fn model_parameters(_model: &str) -> Value {
    json!({})
}

/// Later wins; objects merge recursively, arrays and scalars are replaced.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// `POST /pos/terminal-parameters`.
pub async fn terminal_parameters(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = attested(app, call).await?;
    let set = need_key_set(&device)?;
    let merchant: Merchant = app.db.find(&device.merchant_id).await?;
    let mut params = platform_parameters();
    merge(&mut params, &model_parameters(&device.model));
    if let Some(o) = &merchant.terminal_parameters {
        merge(&mut params, &Value::Object(o.clone()));
    }
    if let Some(o) = &device.terminal_parameters {
        merge(&mut params, &Value::Object(o.clone()));
    }
    envelope::seal_gzip(app.keyd, &set.msk_key_id, &params).await
}

/// `POST /pos/activate`: the envelope is checked in every state; the flags must all be true.
pub async fn activate(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let device = attested(app, call).await?;
    let set = need_key_set(&device)?;
    let sealed = envelope::parse(&call.body, &set.msk_kcv)?;
    let (inner, _) = envelope::open(app.keyd, &sealed, &set.msk_key_id).await?;
    let missing: Vec<&str> = ["emv_ready", "keys_installed", "network_ok"]
        .into_iter()
        .filter(|f| inner.get(*f) != Some(&Value::Bool(true)))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            Code::ActivationPreconditions,
            "activation preconditions not met",
        )
        .with_details(json!({"not_met": missing})));
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&device.device_id, move |d| match d.status {
            DeviceStatus::Claimed => {
                d.status = DeviceStatus::Activated;
                d.activated_at = Some(now);
                d.updated_at = now;
                events::event(EventType::DeviceActivated, &*d, now)
            }
            DeviceStatus::Activated => Ok(Vec::new()),
            _ => Err(ApiError::new(
                Code::DeviceState,
                "the device is not in the state this call needs",
            )),
        })
        .await?;
    let answer = json!({
        "status": "activated",
        "activated_at": updated.activated_at.map(rfc3339),
        "terminal_id": updated.terminal_id,
    });
    envelope::seal(app.keyd, &set.msk_key_id, &answer).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse() {
        assert_eq!(user_agent_version("Viopay-POS/1.4.0"), Some((1, 4, 0)));
        assert_eq!(
            user_agent_version("Viopay-POS/10.0.12 (A920; Android 10)"),
            Some((10, 0, 12))
        );
        for bad in [
            "Viopay-POS/1.4",
            "Viopay-POS/1.4.0 A920",
            "viopay-pos/1.4.0",
            "Viopay-POS/1.4.0.1",
            "Viopay-POS/a.b.c",
        ] {
            assert_eq!(user_agent_version(bad), None, "{bad}");
        }
        assert_eq!(timestamp("2026-11-27T10:15:30Z"), Some(1_795_774_530));
        assert_eq!(timestamp("1795774530"), Some(1_795_774_530));
        assert_eq!(timestamp("soon"), None);
        let sig = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(signature(&format!("v1={sig}")), Some([7u8; 32]));
        assert_eq!(signature(&sig), None);
        assert_eq!(signature("v1=AAAA"), None);
    }

    async fn app() -> Services {
        Services::for_tests().await
    }

    fn device(status: DeviceStatus, epoch: u64) -> Device {
        Device {
            device_id: "POS-00000001".into(),
            merchant_id: "m".into(),
            model: "A920".into(),
            serial: "S".into(),
            label: None,
            location_id: None,
            zone: "z1".into(),
            status,
            terminal_id: Some("TID-000001".into()),
            identity_key_id: "idk-1".into(),
            identity_kcv: "000000".into(),
            rotate_keys: false,
            terminal_parameters: None,
            auth_epoch: epoch,
            key_set: None,
            previous_key_set: None,
            pairing_code: None,
            pairing_issued: Vec::new(),
            created_at: 0,
            updated_at: 0,
            activated_at: None,
            last_seen_at: None,
            app_version: None,
            connectivity: None,
            heartbeat: None,
        }
    }

    #[tokio::test]
    async fn attestation_tokens_expire_and_die_with_the_epoch() {
        let app = app().await;
        let now = crate::wire::time::now();
        let token = format!("att_{}", "A".repeat(43));
        let put = |d: Device, expires_at: i64, epoch: u64| {
            vec![
                db::put(&d).unwrap(),
                db::put(&Attestation {
                    hash: token_hash(&token),
                    device_id: "POS-00000001".into(),
                    epoch,
                    expires_at,
                })
                .unwrap(),
            ]
        };
        let mut headers = hyper::HeaderMap::new();
        headers.insert("user-agent", "Viopay-POS/1.4.0".parse().unwrap());
        headers.insert("x-client-type", "pos".parse().unwrap());
        headers.insert("x-device-id", "POS-00000001".parse().unwrap());
        headers.insert(
            "authorization",
            format!("Attestation {token}").parse().unwrap(),
        );
        let call = Call {
            params: Vec::new(),
            query: Vec::new(),
            headers: &headers,
            body: hyper::body::Bytes::new(),
            now,
            principal: None,
        };
        let conflict = ApiError::new(Code::Conflict, "x");
        app.db
            .commit(
                put(device(DeviceStatus::Claimed, 1), now + 300, 1),
                conflict.clone(),
            )
            .await
            .unwrap();
        assert_eq!(
            attested(&Terminals::of(&app), &call)
                .await
                .err()
                .map(|e| e.code()),
            None
        );
        // Expired.
        app.db
            .commit(
                put(device(DeviceStatus::Claimed, 1), now, 1),
                conflict.clone(),
            )
            .await
            .unwrap();
        assert_eq!(
            attested(&Terminals::of(&app), &call)
                .await
                .err()
                .map(|e| e.code()),
            Some(Code::AttestationInvalid)
        );
        // Disabled and re-enabled since (the epoch moved on).
        app.db
            .commit(
                put(device(DeviceStatus::Claimed, 3), now + 300, 1),
                conflict.clone(),
            )
            .await
            .unwrap();
        assert_eq!(
            attested(&Terminals::of(&app), &call)
                .await
                .err()
                .map(|e| e.code()),
            Some(Code::AttestationInvalid)
        );
        // A good token on a device in the wrong state.
        app.db
            .commit(
                put(device(DeviceStatus::Inactive, 1), now + 300, 1),
                conflict,
            )
            .await
            .unwrap();
        assert_eq!(
            attested(&Terminals::of(&app), &call)
                .await
                .err()
                .map(|e| e.code()),
            Some(Code::DeviceState)
        );
    }

    #[test]
    fn parameters_merge_objects_and_replace_the_rest() {
        let mut base = json!({"a": {"x": 1, "y": [1, 2]}, "b": 1});
        merge(
            &mut base,
            &json!({"a": {"y": [3], "z": true}, "b": {"c": 2}}),
        );
        assert_eq!(
            base,
            json!({"a": {"x": 1, "y": [3], "z": true}, "b": {"c": 2}})
        );
    }
}

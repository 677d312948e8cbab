//! What keyd does, independent of how requests arrive: device identity keys, key sets, their
//! delivery as TR-31 blocks, and the hot-path data operations.
//!
//! Every clear key here lives in a zeroizing buffer for as long as an operation (or, for
//! working keys in `memory` placement, the bounded cache) needs it. Every failure of a MAC, a
//! padding or a key lookup on the data path is the one detail-free [`Error::Auth`].

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use keyd_proto::Secret;
use keyd_proto::message as m;
use tr31::{KeyBlock, Profile, SealOptions};
use zeroize::Zeroizing;

use crate::config::Placement;
use crate::hsm::{Hsm, Memo, TokenKey, TokenKind, Zmk, ZmkAlgorithm};
use crate::keys::{self, KeyKind};
use crate::officers::{Action, Officers, Policy};
use crate::store::{DeviceRecord, ImportedRecord, KeyRecord, KeyState, KeyStore, ZoneRecord};
use crate::{Error, crypto};

/// A clear working key held for the hot path.
pub(crate) struct WorkingKey {
    kind: KeyKind,
    pub(crate) device_id: String,
    key_set_id: Option<String>,
    kcv: [u8; 3],
    material: Material,
    /// For keys of the previous key set: when the grace period ends.
    valid_until: Option<u64>,
}

/// Where a working key's operations run.
enum Material {
    /// `memory` placement: the clear key in keyd, RustCrypto does the work.
    Memory(Zeroizing<Vec<u8>>),
    /// `token` placement: a session object in the HSM, destroyed when the cache lets go of it.
    Token { key: TokenKey, hsm: Arc<dyn Hsm> },
}

impl Drop for Material {
    fn drop(&mut self) {
        if let Self::Token { key, hsm } = self {
            hsm.unload_key(*key);
        }
    }
}

impl WorkingKey {
    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        match &self.material {
            Material::Memory(k) => crypto::verify_hmac(k, message, signature),
            Material::Token { key, hsm } => hsm.hmac_verify(*key, message, signature),
        }
    }

    fn decrypt(&self, iv: &[u8; 16], ciphertext: &[u8]) -> Result<Secret, Error> {
        let plain = match &self.material {
            Material::Memory(k) => crypto::cbc_decrypt(k, iv, ciphertext)?,
            Material::Token { key, hsm } => hsm.cbc_decrypt(*key, iv, ciphertext)?,
        };
        Ok(Secret(plain))
    }

    fn encrypt(&self, iv: &[u8; 16], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        match &self.material {
            Material::Memory(k) => crypto::cbc_encrypt(k, iv, plaintext),
            Material::Token { key, hsm } => hsm.cbc_encrypt(*key, iv, plaintext),
        }
    }
}

/// The key service.
pub struct Service {
    pub(crate) hsm: Arc<dyn Hsm>,
    pub(crate) store: Arc<dyn KeyStore>,
    placement: Placement,
    pub(crate) cache: RwLock<HashMap<String, Arc<WorkingKey>>>,
    /// Partners' keys (imported ZPKs, ZAKs, PVKs) opened from their storage blocks, under the
    /// same generation rule as `cache`.
    pub(crate) partners: RwLock<HashMap<String, Arc<payments::PartnerKey>>>,
    capacity: usize,
    grace: u64,
    fingerprint_key: Zeroizing<[u8; 32]>,
    /// Bounds `PanFingerprint` (see [`Service::pan_fingerprint`]).
    fingerprint_budget: std::sync::Mutex<Budget>,
    /// Keys request fingerprints (a key apart from the PAN's, so neither value can stand in
    /// for the other).
    request_key: Zeroizing<[u8; 32]>,
    /// Seals PANs kept for later acquirer messages (`PanSeal`): AES-256 encryption key, then
    /// the HMAC key over its output, each derived apart from every other key.
    pub(crate) pan_seal_keys: (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>),
    pub(crate) officers: Officers,
    /// The store's key-state version this process's cache reflects.
    pub(crate) seen_version: std::sync::atomic::AtomicU64,
    /// Moves whenever officers' actions take keys out of the cache: a key loaded across such a
    /// change is used for its request but not cached, so it cannot outlive its disabling.
    pub(crate) cache_generation: std::sync::atomic::AtomicU64,
    /// The LMK new blocks are sealed under (`None`: the original one), from the store's LMK
    /// states (see `lmk`).
    sealing: RwLock<Option<[u8; 3]>>,
    /// The store's LMK states as last read.
    lmk_states: RwLock<Vec<crate::store::LmkRecord>>,
    /// When `serve` next looks whether a retired LMK is due for destruction.
    next_lmk_check: std::sync::atomic::AtomicU64,
    /// When `serve` may next log that its token lacks the LMK in use.
    next_lmk_warning: std::sync::atomic::AtomicU64,
    /// Where each zone's current ZMK is in the token (see `zmk`); emptied with the cache.
    pub(crate) zmk_slots: RwLock<HashMap<String, zmk::ZmkSlot>>,
    /// Makes webhook endpoints' signing secrets (see `webhooks`).
    webhook_key: Zeroizing<[u8; 32]>,
    /// Peppers portal users' password verifiers (see `passwords`); a key apart from every
    /// other, so a verifier cannot stand in for a webhook secret or a fingerprint.
    password_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("capacity", &self.capacity)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

/// PAN fingerprints a second when the config does not say.
pub(crate) const DEFAULT_FINGERPRINT_RATE: u32 = 20;

/// A token bucket: `rate` tokens a second, at most ten seconds' worth saved up. A refusal is
/// logged once per ten seconds with how many were refused.
#[derive(Debug)]
struct Budget {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
    refused: u64,
    logged: Option<std::time::Instant>,
}

impl Budget {
    fn new(per_sec: u32) -> Self {
        let rate = f64::from(per_sec.max(1));
        Self {
            rate,
            tokens: rate * 10.0,
            last: std::time::Instant::now(),
            refused: 0,
            logged: None,
        }
    }

    fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate * 10.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        self.refused += 1;
        if self
            .logged
            .is_none_or(|t| now.saturating_duration_since(t).as_secs() >= 10)
        {
            tracing::warn!(
                refused = self.refused,
                "PAN fingerprints refused: more asked than the configured rate"
            );
            self.logged = Some(now);
            self.refused = 0;
        }
        false
    }
}

/// Seals a key under an HSM-held KBPK with the default (strict, obfuscating) options and fresh
/// random padding.
fn seal_random(
    kbpk: &dyn tr31::ExternalKbpk,
    header: &tr31::Header,
    key: &tr31::Key,
) -> Result<String, Error> {
    Ok(tr31::seal_external(
        kbpk,
        header,
        key,
        &SealOptions::default(),
        tr31::Padding::Random(&mut tr31::OsRandom),
    )?)
}

/// Opens a key block a caller sent (a partner's delivery, a block to translate or inspect)
/// under a KBPK keyd holds. Whatever is wrong with it is the caller's input, not a fault of
/// keyd: a block that is malformed, breaks the strict rules or does not fit the KBPK is
/// `BAD_REQUEST`; one whose MAC fails stays the one `AUTH_FAILED`. Only a failing random source
/// remains internal.
fn open_sent(block: &str, kbpk: &dyn tr31::ExternalKbpk) -> Result<tr31::Opened, Error> {
    KeyBlock::parse(block, Profile::Strict)
        .and_then(|b| b.open_external(kbpk))
        .map_err(|e| match e {
            tr31::Error::Authentication => Error::Auth,
            tr31::Error::Random => Error::Tr31(e),
            other => Error::BadRequest(format!("key block: {other}")),
        })
}

/// Labels of partners' keys: 1-64 printable ASCII characters.
fn check_label(label: &str) -> Result<(), Error> {
    if label.is_empty() || label.len() > 64 || !label.bytes().all(|c| (0x20..0x7F).contains(&c)) {
        return Err(Error::BadRequest(
            "labels are 1-64 printable ASCII characters".into(),
        ));
    }
    Ok(())
}

/// Longest id a derived key or MAC is bound to ([`check_binding_id`]).
const BINDING_ID_MAX: usize = 64;

/// The ids keyd binds a derivation to (a webhook endpoint's, a portal user's): 1 to 64 ASCII
/// letters, digits, `_` and `-`. Never a 0x00, which separates a derivation's fields, so
/// every id gives a distinct input. `what` names them in the refusal ("endpoint ids").
fn check_binding_id(id: &str, what: &str) -> Result<(), Error> {
    if id.is_empty()
        || id.len() > BINDING_ID_MAX
        || !id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(Error::BadRequest(format!(
            "{what} are 1-{BINDING_ID_MAX} characters of [0-9A-Za-z_-]"
        )));
    }
    Ok(())
}

/// Keys leave keyd only if their own header allows it: `E` (into key blocks, which is all keyd
/// writes) or `S`; never `N`.
fn require_exportable(header: &tr31::Header) -> Result<(), Error> {
    if matches!(
        header.exportability,
        tr31::Exportability::EXPORTABLE | tr31::Exportability::SENSITIVE
    ) {
        Ok(())
    } else {
        Err(Error::Policy("the key is not exportable"))
    }
}

/// Largest piece of a chunked envelope (contract section 5).
const CHUNK: usize = 4096;

use crate::unix_now as now;

pub(crate) mod lmk;
mod passwords;
mod payments;
mod webhooks;
mod zmk;

impl Service {
    /// A service over an initialised HSM (one with an LMK) and a store.
    ///
    /// # Errors
    /// [`Error::Config`] if the HSM has no LMK yet (run `keyd init`).
    pub fn new(
        hsm: Arc<dyn Hsm>,
        store: Arc<dyn KeyStore>,
        placement: Placement,
        grace: u64,
        capacity: usize,
    ) -> Result<Self, Error> {
        if !hsm.has_lmk() {
            return Err(Error::Config(
                "the HSM has no LMK: run `keyd init` first".into(),
            ));
        }
        let secret = |label| crate::lmk_secret(&*hsm, &*store, label);
        let fingerprint_key = secret("keyd pan fingerprint key")?;
        let request_key = secret("keyd request fingerprint key")?;
        let pan_seal_keys = (
            secret("keyd pan storage encryption key")?,
            secret("keyd pan storage mac key")?,
        );
        let officers = Officers::new(Arc::clone(&store), &*hsm, Policy::default())?;
        let seen_version = std::sync::atomic::AtomicU64::new(store.state_version()?);
        let mut service = Self {
            hsm,
            store,
            placement,
            cache: RwLock::new(HashMap::new()),
            partners: RwLock::new(HashMap::new()),
            capacity,
            grace,
            fingerprint_key,
            fingerprint_budget: std::sync::Mutex::new(Budget::new(DEFAULT_FINGERPRINT_RATE)),
            request_key,
            pan_seal_keys,
            officers,
            seen_version,
            cache_generation: std::sync::atomic::AtomicU64::new(0),
            sealing: RwLock::new(None),
            lmk_states: RwLock::new(Vec::new()),
            next_lmk_check: std::sync::atomic::AtomicU64::new(0),
            next_lmk_warning: std::sync::atomic::AtomicU64::new(0),
            zmk_slots: RwLock::new(HashMap::new()),
            // Read below, once the LMK states say which LMK seals new blocks.
            webhook_key: Zeroizing::new([0; 32]),
            password_key: Zeroizing::new([0; 32]),
        };
        service.reload_lmks()?;
        service.webhook_key = service.webhook_master_key()?;
        service.password_key = service.late_derived_secret(passwords::KEY_LABEL)?;
        Ok(service)
    }

    /// The same service under the officers' policy of the config (the default is dual
    /// control on).
    ///
    /// # Errors
    /// [`Error::Hsm`].
    pub fn with_policy(mut self, policy: Policy) -> Result<Self, Error> {
        self.officers.set_policy(policy);
        Ok(self)
    }

    /// The same service allowing `per_sec` PAN fingerprints a second on average (bursts up to
    /// ten seconds' worth).
    #[must_use]
    pub fn with_fingerprint_rate(self, per_sec: u32) -> Self {
        *self
            .fingerprint_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Budget::new(per_sec);
        self
    }

    /// Where working keys live.
    pub const fn placement(&self) -> Placement {
        self.placement
    }

    /// The HSM (for the operator commands).
    pub fn hsm(&self) -> &dyn Hsm {
        &*self.hsm
    }

    /// The audit chain's key (see [`crate::audit::AuditKey::derive`]).
    ///
    /// # Errors
    /// As [`crate::audit::AuditKey::derive`].
    pub fn audit_key(&self) -> Result<crate::audit::AuditKey, Error> {
        crate::audit::AuditKey::derive(&*self.hsm, &*self.store)
    }

    // ----- management -------------------------------------------------------------------

    /// Registers a device and makes its identity key.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed id or zone, [`Error::NotFound`] for a zone without a
    /// ZMK, [`Error::Conflict`] for a known device.
    pub fn device_create(&self, req: &m::DeviceCreate) -> Result<m::IdentityKey, Error> {
        if !keys::valid_device_id(&req.device_id) {
            return Err(Error::BadRequest(
                "device ids are POS- and 8 upper-case hex digits".into(),
            ));
        }
        if !keys::valid_zone(&req.zone) {
            return Err(Error::BadRequest(
                "zone names are 1-64 characters of [0-9A-Za-z_.-]".into(),
            ));
        }
        self.device_zone(&req.zone)?;
        let (record, secret) = self.new_identity(&req.device_id)?;
        let device = DeviceRecord {
            device_id: req.device_id.clone(),
            zone: req.zone.clone(),
            identity_key_id: record.key_id.clone(),
            key_set_id: None,
            previous_key_set_id: None,
            rotated_at: None,
            created_at: now(),
        };
        self.store.create_device(&device, &record)?;
        Ok(m::IdentityKey {
            key_id: record.key_id,
            kcv: record.kcv,
            secret,
        })
    }

    /// Replaces a device's identity key.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown device.
    pub fn identity_rotate(&self, req: &m::IdentityRotate) -> Result<m::IdentityKey, Error> {
        self.device(&req.device_id)?;
        let (record, secret) = self.new_identity(&req.device_id)?;
        self.store.replace_identity(&req.device_id, &record)?;
        self.forget_device(&req.device_id);
        Ok(m::IdentityKey {
            key_id: record.key_id,
            kcv: record.kcv,
            secret,
        })
    }

    /// Revokes a device's identity key.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown device.
    pub fn identity_revoke(&self, req: &m::IdentityRevoke) -> Result<m::Empty, Error> {
        self.store.revoke_identity(&req.device_id)?;
        self.forget_device(&req.device_id);
        Ok(m::Empty {})
    }

    /// Revokes every key set of a device.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown device.
    pub fn key_set_revoke(&self, req: &m::KeySetRevoke) -> Result<m::Empty, Error> {
        self.store.revoke_key_sets(&req.device_id)?;
        self.forget_device(&req.device_id);
        Ok(m::Empty {})
    }

    /// Makes a new key set for a device.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown device.
    pub fn key_set_create(&self, req: &m::KeySetCreate) -> Result<m::KeySetInfo, Error> {
        self.device(&req.device_id)?;
        let key_set_id = keys::new_id("ks", &*self.hsm)?;
        let created_at = now();
        let mut records = Vec::with_capacity(KeyKind::SET.len());
        let (lmk, kp) = self.sealing_lmk()?;
        let lmk = Memo::new(&lmk);
        for kind in KeyKind::SET {
            let mut bytes = Zeroizing::new([0u8; keys::DEVICE_KEY_LEN]);
            self.hsm.random(&mut bytes[..])?;
            records.push(self.seal_for_storage(
                (&lmk, kp),
                kind,
                &req.device_id,
                Some(&key_set_id),
                &bytes[..],
                created_at,
            )?);
        }
        self.store
            .add_key_set(&req.device_id, &key_set_id, &records, created_at)?;
        self.forget_device(&req.device_id);
        Ok(m::KeySetInfo {
            key_set_id,
            created_at,
            keys: records
                .into_iter()
                .map(|r| m::KeyInfo {
                    kind: r.kind.name().to_owned(),
                    key_id: r.key_id,
                    kcv: r.kcv,
                })
                .collect(),
        })
    }

    /// Delivers a key set as TR-31 version D blocks: TMK under the zone's ZMK, KEK under the TMK,
    /// the working keys under the KEK, each with fresh random padding.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown device, or a key set that is not the device's current
    /// or (within the grace period) previous one.
    pub fn key_set_export(&self, req: &m::KeySetExport) -> Result<m::KeySetExportResponse, Error> {
        let device = self.device(&req.device_id)?;
        let current = device.key_set_id.as_deref() == Some(req.key_set_id.as_str());
        let previous = device.previous_key_set_id.as_deref() == Some(req.key_set_id.as_str())
            && device
                .rotated_at
                .is_some_and(|t| now() < t.saturating_add(self.grace));
        if !(current || previous) {
            return Err(Error::NotFound("key set"));
        }
        let records = self.store.key_set(&req.key_set_id)?;
        // One question to the token per derivation for the whole set, when every block is
        // under one LMK (always, except during an LMK rewrap).
        let first = records
            .first()
            .map(|r| r.block.as_str())
            .unwrap_or_default();
        let lmk = lmk::lmk_for(&*self.hsm, first)?;
        let one_lmk = records
            .iter()
            .all(|r| lmk::kp_of(&r.block).ok() == Some(lmk.kcv));
        let lmk = Memo::new(&lmk);
        if records.len() != KeyKind::SET.len() || records.iter().any(|r| r.revoked) {
            return Err(Error::NotFound("key set"));
        }
        for record in &records {
            self.require_active(&record.key_id)?;
        }
        let options = SealOptions::default();
        let mut tmk: Option<tr31::Kbpk> = None;
        let mut kek: Option<tr31::Kbpk> = None;
        let mut out = Vec::with_capacity(records.len());
        for record in &records {
            let key = if one_lmk {
                self.open_stored_with(&lmk, record)?
            } else {
                self.open_stored(record)?
            };
            let header = record.kind.export_header()?;
            let mut padding = tr31::OsRandom;
            let padding = tr31::Padding::Random(&mut padding);
            let block = match record.kind {
                KeyKind::Tmk => {
                    let zmk = self.device_zone(&device.zone)?;
                    let block = tr31::seal_external(&zmk, &header, &key, &options, padding)?;
                    tmk = Some(tr31::Kbpk::new(key.expose_secret())?);
                    block
                }
                KeyKind::Kek => {
                    let parent = tmk
                        .as_ref()
                        .ok_or(Error::Store("key set out of order".into()))?;
                    let block = tr31::seal(parent, &header, &key, &options, padding)?;
                    kek = Some(tr31::Kbpk::new(key.expose_secret())?);
                    block
                }
                _ => {
                    let parent = kek
                        .as_ref()
                        .ok_or(Error::Store("key set out of order".into()))?;
                    tr31::seal(parent, &header, &key, &options, padding)?
                }
            };
            out.push(m::ExportedKey {
                kind: record.kind.name().to_owned(),
                key_id: record.key_id.clone(),
                key_block: block,
                kcv: record.kcv,
                wrapped_under: record.kind.wrapped_under().to_owned(),
            });
        }
        // The TMK went under the zone's current ZMK: a device that moved in a ZMK rotation.
        self.delivered(&req.device_id, &device.zone)?;
        Ok(m::KeySetExportResponse {
            key_set_id: req.key_set_id.clone(),
            keys: out,
        })
    }

    /// Loads a zone's ZMK from its clear value: 32 bytes make an AES-256 ZMK, 16 bytes a
    /// double-length TDES one (keyd has no other ZMKs, so the length is unambiguous). A TDES
    /// ZMK is given odd parity (components combined by XOR lose it; the check value does not
    /// change) and must have two distinct halves.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed zone or key, [`Error::Conflict`] for a zone that has
    /// a ZMK.
    pub fn zmk_import(&self, req: &m::ZmkImport) -> Result<m::ZoneInfo, Error> {
        if !keys::valid_zone(&req.zone) {
            return Err(Error::BadRequest(
                "zone names are 1-64 characters of [0-9A-Za-z_.-]".into(),
            ));
        }
        let (algorithm, key) = keys::zmk_key(req.key.expose())?;
        if self.hsm.zones().contains(&req.zone) {
            return Err(Error::Conflict("the zone has a ZMK"));
        }
        let kcv = algorithm.kcv(&key);
        // A zone already in the key store (formed through another node, or a store restored on
        // a standby site) may be formed again into this token only with the same ZMK.
        let stored = self.store.zone(&req.zone)?;
        if stored.as_ref().is_some_and(|z| z.kcv != kcv) {
            return Err(Error::Conflict(
                "the zone has another ZMK in the key store (compare the KCVs)",
            ));
        }
        if let Some(stored) = &stored
            && zmk::stored_algorithm(stored)? != algorithm
        {
            return Err(Error::Conflict(
                "the zone has a ZMK of the other algorithm in the key store",
            ));
        }
        self.officers.require(Action::ZmkForm, &req.zone)?;
        if stored.is_none() {
            // Sealed under the LMK for every other node on the store; first, so that of two
            // nodes forming one zone at once exactly one succeeds. The header records the
            // algorithm.
            let mut header = keys::zmk_storage_header(&req.zone, algorithm)?;
            let sealed = tr31::Key::new(&key)?;
            let (lmk, kp) = self.sealing_lmk()?;
            lmk::stamp(&mut header, kp)?;
            self.store.insert_zone(&ZoneRecord {
                zone: req.zone.clone(),
                kcv,
                block: seal_random(&lmk, &header, &sealed)?,
                created_at: now(),
            })?;
        }
        self.hsm.import_zmk(&req.zone, algorithm, &key)?;
        Ok(m::ZoneInfo {
            zone: req.zone.clone(),
            kcv,
        })
    }

    /// A ZMK sent whole over the admin socket: refused while dual control is on, because a
    /// clear ZMK in one piece defeats split knowledge; officers form ZMKs from components with
    /// `keyd zmk-import` instead.
    ///
    /// # Errors
    /// [`Error::Policy`] with dual control on; otherwise as [`Service::zmk_import`].
    pub fn zmk_import_remote(&self, req: &m::ZmkImport) -> Result<m::ZoneInfo, Error> {
        if self.officers.policy().dual() {
            return Err(Error::Policy(
                "with dual control on, ZMKs are formed from components by officers (keyd zmk-import)",
            ));
        }
        self.zmk_import(req)
    }

    /// The header and KCV of a block under a zone's ZMK, without exporting anything: what
    /// officers compare with the sender before they approve moving the key (a KCV is no
    /// secret; the key never leaves).
    ///
    /// # Errors
    /// As [`Service::tr31_translate`] for the source side.
    pub fn tr31_inspect(
        &self,
        zone: &str,
        key_block: &str,
    ) -> Result<(tr31::Header, [u8; 3]), Error> {
        let zmk = self.zmk(zone)?;
        let opened = open_sent(key_block, &Memo::new(&zmk))?;
        let kcv = tr31::kcv::for_algorithm(opened.header.algorithm, opened.key.expose_secret())
            .unwrap_or_default();
        Ok((opened.header, kcv))
    }

    /// Re-wraps a key block from one zone's ZMK to another's, honouring its exportability: a
    /// version D block for an AES zone, B for a TDES zone.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown zone; [`Error::Auth`] for a block that does not open
    /// under the source ZMK; [`Error::Policy`] for a non-exportable key, or one stronger than
    /// the destination's ZMK (an AES key for a TDES zone); [`Error::Tr31`] for a malformed
    /// block.
    pub fn tr31_translate(&self, req: &m::Tr31Translate) -> Result<m::KeyBlockOut, Error> {
        let (header, key, kcv) = self.translation(req)?;
        let to = self.zmk(&req.to_zone)?;
        // Officers approve moving this key (known between organisations by its KCV) to this
        // zone, not any key.
        self.approved_export(&format!("{}@{}", crate::kcv_hex(kcv), req.to_zone))?;
        let key_block = seal_random(&to, &header, &key)?;
        Ok(m::KeyBlockOut { key_block, kcv })
    }

    /// What [`Service::tr31_translate`] would send, checked but not sealed and not approved:
    /// the header for the destination zone (its version), the key and its KCV. The command
    /// line runs it before it asks officers for anything.
    ///
    /// # Errors
    /// As [`Service::tr31_translate`], without [`Error::DualControl`].
    pub fn tr31_translate_check(
        &self,
        req: &m::Tr31Translate,
    ) -> Result<(tr31::Header, [u8; 3]), Error> {
        self.translation(req).map(|(header, _, kcv)| (header, kcv))
    }

    fn translation(
        &self,
        req: &m::Tr31Translate,
    ) -> Result<(tr31::Header, tr31::Key, [u8; 3]), Error> {
        let from = self.zmk(&req.from_zone)?;
        let from = Memo::new(&from);
        let opened = open_sent(&req.key_block, &from)?;
        let mut header = opened.header;
        require_exportable(&header)?;
        header
            .optional_blocks
            .retain(|b| !matches!(b.id(), tr31::BlockId::PB | tr31::BlockId::KP));
        let to = self.zmk(&req.to_zone)?;
        zmk::fits_under(&req.to_zone, to.algorithm, &header, opened.key.len())?;
        header.version = to.algorithm.tr31_version();
        let kcv = tr31::kcv::for_algorithm(header.algorithm, opened.key.expose_secret())
            .unwrap_or_default();
        Ok((header, opened.key, kcv))
    }

    /// Exports a stored key under a zone's ZMK with its delivery header.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown key or zone; [`Error::Policy`] for a key whose stored
    /// exportability is N (identity keys).
    pub fn tr31_export(&self, req: &m::Tr31Export) -> Result<m::KeyBlockOut, Error> {
        if req.key_id.starts_with("imp-") {
            return self.export_imported(req);
        }
        let (record, header) = self.exportable_device_key(&req.key_id)?;
        let zmk = self.zmk(&req.zone)?;
        // A device's keys are AES or HMAC: never under a TDES ZMK (said before the key is
        // opened or an approval used).
        zmk::fits_under(&req.zone, zmk.algorithm, &header, keys::DEVICE_KEY_LEN)?;
        let key = self.open_stored(&record)?;
        self.approved_export(&format!("{}@{}", record.key_id, req.zone))?;
        let key_block = seal_random(&zmk, &header, &key)?;
        Ok(m::KeyBlockOut {
            key_block,
            kcv: record.kcv,
        })
    }

    /// Whether [`Service::tr31_export`] would send this key under this zone's ZMK, checked
    /// before any approval is asked for (the command line runs it first): the key exists, is
    /// active and exportable, and is no stronger than the zone's ZMK.
    ///
    /// # Errors
    /// As [`Service::tr31_export`], without [`Error::DualControl`].
    pub fn tr31_export_check(&self, req: &m::Tr31Export) -> Result<(), Error> {
        let zmk = self.zmk(&req.zone)?;
        if req.key_id.starts_with("imp-") {
            let opened = self.open_imported(&req.key_id)?;
            require_exportable(&opened.header)?;
            return zmk::fits_under(&req.zone, zmk.algorithm, &opened.header, opened.key.len());
        }
        let (_, header) = self.exportable_device_key(&req.key_id)?;
        zmk::fits_under(&req.zone, zmk.algorithm, &header, keys::DEVICE_KEY_LEN)
    }

    /// A device's stored key that may leave keyd (not revoked, active, its stored header
    /// exportable) and the header it is delivered with.
    fn exportable_device_key(&self, key_id: &str) -> Result<(KeyRecord, tr31::Header), Error> {
        let record = self
            .store
            .key(key_id)?
            .filter(|r| !r.revoked)
            .ok_or(Error::NotFound("key"))?;
        self.require_active(&record.key_id)?;
        require_exportable(&KeyBlock::parse(&record.block, Profile::Strict)?.into_header())?;
        let header = record.kind.export_header()?;
        Ok((record, header))
    }

    /// Imports a key block delivered under a zone's ZMK into the store.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown zone; [`Error::BadRequest`] for a bad label;
    /// [`Error::Tr31`] for a block that is malformed, breaks the strict rules or does not open.
    pub fn tr31_import(&self, req: &m::Tr31Import) -> Result<m::ImportedKey, Error> {
        check_label(&req.label)?;
        let zmk = self.zmk(&req.zone)?;
        let opened = open_sent(&req.key_block, &Memo::new(&zmk))?;
        self.store_partner_key(opened.header, &opened.key, &req.label)
    }

    /// Generates a key in the token's RNG for a header (an AWS `CreateKey` analogue: a ZPK,
    /// ZAK or PVK to send to a partner) and stores it like an imported one.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a bad label or an algorithm other than `T` (double-length
    /// TDES) or `A` (AES-256); [`Error::Tr31`] for a header the strict rules refuse.
    pub fn key_generate(
        &self,
        header: &tr31::Header,
        label: &str,
    ) -> Result<m::ImportedKey, Error> {
        check_label(label)?;
        let len = match header.algorithm.to_string().as_str() {
            "T" => 16,
            "A" => 32,
            _ => {
                return Err(Error::BadRequest(
                    "keys are generated as T (double-length TDES) or A (AES-256)".into(),
                ));
            }
        };
        let mut bytes = Zeroizing::new(vec![0u8; len]);
        loop {
            self.hsm.random(&mut bytes[..])?;
            // Two equal halves make a TDES key single DES in disguise: draw again.
            if len != 16 || bytes.get(..8) != bytes.get(8..) {
                break;
            }
        }
        let key = tr31::Key::new(&bytes)?;
        self.store_partner_key(header.clone(), &key, label)
    }

    /// Stores the simulators' published test keys ([`paycrypto::published`]) like imported
    /// ones: the ZPK (`P0`, mode `B`) and PVK (`V2`, mode `C`) the embedded simulator verifies
    /// PINs with (spec 12.7), and the ZAK (`M3`, mode `C`) of the acquirer host simulator's
    /// link. Labelled `simulator-zpk`, `simulator-pvk`, `simulator-zak`; not exportable.
    ///
    /// Only these constants can be stored this way: there is no path that takes a clear key
    /// from outside, so the command cannot be turned into a clear-key import.
    ///
    /// # Errors
    /// As [`Service::key_generate`].
    pub fn simulator_keys(
        &self,
    ) -> Result<Vec<(&'static str, tr31::Header, m::ImportedKey)>, Error> {
        let keys = [
            (
                "simulator-zpk",
                "D0000P0TB00N0000",
                paycrypto::published::ZPK_HEX,
            ),
            (
                "simulator-pvk",
                "D0000V2TC00N0000",
                paycrypto::published::PVK_HEX,
            ),
            (
                "simulator-zak",
                "D0000M3TC00N0000",
                paycrypto::published::ZAK_HEX,
            ),
        ];
        let mut stored = Vec::with_capacity(keys.len());
        for (label, header, hex_key) in keys {
            let header = tr31::Header::parse(header, Profile::Strict)?;
            let bytes = Zeroizing::new(
                hex::decode(hex_key).map_err(|_| Error::BadRequest("test key".into()))?,
            );
            let key = tr31::Key::new(&bytes)?;
            let made = self.store_partner_key(header.clone(), &key, label)?;
            stored.push((label, header, made));
        }
        Ok(stored)
    }

    /// Stores a partner's key under the LMK with its header (version D, storage context, its
    /// id bound in an `LB` block) and its label.
    fn store_partner_key(
        &self,
        mut header: tr31::Header,
        key: &tr31::Key,
        label: &str,
    ) -> Result<m::ImportedKey, Error> {
        let key_id = keys::new_id("imp", &*self.hsm)?;
        header.version = tr31::Version::D;
        header.key_context = tr31::KeyContext::STORAGE;
        header.optional_blocks.retain(|b| {
            !matches!(
                b.id(),
                tr31::BlockId::PB | tr31::BlockId::KP | tr31::BlockId::LB
            )
        });
        header.optional_blocks.push(tr31::OptionalBlock::new(
            tr31::BlockId::LB,
            key_id.as_str(),
        )?);
        let (lmk, kp) = self.sealing_lmk()?;
        lmk::stamp(&mut header, kp)?;
        let block = seal_random(&Memo::new(&lmk), &header, key)?;
        let kcv =
            tr31::kcv::for_algorithm(header.algorithm, key.expose_secret()).unwrap_or_default();
        self.store.insert_imported(&ImportedRecord {
            key_id: key_id.clone(),
            label: label.to_owned(),
            kcv,
            block,
            created_at: now(),
        })?;
        Ok(m::ImportedKey { key_id, kcv })
    }

    fn export_imported(&self, req: &m::Tr31Export) -> Result<m::KeyBlockOut, Error> {
        let tr31::Opened { mut header, key } = self.open_imported(&req.key_id)?;
        require_exportable(&header)?;
        let zmk = self.zmk(&req.zone)?;
        zmk::fits_under(&req.zone, zmk.algorithm, &header, key.len())?;
        header.version = zmk.algorithm.tr31_version();
        header.key_context = tr31::KeyContext::ANY;
        header.optional_blocks.retain(|b| {
            !matches!(
                b.id(),
                tr31::BlockId::PB | tr31::BlockId::LB | tr31::BlockId::KP
            )
        });
        self.approved_export(&format!("{}@{}", req.key_id, req.zone))?;
        let key_block = seal_random(&zmk, &header, &key)?;
        let kcv =
            tr31::kcv::for_algorithm(header.algorithm, key.expose_secret()).unwrap_or_default();
        Ok(m::KeyBlockOut { key_block, kcv })
    }

    /// A partner's stored key (active), opened under the LMK and checked against its record.
    fn open_imported(&self, key_id: &str) -> Result<tr31::Opened, Error> {
        let record = self.store.imported(key_id)?.ok_or(Error::NotFound("key"))?;
        self.require_active(&record.key_id)?;
        let opened = lmk::open_under_lmk(&*self.hsm, &record.block)?;
        let bound = opened
            .header
            .optional_block(tr31::BlockId::LB)
            .map(tr31::OptionalBlock::data);
        if bound != Some(record.key_id.as_str()) {
            return Err(Error::Store(format!(
                "stored block of {} does not match its record",
                record.key_id
            )));
        }
        Ok(opened)
    }

    // ----- data path --------------------------------------------------------------------

    /// Verifies an attestation signature made with a device's identity key.
    ///
    /// # Errors
    /// [`Error::Auth`] for any failure.
    pub fn attest_verify(&self, req: &m::AttestVerify) -> Result<m::Empty, Error> {
        let key = self.working_key(&req.key_id, KeyKind::Identity)?;
        if key.device_id != req.device_id {
            return Err(Error::Auth);
        }
        key.verify(&req.message, &req.signature)?;
        Ok(m::Empty {})
    }

    /// Verifies many charge signatures.
    ///
    /// # Errors
    /// None per item: each failure is a `false`.
    pub fn mac_verify_batch(
        &self,
        req: &m::MacVerifyBatch,
    ) -> Result<m::MacVerifyBatchResponse, Error> {
        let valid = req
            .items
            .iter()
            .map(|item| {
                self.working_key(&item.key_id, KeyKind::Mac)
                    .and_then(|k| k.verify(&item.message, &item.signature))
                    .is_ok()
            })
            .collect();
        Ok(m::MacVerifyBatchResponse { valid })
    }

    /// Opens an MSK envelope.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown key or a bad padding.
    pub fn envelope_open(&self, req: &m::EnvelopeOpen) -> Result<m::Plaintext, Error> {
        let key = self.working_key(&req.msk_key_id, KeyKind::Msk)?;
        Ok(m::Plaintext {
            plaintext: key.decrypt(&req.iv, &req.ciphertext)?,
        })
    }

    /// Seals a plaintext under an MSK with a fresh IV.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown key.
    pub fn envelope_seal(&self, req: &m::EnvelopeSeal) -> Result<m::Sealed, Error> {
        let key = self.working_key(&req.msk_key_id, KeyKind::Msk)?;
        if req.plaintext.expose().len() > crypto::MAX_CIPHERTEXT {
            return Err(Error::BadRequest("plaintext too large".into()));
        }
        let mut iv = [0u8; 16];
        getrandom::fill(&mut iv).map_err(|e| Error::Hsm(e.to_string()))?;
        let ciphertext = key.encrypt(&iv, req.plaintext.expose())?;
        Ok(m::Sealed {
            iv,
            ciphertext,
            kcv: key.kcv,
        })
    }

    /// Seals the pieces of a chunked envelope, each with its own IV.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown key; [`Error::BadRequest`] for a piece over 4,096 bytes
    /// or no pieces.
    pub fn envelope_seal_chunks(
        &self,
        req: &m::EnvelopeSealChunks,
    ) -> Result<m::SealedChunks, Error> {
        let key = self.working_key(&req.msk_key_id, KeyKind::Msk)?;
        if req.pieces.is_empty() || req.pieces.iter().any(|p| p.expose().len() > CHUNK) {
            return Err(Error::BadRequest(
                "a chunked envelope has 1 or more pieces of at most 4,096 bytes".into(),
            ));
        }
        let mut chunks = Vec::with_capacity(req.pieces.len());
        for piece in &req.pieces {
            let mut iv = [0u8; 16];
            getrandom::fill(&mut iv).map_err(|e| Error::Hsm(e.to_string()))?;
            chunks.push(m::SealedChunk {
                iv,
                ciphertext: key.encrypt(&iv, piece.expose())?,
            });
        }
        Ok(m::SealedChunks {
            chunks,
            kcv: key.kcv,
        })
    }

    /// Opens a chunked envelope: every piece must open, or nothing is returned.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown key or any piece that does not open; [`Error::BadRequest`]
    /// for no pieces.
    pub fn envelope_open_chunks(&self, req: &m::EnvelopeOpenChunks) -> Result<m::Plaintext, Error> {
        let key = self.working_key(&req.msk_key_id, KeyKind::Msk)?;
        if req.chunks.is_empty() {
            return Err(Error::BadRequest(
                "a chunked envelope has at least one piece".into(),
            ));
        }
        let mut plaintext = Zeroizing::new(Vec::new());
        for chunk in &req.chunks {
            plaintext.extend_from_slice(key.decrypt(&chunk.iv, &chunk.ciphertext)?.expose());
        }
        Ok(m::Plaintext {
            plaintext: Secret(plaintext),
        })
    }

    /// A charge: verify the signature, and only then open the envelope with the MSK of the same
    /// key set as the MAC key.
    ///
    /// # Errors
    /// [`Error::Auth`] for any failure.
    pub fn charge_open(&self, req: &m::ChargeOpenView<'_>) -> Result<m::Plaintext, Error> {
        Ok(m::Plaintext {
            plaintext: self.verify_and_open(
                (req.mac_key_id, req.message, &req.signature),
                req.msk_key_id,
                &req.iv,
                req.ciphertext,
            )?,
        })
    }

    /// [`Self::charge_open`] on borrowed parts: `signed` is the MAC key, the string to sign
    /// and the signature.
    pub(crate) fn verify_and_open(
        &self,
        (mac_key_id, message, signature): (&str, &[u8], &[u8; 32]),
        msk_key_id: &str,
        iv: &[u8; 16],
        ciphertext: &[u8],
    ) -> Result<Secret, Error> {
        let mac = self.working_key(mac_key_id, KeyKind::Mac)?;
        mac.verify(message, signature)?;
        let msk = self.working_key(msk_key_id, KeyKind::Msk)?;
        if msk.key_set_id != mac.key_set_id || msk.device_id != mac.device_id {
            return Err(Error::Auth);
        }
        msk.decrypt(iv, ciphertext)
    }

    /// Decrypts card data under a TDK and fingerprints its PAN.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown key or a bad padding; [`Error::BadRequest`] if the
    /// plaintext is not a JSON object with a `pan` string.
    pub fn card_decrypt(&self, req: &m::CardDecrypt) -> Result<m::CardData, Error> {
        self.open_card(&req.tdk_key_id, &req.iv, &req.ciphertext)
            .map(|(card, _)| card)
    }

    /// [`Self::card_decrypt`], and the byte range of the card's `pan` in the plaintext.
    pub(crate) fn open_card(
        &self,
        tdk_key_id: &str,
        iv: &[u8; 16],
        ciphertext: &[u8],
    ) -> Result<(m::CardData, std::ops::Range<usize>), Error> {
        #[derive(serde::Deserialize)]
        struct Card<'a> {
            #[serde(borrow)]
            pan: &'a str,
        }
        let key = self.working_key(tdk_key_id, KeyKind::Tdk)?;
        let plaintext = key.decrypt(iv, ciphertext)?;
        let clear = plaintext.expose();
        let card: Card<'_> = serde_json::from_slice(clear)
            .map_err(|_| Error::BadRequest("card data is not a JSON object with a pan".into()))?;
        let pan_fingerprint = crypto::hmac(&self.fingerprint_key[..], card.pan.as_bytes())?;
        // `pan` is borrowed from the plaintext (a JSON string without escapes), so its place
        // in it is where the pointer says.
        let at = (card.pan.as_ptr() as usize).saturating_sub(clear.as_ptr() as usize);
        let range = at..at + card.pan.len();
        Ok((
            m::CardData {
                plaintext,
                pan_fingerprint,
            },
            range,
        ))
    }

    /// The keyed fingerprint of a PAN (digits only, 12-19).
    ///
    /// # Errors
    /// [`Error::BadRequest`] for anything that is not a PAN.
    ///
    /// The fingerprint of a PAN the caller chose is an oracle: with the BIN and last four
    /// digits stored beside a fingerprint, about 10^5 guesses recover the card. The API needs
    /// it only for cards typed into the backoffice (terminal cards get theirs from
    /// `CardDecrypt`, which reveals nothing the caller did not already send encrypted), so the
    /// operation is rationed: a token bucket of `pan_fingerprint_rate` a second, with bursts of
    /// ten seconds' worth. At the default 20 a second a single card takes over an hour of
    /// guessing, every call is on the audit log, and the refusals are logged. A per-merchant
    /// key would not help: the attacker asks under the victim's merchant.
    ///
    /// [`Error::Policy`] once the budget is spent.
    pub fn pan_fingerprint(&self, req: &m::PanFingerprint) -> Result<m::Fingerprint, Error> {
        let pan = req.pan.expose();
        if !(12..=19).contains(&pan.len()) || !pan.iter().all(u8::is_ascii_digit) {
            return Err(Error::BadRequest("a PAN is 12-19 digits".into()));
        }
        if !self
            .fingerprint_budget
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(std::time::Instant::now())
        {
            return Err(Error::Policy("PAN fingerprint rate exceeded"));
        }
        Ok(m::Fingerprint {
            value: crypto::hmac(&self.fingerprint_key[..], pan)?,
        })
    }

    /// The keyed fingerprint of a request (at most 64 KiB, like any request body).
    ///
    /// # Errors
    /// [`Error::BadRequest`] for an empty or oversized request.
    pub fn request_fingerprint(
        &self,
        req: &m::RequestFingerprint,
    ) -> Result<m::Fingerprint, Error> {
        let data = req.data.expose();
        if data.is_empty() || data.len() > 64 * 1024 {
            return Err(Error::BadRequest("a request is 1 byte to 64 KiB".into()));
        }
        Ok(m::Fingerprint {
            value: crypto::hmac(&self.request_key[..], data)?,
        })
    }

    /// The check value of a stored, unrevoked key.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown or revoked key.
    pub fn key_check(&self, req: &m::KeyCheck) -> Result<m::CheckValue, Error> {
        match self.store.key(&req.key_id)? {
            Some(record)
                if !record.revoked && self.store.key_state(&record.key_id)? == KeyState::Active =>
            {
                Ok(m::CheckValue { kcv: record.kcv })
            }
            _ => Err(Error::Auth),
        }
    }

    // ----- internals --------------------------------------------------------------------

    /// A zone's ZMK as a KBPK, if the zone has one.
    ///
    /// A zone formed through another keyd node on the same store is loaded into this node's
    /// token on first use: its ZMK, sealed under the LMK in the store, is opened here (the LMK
    /// is the same in every node's token) and imported as a non-extractable token object.
    pub(crate) fn zmk(&self, zone: &str) -> Result<Zmk<'_>, Error> {
        let slot = self.zmk_slot(zone)?;
        Ok(Zmk {
            hsm: &*self.hsm,
            zone: slot.name,
            algorithm: slot.algorithm,
        })
    }

    /// The ZMK of a zone that devices belong to: AES only, since every device's key set is
    /// delivered as TR-31 version D blocks, the TMK under the zone's ZMK.
    ///
    /// # Errors
    /// As [`Service::zmk`]; [`Error::Policy`] for a TDES zone.
    pub(crate) fn device_zone(&self, zone: &str) -> Result<Zmk<'_>, Error> {
        let zmk = self.zmk(zone)?;
        if zmk.algorithm != ZmkAlgorithm::Aes {
            return Err(Error::Policy(
                "the zone's ZMK is TDES: devices' keys are delivered (TR-31 version D) under AES \
                 ZMKs only; a TDES zone is for a partner's key exchange",
            ));
        }
        Ok(zmk)
    }

    /// Loads a zone's ZMK from the store into the token under `name` (see [`Service::zmk`]).
    fn load_zone_as(&self, record: &ZoneRecord, name: &str) -> Result<(), Error> {
        let zone = record.zone.as_str();
        let opened = lmk::open_under_lmk(&*self.hsm, &record.block).map_err(|e| match e {
            Error::Hsm(why) => Error::Hsm(why),
            _ => Error::Store(format!(
                "the stored ZMK of zone {zone} does not open under this token's LMK (was the \
                 token formed from the same LMK components?)"
            )),
        })?;
        let mut header = opened.header;
        header
            .optional_blocks
            .retain(|b| !matches!(b.id(), tr31::BlockId::PB | tr31::BlockId::KP));
        let key = opened.key.expose_secret();
        // The header says the algorithm (under the block's MAC), and the key's length agrees.
        let algorithm = ZmkAlgorithm::from_key_len(key.len())
            .filter(|a| a.tr31_algorithm() == header.algorithm);
        let Some(algorithm) = algorithm.filter(|a| {
            keys::zmk_storage_header(zone, *a).is_ok_and(|h| h == header)
                && a.kcv(key) == record.kcv
        }) else {
            return Err(Error::Store(format!(
                "the stored ZMK of zone {zone} does not match its record"
            )));
        };
        match self.hsm.import_zmk(name, algorithm, key) {
            // Conflict: another request loaded it first.
            Ok(()) | Err(Error::Conflict(_)) => {
                tracing::info!(zone, "zone's ZMK loaded from the key store into the token");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn device(&self, device_id: &str) -> Result<DeviceRecord, Error> {
        self.store
            .device(device_id)?
            .ok_or(Error::NotFound("device"))
    }

    fn new_identity(&self, device_id: &str) -> Result<(KeyRecord, Secret), Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        self.hsm.random(&mut secret[..])?;
        let (lmk, kp) = self.sealing_lmk()?;
        let record = self.seal_for_storage(
            (&lmk, kp),
            KeyKind::Identity,
            device_id,
            None,
            &secret[..],
            now(),
        )?;
        Ok((record, Secret::new(&secret[..])))
    }

    /// Wraps a new key under the LMK as a storage block bound to its key id.
    fn seal_for_storage(
        &self,
        (lmk, kp): (&dyn tr31::ExternalKbpk, Option<[u8; 3]>),
        kind: KeyKind,
        device_id: &str,
        key_set_id: Option<&str>,
        bytes: &[u8],
        created_at: u64,
    ) -> Result<KeyRecord, Error> {
        let key_id = keys::new_id(kind.name(), &*self.hsm)?;
        let mut header = kind.storage_header(&key_id)?;
        lmk::stamp(&mut header, kp)?;
        let key = tr31::Key::new(bytes)?;
        let block = seal_random(lmk, &header, &key)?;
        Ok(KeyRecord {
            kcv: keys::kcv(kind, bytes),
            key_id,
            device_id: device_id.to_owned(),
            key_set_id: key_set_id.map(str::to_owned),
            kind,
            block,
            revoked: false,
            created_at,
        })
    }

    /// Opens a stored block under the LMK it names and checks it is the record's own key.
    fn open_stored(&self, record: &KeyRecord) -> Result<tr31::Key, Error> {
        let lmk = lmk::lmk_for(&*self.hsm, &record.block)?;
        self.open_stored_with(&lmk, record)
    }

    /// [`Service::open_stored`] under a given LMK (the one every block of a key set names).
    fn open_stored_with(
        &self,
        lmk: &dyn tr31::ExternalKbpk,
        record: &KeyRecord,
    ) -> Result<tr31::Key, Error> {
        let opened = KeyBlock::parse(&record.block, Profile::Strict)?.open_external(lmk)?;
        let expected = record.kind.storage_header(&record.key_id)?;
        let mut got = opened.header;
        got.optional_blocks
            .retain(|b| !matches!(b.id(), tr31::BlockId::PB | tr31::BlockId::KP));
        if got != expected {
            return Err(Error::Store(format!(
                "stored block of {} does not match its record",
                record.key_id
            )));
        }
        Ok(opened.key)
    }

    /// A working key for the hot path: from the cache, or loaded, checked and cached.
    fn working_key(&self, key_id: &str, kind: KeyKind) -> Result<Arc<WorkingKey>, Error> {
        let cached = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key_id)
            .cloned();
        let key = match cached {
            Some(k) => k,
            None => self.load_working_key(key_id)?,
        };
        if key.kind != kind || key.valid_until.is_some_and(|until| now() >= until) {
            return Err(Error::Auth);
        }
        Ok(key)
    }

    fn load_working_key(&self, key_id: &str) -> Result<Arc<WorkingKey>, Error> {
        let generation = self
            .cache_generation
            .load(std::sync::atomic::Ordering::Acquire);
        let record = self.store.key(key_id)?.ok_or(Error::Auth)?;
        if record.revoked || self.store.key_state(key_id)? != KeyState::Active {
            return Err(Error::Auth);
        }
        let device = self.store.device(&record.device_id)?.ok_or(Error::Auth)?;
        let valid_until = match (&record.key_set_id, record.kind) {
            (None, KeyKind::Identity) if device.identity_key_id == record.key_id => None,
            (Some(set), _) if device.key_set_id.as_ref() == Some(set) => None,
            (Some(set), _) if device.previous_key_set_id.as_ref() == Some(set) => Some(
                device
                    .rotated_at
                    .ok_or(Error::Auth)?
                    .saturating_add(self.grace),
            ),
            _ => return Err(Error::Auth),
        };
        let key = self.open_stored(&record)?;
        let material = match self.placement {
            Placement::Memory => Material::Memory(Zeroizing::new(key.expose_secret().to_vec())),
            Placement::Token => {
                let kind = if record.kind.is_hmac() {
                    TokenKind::Hmac
                } else {
                    TokenKind::Aes
                };
                let loaded = self.hsm.load_key(kind, key.expose_secret())?;
                Material::Token {
                    key: loaded,
                    hsm: Arc::clone(&self.hsm),
                }
            }
        };
        let working = Arc::new(WorkingKey {
            kind: record.kind,
            device_id: record.device_id,
            key_set_id: record.key_set_id,
            kcv: record.kcv,
            material,
            valid_until,
        });
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        if self
            .cache_generation
            .load(std::sync::atomic::Ordering::Acquire)
            != generation
        {
            return Ok(working);
        }
        if cache.len() >= self.capacity {
            // A crude bound: forget everything. Keys reload from the store on demand.
            cache.clear();
        }
        cache.insert(key_id.to_owned(), Arc::clone(&working));
        Ok(working)
    }

    /// Uses up two officers' approvals of an export, and says who gave them.
    fn approved_export(&self, subject: &str) -> Result<(), Error> {
        let officers = self.officers.require(Action::Export, subject)?;
        if !officers.is_empty() {
            tracing::info!(subject, approved_by = %officers.join("+"), "export under dual control");
        }
        Ok(())
    }

    /// Refuses a key an officer disabled or destroyed.
    fn require_active(&self, key_id: &str) -> Result<(), Error> {
        match self.store.key_state(key_id)? {
            KeyState::Active => Ok(()),
            other => Err(Error::Policy(other.refusal())),
        }
    }

    /// Drops a device's cached working keys after its keys changed.
    fn forget_device(&self, device_id: &str) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        // A key loaded across this change is used for its request but not cached.
        self.cache_generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        cache.retain(|_, k| k.device_id != device_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hsm::SoftwareHsm;
    use crate::store::MemoryStore;

    const ZMK: [u8; 32] = [0x5A; 32];

    #[test]
    fn binding_ids_are_short_and_plain() {
        for good in ["u_1", "we_ABC-def", &"x".repeat(64)] {
            assert!(check_binding_id(good, "ids").is_ok(), "{good}");
        }
        for bad in ["", &"x".repeat(65), "a\0b", "a b", "ä", "a/b"] {
            let Err(Error::BadRequest(words)) = check_binding_id(bad, "endpoint ids") else {
                panic!("{bad:?} accepted");
            };
            assert_eq!(words, "endpoint ids are 1-64 characters of [0-9A-Za-z_-]");
        }
    }

    pub(super) fn service() -> Service {
        service_with(Placement::Memory)
    }

    /// One keyd node of several on the shared `store`: its own token, holding the LMK `lmk`.
    pub(super) fn node(store: &Arc<MemoryStore>, lmk: [u8; 32]) -> Service {
        let hsm = SoftwareHsm::new();
        hsm.import_lmk(&lmk).unwrap();
        Service::new(
            Arc::new(hsm),
            Arc::clone(store) as Arc<dyn KeyStore>,
            Placement::Memory,
            3600,
            100,
        )
        .unwrap()
        .with_policy(Policy::for_tests())
        .unwrap()
    }

    pub(super) fn service_with(placement: Placement) -> Service {
        let hsm = SoftwareHsm::new();
        hsm.create_lmk().unwrap();
        let s = Service::new(
            Arc::new(hsm),
            Arc::new(MemoryStore::new()),
            placement,
            3600,
            1000,
        )
        .unwrap()
        .with_policy(Policy::for_tests())
        .unwrap();
        s.zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&ZMK),
        })
        .unwrap();
        s
    }

    pub(super) fn device(s: &Service, id: &str) -> m::IdentityKey {
        s.device_create(&m::DeviceCreate {
            device_id: id.into(),
            zone: "z1".into(),
        })
        .unwrap()
    }

    pub(super) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        e2e::device::hmac(key, msg).unwrap()
    }

    /// Unwraps a delivered key set the way a terminal would (TMK from the ZMK, then down);
    /// every KCV the device computes must be the one keyd sent.
    pub(super) fn unwrap_set(export: &m::KeySetExportResponse) -> HashMap<String, tr31::Key> {
        e2e::device::unwrap_key_set(export, &ZMK)
            .unwrap()
            .into_iter()
            .map(|(kind, k)| {
                assert_eq!(k.kcv, k.sent_kcv, "{kind}");
                (kind, tr31::Key::new(&k.key).unwrap())
            })
            .collect()
    }

    #[test]
    fn key_set_delivery_unwraps_from_the_zmk_down() {
        let s = service();
        device(&s, "POS-00000001");
        let set = s
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000001".into(),
            })
            .unwrap();
        assert_eq!(
            set.keys.iter().map(|k| k.kind.as_str()).collect::<Vec<_>>(),
            ["tmk", "kek", "msk", "tpk", "tdk", "mac"]
        );
        let export = s
            .key_set_export(&m::KeySetExport {
                device_id: "POS-00000001".into(),
                key_set_id: set.key_set_id.clone(),
            })
            .unwrap();
        let keys = unwrap_set(&export);
        assert_eq!(keys.len(), 6);
        assert!(export.keys.iter().all(|k| k.key_block.starts_with('D')));
        let mac_block = &export.keys[5].key_block;
        assert!(
            mac_block[5..].starts_with("M7HC00N0200HM0621PB0A"),
            "{mac_block}"
        );
        // Every key differs, and a second export carries the same keys under fresh padding.
        let again = s
            .key_set_export(&m::KeySetExport {
                device_id: "POS-00000001".into(),
                key_set_id: set.key_set_id,
            })
            .unwrap();
        assert_ne!(again.keys[2].key_block, export.keys[2].key_block);
        let keys2 = unwrap_set(&again);
        assert!(keys2["msk"].ct_eq(&keys["msk"]));
        assert!(!keys["msk"].ct_eq(&keys["tdk"]));
        assert!(matches!(
            s.key_set_export(&m::KeySetExport {
                device_id: "POS-00000001".into(),
                key_set_id: "ks-nope".into()
            }),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn attestation_and_charges() {
        attestation_and_charges_in(Placement::Memory);
    }

    #[test]
    fn attestation_and_charges_with_keys_in_the_token() {
        attestation_and_charges_in(Placement::Token);
    }

    fn attestation_and_charges_in(placement: Placement) {
        let s = service_with(placement);
        let identity = device(&s, "POS-00000002");
        let msg = b"POS-00000002\nidk\n1700000000\nnonce123456789";
        let good = m::AttestVerify {
            device_id: "POS-00000002".into(),
            key_id: identity.key_id.clone(),
            message: msg.to_vec(),
            signature: hmac(identity.secret.expose(), msg),
        };
        s.attest_verify(&good).unwrap();
        let mut bad = m::AttestVerify {
            signature: [0; 32],
            ..good
        };
        assert!(matches!(s.attest_verify(&bad), Err(Error::Auth)));
        bad.signature = hmac(identity.secret.expose(), msg);
        bad.device_id = "POS-00000003".into();
        assert!(matches!(s.attest_verify(&bad), Err(Error::Auth)));

        let set = s
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000002".into(),
            })
            .unwrap();
        let export = s
            .key_set_export(&m::KeySetExport {
                device_id: "POS-00000002".into(),
                key_set_id: set.key_set_id,
            })
            .unwrap();
        let keys = unwrap_set(&export);
        let id = |kind: &str| {
            export
                .keys
                .iter()
                .find(|k| k.kind == kind)
                .unwrap()
                .key_id
                .clone()
        };

        // The device encrypts with its MSK; keyd opens it after checking the MAC.
        let iv = [7u8; 16];
        let plaintext = br#"{"amount":{"value":"1500","currency":"EUR"}}"#;
        let ct = e2e::device::encrypt(keys["msk"].expose_secret(), &iv, plaintext).unwrap();
        let string_to_sign =
            b"TID-000001\nmac-x\n1700000000\nabcabcabcabc\nPOST\n/pos/charge\n{...}";
        let charge = m::ChargeOpen {
            mac_key_id: id("mac"),
            message: string_to_sign.to_vec(),
            signature: hmac(keys["mac"].expose_secret(), string_to_sign),
            msk_key_id: id("msk"),
            iv,
            ciphertext: ct.clone(),
        };
        assert_eq!(
            s.charge_open(&charge.view()).unwrap().plaintext.expose(),
            plaintext
        );
        // Tampered signature, tampered ciphertext (bad padding), wrong key kinds: one error.
        let tampered_sig = m::ChargeOpen {
            signature: [1; 32],
            ..copy_charge(&charge)
        };
        assert!(matches!(
            s.charge_open(&tampered_sig.view()),
            Err(Error::Auth)
        ));
        // Flipping the last byte of the block before the last one flips the last plaintext
        // byte, so the padding is wrong every time (flipping a byte of the last block leaves
        // a valid padding once in 256 runs).
        let mut bad_ct = ct;
        let mut bad_iv = iv;
        match bad_ct.len().checked_sub(17) {
            Some(i) => bad_ct[i] ^= 1,
            None => bad_iv[15] ^= 1,
        }
        let tampered_ct = m::ChargeOpen {
            ciphertext: bad_ct,
            iv: bad_iv,
            ..copy_charge(&charge)
        };
        assert!(matches!(
            s.charge_open(&tampered_ct.view()),
            Err(Error::Auth)
        ));
        let swapped = m::ChargeOpen {
            msk_key_id: id("tdk"),
            ..copy_charge(&charge)
        };
        assert!(matches!(s.charge_open(&swapped.view()), Err(Error::Auth)));
        let unknown = m::ChargeOpen {
            mac_key_id: "mac-unknown".into(),
            ..copy_charge(&charge)
        };
        assert!(matches!(s.charge_open(&unknown.view()), Err(Error::Auth)));

        // Envelope seal and open round trip; the KCV is the MSK's.
        let sealed = s
            .envelope_seal(&m::EnvelopeSeal {
                msk_key_id: id("msk"),
                plaintext: Secret::new(b"hello"),
            })
            .unwrap();
        assert_eq!(
            sealed.kcv,
            keys::kcv(KeyKind::Msk, keys["msk"].expose_secret())
        );
        let opened = s
            .envelope_open(&m::EnvelopeOpen {
                msk_key_id: id("msk"),
                iv: sealed.iv,
                ciphertext: sealed.ciphertext,
            })
            .unwrap();
        assert_eq!(opened.plaintext.expose(), b"hello");

        // Chunked envelopes: pieces sealed alone, opened and joined in order; one piece that
        // does not open spoils the whole. (CBC has no integrity of its own: the charge signature
        // covers the envelope.)
        let pieces = vec![
            Secret::new(&[1u8; 4096]),
            Secret::new(&[2u8; 4096]),
            Secret::new(b"tail"),
        ];
        let sealed = s
            .envelope_seal_chunks(&m::EnvelopeSealChunks {
                msk_key_id: id("msk"),
                pieces,
            })
            .unwrap();
        assert_eq!(sealed.chunks.len(), 3);
        assert_ne!(sealed.chunks[0].iv, sealed.chunks[1].iv);
        let chunks: Vec<m::SealedChunk> = sealed
            .chunks
            .iter()
            .map(|c| m::SealedChunk {
                iv: c.iv,
                ciphertext: c.ciphertext.clone(),
            })
            .collect();
        let joined = s
            .envelope_open_chunks(&m::EnvelopeOpenChunks {
                msk_key_id: id("msk"),
                chunks,
            })
            .unwrap();
        assert_eq!(joined.plaintext.expose().len(), 8196);
        assert_eq!(&joined.plaintext.expose()[8192..], b"tail");
        let mut broken: Vec<m::SealedChunk> = sealed
            .chunks
            .iter()
            .map(|c| m::SealedChunk {
                iv: c.iv,
                ciphertext: c.ciphertext.clone(),
            })
            .collect();
        // A bad padding in any piece (the byte before the last block flipped) refuses all.
        let n = broken[1].ciphertext.len();
        broken[1].ciphertext[n - 32] ^= 1;
        assert!(matches!(
            s.envelope_open_chunks(&m::EnvelopeOpenChunks {
                msk_key_id: id("msk"),
                chunks: broken
            }),
            Err(Error::Auth)
        ));
        let too_big = s.envelope_seal_chunks(&m::EnvelopeSealChunks {
            msk_key_id: id("msk"),
            pieces: vec![Secret::new(&[0; 4097])],
        });
        assert!(matches!(too_big, Err(Error::BadRequest(_))));

        // Batch verify.
        let batch = s
            .mac_verify_batch(&m::MacVerifyBatch {
                items: vec![
                    m::MacItem {
                        key_id: id("mac"),
                        message: b"a".to_vec(),
                        signature: hmac(keys["mac"].expose_secret(), b"a"),
                    },
                    m::MacItem {
                        key_id: id("mac"),
                        message: b"b".to_vec(),
                        signature: hmac(keys["mac"].expose_secret(), b"a"),
                    },
                    m::MacItem {
                        key_id: id("msk"),
                        message: b"a".to_vec(),
                        signature: hmac(keys["msk"].expose_secret(), b"a"),
                    },
                ],
            })
            .unwrap();
        assert_eq!(batch.valid, [true, false, false]);

        // Card data: decrypted only with the TDK, PAN fingerprinted.
        let card = br#"{"pan":"4242424242424242","exp_month":12,"exp_year":2030}"#;
        let ct = e2e::device::encrypt(keys["tdk"].expose_secret(), &iv, card).unwrap();
        let data = s
            .card_decrypt(&m::CardDecrypt {
                tdk_key_id: id("tdk"),
                iv,
                ciphertext: ct.clone(),
            })
            .unwrap();
        assert_eq!(data.plaintext.expose(), card);
        let again = s
            .card_decrypt(&m::CardDecrypt {
                tdk_key_id: id("tdk"),
                iv,
                ciphertext: ct,
            })
            .unwrap();
        assert_eq!(data.pan_fingerprint, again.pan_fingerprint);
        assert_ne!(data.pan_fingerprint, [0; 32]);

        // A new charge in one call: signature, envelope, and the card inside it.
        let card_ct = e2e::device::encrypt(keys["tdk"].expose_secret(), &iv, card).unwrap();
        let inner = |data: &[u8], card_iv: &[u8]| {
            format!(
                r#"{{"amount":{{"value":"1500","currency":"EUR"}},"card":{{"data":"{}","iv":"{}"}}}}"#,
                hex::encode(data),
                hex::encode(card_iv)
            )
            .into_bytes()
        };
        let open_card = |plaintext: &[u8], gzip: bool| {
            let ct = e2e::device::encrypt(keys["msk"].expose_secret(), &iv, plaintext).unwrap();
            s.charge_open_card(
                &m::ChargeOpenCard {
                    mac_key_id: id("mac"),
                    message: string_to_sign.to_vec(),
                    signature: hmac(keys["mac"].expose_secret(), string_to_sign),
                    msk_key_id: id("msk"),
                    iv,
                    ciphertext: ct,
                    gzip,
                    tdk_key_id: id("tdk"),
                    tpk_key_id: String::new(),
                    zpk_key_id: String::new(),
                }
                .view(),
            )
        };
        let good = inner(&card_ct, &iv);
        let both = open_card(&good, false).unwrap();
        assert_eq!(both.plaintext.expose(), &good[..]);
        assert!(both.card_opened);
        assert_eq!(both.card.expose(), card);
        assert_eq!(both.pan_fingerprint, data.pan_fingerprint);
        assert!(both.pin_block.is_empty());
        let mut zipped = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut zipped, &good).unwrap();
        let zipped = zipped.finish().unwrap();
        let both = open_card(&zipped, true).unwrap();
        assert_eq!(both.plaintext.expose(), &zipped[..]);
        assert_eq!(both.card.expose(), card);
        // A card that is missing, not hex, or not under the TDK leaves the envelope open and
        // the card to the caller's own checks.
        let not_under_tdk = e2e::device::encrypt(keys["msk"].expose_secret(), &iv, card).unwrap();
        for other in [
            br#"{"amount":{"value":"1500","currency":"EUR"}}"#.to_vec(),
            br#"{"card":{"data":"zz","iv":"00"}}"#.to_vec(),
            inner(&not_under_tdk, &iv),
            inner(&card_ct, &iv[..8]),
            good.clone(),
        ] {
            let gzip = other == good;
            let answer = open_card(&other, gzip).unwrap();
            assert_eq!(answer.plaintext.expose(), &other[..]);
            assert!(!answer.card_opened && answer.card.expose().is_empty());
            assert_eq!(answer.pan_fingerprint, [0; 32]);
        }
        // The signature still guards everything.
        let mut forged = m::ChargeOpenCard {
            mac_key_id: id("mac"),
            message: string_to_sign.to_vec(),
            signature: [0; 32],
            msk_key_id: id("msk"),
            iv,
            ciphertext: e2e::device::encrypt(keys["msk"].expose_secret(), &iv, &good).unwrap(),
            gzip: false,
            tdk_key_id: id("tdk"),
            tpk_key_id: String::new(),
            zpk_key_id: String::new(),
        };
        assert!(matches!(
            s.charge_open_card(&forged.view()),
            Err(Error::Auth)
        ));
        forged.signature = hmac(keys["mac"].expose_secret(), string_to_sign);
        forged.msk_key_id = id("tdk");
        assert!(matches!(
            s.charge_open_card(&forged.view()),
            Err(Error::Auth)
        ));
        // A PAN typed in the backoffice fingerprints to the same value.
        let typed = s
            .pan_fingerprint(&m::PanFingerprint {
                pan: Secret::new(b"4242424242424242"),
            })
            .unwrap();
        assert_eq!(typed.value, data.pan_fingerprint);
        assert!(
            s.pan_fingerprint(&m::PanFingerprint {
                pan: Secret::new(b"4242-4242")
            })
            .is_err()
        );
        // A request fingerprint is keyed apart from the PAN's, and stable.
        let request = |data: &[u8]| {
            s.request_fingerprint(&m::RequestFingerprint {
                data: Secret::new(data),
            })
        };
        let r = request(b"4242424242424242").unwrap();
        assert_ne!(r.value, typed.value);
        assert_eq!(r.value, request(b"4242424242424242").unwrap().value);
        assert_ne!(r.value, request(b"4242424242424243").unwrap().value);
        assert!(request(b"").is_err() && request(&[b'x'; 64 * 1024 + 1]).is_err());
    }

    fn copy_charge(c: &m::ChargeOpen) -> m::ChargeOpen {
        m::ChargeOpen {
            mac_key_id: c.mac_key_id.clone(),
            message: c.message.clone(),
            signature: c.signature,
            msk_key_id: c.msk_key_id.clone(),
            iv: c.iv,
            ciphertext: c.ciphertext.clone(),
        }
    }

    #[test]
    fn rotation_keeps_the_previous_mac_key_for_the_grace_period_and_revocation_ends_all() {
        let s = service();
        device(&s, "POS-00000004");
        let first = s
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000004".into(),
            })
            .unwrap();
        let old_mac = first
            .keys
            .iter()
            .find(|k| k.kind == "mac")
            .unwrap()
            .key_id
            .clone();
        let export = s
            .key_set_export(&m::KeySetExport {
                device_id: "POS-00000004".into(),
                key_set_id: first.key_set_id,
            })
            .unwrap();
        let old_keys = unwrap_set(&export);
        let item = |key_id: &str, key: &tr31::Key| m::MacItem {
            key_id: key_id.into(),
            message: b"x".to_vec(),
            signature: hmac(key.expose_secret(), b"x"),
        };
        let verify = |s: &Service, key_id: &str| {
            s.mac_verify_batch(&m::MacVerifyBatch {
                items: vec![item(key_id, &old_keys["mac"])],
            })
            .unwrap()
            .valid[0]
        };
        assert!(verify(&s, &old_mac));
        s.key_set_create(&m::KeySetCreate {
            device_id: "POS-00000004".into(),
        })
        .unwrap();
        assert!(
            verify(&s, &old_mac),
            "previous set works within the grace period"
        );
        s.key_set_create(&m::KeySetCreate {
            device_id: "POS-00000004".into(),
        })
        .unwrap();
        assert!(!verify(&s, &old_mac), "two rotations back is revoked");
        s.key_set_revoke(&m::KeySetRevoke {
            device_id: "POS-00000004".into(),
        })
        .unwrap();
        assert!(matches!(
            s.key_check(&m::KeyCheck { key_id: old_mac }),
            Err(Error::Auth)
        ));
    }

    #[test]
    fn sealed_pans_open_only_unaltered_and_differ_each_time() {
        let s = service();
        let seal = |pan: &[u8]| {
            s.pan_seal(&m::PanSeal {
                pan: Secret::new(pan),
            })
        };
        let a = seal(b"4242424242424242").unwrap().sealed;
        let b = seal(b"4242424242424242").unwrap().sealed;
        assert_ne!(a, b, "a fresh IV each time");
        assert!(!a.windows(16).any(|w| w == b"4242424242424242"));
        let open = |sealed: Vec<u8>| s.pan_open(&m::PanOpen { sealed });
        assert_eq!(open(a.clone()).unwrap().pan.expose(), b"4242424242424242");
        for i in [0, 17, a.len() - 1] {
            let mut bad = a.clone();
            bad[i] ^= 1;
            assert!(matches!(open(bad), Err(Error::Auth)), "byte {i}");
        }
        assert!(matches!(open(a[..40].to_vec()), Err(Error::Auth)));
        assert!(matches!(open(Vec::new()), Err(Error::Auth)));
        for not_a_pan in [
            &b"12345"[..],
            b"42424242424242424242",
            b"424242424242424x",
            b"4242424242424242=",
            b"4242424242424242=281",
            b"4242424242424242=2812=",
            b"4242424242424242=28x2",
            b"=2812",
        ] {
            assert!(matches!(seal(not_a_pan), Err(Error::BadRequest(_))));
        }
        // With its expiry (track 2's layout), opened as sealed.
        let card = seal(b"4242424242424242=2812").unwrap().sealed;
        assert!(!card.windows(4).any(|w| w == b"2812"));
        assert_eq!(open(card).unwrap().pan.expose(), b"4242424242424242=2812");
        // Another LMK, another sealing key: a blob does not open elsewhere.
        assert!(matches!(
            service().pan_open(&m::PanOpen { sealed: a }),
            Err(Error::Auth)
        ));
    }

    #[test]
    fn identity_rotation_and_refusals() {
        let s = service();
        let first = device(&s, "POS-00000005");
        assert!(matches!(
            s.device_create(&m::DeviceCreate {
                device_id: "POS-00000005".into(),
                zone: "z1".into()
            }),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            s.device_create(&m::DeviceCreate {
                device_id: "POS-0000000g".into(),
                zone: "z1".into()
            }),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            s.device_create(&m::DeviceCreate {
                device_id: "POS-00000006".into(),
                zone: "nowhere".into()
            }),
            Err(Error::NotFound("zone"))
        ));
        let second = s
            .identity_rotate(&m::IdentityRotate {
                device_id: "POS-00000005".into(),
            })
            .unwrap();
        assert_ne!(first.key_id, second.key_id);
        let msg = b"m";
        let old = m::AttestVerify {
            device_id: "POS-00000005".into(),
            key_id: first.key_id,
            message: msg.to_vec(),
            signature: hmac(first.secret.expose(), msg),
        };
        assert!(matches!(s.attest_verify(&old), Err(Error::Auth)));
        let new = m::AttestVerify {
            device_id: "POS-00000005".into(),
            key_id: second.key_id,
            message: msg.to_vec(),
            signature: hmac(second.secret.expose(), msg),
        };
        s.attest_verify(&new).unwrap();
        assert_eq!(
            second.kcv,
            keys::kcv(KeyKind::Identity, second.secret.expose())
        );
        s.identity_revoke(&m::IdentityRevoke {
            device_id: "POS-00000005".into(),
        })
        .unwrap();
        assert!(
            matches!(s.attest_verify(&new), Err(Error::Auth)),
            "a revoked identity no longer attests"
        );
        assert!(matches!(
            s.identity_revoke(&m::IdentityRevoke {
                device_id: "POS-0000000F".into()
            }),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.identity_rotate(&m::IdentityRotate {
                device_id: "POS-0000000F".into()
            }),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.zmk_import(&m::ZmkImport {
                zone: "z1".into(),
                key: Secret::new(&[1; 32])
            }),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            s.zmk_import(&m::ZmkImport {
                zone: "z2".into(),
                key: Secret::new(&[1; 16])
            }),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn translate_and_export_honour_exportability() {
        let s = service();
        s.zmk_import(&m::ZmkImport {
            zone: "z2".into(),
            key: Secret::new(&[0x77; 32]),
        })
        .unwrap();
        let identity = device(&s, "POS-00000008");
        let set = s
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000008".into(),
            })
            .unwrap();
        let tdk = set.keys.iter().find(|k| k.kind == "tdk").unwrap();
        // Export a TDK under zone z1's ZMK, then translate it to z2's.
        let out = s
            .tr31_export(&m::Tr31Export {
                key_id: tdk.key_id.clone(),
                zone: "z1".into(),
            })
            .unwrap();
        let z1 = tr31::Kbpk::new(&ZMK).unwrap();
        let key = tr31::open(&out.key_block, &z1, Profile::Strict)
            .unwrap()
            .key;
        assert_eq!(keys::kcv(KeyKind::Tdk, key.expose_secret()), tdk.kcv);
        // The delivery header says N: the block may not be translated further.
        let refused = s.tr31_translate(&m::Tr31Translate {
            from_zone: "z1".into(),
            to_zone: "z2".into(),
            key_block: out.key_block,
        });
        assert!(matches!(refused, Err(Error::Policy(_))));
        // An exportable key block made by a partner under z1 translates to z2.
        let mut header = tr31::Header::new(
            tr31::Version::D,
            tr31::KeyUsage::BDK,
            tr31::Algorithm::AES,
            tr31::ModeOfUse::DERIVE,
            tr31::Exportability::EXPORTABLE,
        );
        header.key_version = tr31::KeyVersion::from_bytes(*b"01");
        let bdk = tr31::Key::new(&[0x33; 32]).unwrap();
        let block = tr31::seal(
            &z1,
            &header,
            &bdk,
            &SealOptions::default(),
            tr31::Padding::Random(&mut tr31::OsRandom),
        )
        .unwrap();
        let moved = s
            .tr31_translate(&m::Tr31Translate {
                from_zone: "z1".into(),
                to_zone: "z2".into(),
                key_block: block.clone(),
            })
            .unwrap();
        let z2 = tr31::Kbpk::new(&[0x77; 32]).unwrap();
        let opened = tr31::open(&moved.key_block, &z2, Profile::Strict).unwrap();
        assert!(opened.key.ct_eq(&bdk));
        assert_eq!(opened.header.key_version.as_str(), "01");
        // Wrong source zone: the block does not open.
        let wrong = s.tr31_translate(&m::Tr31Translate {
            from_zone: "z2".into(),
            to_zone: "z1".into(),
            key_block: block,
        });
        assert!(matches!(wrong, Err(Error::Auth)));
        // Identity keys never leave.
        let idk = s.tr31_export(&m::Tr31Export {
            key_id: identity.key_id,
            zone: "z1".into(),
        });
        assert!(matches!(idk, Err(Error::Policy(_))));
    }

    #[test]
    fn a_stored_block_cannot_be_moved_to_another_record() {
        let s = service();
        device(&s, "POS-00000007");
        let set = s
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000007".into(),
            })
            .unwrap();
        let records = s.store.key_set(&set.key_set_id).unwrap();
        let (msk, tdk) = (&records[2], &records[4]);
        let forged = KeyRecord {
            block: tdk.block.clone(),
            ..msk.clone()
        };
        assert!(matches!(s.open_stored(&forged), Err(Error::Store(_))));
        assert!(s.open_stored(msk).is_ok());
    }

    #[test]
    fn pan_fingerprints_are_rationed() {
        let mut budget = Budget::new(2);
        let start = std::time::Instant::now();
        // Ten seconds' worth at once, then nothing until time passes.
        assert!((0..20).all(|_| budget.take(start)));
        assert!(!budget.take(start));
        assert!(budget.take(start + std::time::Duration::from_millis(500)));
        assert!(!budget.take(start + std::time::Duration::from_millis(500)));
        // Saved-up tokens stop at ten seconds' worth.
        let later = start + std::time::Duration::from_secs(3600);
        assert_eq!((0..30).filter(|_| budget.take(later)).count(), 20);
    }
}

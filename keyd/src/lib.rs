//! keyd: the key service.
//!
//! The only process of the platform that holds a clear key or a PKCS#11 PIN. Root keys (the LMK
//! that protects every stored key, and one ZMK per key-injection zone) live in the token and
//! never leave it; per-device keys are generated from the token's RNG, stored as TR-31 version D
//! blocks under the LMK, delivered as TR-31 blocks under the device's key hierarchy, and used on
//! the hot path (signature verification, MSK envelopes, card data) by [`Service`].
//!
//! What keyd does not do: HTTP, business rules about merchants or charges, or any decision about
//! which device may do what beyond "this key belongs to this device and is current".

pub mod audit;
mod config;
pub mod console;
mod crypto;
mod dispatch;
mod error;
pub mod harden;
mod hsm;
mod keys;
mod manage;
pub mod officers;
mod pkcs11;
pub mod selftest;
mod server;
mod service;
mod store;

use std::sync::Arc;

pub use config::{Backend, Config, DatabaseConfig, Placement};
pub use dispatch::handle;
pub use error::Error;
pub use hsm::{Hsm, SoftwareHsm, TokenKey, TokenKind, ZmkAlgorithm};
pub use keys::{KeyKind, odd_parity};
pub use manage::{KeyView, PeriodRow, ZoneView};
pub use pkcs11::Pkcs11Hsm;
pub use server::{bind, serve};
pub use service::Service;
pub use service::lmk::{Rewrapped, Rotation};
pub use store::{
    AdminStore, Approval, Change, KeyState, KeyStore, ListQuery, Listed, LmkMove, LmkRecord,
    LmkState, LmkStore, LoginGate, MemoryStore, OfficerRecord, PgKeyStore, PgOptions, Reseal,
    Sealed, SqliteStore, ZmkStore, ZoneRecord,
};

/// A check value as operators read and compare it: six upper-case hex digits.
pub fn kcv_hex(kcv: [u8; 3]) -> String {
    format!("{:02X}{:02X}{:02X}", kcv[0], kcv[1], kcv[2])
}

/// The check value of a root key held in the token, from the CMAC of a zero block it computed.
pub fn kcv_of_cmac(mac: &[u8; 16]) -> [u8; 3] {
    [mac[0], mac[1], mac[2]]
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A 32-byte key derived from the LMK by two CMACs (`<label>, part 1` and `part 2`): the
/// same after every restart and on a standby token formed from the same components, so it
/// needs no storage of its own.
pub(crate) fn derive_from_lmk(
    hsm: &dyn Hsm,
    label: &str,
) -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    let a = zeroize::Zeroizing::new(hsm.lmk_cmac(format!("{label}, part 1").as_bytes())?);
    let b = zeroize::Zeroizing::new(hsm.lmk_cmac(format!("{label}, part 2").as_bytes())?);
    for (dst, src) in key.iter_mut().zip(a.iter().chain(b.iter())) {
        *dst = *src;
    }
    Ok(key)
}

/// A 32-byte secret keyd needs for as long as its data lives (the PAN and request fingerprint
/// keys, the PAN storage keys, the officers' pepper, the audit chain's key): derived from the
/// original LMK ([`derive_from_lmk`]) until the first LMK rotation, which seals each one under
/// the LMK in the store (`lmk_secrets`), where it is read from then on, so it outlives the
/// original LMK. An LMK rotation therefore re-protects these keys without changing them (the
/// API's fingerprints and sealed PANs, and the officers' credentials, stay valid).
///
/// # Errors
/// [`Error::Hsm`] without the LMK it needs; [`Error::Store`] for a stored secret that does not
/// open or is not the one asked for.
pub(crate) fn lmk_secret(
    hsm: &dyn Hsm,
    store: &dyn KeyStore,
    label: &str,
) -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
    let Some(block) = store.lmk_secret(label)? else {
        return derive_from_lmk(hsm, label).map_err(|_| {
            Error::Hsm(
                "this token does not hold the original LMK and the key store has no sealed                  copy of the secrets derived from it"
                    .into(),
            )
        });
    };
    let key = service::lmk::open_under_lmk(hsm, &block)?;
    let mut header = key.header;
    header
        .optional_blocks
        .retain(|b| !matches!(b.id(), tr31::BlockId::PB | tr31::BlockId::KP));
    if header != keys::secret_storage_header(label)? {
        return Err(Error::Store(format!(
            "the stored secret {label:?} does not match its name"
        )));
    }
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    if key.key.expose_secret().len() != 32 {
        return Err(Error::Store(format!(
            "the stored secret {label:?} is not 32 bytes"
        )));
    }
    out.copy_from_slice(key.key.expose_secret());
    Ok(out)
}

/// The three-byte AES-CMAC check value operators compare (contract section 6).
pub fn aes_kcv(key: &[u8]) -> [u8; 3] {
    keys::kcv(KeyKind::Tmk, key)
}

/// Opens the HSM the config names.
///
/// # Errors
/// [`Error::Config`] or [`Error::Hsm`].
pub fn open_hsm(config: &Config) -> Result<Arc<dyn Hsm>, Error> {
    match config.hsm.backend {
        Backend::Software => {
            tracing::warn!("hsm.backend = software: root keys live in process memory (tests only)");
            let hsm = SoftwareHsm::new();
            hsm.create_lmk()?;
            Ok(Arc::new(hsm))
        }
        Backend::Pkcs11 => {
            let module = config
                .hsm
                .module
                .as_deref()
                .ok_or_else(|| Error::Config("hsm.module".into()))?;
            let label = config
                .hsm
                .token_label
                .as_deref()
                .ok_or_else(|| Error::Config("hsm.token_label".into()))?;
            let pin = config.user_pin()?;
            Ok(Arc::new(Pkcs11Hsm::open(
                module,
                label,
                &pin,
                config.hsm.sessions,
            )?))
        }
    }
}

/// Opens the key store the config names: the SQLite file (`store`) or the PostgreSQL database
/// (`[database]`) that several keyd nodes share.
///
/// # Errors
/// As [`SqliteStore::open`] and [`PgKeyStore::open`]; [`Error::Config`] for the password.
pub fn open_store(config: &Config) -> Result<Arc<dyn KeyStore>, Error> {
    match (&config.database, &config.store) {
        (Some(db), _) => Ok(Arc::new(PgKeyStore::open(&PgOptions {
            url: db.url.clone(),
            password: config.database_password()?,
            ca_file: db.ca_file.clone(),
            pool_size: db.pool_size,
        })?)),
        (None, Some(path)) => Ok(Arc::new(SqliteStore::open(path)?)),
        (None, None) => Err(Error::Config("no key store configured".into())),
    }
}

/// Builds the service from the config: HSM, store, cache.
///
/// # Errors
/// As [`open_hsm`], [`open_store`] and [`Service::new`].
pub fn open_service(config: &Config) -> Result<Arc<Service>, Error> {
    service_on(config, open_hsm(config)?)
}

/// Builds the service from the config over an HSM already open (an operator command that
/// created the LMK itself).
///
/// # Errors
/// As [`open_store`] and [`Service::new`].
pub fn service_on(config: &Config, hsm: Arc<dyn Hsm>) -> Result<Arc<Service>, Error> {
    let store = open_store(config)?;
    let service = Service::new(
        hsm,
        store,
        config.placement,
        config.key_set_grace_secs,
        config.cache_capacity,
    )?
    .with_policy(config.officers.clone())?
    .with_fingerprint_rate(config.pan_fingerprint_rate);
    Ok(Arc::new(service))
}

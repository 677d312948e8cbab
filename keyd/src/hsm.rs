//! The HSM seam: what keyd asks of the token that holds its root keys.
//!
//! The token holds the local master key (LMK), which protects every stored key, and one zone
//! master key (ZMK) per zone. Neither ever leaves it: keyd only asks for random bytes and for
//! CMACs under them, which is all TR-31 key derivation needs (see `tr31::ExternalKbpk`):
//! AES-CMAC under the LMK and AES ZMKs (version D), TDES-CMAC under the double-length TDES
//! ZMKs of partners that still exchange keys under TDES (version B). [`SoftwareHsm`] is the
//! in-memory twin for unit tests.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use aes::Aes256;
use cmac::{KeyInit, Mac};
use zeroize::Zeroizing;

use crate::Error;

/// The operations keyd needs from its HSM.
pub trait Hsm: Send + Sync + 'static {
    /// Fills `out` from the HSM's random number generator.
    ///
    /// # Errors
    /// [`Error::Hsm`].
    fn random(&self, out: &mut [u8]) -> Result<(), Error>;

    /// True once the LMK exists.
    fn has_lmk(&self) -> bool;

    /// Generates the AES-256 LMK inside the HSM, non-extractable.
    ///
    /// # Errors
    /// [`Error::Conflict`] if it exists; [`Error::Hsm`].
    fn create_lmk(&self) -> Result<(), Error>;

    /// Stores an AES-256 LMK formed outside (from components), non-extractable: a second
    /// token formed from the same components opens the same key store (disaster recovery).
    ///
    /// # Errors
    /// [`Error::Conflict`] if it exists; [`Error::BadRequest`] for a wrong length; [`Error::Hsm`].
    fn import_lmk(&self, key: &[u8]) -> Result<(), Error>;

    /// AES-CMAC under the original LMK (the one `init` made).
    ///
    /// # Errors
    /// [`Error::Hsm`]; [`Error::NotFound`] without an LMK.
    fn lmk_cmac(&self, data: &[u8]) -> Result<[u8; 16], Error> {
        self.lmk_cmac_under(None, data)
    }

    /// AES-CMAC under one of the token's LMKs: `None` the original one (made by `init`, and
    /// sealing every block without a `KP` block), `Some(kcv)` the one with that check value
    /// (made by an LMK rotation).
    ///
    /// # Errors
    /// [`Error::Hsm`]; [`Error::NotFound`] if the token does not hold that LMK.
    fn lmk_cmac_under(&self, lmk: Option<[u8; 3]>, data: &[u8]) -> Result<[u8; 16], Error>;

    /// Adds a further LMK (an LMK rotation's new one), generated in the token (`None`) or
    /// formed outside from components, non-extractable like the first. Returns its check value.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the token holds an LMK with that check value;
    /// [`Error::BadRequest`] for a wrong length; [`Error::Hsm`].
    fn add_lmk(&self, key: Option<&[u8]>) -> Result<[u8; 3], Error>;

    /// The check values of the LMKs the token holds, and which of them is the original.
    fn lmks(&self) -> (Vec<[u8; 3]>, Option<[u8; 3]>);

    /// Destroys the LMK with this check value in the token (the end of a rotation's restore
    /// window). The original LMK too, once no block is sealed under it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Hsm`].
    fn destroy_lmk(&self, kcv: [u8; 3]) -> Result<(), Error>;

    /// Stores a zone's ZMK in the HSM under `name`, non-extractable: an AES-256 key, or a
    /// double-length TDES key (16 bytes, odd parity, distinct halves; the caller checked them).
    /// The token records which (its key type), so the algorithm is known again after a restart
    /// and on a token that loaded the zone from the store.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the zone has one; [`Error::BadRequest`] for a key whose length is
    /// not the algorithm's; [`Error::Hsm`].
    fn import_zmk(&self, name: &str, algorithm: ZmkAlgorithm, key: &[u8]) -> Result<(), Error>;

    /// The algorithm of a ZMK in the token.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown zone.
    fn zmk_algorithm(&self, name: &str) -> Result<ZmkAlgorithm, Error>;

    /// CMAC under a zone's ZMK: the 16-byte AES-CMAC under an AES ZMK; the 8-byte TDES-CMAC
    /// under a TDES ZMK, in the first 8 bytes (the rest zero), as `tr31::ExternalKbpk` takes it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown zone; [`Error::Hsm`].
    fn zmk_cmac(&self, zone: &str, data: &[u8]) -> Result<[u8; 16], Error>;

    /// A ZMK's check value as partners and custodians compare it, computed in the token: the
    /// AES-CMAC of a zero block (first three bytes) for AES, the legacy TDES check value
    /// (TDES-ECB of a zero block, first three bytes) for TDES.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown zone; [`Error::Hsm`].
    fn zmk_kcv(&self, name: &str) -> Result<[u8; 3], Error>;

    /// Destroys a ZMK in the token (a zone's old ZMK when its rotation ends); `name` is as
    /// [`Hsm::zones`] lists it.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Hsm`].
    fn destroy_zmk(&self, name: &str) -> Result<(), Error>;

    /// Zones with a ZMK: the zone's name for the ZMK it was formed with, `<zone>@<KCV>` for a
    /// ZMK a rotation gave it.
    fn zones(&self) -> Vec<String>;

    /// Looks for ZMKs another process (an officer's command) stored in the token since this
    /// one started.
    ///
    /// # Errors
    /// [`Error::Hsm`].
    fn refresh_zones(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Loads a working key into the HSM as a session object (`token` placement): sensitive,
    /// not extractable, gone when keyd stops.
    ///
    /// # Errors
    /// [`Error::Hsm`].
    fn load_key(&self, kind: TokenKind, key: &[u8]) -> Result<TokenKey, Error>;

    /// Destroys a loaded working key.
    fn unload_key(&self, key: TokenKey);

    /// HMAC-SHA-256 verification inside the HSM.
    ///
    /// # Errors
    /// [`Error::Auth`] for a wrong signature or an unknown key.
    fn hmac_verify(&self, key: TokenKey, message: &[u8], signature: &[u8]) -> Result<(), Error>;

    /// AES-CBC decryption with PKCS#7 padding inside the HSM.
    ///
    /// # Errors
    /// [`Error::Auth`] for a bad padding, a bad length or an unknown key.
    fn cbc_decrypt(
        &self,
        key: TokenKey,
        iv: &[u8; 16],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error>;

    /// AES-CBC encryption with PKCS#7 padding inside the HSM.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown key; [`Error::Hsm`].
    fn cbc_encrypt(&self, key: TokenKey, iv: &[u8; 16], plaintext: &[u8])
    -> Result<Vec<u8>, Error>;
}

/// What a working key loaded into the HSM is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// AES-256 for CBC.
    Aes,
    /// A generic secret for HMAC-SHA-256.
    Hmac,
}

/// A working key loaded into the HSM: an opaque number, mapped to the backend's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenKey(pub(crate) u64);

/// The cipher of a zone's ZMK.
///
/// Device zones (the ones whose ZMK protects terminals' TMKs) are AES: device key delivery is
/// TR-31 version D. A TDES ZMK serves partners that still exchange keys under TDES: their
/// version B blocks are imported under it, and keyd's TDES keys are exported to them under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZmkAlgorithm {
    /// AES-256 (TR-31 version D).
    Aes,
    /// Double-length TDES: 16 bytes, odd parity, two distinct halves (TR-31 version B).
    Tdes,
}

impl ZmkAlgorithm {
    /// As operators name it: `aes` or `tdes`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Aes => "aes",
            Self::Tdes => "tdes",
        }
    }

    /// From its name (`aes`, `tdes`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "aes" => Some(Self::Aes),
            "tdes" => Some(Self::Tdes),
            _ => None,
        }
    }

    /// For people: `AES-256` or `double-length TDES`.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Aes => "AES-256",
            Self::Tdes => "double-length TDES",
        }
    }

    /// The key's length in bytes: 32 or 16.
    pub const fn key_len(self) -> usize {
        match self {
            Self::Aes => 32,
            Self::Tdes => 16,
        }
    }

    /// `Ok` for a key of this algorithm's length; what every HSM backend checks before it
    /// stores a ZMK.
    ///
    /// # Errors
    /// [`Error::BadRequest`] naming the length.
    pub fn check_len(self, key: &[u8]) -> Result<(), Error> {
        if key.len() == self.key_len() {
            Ok(())
        } else {
            Err(Error::BadRequest(format!(
                "a {} ZMK is {} bytes",
                self.describe(),
                self.key_len()
            )))
        }
    }

    /// The algorithm of a ZMK of this length (AES-256 or double-length TDES; keyd has no
    /// other ZMKs, so the length is unambiguous).
    pub const fn from_key_len(len: usize) -> Option<Self> {
        match len {
            32 => Some(Self::Aes),
            16 => Some(Self::Tdes),
            _ => None,
        }
    }

    /// The TR-31 algorithm code of the key.
    pub const fn tr31_algorithm(self) -> tr31::Algorithm {
        match self {
            Self::Aes => tr31::Algorithm::AES,
            Self::Tdes => tr31::Algorithm::TDES,
        }
    }

    /// The TR-31 version of the blocks this ZMK protects: D (AES) or B (TDES).
    pub const fn tr31_version(self) -> tr31::Version {
        match self {
            Self::Aes => tr31::Version::D,
            Self::Tdes => tr31::Version::B,
        }
    }

    /// The check value custodians and partners compare: AES-CMAC form for AES, the legacy
    /// TDES form (encrypted zeros) for TDES; three bytes.
    pub fn kcv(self, key: &[u8]) -> [u8; 3] {
        match self {
            Self::Aes => crate::keys::kcv(crate::KeyKind::Tmk, key),
            Self::Tdes => tr31::kcv::legacy(key).unwrap_or_default(),
        }
    }
}

impl std::fmt::Display for ZmkAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One of the token's LMKs as a TR-31 KBPK: it protects keyd's stored key blocks. `kcv` is
/// `None` for the original LMK (blocks without `KP`), the check value of a rotation's LMK
/// otherwise (blocks naming it in `KP`).
pub(crate) struct Lmk<'a> {
    pub(crate) hsm: &'a dyn Hsm,
    pub(crate) kcv: Option<[u8; 3]>,
}

impl tr31::ExternalKbpk for Lmk<'_> {
    fn key_len(&self) -> usize {
        32
    }

    fn cmac(&self, data: &[u8]) -> Result<[u8; 16], tr31::Error> {
        self.hsm
            .lmk_cmac_under(self.kcv, data)
            .map_err(|_| tr31::Error::Kbpk("the HSM refused a CMAC under the LMK"))
    }
}

/// The check value of a root key from the CMAC of a zero block under it.
pub(crate) fn kcv_from(mac: &[u8; 16]) -> [u8; 3] {
    [mac[0], mac[1], mac[2]]
}

/// A TDES-CMAC as `Hsm::zmk_cmac` answers it: the 8 bytes first, zeros after.
pub(crate) fn cmac_block(tag: &[u8; 8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (o, t) in out.iter_mut().zip(tag) {
        *o = *t;
    }
    out
}

/// A CMAC input and the HSM's answer.
type Answer = (Vec<u8>, Zeroizing<[u8; 16]>);

/// Remembers the CMACs a KBPK gave during one request. TR-31 derivation asks the same two to
/// four questions for every block under a KBPK, so a request that seals several blocks (a key
/// set) asks the HSM once instead of once per block. The answers are derived keys: they live in
/// zeroizing memory and die with the request.
pub(crate) struct Memo<'a, K: tr31::ExternalKbpk> {
    inner: &'a K,
    seen: Mutex<Vec<Answer>>,
}

impl<'a, K: tr31::ExternalKbpk> Memo<'a, K> {
    pub(crate) fn new(inner: &'a K) -> Self {
        Self {
            inner,
            seen: Mutex::new(Vec::new()),
        }
    }
}

impl<K: tr31::ExternalKbpk> tr31::ExternalKbpk for Memo<'_, K> {
    fn key_len(&self) -> usize {
        self.inner.key_len()
    }

    fn algorithm(&self) -> tr31::Algorithm {
        self.inner.algorithm()
    }

    fn legacy_kcv(&self) -> Result<[u8; 3], tr31::Error> {
        self.inner.legacy_kcv()
    }

    fn cmac(&self, data: &[u8]) -> Result<[u8; 16], tr31::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, mac)) = seen.iter().find(|(input, _)| input == data) {
            return Ok(**mac);
        }
        let mac = self.inner.cmac(data)?;
        seen.push((data.to_vec(), Zeroizing::new(mac)));
        Ok(mac)
    }
}

/// A zone's ZMK as a TR-31 KBPK: it protects the TMKs delivered to an AES zone's devices, and
/// the keys exchanged with the zone's partner (version D under AES, B under TDES).
pub(crate) struct Zmk<'a> {
    pub(crate) hsm: &'a dyn Hsm,
    /// The ZMK's name in the token (the zone's, or `<zone>@<KCV>` after a rotation).
    pub(crate) zone: String,
    /// Its cipher.
    pub(crate) algorithm: ZmkAlgorithm,
}

impl tr31::ExternalKbpk for Zmk<'_> {
    fn key_len(&self) -> usize {
        self.algorithm.key_len()
    }

    fn algorithm(&self) -> tr31::Algorithm {
        self.algorithm.tr31_algorithm()
    }

    fn cmac(&self, data: &[u8]) -> Result<[u8; 16], tr31::Error> {
        self.hsm
            .zmk_cmac(&self.zone, data)
            .map_err(|_| tr31::Error::Kbpk("the HSM refused a CMAC under the ZMK"))
    }

    fn legacy_kcv(&self) -> Result<[u8; 3], tr31::Error> {
        match self.algorithm {
            ZmkAlgorithm::Tdes => self
                .hsm
                .zmk_kcv(&self.zone)
                .map_err(|_| tr31::Error::Kbpk("the HSM refused the ZMK's check value")),
            ZmkAlgorithm::Aes => Err(tr31::Error::Kbpk("AES keys have no legacy check value")),
        }
    }
}

/// A ZMK "in the token" of the software twin: its algorithm and value.
type SoftZmk = (ZmkAlgorithm, Zeroizing<Vec<u8>>);

/// A working key "in the token" of the software twin.
type LoadedKey = (TokenKind, Zeroizing<Vec<u8>>);

/// Root keys in process memory. For unit tests only: the configuration refuses it unless told
/// otherwise, and it says so in every log line that names the backend.
#[derive(Default)]
pub struct SoftwareHsm {
    lmk: Mutex<Option<Zeroizing<[u8; 32]>>>,
    /// Rotations' LMKs, by check value.
    more_lmks: Mutex<HashMap<[u8; 3], Zeroizing<[u8; 32]>>>,
    zmks: Mutex<HashMap<String, SoftZmk>>,
    loaded: std::sync::RwLock<HashMap<u64, LoadedKey>>,
    next: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for SoftwareHsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SoftwareHsm(keys redacted)")
    }
}

impl SoftwareHsm {
    /// An empty software HSM.
    pub fn new() -> Self {
        Self::default()
    }
}

fn cmac_with(key: &[u8; 32], data: &[u8]) -> Result<[u8; 16], Error> {
    let mut mac = <cmac::Cmac<Aes256> as KeyInit>::new_from_slice(key)
        .map_err(|_| Error::Hsm("bad key length".into()))?;
    mac.update(data);
    let out = mac.finalize().into_bytes();
    let mut block = [0u8; 16];
    block.copy_from_slice(&out);
    Ok(block)
}

impl Hsm for SoftwareHsm {
    fn random(&self, out: &mut [u8]) -> Result<(), Error> {
        getrandom::fill(out).map_err(|e| Error::Hsm(e.to_string()))
    }

    fn has_lmk(&self) -> bool {
        self.lmk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
            || !self
                .more_lmks
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
    }

    fn create_lmk(&self) -> Result<(), Error> {
        let mut lmk = self.lmk.lock().unwrap_or_else(PoisonError::into_inner);
        if lmk.is_some() {
            return Err(Error::Conflict("the LMK exists already"));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        self.random(&mut key[..])?;
        *lmk = Some(key);
        Ok(())
    }

    fn import_lmk(&self, key: &[u8]) -> Result<(), Error> {
        let mut lmk = self.lmk.lock().unwrap_or_else(PoisonError::into_inner);
        if lmk.is_some() {
            return Err(Error::Conflict("the LMK exists already"));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        if key.len() != 32 {
            return Err(Error::BadRequest("an LMK is 32 bytes (AES-256)".into()));
        }
        k.copy_from_slice(key);
        *lmk = Some(k);
        Ok(())
    }

    fn lmk_cmac_under(&self, kcv: Option<[u8; 3]>, data: &[u8]) -> Result<[u8; 16], Error> {
        let original = self.lmk.lock().unwrap_or_else(PoisonError::into_inner);
        let more = self
            .more_lmks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = match kcv {
            None => original.as_ref(),
            Some(kcv) => more.get(&kcv).or_else(|| {
                original
                    .as_ref()
                    .filter(|k| cmac_with(k, &[0; 16]).is_ok_and(|m| kcv_from(&m) == kcv))
            }),
        };
        cmac_with(key.ok_or(Error::NotFound("LMK"))?, data)
    }

    fn add_lmk(&self, key: Option<&[u8]>) -> Result<[u8; 3], Error> {
        let mut k = Zeroizing::new([0u8; 32]);
        match key {
            Some(key) if key.len() == 32 => k.copy_from_slice(key),
            Some(_) => return Err(Error::BadRequest("an LMK is 32 bytes (AES-256)".into())),
            None => self.random(&mut k[..])?,
        }
        let kcv = kcv_from(&cmac_with(&k, &[0; 16])?);
        if self.lmks().0.contains(&kcv) {
            return Err(Error::Conflict(
                "the token holds an LMK with that check value",
            ));
        }
        self.more_lmks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kcv, k);
        Ok(kcv)
    }

    fn lmks(&self) -> (Vec<[u8; 3]>, Option<[u8; 3]>) {
        let original = self
            .lmk
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|k| cmac_with(k, &[0; 16]).ok())
            .map(|m| kcv_from(&m));
        let mut all: Vec<[u8; 3]> = self
            .more_lmks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        all.extend(original);
        all.sort_unstable();
        (all, original)
    }

    fn destroy_lmk(&self, kcv: [u8; 3]) -> Result<(), Error> {
        if self
            .more_lmks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&kcv)
            .is_some()
        {
            return Ok(());
        }
        let mut original = self.lmk.lock().unwrap_or_else(PoisonError::into_inner);
        if original
            .as_ref()
            .and_then(|k| cmac_with(k, &[0; 16]).ok())
            .is_some_and(|m| kcv_from(&m) == kcv)
        {
            *original = None;
            return Ok(());
        }
        Err(Error::NotFound("LMK"))
    }

    fn import_zmk(&self, name: &str, algorithm: ZmkAlgorithm, key: &[u8]) -> Result<(), Error> {
        let mut zmks = self.zmks.lock().unwrap_or_else(PoisonError::into_inner);
        if zmks.contains_key(name) {
            return Err(Error::Conflict("the zone has a ZMK already"));
        }
        algorithm.check_len(key)?;
        zmks.insert(name.to_owned(), (algorithm, Zeroizing::new(key.to_vec())));
        Ok(())
    }

    fn zmk_algorithm(&self, name: &str) -> Result<ZmkAlgorithm, Error> {
        let zmks = self.zmks.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(zmks.get(name).ok_or(Error::NotFound("zone"))?.0)
    }

    fn zmk_cmac(&self, zone: &str, data: &[u8]) -> Result<[u8; 16], Error> {
        let zmks = self.zmks.lock().unwrap_or_else(PoisonError::into_inner);
        let (algorithm, key) = zmks.get(zone).ok_or(Error::NotFound("zone"))?;
        match algorithm {
            ZmkAlgorithm::Aes => {
                let key: &[u8; 32] = key
                    .as_slice()
                    .try_into()
                    .map_err(|_| Error::Hsm("bad key length".into()))?;
                cmac_with(key, data)
            }
            // The composition the PKCS#11 backend runs over the token's TDES-CBC, over a
            // software TDES-CBC here.
            ZmkAlgorithm::Tdes => {
                let tag = crate::crypto::tdes_cmac_via_cbc(
                    |blocks| crate::crypto::tdes_cbc_zero_iv(key, blocks),
                    data,
                )?;
                Ok(cmac_block(&tag))
            }
        }
    }

    fn zmk_kcv(&self, name: &str) -> Result<[u8; 3], Error> {
        let zmks = self.zmks.lock().unwrap_or_else(PoisonError::into_inner);
        let (algorithm, key) = zmks.get(name).ok_or(Error::NotFound("zone"))?;
        Ok(algorithm.kcv(key))
    }

    fn destroy_zmk(&self, name: &str) -> Result<(), Error> {
        self.zmks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .map(|_| ())
            .ok_or(Error::NotFound("zone"))
    }

    fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = self
            .zmks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        zones.sort();
        zones
    }

    fn load_key(&self, kind: TokenKind, key: &[u8]) -> Result<TokenKey, Error> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, (kind, Zeroizing::new(key.to_vec())));
        Ok(TokenKey(id))
    }

    fn unload_key(&self, key: TokenKey) {
        self.loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key.0);
    }

    fn hmac_verify(&self, key: TokenKey, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        match loaded.get(&key.0) {
            Some((TokenKind::Hmac, k)) => crate::crypto::verify_hmac(k, message, signature),
            _ => Err(Error::Auth),
        }
    }

    fn cbc_decrypt(
        &self,
        key: TokenKey,
        iv: &[u8; 16],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        match loaded.get(&key.0) {
            Some((TokenKind::Aes, k)) => crate::crypto::cbc_decrypt(k, iv, ciphertext),
            _ => Err(Error::Auth),
        }
    }

    fn cbc_encrypt(
        &self,
        key: TokenKey,
        iv: &[u8; 16],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let loaded = self.loaded.read().unwrap_or_else(PoisonError::into_inner);
        match loaded.get(&key.0) {
            Some((TokenKind::Aes, k)) => crate::crypto::cbc_encrypt(k, iv, plaintext),
            _ => Err(Error::Auth),
        }
    }
}

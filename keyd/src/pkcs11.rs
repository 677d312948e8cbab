//! The HSM through PKCS#11 (SoftHSM2 in tests, any module with AES, AES-CMAC and a RNG in
//! production; TDES-CBC too for TDES zones).
//!
//! One context, one anchor session logged in for the life of the process (closing the last
//! session would log out and invalidate handles), and a pool of sessions for the work. Object
//! handles of the LMKs and the ZMKs are looked up at start and again only when something
//! changed elsewhere (another process's ceremony, another node's zone): no `C_FindObjects` on
//! a request path, except for a request that meets an LMK or zone this process does not know
//! (requests that miss together share one look).
//!
//! The handle maps change from several threads: a look over the whole token (housekeeping
//! after another process's change, or a request meeting an LMK it does not know yet) and a
//! key this process adds or destroys. Every change holds one lock from the token call to the
//! map update, so a look that began before a change never writes back a picture without it
//! (a zone loaded a moment earlier would be "not found" until the next look; seen once
//! as a failed key-set delivery during a two-node LMK rewrap, shown by `tests/token_maps.rs`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::Error;
use crate::hsm::{Hsm, TokenKey, TokenKind, ZmkAlgorithm};

const LMK_LABEL: &str = "keyd-lmk";
/// A rotation's LMK: `keyd-lmk:` and its check value.
const LMK_PREFIX: &str = "keyd-lmk:";
const ZMK_PREFIX: &str = "keyd-zmk:";

/// A PKCS#11 token.
pub struct Pkcs11Hsm {
    /// Kept open and logged in for the life of the process. It also creates the working keys
    /// of `token` placement: session objects die with the session that made them.
    anchor: Mutex<Session>,
    loaded: RwLock<HashMap<u64, ObjectHandle>>,
    next_key: AtomicU64,
    sessions: Vec<Mutex<Session>>,
    next: AtomicUsize,
    lmk: RwLock<Option<ObjectHandle>>,
    /// Every LMK in the token (the original too) by check value.
    lmks: RwLock<HashMap<[u8; 3], ObjectHandle>>,
    /// The original LMK's check value.
    original: RwLock<Option<[u8; 3]>>,
    /// Every ZMK by its name, with its algorithm (from the object's key type).
    zmks: RwLock<HashMap<String, (ObjectHandle, ZmkAlgorithm)>>,
    /// Held by whatever changes the LMK and ZMK maps, across the token call and the update
    /// (see the module docs). Readers take only the map's own lock.
    changes: Mutex<()>,
    /// Looks over the token begun so far (counted under `changes`): a request that missed a
    /// key and finds a look begun after its miss takes that look's picture instead of its own.
    looks: AtomicU64,
    _context: Pkcs11,
}

impl std::fmt::Debug for Pkcs11Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Hsm")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Pkcs11Hsm {
    /// Loads the module, finds the token by label, logs in and caches the key handles.
    ///
    /// # Errors
    /// [`Error::Hsm`] naming the step that failed.
    pub fn open(module: &Path, label: &str, pin: &str, sessions: usize) -> Result<Self, Error> {
        let context = Pkcs11::new(module)
            .map_err(|e| Error::Hsm(format!("cannot load {}: {e}", module.display())))?;
        // OS locking: SoftHSM is not safe across threads without it.
        context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
        let slot = context
            .get_slots_with_token()?
            .into_iter()
            .find(|s| {
                context
                    .get_token_info(*s)
                    .map(|i| i.label() == label)
                    .unwrap_or(false)
            })
            .ok_or_else(|| Error::Hsm(format!("no token labelled {label:?}")))?;
        let anchor = context.open_rw_session(slot)?;
        anchor
            .login(UserType::User, Some(&AuthPin::from(pin.to_owned())))
            .map_err(|e| Error::Hsm(format!("login to token {label:?} failed: {e}")))?;
        let mut pool = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            pool.push(Mutex::new(context.open_rw_session(slot)?));
        }
        let hsm = Self {
            anchor: Mutex::new(anchor),
            loaded: RwLock::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            sessions: pool,
            next: AtomicUsize::new(0),
            lmk: RwLock::new(None),
            lmks: RwLock::new(HashMap::new()),
            original: RwLock::new(None),
            zmks: RwLock::new(HashMap::new()),
            changes: Mutex::new(()),
            looks: AtomicU64::new(0),
            _context: context,
        };
        hsm.load_handles()?;
        Ok(hsm)
    }

    /// Runs `f` on the next session of the pool.
    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T, Error>) -> Result<T, Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.sessions.len().max(1);
        let session = self
            .sessions
            .get(n)
            .ok_or_else(|| Error::Hsm("no sessions".into()))?;
        let guard = session.lock().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// Takes the lock that every change of the handle maps holds (see the module docs).
    fn changing(&self) -> MutexGuard<'_, ()> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks the whole token over again and replaces the handle maps with what it holds.
    fn load_handles(&self) -> Result<(), Error> {
        let held = self.changing();
        self.look_over(&held)
    }

    /// [`Pkcs11Hsm::load_handles`] for a caller that holds the change lock already.
    fn look_over(&self, _held: &MutexGuard<'_, ()>) -> Result<(), Error> {
        self.looks.fetch_add(1, Ordering::AcqRel);
        let (original, lmks, zmks) = self.with_session(|s| {
            let keys = s.find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Token(true),
            ])?;
            let mut original = None;
            let mut lmks = Vec::new();
            let mut zmks = HashMap::new();
            for handle in keys {
                let attrs = match s
                    .get_attributes(handle, &[AttributeType::Label, AttributeType::KeyType])
                {
                    Ok(attrs) => attrs,
                    // Destroyed by another process since the search: gone, not an error.
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                let (mut label, mut key_type) = (None, None);
                for attr in attrs {
                    match attr {
                        Attribute::Label(l) => {
                            label = Some(String::from_utf8_lossy(&l).into_owned())
                        }
                        Attribute::KeyType(t) => key_type = Some(t),
                        _ => {}
                    }
                }
                let Some(label) = label else { continue };
                if label == LMK_LABEL {
                    original = Some(handle);
                    lmks.push(handle);
                } else if label.starts_with(LMK_PREFIX) {
                    lmks.push(handle);
                } else if let Some(zone) = label.strip_prefix(ZMK_PREFIX) {
                    // The key type says the ZMK's algorithm, whoever stored it.
                    let algorithm = match key_type {
                        Some(KeyType::AES) => ZmkAlgorithm::Aes,
                        Some(KeyType::DES2) => ZmkAlgorithm::Tdes,
                        _ => {
                            tracing::warn!(
                                zone,
                                "a ZMK object of a key type keyd does not use is ignored"
                            );
                            continue;
                        }
                    };
                    zmks.insert(zone.to_owned(), (handle, algorithm));
                }
            }
            Ok((original, lmks, zmks))
        })?;
        // Found again from scratch too: a zone's old ZMK may have been destroyed elsewhere.
        *self.zmks.write().unwrap_or_else(PoisonError::into_inner) = zmks;
        // The LMKs are found again from scratch: another process may have added one (a
        // rotation's ceremony) or destroyed one (the end of its restore window).
        let known: Vec<(ObjectHandle, [u8; 3])> = self
            .lmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(kcv, handle)| (*handle, *kcv))
            .collect();
        let mut by_kcv = HashMap::new();
        let mut original_kcv = None;
        for handle in lmks {
            let signed = self.with_session(|s| Ok(s.sign(&Mechanism::AesCMac, handle, &[0; 16])));
            let kcv = match signed? {
                Ok(mac) => match mac.get(..3) {
                    Some(&[a, b, c]) => [a, b, c],
                    _ => return Err(Error::Hsm("CMAC of unexpected length".into())),
                },
                Err(e) if gone(&e) => continue,
                Err(e) => match known.iter().find(|(h, _)| *h == handle) {
                    // One in use here keeps its check value through a passing failure.
                    Some((_, kcv)) => *kcv,
                    // One that cannot be used yet (being written by another process) is
                    // looked at again next time, without hiding the others.
                    None => {
                        tracing::warn!(error = %e, "an LMK object in the token cannot be used now");
                        continue;
                    }
                },
            };
            if Some(handle) == original {
                original_kcv = Some(kcv);
            }
            by_kcv.insert(kcv, handle);
        }
        *self.lmk.write().unwrap_or_else(PoisonError::into_inner) = original;
        *self
            .original
            .write()
            .unwrap_or_else(PoisonError::into_inner) = original_kcv;
        *self.lmks.write().unwrap_or_else(PoisonError::into_inner) = by_kcv;
        Ok(())
    }

    fn cmac(&self, key: ObjectHandle, data: &[u8]) -> Result<[u8; 16], Error> {
        let mac = self.with_session(|s| Ok(s.sign(&Mechanism::AesCMac, key, data)?))?;
        mac.as_slice()
            .try_into()
            .map_err(|_| Error::Hsm("CMAC of unexpected length".into()))
    }

    fn root_key_template(label: &str) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    }

    /// The template of a TDES ZMK: a double-length TDES key (`CKK_DES2`), sensitive, never
    /// extractable, allowed one mechanism, TDES-CBC encryption (never decryption), over which
    /// keyd composes the TDES-CMAC (`crypto::tdes_cmac_via_cbc`). `CKM_DES3_CMAC` would be the
    /// natural mechanism (SoftHSM 2.6 has it), but the `cryptoki` crate cannot name it, and
    /// keyd has no `unsafe` code to call it otherwise.
    fn tdes_zmk_template(label: &str) -> Vec<Attribute> {
        vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::DES2),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(false),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::AllowedMechanisms(vec![MechanismType::DES3_CBC]),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    }

    /// TDES-CBC encryption with a zero IV under a TDES ZMK, in the token.
    fn tdes_cbc(
        session: &Session,
        key: ObjectHandle,
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        Ok(Zeroizing::new(session.encrypt(
            &Mechanism::Des3Cbc([0; 8]),
            key,
            data,
        )?))
    }

    /// The ZMK `name`: its handle and algorithm.
    fn zmk(&self, name: &str) -> Result<(ObjectHandle, ZmkAlgorithm), Error> {
        self.zmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .ok_or(Error::NotFound("zone"))
    }

    /// Creates a root key (LMK or ZMK) from its clear value as a token object with the root
    /// template: sensitive, never extractable, CMAC only.
    fn create_root_key(&self, label: &str, key: &[u8]) -> Result<ObjectHandle, Error> {
        self.create_secret(Self::root_key_template(label), key)
    }

    /// Creates a token object from `template` and the key's clear value, wiping the copy of
    /// the value the template held.
    fn create_secret(
        &self,
        mut template: Vec<Attribute>,
        key: &[u8],
    ) -> Result<ObjectHandle, Error> {
        template.push(Attribute::Value(key.to_vec()));
        let handle = self.with_session(|s| Ok(s.create_object(&template)?));
        // The template held a copy of the key.
        for attr in &mut template {
            if let Attribute::Value(v) = attr {
                zeroize::Zeroize::zeroize(v);
            }
        }
        handle
    }
}

/// Whether a call failed because its object is gone (another process destroyed it).
fn gone(e: &cryptoki::error::Error) -> bool {
    use cryptoki::error::RvError::{KeyHandleInvalid, ObjectHandleInvalid};
    // A sign or encrypt call names a destroyed key with the second (the standard's answer for
    // `C_SignInit`), SoftHSM with the first.
    matches!(
        e,
        cryptoki::error::Error::Pkcs11(ObjectHandleInvalid | KeyHandleInvalid, _)
    )
}

impl Hsm for Pkcs11Hsm {
    fn random(&self, out: &mut [u8]) -> Result<(), Error> {
        self.with_session(|s| Ok(s.generate_random_slice(out)?))
    }

    fn has_lmk(&self) -> bool {
        !self
            .lmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    fn create_lmk(&self) -> Result<(), Error> {
        let held = self.changing();
        let mut lmk = self.lmk.write().unwrap_or_else(PoisonError::into_inner);
        if lmk.is_some() {
            return Err(Error::Conflict("the LMK exists already"));
        }
        let mut template = Self::root_key_template(LMK_LABEL);
        template.push(Attribute::ValueLen(32.into()));
        let handle =
            self.with_session(|s| Ok(s.generate_key(&Mechanism::AesKeyGen, &template)?))?;
        *lmk = Some(handle);
        drop(lmk);
        self.look_over(&held)
    }

    fn import_lmk(&self, key: &[u8]) -> Result<(), Error> {
        if key.len() != 32 {
            return Err(Error::BadRequest("an LMK is 32 bytes (AES-256)".into()));
        }
        let held = self.changing();
        let mut lmk = self.lmk.write().unwrap_or_else(PoisonError::into_inner);
        if lmk.is_some() {
            return Err(Error::Conflict("the LMK exists already"));
        }
        *lmk = Some(self.create_root_key(LMK_LABEL, key)?);
        drop(lmk);
        self.look_over(&held)
    }

    fn lmk_cmac_under(&self, kcv: Option<[u8; 3]>, data: &[u8]) -> Result<[u8; 16], Error> {
        let handle = match kcv {
            None => *self.lmk.read().unwrap_or_else(PoisonError::into_inner),
            Some(kcv) => self
                .lmks
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&kcv)
                .copied(),
        }
        .ok_or(Error::NotFound("LMK"))?;
        self.cmac(handle, data)
    }

    fn add_lmk(&self, key: Option<&[u8]>) -> Result<[u8; 3], Error> {
        if key.is_some_and(|k| k.len() != 32) {
            return Err(Error::BadRequest("an LMK is 32 bytes (AES-256)".into()));
        }
        let _held = self.changing();
        // A formed LMK is made under its final label (its check value is known beforehand); a
        // generated one under a provisional label, named once the token computed its value.
        let provisional = format!("{LMK_PREFIX}new");
        let handle = match key {
            Some(key) => {
                let kcv = crate::aes_kcv(key);
                if self
                    .lmks
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains_key(&kcv)
                {
                    return Err(Error::Conflict(
                        "the token holds an LMK with that check value",
                    ));
                }
                let label = format!("{LMK_PREFIX}{}", crate::kcv_hex(kcv));
                let handle = self.create_root_key(&label, key)?;
                self.lmks
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(kcv, handle);
                return Ok(kcv);
            }
            None => {
                let mut template = Self::root_key_template(&provisional);
                template.push(Attribute::ValueLen(32.into()));
                self.with_session(|s| Ok(s.generate_key(&Mechanism::AesKeyGen, &template)?))?
            }
        };
        let kcv = crate::hsm::kcv_from(&self.cmac(handle, &[0; 16])?);
        if self
            .lmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&kcv)
        {
            self.with_session(|s| Ok(s.destroy_object(handle)?))?;
            return Err(Error::Conflict(
                "the token holds an LMK with that check value",
            ));
        }
        let label = format!("{LMK_PREFIX}{}", crate::kcv_hex(kcv));
        self.with_session(|s| {
            Ok(s.update_attributes(handle, &[Attribute::Label(label.into_bytes())])?)
        })?;
        self.lmks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kcv, handle);
        Ok(kcv)
    }

    fn lmks(&self) -> (Vec<[u8; 3]>, Option<[u8; 3]>) {
        let mut all: Vec<[u8; 3]> = self
            .lmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        all.sort_unstable();
        (
            all,
            *self.original.read().unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn destroy_lmk(&self, kcv: [u8; 3]) -> Result<(), Error> {
        let _held = self.changing();
        let handle = self
            .lmks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&kcv)
            .ok_or(Error::NotFound("LMK"))?;
        let mut original = self.lmk.write().unwrap_or_else(PoisonError::into_inner);
        let was_original = *original == Some(handle);
        if was_original {
            *original = None;
        }
        let destroyed = self.with_session(|s| Ok(s.destroy_object(handle)?));
        if destroyed.is_err() {
            // Still in the token: still usable.
            self.lmks
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(kcv, handle);
            if was_original {
                *original = Some(handle);
            }
        } else if was_original {
            *self
                .original
                .write()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
        destroyed
    }

    fn import_zmk(&self, name: &str, algorithm: ZmkAlgorithm, key: &[u8]) -> Result<(), Error> {
        algorithm.check_len(key)?;
        let _held = self.changing();
        if self
            .zmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
        {
            return Err(Error::Conflict("the zone has a ZMK already"));
        }
        let label = format!("{ZMK_PREFIX}{name}");
        let handle = match algorithm {
            ZmkAlgorithm::Aes => self.create_root_key(&label, key)?,
            ZmkAlgorithm::Tdes => self.create_secret(Self::tdes_zmk_template(&label), key)?,
        };
        self.zmks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (handle, algorithm));
        Ok(())
    }

    fn zmk_algorithm(&self, name: &str) -> Result<ZmkAlgorithm, Error> {
        Ok(self.zmk(name)?.1)
    }

    fn zmk_cmac(&self, zone: &str, data: &[u8]) -> Result<[u8; 16], Error> {
        match self.zmk(zone)? {
            (handle, ZmkAlgorithm::Aes) => self.cmac(handle, data),
            (handle, ZmkAlgorithm::Tdes) => {
                // Both CBC calls on one session.
                let tag = self.with_session(|s| {
                    crate::crypto::tdes_cmac_via_cbc(
                        |blocks| Self::tdes_cbc(s, handle, blocks),
                        data,
                    )
                })?;
                Ok(crate::hsm::cmac_block(&tag))
            }
        }
    }

    fn zmk_kcv(&self, name: &str) -> Result<[u8; 3], Error> {
        match self.zmk(name)? {
            (handle, ZmkAlgorithm::Aes) => Ok(crate::hsm::kcv_from(&self.cmac(handle, &[0; 16])?)),
            // The legacy check value: the encryption of a zero block, computed by the token.
            (handle, ZmkAlgorithm::Tdes) => {
                let block = self.with_session(|s| Self::tdes_cbc(s, handle, &[0; 8]))?;
                match block.get(..3) {
                    Some(&[a, b, c]) => Ok([a, b, c]),
                    _ => Err(Error::Hsm("TDES-CBC answered with the wrong length".into())),
                }
            }
        }
    }

    fn destroy_zmk(&self, name: &str) -> Result<(), Error> {
        let _held = self.changing();
        let (handle, _) = self
            .zmks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name)
            .ok_or(Error::NotFound("zone"))?;
        self.with_session(|s| Ok(s.destroy_object(handle)?))
    }

    fn refresh_zones(&self) -> Result<(), Error> {
        // Requests that miss at once share one look: one begun after this call's start saw
        // the token as it is now, or later.
        let seen = self.looks.load(Ordering::Acquire);
        let held = self.changing();
        if self.looks.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        self.look_over(&held)
    }

    fn zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = self
            .zmks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        zones.sort();
        zones
    }

    fn load_key(&self, kind: TokenKind, key: &[u8]) -> Result<TokenKey, Error> {
        let (key_type, uses) = match kind {
            TokenKind::Aes => (
                KeyType::AES,
                [Attribute::Encrypt(true), Attribute::Decrypt(true)],
            ),
            TokenKind::Hmac => (
                KeyType::GENERIC_SECRET,
                [Attribute::Sign(true), Attribute::Verify(true)],
            ),
        };
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(false),
            // Session objects of a logged-in application are visible to it alone either way;
            // private ones are measurably slower in SoftHSM.
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Value(key.to_vec()),
        ];
        template.extend(uses);
        let created = self
            .anchor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .create_object(&template);
        for attr in &mut template {
            if let Attribute::Value(v) = attr {
                zeroize::Zeroize::zeroize(v);
            }
        }
        let handle = created?;
        let id = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, handle);
        Ok(TokenKey(id))
    }

    fn unload_key(&self, key: TokenKey) {
        let handle = self
            .loaded
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key.0);
        if let Some(handle) = handle {
            let _ = self
                .anchor
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .destroy_object(handle);
        }
    }

    fn hmac_verify(&self, key: TokenKey, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        let handle = self.handle(key)?;
        self.with_session(|s| {
            s.verify(&Mechanism::Sha256Hmac, handle, message, signature)
                .map_err(|_| Error::Auth)
        })
    }

    fn cbc_decrypt(
        &self,
        key: TokenKey,
        iv: &[u8; 16],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        crate::crypto::check_ciphertext(ciphertext)?;
        let handle = self.handle(key)?;
        self.with_session(|s| {
            s.decrypt(&Mechanism::AesCbcPad(*iv), handle, ciphertext)
                .map(Zeroizing::new)
                .map_err(|_| Error::Auth)
        })
    }

    fn cbc_encrypt(
        &self,
        key: TokenKey,
        iv: &[u8; 16],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, Error> {
        if plaintext.len() > crate::crypto::MAX_CIPHERTEXT {
            return Err(Error::BadRequest("plaintext too large".into()));
        }
        let handle = self.handle(key)?;
        self.with_session(|s| Ok(s.encrypt(&Mechanism::AesCbcPad(*iv), handle, plaintext)?))
    }
}

impl Pkcs11Hsm {
    fn handle(&self, key: TokenKey) -> Result<ObjectHandle, Error> {
        self.loaded
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key.0)
            .copied()
            .ok_or(Error::Auth)
    }
}

//! What officers do with keys once they exist: list them (never their values), disable and
//! enable them, destroy them with a restore window, and list the zones with their ZMK check
//! values.
//!
//! A disabled or destroying key is refused by every operation that would use or move it, on
//! the socket as in-process. Another keyd process (an officer's command beside `serve`) changes
//! key states in the store; [`Service::housekeeping`], which `serve` runs every second, sees
//! the store's state version move and empties the working-key cache, so the change takes effect
//! within about a second.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use tr31::{KeyBlock, Profile};

use crate::officers::{Action, Officers};
use crate::store::{KeyState, ListQuery, Listed};
use crate::{Error, Service};

/// One key as `keyd keys` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyView {
    /// Its id.
    pub key_id: String,
    /// Its device (device keys) or the operator's label (imported keys).
    pub label: String,
    /// `identity`, `tmk`, `kek`, `msk`, `tpk`, `tdk`, `mac` or `imported`.
    pub kind: String,
    /// TR-31 key usage of the stored block (`K0`, `M7`, …).
    pub usage: String,
    /// TR-31 algorithm (`A` AES, `H` HMAC, …).
    pub algorithm: String,
    /// TR-31 mode of use.
    pub mode: String,
    /// TR-31 exportability.
    pub exportability: String,
    /// Check value, upper-case hex.
    pub kcv: String,
    /// Unix seconds.
    pub created_at: u64,
    /// `active`, `revoked`, `disabled`, `destroying` or `destroyed`.
    pub state: String,
    /// For `destroying`: when the block is erased (Unix seconds).
    pub erase_at: Option<u64>,
}

/// One zone as `keyd zones` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ZoneView {
    /// The zone's name.
    pub zone: String,
    /// Its ZMK's algorithm: `aes` (AES-256) or `tdes` (double-length TDES).
    pub algorithm: String,
    /// Its ZMK's check value (AES-CMAC of a zero block for AES, the legacy TDES check value
    /// for TDES), upper-case hex.
    pub kcv: String,
    /// While a rotation of its ZMK is under way: the old ZMK's check value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retiring_kcv: Option<String>,
}

use crate::{kcv_hex, kcv_of_cmac, unix_now as now};

fn view(listed: Listed) -> KeyView {
    // The header of a stored block is clear text: reading it needs no key.
    let header = KeyBlock::parse(&listed.block, Profile::Strict)
        .ok()
        .map(KeyBlock::into_header);
    let field = |f: &dyn Fn(&tr31::Header) -> String| header.as_ref().map(f).unwrap_or_default();
    let state = match listed.state {
        KeyState::Active if listed.revoked => "revoked",
        other => other.name(),
    };
    KeyView {
        kind: listed
            .kind
            .map_or_else(|| "imported".to_owned(), |k| k.name().to_owned()),
        usage: field(&|h| h.key_usage.to_string()),
        algorithm: field(&|h| h.algorithm.to_string()),
        mode: field(&|h| h.mode_of_use.to_string()),
        exportability: field(&|h| h.exportability.to_string()),
        kcv: kcv_hex(listed.kcv),
        created_at: listed.created_at,
        state: state.to_owned(),
        erase_at: match listed.state {
            KeyState::Destroying { after } => Some(after),
            _ => None,
        },
        key_id: listed.key_id,
        label: listed.label,
    }
}

/// Keys of one type by age, for assessors: how many of each are within which crypto-period.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeriodRow {
    /// The key type: a device key's kind (`tmk`, `kek`, `msk`, `tpk`, `tdk`, `mac`,
    /// `identity`), or a partner key's TR-31 usage (`P0` ZPK, `M3` ZAK, `V2` PVK...).
    pub key_type: String,
    /// Keys made less than 30 days ago.
    pub under_30_days: u64,
    /// 30 to 90 days.
    pub under_90_days: u64,
    /// 90 days to a year.
    pub under_1_year: u64,
    /// A year or more.
    pub over_1_year: u64,
    /// When the oldest was made (Unix seconds).
    pub oldest: u64,
}

/// Days to seconds.
const DAY: u64 = 86_400;

impl Service {
    /// The crypto-period report: every key still in use (active or disabled; not destroyed or
    /// being destroyed, not revoked) counted by type and age, oldest first within each type.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn crypto_periods(&self, now: u64) -> Result<Vec<PeriodRow>, Error> {
        let mut rows: std::collections::BTreeMap<String, PeriodRow> =
            std::collections::BTreeMap::new();
        let mut after = String::new();
        loop {
            let page = self.store.list_keys(&ListQuery {
                after: &after,
                limit: 10_000,
                ..ListQuery::default()
            })?;
            for listed in &page {
                let in_use = !listed.revoked
                    && matches!(listed.state, KeyState::Active | KeyState::Disabled);
                if !in_use {
                    continue;
                }
                let key_type = match listed.kind {
                    Some(kind) => kind.name().to_owned(),
                    None => KeyBlock::parse(&listed.block, Profile::Strict)
                        .map(|b| b.into_header().key_usage.to_string())
                        .unwrap_or_else(|_| "imported".to_owned()),
                };
                let row = rows.entry(key_type.clone()).or_insert_with(|| PeriodRow {
                    key_type,
                    under_30_days: 0,
                    under_90_days: 0,
                    under_1_year: 0,
                    over_1_year: 0,
                    oldest: listed.created_at,
                });
                let age = now.saturating_sub(listed.created_at);
                match age {
                    a if a < 30 * DAY => row.under_30_days += 1,
                    a if a < 90 * DAY => row.under_90_days += 1,
                    a if a < 365 * DAY => row.under_1_year += 1,
                    _ => row.over_1_year += 1,
                }
                row.oldest = row.oldest.min(listed.created_at);
            }
            match page.last() {
                Some(last) if page.len() == 10_000 => after.clone_from(&last.key_id),
                _ => break,
            }
        }
        Ok(rows.into_values().collect())
    }

    /// Officer accounts and approvals.
    pub fn officers(&self) -> &Officers {
        &self.officers
    }

    /// Keys in id order, with their TR-31 attributes and state; never their values.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for an unknown state name; [`Error::Store`].
    pub fn list_keys(&self, query: &ListQuery<'_>) -> Result<Vec<KeyView>, Error> {
        const STATES: [&str; 4] = ["active", "disabled", "destroying", "destroyed"];
        if query.state.is_some_and(|s| !STATES.contains(&s)) {
            return Err(Error::BadRequest(format!(
                "states are {}",
                STATES.join(", ")
            )));
        }
        Ok(self.store.list_keys(query)?.into_iter().map(view).collect())
    }

    /// The zones with a ZMK in the token, and each ZMK's algorithm and check value (computed
    /// in the token).
    /// Zones formed through another keyd node on a shared store are loaded into the token first.
    ///
    /// # Errors
    /// [`Error::Hsm`]; [`Error::Store`].
    pub fn zone_list(&self) -> Result<Vec<ZoneView>, Error> {
        let mut zones = self.store.zone_names()?;
        for zone in self.hsm.zones() {
            let zone = zone.split('@').next().unwrap_or(&zone).to_owned();
            if !zones.contains(&zone) {
                zones.push(zone);
            }
        }
        zones.sort();
        zones
            .into_iter()
            .map(|zone| {
                let zmk = self.zmk(&zone)?;
                Ok(ZoneView {
                    algorithm: zmk.algorithm.name().to_owned(),
                    kcv: kcv_hex(self.hsm.zmk_kcv(&zmk.zone)?),
                    retiring_kcv: self.retiring_zmk(&zone)?.map(kcv_hex),
                    zone,
                })
            })
            .collect()
    }

    /// Whether the token holds a ZMK for the zone.
    pub fn has_zone(&self, zone: &str) -> bool {
        self.hsm
            .zones()
            .iter()
            .any(|z| z.split('@').next() == Some(zone))
    }

    /// The current LMK's check value (computed in the token when it holds the LMK; after a
    /// rotation, the one the store names current).
    ///
    /// # Errors
    /// [`Error::Hsm`], [`Error::Store`].
    pub fn lmk_kcv(&self) -> Result<String, Error> {
        if self.lmk_states().is_empty() {
            let mac = self.hsm.lmk_cmac(&[0u8; 16])?;
            return Ok(kcv_hex(kcv_of_cmac(&mac)));
        }
        Ok(kcv_hex(self.current_lmk()?))
    }

    /// Disables an active key: every use and export of it is refused until it is enabled.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] for a key not active, [`Error::Store`].
    pub fn disable_key(&self, key_id: &str) -> Result<(), Error> {
        self.store
            .change_key_state(key_id, &["active"], KeyState::Disabled)?;
        self.forget_key(key_id);
        Ok(())
    }

    /// Enables a disabled key.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] for a key not disabled, [`Error::Store`].
    pub fn enable_key(&self, key_id: &str) -> Result<(), Error> {
        self.store
            .change_key_state(key_id, &["disabled"], KeyState::Active)
    }

    /// Destroys a key once two officers approved it: refused at once, erased when the
    /// restore window ends. Returns when.
    ///
    /// # Errors
    /// [`Error::DualControl`]; [`Error::NotFound`]; [`Error::Conflict`] for a key already
    /// being destroyed; [`Error::Store`].
    pub fn destroy_key(&self, key_id: &str) -> Result<u64, Error> {
        let exists = if key_id.starts_with("imp-") {
            self.store.imported(key_id)?.is_some()
        } else {
            self.store.key(key_id)?.is_some()
        };
        if !exists {
            return Err(Error::NotFound("key"));
        }
        let state = self.store.key_state(key_id)?;
        if !matches!(state, KeyState::Active | KeyState::Disabled) {
            return Err(Error::Conflict(state.refusal()));
        }
        // Checked last, so approvals are used up only by a destruction that happens.
        self.officers.require(Action::Destroy, key_id)?;
        let after = now().saturating_add(self.officers.policy().restore_window_secs);
        self.store.change_key_state(
            key_id,
            &["active", "disabled"],
            KeyState::Destroying { after },
        )?;
        self.forget_key(key_id);
        Ok(after)
    }

    /// Takes back a destruction within its restore window. The key comes back disabled: an
    /// officer enables it deliberately.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`] for a key not being destroyed,
    /// [`Error::Store`].
    pub fn restore_key(&self, key_id: &str) -> Result<(), Error> {
        self.store
            .change_key_state(key_id, &["destroying"], KeyState::Disabled)
    }

    /// Erases keys whose restore window has ended, and empties the working-key cache if
    /// another process or keyd node changed key states, revoked or rotated keys, or formed a
    /// zone; also when the store cannot be read (fail closed). Returns the erased key ids.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn housekeeping(&self) -> Result<Vec<String>, Error> {
        // The cache first: a failing purge must not keep a disabled key usable.
        let version = match self.store.state_version() {
            Ok(version) => version,
            Err(e) => {
                // Fail closed: a node that cannot read the store cannot learn of a revocation
                // made elsewhere, so it stops using what it cached (keys then load from the
                // store again, and are refused while it is unreachable).
                self.forget_all();
                return Err(e);
            }
        };
        let seen = self.seen_version.load(Ordering::Acquire);
        if version != seen {
            // An LMK rotation's steps move the version: seal new blocks under the right LMK.
            self.reload_lmks()?;
            let changes = self
                .store
                .changes_since(seen)
                .inspect_err(|_| self.forget_all())?;
            match changes {
                // Only some devices' or keys' entries are stale.
                Some((last, changes))
                    if !changes.is_empty() && !changes.contains(&crate::Change::All) =>
                {
                    self.forget_changed(&changes);
                    self.seen_version.store(last, Ordering::Release);
                }
                // Anything may have changed, a zone may be new, or the store no longer says
                // what changed (this node was too far behind, or the store was restored).
                Some((last, changes)) if !changes.is_empty() => {
                    self.forget_all();
                    // The token first: a failed look is tried again at the next poll.
                    self.hsm.refresh_zones()?;
                    self.seen_version.store(last, Ordering::Release);
                    self.drop_retired_zmks()?;
                }
                _ => {
                    self.forget_all();
                    self.hsm.refresh_zones()?;
                    self.seen_version.store(version, Ordering::Release);
                    self.drop_retired_zmks()?;
                }
            }
        }
        let erased = self.store.purge_destroyed(now())?;
        if !erased.is_empty() {
            self.seen_version
                .store(self.store.state_version()?, Ordering::Release);
            self.forget_all();
        }
        Ok(erased)
    }

    /// Empties the working-key cache (tests: the next use loads from the store).
    #[cfg(test)]
    pub(crate) fn forget_all_for_tests(&self) {
        self.forget_all();
    }

    /// Empties the working-key cache; keys being loaded concurrently are not added to it.
    fn forget_all(&self) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let mut partners = self
            .partners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.cache_generation.fetch_add(1, Ordering::AcqRel);
        cache.clear();
        partners.clear();
        self.zmk_slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Empties the cache entries the changes made stale: every key of a named device, each
    /// named key; keys being loaded concurrently are not added to the cache.
    fn forget_changed(&self, changes: &[crate::Change]) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let mut partners = self
            .partners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.cache_generation.fetch_add(1, Ordering::AcqRel);
        for change in changes {
            match change {
                crate::Change::Device(device) => cache.retain(|_, k| k.device_id != *device),
                crate::Change::Key(key) => {
                    cache.remove(key);
                    partners.remove(key);
                }
                crate::Change::All => {
                    cache.clear();
                    partners.clear();
                }
            }
        }
    }

    /// Tells every running keyd that root keys or key states changed (a command formed a
    /// ZMK): they empty their caches and look for new zones at their next housekeeping.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn announce_change(&self) -> Result<(), Error> {
        self.store.bump_state_version()
    }

    fn forget_key(&self, key_id: &str) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let mut partners = self
            .partners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.cache_generation.fetch_add(1, Ordering::AcqRel);
        cache.remove(key_id);
        partners.remove(key_id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyd_proto::Secret;
    use keyd_proto::message as m;

    use super::*;
    use crate::officers::{MIN_ITERATIONS, Policy};
    use crate::{Hsm, MemoryStore, Placement, SoftwareHsm};

    /// A service with dual control on, zone z1 formed with two officers' approvals.
    fn service(restore_window_secs: u64) -> Service {
        let hsm = SoftwareHsm::new();
        hsm.create_lmk().unwrap();
        let s = Service::new(
            Arc::new(hsm),
            Arc::new(MemoryStore::new()),
            Placement::Memory,
            3600,
            100,
        )
        .unwrap()
        .with_policy(Policy {
            kdf_iterations: MIN_ITERATIONS,
            restore_window_secs,
            ..Policy::default()
        })
        .unwrap();
        let zmk = m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&[0x5A; 32]),
        };
        let err = s.zmk_import(&zmk).unwrap_err();
        assert!(matches!(err, Error::DualControl(_)), "{err}");
        s.officers()
            .approve("alice", Action::ZmkForm, "z1")
            .unwrap();
        s.officers().approve("bob", Action::ZmkForm, "z1").unwrap();
        s.zmk_import(&zmk).unwrap();
        s
    }

    /// Device POS-00000001 and an attestation its identity key signed.
    #[allow(clippy::unwrap_used, reason = "test set-up")]
    fn device(s: &Service) -> (m::IdentityKey, m::AttestVerify) {
        let identity = s
            .device_create(&m::DeviceCreate {
                device_id: "POS-00000001".into(),
                zone: "z1".into(),
            })
            .unwrap();
        let msg = b"attest".to_vec();
        let attest = m::AttestVerify {
            device_id: "POS-00000001".into(),
            key_id: identity.key_id.clone(),
            signature: crate::crypto::hmac(identity.secret.expose(), &msg).unwrap(),
            message: msg,
        };
        (identity, attest)
    }

    #[test]
    fn disabled_and_destroyed_keys_are_refused_and_destruction_needs_two_officers() {
        let s = service(0);
        let (identity, attest) = device(&s);
        let set = s
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000001".into(),
            })
            .unwrap();
        s.attest_verify(&attest).unwrap(); // now cached
        let export = m::KeySetExport {
            device_id: "POS-00000001".into(),
            key_set_id: set.key_set_id.clone(),
        };
        let mac = set.keys.iter().find(|k| k.kind == "mac").unwrap();

        s.disable_key(&identity.key_id).unwrap();
        assert!(matches!(s.attest_verify(&attest), Err(Error::Auth)));
        s.disable_key(&mac.key_id).unwrap();
        assert!(matches!(
            s.key_set_export(&export),
            Err(Error::Policy("the key is disabled"))
        ));
        assert!(matches!(
            s.key_check(&m::KeyCheck {
                key_id: mac.key_id.clone()
            }),
            Err(Error::Auth)
        ));
        let listed = s
            .list_keys(&ListQuery {
                state: Some("disabled"),
                limit: 10,
                ..ListQuery::default()
            })
            .unwrap();
        assert_eq!(listed.len(), 2);
        let mac_view = listed.iter().find(|v| v.key_id == mac.key_id).unwrap();
        assert_eq!(
            (
                mac_view.kind.as_str(),
                mac_view.usage.as_str(),
                mac_view.algorithm.as_str(),
                mac_view.label.as_str()
            ),
            ("mac", "M7", "H", "POS-00000001")
        );
        assert_eq!(mac_view.kcv, kcv_hex(mac.kcv));
        s.enable_key(&identity.key_id).unwrap();
        s.attest_verify(&attest).unwrap();

        // Destruction: two distinct officers, then refused at once, restorable, then erased.
        let err = s.destroy_key(&mac.key_id).unwrap_err();
        assert!(err.to_string().contains("no one"), "{err}");
        s.officers()
            .approve("alice", Action::Destroy, &mac.key_id)
            .unwrap();
        s.officers()
            .approve("alice", Action::Destroy, &mac.key_id)
            .unwrap();
        assert!(matches!(
            s.destroy_key(&mac.key_id),
            Err(Error::DualControl(_))
        ));
        s.officers()
            .approve("bob", Action::Destroy, &mac.key_id)
            .unwrap();
        s.destroy_key(&mac.key_id).unwrap();
        s.restore_key(&mac.key_id).unwrap();
        assert_eq!(
            s.store.key_state(&mac.key_id).unwrap(),
            KeyState::Disabled,
            "a restored key comes back disabled"
        );
        assert!(matches!(s.destroy_key("mac-nope"), Err(Error::NotFound(_))));
        s.officers()
            .approve("alice", Action::Destroy, &mac.key_id)
            .unwrap();
        s.officers()
            .approve("bob", Action::Destroy, &mac.key_id)
            .unwrap();
        s.destroy_key(&mac.key_id).unwrap();
        // Restore window 0: the next housekeeping erases it.
        assert_eq!(s.housekeeping().unwrap(), vec![mac.key_id.clone()]);
        assert!(s.store.key(&mac.key_id).unwrap().unwrap().block.is_empty());
        assert!(matches!(
            s.restore_key(&mac.key_id),
            Err(Error::Conflict("the key is destroyed"))
        ));
        assert!(s.key_set_export(&export).is_err());
    }

    #[test]
    fn another_process_changing_a_state_empties_the_cache() {
        let s = service(3600);
        let (identity, attest) = device(&s);
        s.attest_verify(&attest).unwrap();
        // Written to the store directly, as an officer's command in another process does.
        s.store
            .change_key_state(&identity.key_id, &["active"], KeyState::Disabled)
            .unwrap();
        s.attest_verify(&attest)
            .expect("still cached until housekeeping runs");
        s.housekeeping().unwrap();
        assert!(matches!(s.attest_verify(&attest), Err(Error::Auth)));
    }

    #[test]
    fn zones_and_the_lmk_show_check_values_computed_in_the_token() {
        let s = service(3600);
        let zones = s.zone_list().unwrap();
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].kcv, kcv_hex(crate::aes_kcv(&[0x5A; 32])));
        assert_eq!(s.lmk_kcv().unwrap().len(), 6);
    }
    #[test]
    fn crypto_periods_count_keys_in_use_by_type_and_age() {
        let s = service(0);
        let _ = device(&s);
        s.key_set_create(&m::KeySetCreate {
            device_id: "POS-00000001".into(),
        })
        .unwrap();
        s.simulator_keys().unwrap();
        let now = now();
        let types = |rows: &[PeriodRow]| -> Vec<String> {
            rows.iter().map(|r| r.key_type.clone()).collect()
        };
        let today = s.crypto_periods(now).unwrap();
        for t in ["tmk", "kek", "msk", "tpk", "tdk", "mac", "P0", "V2", "M3"] {
            assert!(types(&today).iter().any(|k| k == t), "{t} in {today:?}");
        }
        assert!(
            today
                .iter()
                .all(|r| r.under_30_days > 0 && r.over_1_year == 0)
        );
        let later = s.crypto_periods(now + 100 * DAY).unwrap();
        assert!(
            later
                .iter()
                .all(|r| r.under_1_year > 0 && r.under_30_days == 0)
        );
        let much_later = s.crypto_periods(now + 400 * DAY).unwrap();
        assert!(
            much_later
                .iter()
                .all(|r| r.over_1_year > 0 && r.oldest <= now)
        );
        // `keys --older-than`: nothing was made before the epoch; everything before now + 1.
        let query = |before| ListQuery {
            limit: 1000,
            created_before: Some(before),
            ..ListQuery::default()
        };
        assert!(s.list_keys(&query(0)).unwrap().is_empty());
        let all = s.list_keys(&query(now + 1)).unwrap().len();
        assert_eq!(
            all,
            s.list_keys(&ListQuery {
                limit: 1000,
                ..ListQuery::default()
            })
            .unwrap()
            .len()
        );
        assert!(all >= 10);
    }

    /// Two nodes: two tokens holding the same LMK, one store.
    #[test]
    fn a_zone_formed_on_one_node_is_loaded_by_another_with_the_same_lmk() {
        let store = Arc::new(MemoryStore::new());
        let node = |lmk: [u8; 32]| {
            let hsm = SoftwareHsm::new();
            hsm.import_lmk(&lmk).unwrap();
            Service::new(
                Arc::new(hsm),
                Arc::clone(&store) as Arc<dyn crate::KeyStore>,
                Placement::Memory,
                3600,
                100,
            )
            .unwrap()
            .with_policy(Policy {
                kdf_iterations: MIN_ITERATIONS,
                ..Policy::default()
            })
            .unwrap()
        };
        let approve = |s: &Service, zone: &str| {
            s.officers()
                .approve("alice", Action::ZmkForm, zone)
                .unwrap();
            s.officers().approve("bob", Action::ZmkForm, zone).unwrap();
        };
        let (one, two) = (node([7; 32]), node([7; 32]));
        let zmk = m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&[0x5A; 32]),
        };
        approve(&one, "z1");
        let formed = one.zmk_import(&zmk).unwrap();
        assert!(!two.has_zone("z1"), "not in node 2's token yet");
        two.device_create(&m::DeviceCreate {
            device_id: "POS-00000001".into(),
            zone: "z1".into(),
        })
        .unwrap();
        assert!(two.has_zone("z1"), "loaded on first use");
        let set = one
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000001".into(),
            })
            .unwrap();
        let export = two
            .key_set_export(&m::KeySetExport {
                device_id: "POS-00000001".into(),
                key_set_id: set.key_set_id,
            })
            .unwrap();
        let tmk = export
            .keys
            .iter()
            .find(|k| k.wrapped_under == "zmk")
            .unwrap();
        let opened = tr31::open(
            &tmk.key_block,
            &tr31::Kbpk::new(&[0x5A; 32]).unwrap(),
            Profile::Strict,
        )
        .unwrap();
        assert_eq!(crate::aes_kcv(opened.key.expose_secret()), tmk.kcv);
        let listed = two.zone_list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].kcv, kcv_hex(formed.kcv));

        // A third node whose token was formed again (a standby) may form the zone into its
        // token with the same ZMK, not with another.
        let three = node([7; 32]);
        approve(&three, "z1");
        let other = m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&[0x5B; 32]),
        };
        let err = three.zmk_import(&other).unwrap_err();
        assert!(
            matches!(err, Error::Conflict(why) if why.contains("another ZMK")),
            "{err}"
        );
        three.zmk_import(&zmk).unwrap();
        assert!(three.has_zone("z1"));

        // A node whose LMK differs cannot open the stored ZMK, and says why.
        let stranger = node([8; 32]);
        let err = stranger
            .device_create(&m::DeviceCreate {
                device_id: "POS-00000002".into(),
                zone: "z1".into(),
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("same LMK components"), "{err}");
    }

    #[test]
    fn a_change_on_another_node_empties_only_what_it_made_stale() {
        let store = Arc::new(MemoryStore::new());
        let node = || {
            let hsm = SoftwareHsm::new();
            hsm.import_lmk(&[7; 32]).unwrap();
            Service::new(
                Arc::new(hsm),
                Arc::clone(&store) as Arc<dyn crate::KeyStore>,
                Placement::Memory,
                3600,
                100,
            )
            .unwrap()
            .with_policy(Policy {
                kdf_iterations: MIN_ITERATIONS,
                ..Policy::default()
            })
            .unwrap()
        };
        let (one, two) = (node(), node());
        one.officers()
            .approve("alice", Action::ZmkForm, "z1")
            .unwrap();
        one.officers()
            .approve("bob", Action::ZmkForm, "z1")
            .unwrap();
        one.zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&[0x5A; 32]),
        })
        .unwrap();
        let attest = |device_id: &str| {
            let identity = one
                .device_create(&m::DeviceCreate {
                    device_id: device_id.into(),
                    zone: "z1".into(),
                })
                .unwrap();
            let msg = b"attest".to_vec();
            m::AttestVerify {
                device_id: device_id.into(),
                key_id: identity.key_id,
                signature: crate::crypto::hmac(identity.secret.expose(), &msg).unwrap(),
                message: msg,
            }
        };
        let (first, second) = (attest("POS-00000001"), attest("POS-00000002"));
        one.housekeeping().unwrap();
        one.attest_verify(&first).unwrap();
        one.attest_verify(&second).unwrap();
        let cached = |id: &str| one.cache.read().unwrap().contains_key(id);
        assert!(cached(&first.key_id) && cached(&second.key_id));

        // Node 2 revokes device 1's identity: node 1 drops device 1's keys only.
        two.identity_revoke(&m::IdentityRevoke {
            device_id: "POS-00000001".into(),
        })
        .unwrap();
        one.housekeeping().unwrap();
        assert!(!cached(&first.key_id) && cached(&second.key_id));
        assert!(matches!(one.attest_verify(&first), Err(Error::Auth)));
        one.attest_verify(&second).unwrap();

        // Node 2 disables device 2's identity key: that key goes.
        two.disable_key(&second.key_id).unwrap();
        one.housekeeping().unwrap();
        assert!(!cached(&second.key_id));
        assert!(matches!(one.attest_verify(&second), Err(Error::Auth)));

        // An announcement (a new zone) empties everything.
        two.enable_key(&second.key_id).unwrap();
        one.housekeeping().unwrap();
        one.attest_verify(&second).unwrap();
        assert!(cached(&second.key_id));
        two.announce_change().unwrap();
        one.housekeeping().unwrap();
        assert!(!cached(&second.key_id));
    }

    #[test]
    fn postgres_a_node_cut_off_from_the_store_stops_using_cached_keys() {
        let Some(mut cluster) =
            pgcluster::Cluster::for_tests("postgres_a_node_cut_off_from_the_store").unwrap()
        else {
            return;
        };
        cluster.create_database("keys").unwrap();
        let store = crate::PgKeyStore::open(&crate::PgOptions {
            url: cluster.url("keys"),
            password: Some(zeroize::Zeroizing::new(cluster.password().to_owned())),
            ca_file: None,
            pool_size: 2,
        })
        .unwrap();
        let hsm = SoftwareHsm::new();
        hsm.create_lmk().unwrap();
        let s = Service::new(Arc::new(hsm), Arc::new(store), Placement::Memory, 3600, 100)
            .unwrap()
            .with_policy(Policy {
                kdf_iterations: MIN_ITERATIONS,
                ..Policy::default()
            })
            .unwrap();
        s.officers()
            .approve("alice", Action::ZmkForm, "z1")
            .unwrap();
        s.officers().approve("bob", Action::ZmkForm, "z1").unwrap();
        s.zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&[0x5A; 32]),
        })
        .unwrap();
        let (_, attest) = device(&s);
        s.attest_verify(&attest).unwrap(); // now cached
        s.housekeeping().unwrap();
        s.attest_verify(&attest).unwrap();

        cluster.stop().unwrap();
        assert!(matches!(s.housekeeping(), Err(Error::Store(_))));
        assert!(
            matches!(s.attest_verify(&attest), Err(Error::Store(_))),
            "the cached key is gone with the store"
        );

        // Back: keys load again (a pooled connection the restart closed may fail once).
        cluster.start_server().unwrap();
        let started = std::time::Instant::now();
        while s.housekeeping().is_err() || s.attest_verify(&attest).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the store never came back"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

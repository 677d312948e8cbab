//! A zone's ZMK rotation: a new ZMK (formed from components or generated, dual control)
//! replaces the zone's current one for every key-set delivery at once; the old one is kept,
//! sealed in the store and in the tokens, until every device of the zone has had its TMK
//! delivered under the new one, or the officers retire it.
//!
//! **Decision: keyd delivers under the new ZMK by itself.** A device's next key fetch
//! (`KeySetExport`) gets its TMK under the zone's newest ZMK, whatever the API knows, and keyd
//! records which ZMK each device last had its TMK under (`device_zmk`). The devices that have
//! not fetched since the rotation are listed by `keyd zmk-devices --zone Z`; an operator has
//! the API schedule a key fetch for them (its `rotate-keys` flag, which the backoffice sets per
//! device) so that the rotation ends without waiting for the devices' own schedule. keyd needs
//! no new protocol operation for it and the API no new state. When the last device of the zone
//! has moved, the delivery that moved it retires the old ZMK.
//!
//! In the token a zone's ZMK keeps the zone's name when it is the one the token first held for
//! the zone; a rotation's ZMK in a token that holds the old one is `<zone>@<KCV>`. Which one is
//! current is always decided by the check value the store names, never by the name.

use std::sync::PoisonError;

use keyd_proto::message as m;

use super::{Service, seal_random};
use crate::hsm::kcv_from;
use crate::keys::{self, KeyKind};
use crate::officers::Action;
use crate::store::ZoneRecord;
use crate::{Error, kcv_hex};

/// Where a zone's current ZMK is in this node's token.
#[derive(Debug, Clone)]
pub(crate) struct ZmkSlot {
    /// Its name in the token.
    pub(crate) name: String,
    /// Its check value (`None` for a zone known only to this token, formed before the store
    /// kept zones).
    pub(crate) kcv: Option<[u8; 3]>,
    /// A rotation of the zone is under way (its old ZMK not retired yet).
    pub(crate) rotating: bool,
}

impl Service {
    /// The zone's current ZMK in this token: looked up once (then cached until the next change
    /// of the store's state version), loaded from the store if this token lacks it.
    pub(crate) fn zmk_slot(&self, zone: &str) -> Result<ZmkSlot, Error> {
        if let Some(slot) = self
            .zmk_slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(zone)
        {
            return Ok(slot.clone());
        }
        let slot = self.find_zmk(zone)?;
        self.zmk_slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(zone.to_owned(), slot.clone());
        Ok(slot)
    }

    fn find_zmk(&self, zone: &str) -> Result<ZmkSlot, Error> {
        let has = |name: &str| self.hsm.zones().iter().any(|z| z == name);
        let Some(record) = self.store.zone(zone)? else {
            if !has(zone) {
                // An officer's command on this node may have put it in the token meanwhile.
                self.hsm.refresh_zones()?;
                if !has(zone) {
                    return Err(Error::NotFound("zone"));
                }
            }
            return Ok(ZmkSlot {
                name: zone.to_owned(),
                kcv: None,
                rotating: false,
            });
        };
        let rotating = self.store.retiring_zmk(zone)?.is_some();
        let rotated_name = format!("{zone}@{}", kcv_hex(record.kcv));
        let pick = || -> Result<Option<String>, Error> {
            if has(zone) && kcv_from(&self.hsm.zmk_cmac(zone, &[0; 16])?) == record.kcv {
                return Ok(Some(zone.to_owned()));
            }
            Ok(has(&rotated_name).then(|| rotated_name.clone()))
        };
        let mut name = pick()?;
        if name.is_none() {
            self.hsm.refresh_zones()?;
            name = pick()?;
        }
        let name = match name {
            Some(name) => name,
            None => {
                let name = if has(zone) {
                    rotated_name
                } else {
                    zone.to_owned()
                };
                self.load_zone_as(&record, &name)?;
                name
            }
        };
        Ok(ZmkSlot {
            name,
            kcv: Some(record.kcv),
            rotating,
        })
    }

    /// After a key-set delivery to `device_id` of `zone`: while the zone's ZMK is being
    /// rotated, records that the device has its TMK under the new ZMK, and retires the old one
    /// when no device of the zone is left under it.
    pub(crate) fn delivered(&self, device_id: &str, zone: &str) -> Result<(), Error> {
        let slot = self.zmk_slot(zone)?;
        let (true, Some(kcv)) = (slot.rotating, slot.kcv) else {
            return Ok(());
        };
        self.store.delivered_under(device_id, kcv)?;
        if self.store.devices_not_under(zone, kcv, "", 1)?.is_empty()
            && self.store.retire_zmk(zone)?
        {
            tracing::info!(
                zone,
                "every device of the zone has its TMK under the new ZMK: the old ZMK is retired"
            );
            self.zmk_slots
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(zone);
            self.drop_retired_zmks()?;
        }
        Ok(())
    }

    /// Rotates a zone's ZMK to `req.key` (formed from components or generated by the officers'
    /// command), under two officers' approval of `zmk-rotate <zone>`: sealed under the LMK into
    /// the store and loaded into this token; every key-set delivery uses it from now on (on
    /// every node within `state_poll_ms`). The old ZMK is kept until the zone's devices have
    /// moved or the officers retire it.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a zone not in the key store; [`Error::Conflict`] for the same
    /// ZMK again or a rotation of the zone under way; [`Error::DualControl`];
    /// [`Error::BadRequest`]; [`Error::Hsm`]; [`Error::Store`].
    pub fn zmk_rotate(&self, req: &m::ZmkImport) -> Result<m::ZoneInfo, Error> {
        if req.key.expose().len() != 32 {
            return Err(Error::BadRequest("a ZMK is 32 bytes (AES-256)".into()));
        }
        let current = self
            .store
            .zone(&req.zone)?
            .ok_or(Error::NotFound("zone in the key store"))?;
        if self.store.retiring_zmk(&req.zone)?.is_some() {
            return Err(Error::Conflict(
                "a rotation of the zone's ZMK is under way: retire its old ZMK first",
            ));
        }
        let kcv = keys::kcv(KeyKind::Tmk, req.key.expose());
        if kcv == current.kcv {
            return Err(Error::Conflict("that is the zone's current ZMK"));
        }
        // The current one into this token first, under its own name, so that the new one
        // never takes the zone's plain name from it here.
        self.zmk_slot(&req.zone)?;
        self.officers.require(Action::ZmkRotate, &req.zone)?;
        let mut header = keys::zmk_storage_header(&req.zone)?;
        let (lmk, kp) = self.sealing_lmk()?;
        super::lmk::stamp(&mut header, kp)?;
        let key = tr31::Key::new(req.key.expose())?;
        self.store.rotate_zmk(&ZoneRecord {
            zone: req.zone.clone(),
            kcv,
            block: seal_random(&lmk, &header, &key)?,
            created_at: crate::unix_now(),
        })?;
        self.zmk_slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&req.zone);
        self.zmk_slot(&req.zone)?;
        Ok(m::ZoneInfo {
            zone: req.zone.clone(),
            kcv,
        })
    }

    /// The devices of `zone` whose TMK was not delivered under its current ZMK yet (all of
    /// them, in id order): while a rotation is under way, those still to move.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    pub fn zmk_pending_devices(&self, zone: &str) -> Result<Vec<String>, Error> {
        let current = self
            .store
            .zone(zone)?
            .ok_or(Error::NotFound("zone in the key store"))?;
        let mut out: Vec<String> = Vec::new();
        loop {
            let after = out.last().map_or("", String::as_str).to_owned();
            let page = self
                .store
                .devices_not_under(zone, current.kcv, &after, 1000)?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// The zone's old ZMK while its rotation is under way: its check value.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn retiring_zmk(&self, zone: &str) -> Result<Option<[u8; 3]>, Error> {
        Ok(self.store.retiring_zmk(zone)?.map(|z| z.kcv))
    }

    /// Retires a zone's old ZMK before every device has moved, under two officers' approval of
    /// `zmk-retire <zone>`: gone from the store and from this token (and from every other
    /// node's token at its next housekeeping). Devices that did not fetch their keys since the
    /// rotation get them under the new ZMK all the same.
    ///
    /// # Errors
    /// [`Error::NotFound`] without a rotation under way; [`Error::DualControl`];
    /// [`Error::Store`]; [`Error::Hsm`].
    pub fn zmk_retire(&self, zone: &str) -> Result<[u8; 3], Error> {
        let old = self
            .store
            .retiring_zmk(zone)?
            .ok_or(Error::NotFound("ZMK rotation under way in that zone"))?;
        self.officers.require(Action::ZmkRetire, zone)?;
        self.store.retire_zmk(zone)?;
        self.zmk_slots
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(zone);
        self.drop_retired_zmks()?;
        Ok(old.kcv)
    }

    /// Destroys in this token every ZMK the store says was retired (run after a retirement,
    /// and by `serve` when the store says something changed). A ZMK the store does not name
    /// retired is left alone, whatever it is.
    ///
    /// # Errors
    /// [`Error::Store`]; [`Error::Hsm`].
    pub(crate) fn drop_retired_zmks(&self) -> Result<(), Error> {
        for name in self.hsm.zones() {
            let zone = name.split('@').next().unwrap_or(&name);
            let retired = self.store.retired_zmks(zone)?;
            if retired.is_empty() {
                continue;
            }
            let kcv = kcv_from(&self.hsm.zmk_cmac(&name, &[0; 16])?);
            let current = self.store.zone(zone)?.map(|z| z.kcv);
            let retiring = self.store.retiring_zmk(zone)?.map(|z| z.kcv);
            if retired.contains(&kcv) && current != Some(kcv) && retiring != Some(kcv) {
                self.hsm.destroy_zmk(&name)?;
                tracing::info!(zone, zmk_kcv = %kcv_hex(kcv), "retired ZMK destroyed in this token");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyd_proto::Secret;

    use super::*;
    use crate::Placement;
    use crate::hsm::{Hsm, SoftwareHsm};
    use crate::officers::Policy;
    use crate::service::tests::device;
    use crate::store::{KeyStore, MemoryStore};

    const OLD: [u8; 32] = [0x5A; 32];
    const NEW: [u8; 32] = [0x6B; 32];

    fn node(store: &Arc<MemoryStore>) -> Service {
        let hsm = SoftwareHsm::new();
        hsm.import_lmk(&[7; 32]).unwrap();
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

    /// Delivers the device's key set; returns the TMK block (under the zone's ZMK).
    fn fetch(s: &Service, id: &str, set: &str) -> m::KeySetExportResponse {
        s.key_set_export(&m::KeySetExport {
            device_id: id.into(),
            key_set_id: set.into(),
        })
        .unwrap()
    }

    fn opens_under(export: &m::KeySetExportResponse, zmk: &[u8; 32]) -> bool {
        let tmk = export
            .keys
            .iter()
            .find(|k| k.wrapped_under == "zmk")
            .unwrap();
        tr31::open(
            &tmk.key_block,
            &tr31::Kbpk::new(zmk).unwrap(),
            tr31::Profile::Strict,
        )
        .is_ok()
    }

    fn zmk_kcvs(s: &Service) -> Vec<[u8; 3]> {
        s.hsm()
            .zones()
            .iter()
            .map(|n| kcv_from(&s.hsm().zmk_cmac(n, &[0; 16]).unwrap()))
            .collect()
    }

    #[test]
    fn a_zone_rotates_its_zmk_device_by_device_and_retires_the_old_one() {
        let store = Arc::new(MemoryStore::new());
        let one = node(&store);
        one.zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&OLD),
        })
        .unwrap();
        let two = node(&store);
        let sets: Vec<(String, String)> = (1..=3)
            .map(|n| {
                let id = format!("POS-0000000{n}");
                device(&one, &id);
                let set = one
                    .key_set_create(&m::KeySetCreate {
                        device_id: id.clone(),
                    })
                    .unwrap()
                    .key_set_id;
                assert!(opens_under(&fetch(&one, &id, &set), &OLD));
                (id, set)
            })
            .collect();
        let (old_kcv, new_kcv) = (crate::aes_kcv(&OLD), crate::aes_kcv(&NEW));
        // Node two has the old ZMK in its token too (it delivered under it).
        assert!(opens_under(&fetch(&two, &sets[0].0, &sets[0].1), &OLD));

        let rotate = |s: &Service, key: &[u8; 32]| {
            s.zmk_rotate(&m::ZmkImport {
                zone: "z1".into(),
                key: Secret::new(key),
            })
        };
        assert!(matches!(rotate(&one, &OLD), Err(Error::Conflict(_))));
        assert_eq!(rotate(&one, &NEW).unwrap().kcv, new_kcv);
        assert!(
            matches!(rotate(&one, &[0x7C; 32]), Err(Error::Conflict(_))),
            "one at a time"
        );
        assert_eq!(one.retiring_zmk("z1").unwrap(), Some(old_kcv));
        assert_eq!(one.zmk_pending_devices("z1").unwrap().len(), 3);
        let listed = one.zone_list().unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0].kcv, kcv_hex(new_kcv));
        assert_eq!(listed[0].retiring_kcv, Some(kcv_hex(old_kcv)));

        // Every delivery from now on is under the new ZMK, on both nodes (node two after its
        // housekeeping read the change).
        assert!(opens_under(&fetch(&one, &sets[0].0, &sets[0].1), &NEW));
        two.housekeeping().unwrap();
        let export = fetch(&two, &sets[1].0, &sets[1].1);
        assert!(opens_under(&export, &NEW) && !opens_under(&export, &OLD));
        assert_eq!(one.zmk_pending_devices("z1").unwrap(), ["POS-00000003"]);
        assert!(
            zmk_kcvs(&one).contains(&old_kcv),
            "kept while a device is left"
        );
        // The last device moves: the old ZMK is retired, and gone from both tokens.
        fetch(&one, &sets[2].0, &sets[2].1);
        assert_eq!(one.retiring_zmk("z1").unwrap(), None);
        assert_eq!(zmk_kcvs(&one), [new_kcv]);
        two.housekeeping().unwrap();
        assert_eq!(zmk_kcvs(&two), [new_kcv]);

        // Another rotation, ended early by the officers (dual control on): the devices that
        // did not fetch get the new ZMK all the same.
        let strict = |s: Service| {
            s.with_policy(Policy {
                kdf_iterations: crate::officers::MIN_ITERATIONS,
                ..Policy::default()
            })
            .unwrap()
        };
        let one = strict(one);
        assert!(matches!(rotate(&one, &OLD), Err(Error::DualControl(_))));
        one.officers()
            .approve("alice", Action::ZmkRotate, "z1")
            .unwrap();
        one.officers()
            .approve("bob", Action::ZmkRotate, "z1")
            .unwrap();
        rotate(&one, &OLD).unwrap();
        assert!(matches!(one.zmk_retire("z1"), Err(Error::DualControl(_))));
        one.officers()
            .approve("alice", Action::ZmkRetire, "z1")
            .unwrap();
        one.officers()
            .approve("bob", Action::ZmkRetire, "z1")
            .unwrap();
        assert_eq!(one.zmk_retire("z1").unwrap(), new_kcv);
        assert_eq!(zmk_kcvs(&one), [old_kcv]);
        assert!(opens_under(&fetch(&one, &sets[2].0, &sets[2].1), &OLD));
        assert!(matches!(one.zmk_retire("z1"), Err(Error::NotFound(_))));
        two.housekeeping().unwrap();
        assert!(opens_under(&fetch(&two, &sets[0].0, &sets[0].1), &OLD));
        assert_eq!(zmk_kcvs(&two), [old_kcv]);
    }
}

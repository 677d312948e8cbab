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
//!
//! A zone's ZMK is AES-256 or double-length TDES (a partner that still exchanges keys under
//! TDES, TR-31 version B). A rotation keeps the zone's algorithm: a TDES zone gets a new TDES
//! ZMK, an AES zone a new AES one; the other is refused. Devices belong to AES zones only.

use std::sync::PoisonError;

use keyd_proto::message as m;

use super::{Service, seal_random};
use crate::hsm::ZmkAlgorithm;
use crate::keys;
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
    /// The ZMK's cipher, as the token's object says.
    pub(crate) algorithm: ZmkAlgorithm,
}

/// The algorithm a zone's sealed ZMK records in its header (read without opening it; the
/// loader checks it again under the block's MAC).
///
/// # Errors
/// [`Error::Store`] for a block that does not parse or names another algorithm.
pub(crate) fn stored_algorithm(record: &ZoneRecord) -> Result<ZmkAlgorithm, Error> {
    let header = tr31::KeyBlock::parse(&record.block, tr31::Profile::Strict)
        .map_err(|e| Error::Store(format!("the stored ZMK of zone {}: {e}", record.zone)))?
        .into_header();
    [ZmkAlgorithm::Aes, ZmkAlgorithm::Tdes]
        .into_iter()
        .find(|a| a.tr31_algorithm() == header.algorithm)
        .ok_or_else(|| {
            Error::Store(format!(
                "the stored ZMK of zone {} is neither AES nor TDES",
                record.zone
            ))
        })
}

/// Whether a key may be sent under a zone's ZMK. Under an AES ZMK (AES-256) anything the
/// strict TR-31 rules allow; under a double-length TDES ZMK only DES and TDES keys of at most
/// 16 bytes: an AES or HMAC key, or a triple-length TDES key, would be protected by a key
/// weaker than itself, which keyd refuses outright (whatever a `WP` block might admit).
///
/// # Errors
/// [`Error::Policy`] naming the rule.
pub(crate) fn fits_under(
    zone: &str,
    algorithm: ZmkAlgorithm,
    header: &tr31::Header,
    key_len: usize,
) -> Result<(), Error> {
    if algorithm == ZmkAlgorithm::Aes {
        return Ok(());
    }
    let tdes = matches!(
        header.algorithm,
        tr31::Algorithm::TDES | tr31::Algorithm::DES
    );
    if tdes && key_len <= ZmkAlgorithm::Tdes.key_len() {
        return Ok(());
    }
    tracing::info!(zone, algorithm = %header.algorithm, key_len, "refused: key stronger than the zone's TDES ZMK");
    Err(Error::Policy(if tdes {
        "a triple-length TDES key cannot go under a double-length TDES ZMK: the ZMK would be \
         weaker than the key"
    } else {
        "only DES and TDES keys go under a TDES ZMK (version B): an AES or HMAC key would be \
         protected by a weaker key than itself; use an AES zone"
    }))
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
                algorithm: self.hsm.zmk_algorithm(zone)?,
            });
        };
        let rotating = self.store.retiring_zmk(zone)?.is_some();
        let rotated_name = format!("{zone}@{}", kcv_hex(record.kcv));
        let pick = || -> Result<Option<String>, Error> {
            if has(zone) && self.hsm.zmk_kcv(zone)? == record.kcv {
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
        // The token's object and the store's record agree on the algorithm, or something is
        // badly wrong (a hand-made object under keyd's label).
        let algorithm = self.hsm.zmk_algorithm(&name)?;
        let stored = stored_algorithm(&record)?;
        if algorithm != stored {
            return Err(Error::Store(format!(
                "zone {zone}'s ZMK is {} in the token but {} in the key store",
                algorithm.describe(),
                stored.describe()
            )));
        }
        Ok(ZmkSlot {
            name,
            kcv: Some(record.kcv),
            rotating,
            algorithm,
        })
    }

    /// A zone's ZMK algorithm (the zone is loaded into the token if it is not there yet).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown zone; [`Error::Hsm`]; [`Error::Store`].
    pub fn zone_algorithm(&self, zone: &str) -> Result<ZmkAlgorithm, Error> {
        Ok(self.zmk_slot(zone)?.algorithm)
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
        let (algorithm, new_key) = keys::zmk_key(req.key.expose())?;
        let current = self
            .store
            .zone(&req.zone)?
            .ok_or(Error::NotFound("zone in the key store"))?;
        let zone_algorithm = stored_algorithm(&current)?;
        if algorithm != zone_algorithm {
            return Err(Error::BadRequest(format!(
                "zone {}'s ZMK is {}: a rotation keeps the zone's algorithm, so its new ZMK is {} \
                 too ({} bytes)",
                req.zone,
                zone_algorithm.describe(),
                zone_algorithm.describe(),
                zone_algorithm.key_len()
            )));
        }
        if self.store.retiring_zmk(&req.zone)?.is_some() {
            return Err(Error::Conflict(
                "a rotation of the zone's ZMK is under way: retire its old ZMK first",
            ));
        }
        let kcv = algorithm.kcv(&new_key);
        if kcv == current.kcv {
            return Err(Error::Conflict("that is the zone's current ZMK"));
        }
        // The current one into this token first, under its own name, so that the new one
        // never takes the zone's plain name from it here.
        self.zmk_slot(&req.zone)?;
        self.officers.require(Action::ZmkRotate, &req.zone)?;
        let mut header = keys::zmk_storage_header(&req.zone, algorithm)?;
        let (lmk, kp) = self.sealing_lmk()?;
        super::lmk::stamp(&mut header, kp)?;
        let key = tr31::Key::new(&new_key)?;
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
            let kcv = self.hsm.zmk_kcv(&name)?;
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
    use crate::officers::Policy;
    use crate::service::tests::{device, node};
    use crate::store::MemoryStore;

    const OLD: [u8; 32] = [0x5A; 32];
    const NEW: [u8; 32] = [0x6B; 32];

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
            .map(|n| s.hsm().zmk_kcv(n).unwrap())
            .collect()
    }

    #[test]
    fn a_zone_rotates_its_zmk_device_by_device_and_retires_the_old_one() {
        let store = Arc::new(MemoryStore::new());
        let one = node(&store, [7; 32]);
        one.zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&OLD),
        })
        .unwrap();
        let two = node(&store, [7; 32]);
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

#[cfg(test)]
mod tdes_tests {
    use std::sync::Arc;

    use keyd_proto::Secret;

    use super::*;
    use crate::service::tests::node;
    use crate::store::MemoryStore;

    /// A double-length TDES ZMK as two odd-parity components combine to it: every byte of
    /// even parity (note section 7, trap 7).
    const TDES_ZMK: &str = "2E24C6E4CCED8D630FFADD1DCFDBBD87";
    const AES_ZMK: [u8; 32] = [0x5A; 32];

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    fn form(s: &Service, zone: &str, key: &[u8]) -> Result<m::ZoneInfo, Error> {
        s.zmk_import(&m::ZmkImport {
            zone: zone.into(),
            key: Secret::new(key),
        })
    }

    fn seal(kbpk: &[u8], header: &str, key: &[u8]) -> String {
        tr31::seal(
            &tr31::Kbpk::new(kbpk).unwrap(),
            &tr31::Header::parse(header, tr31::Profile::Strict).unwrap(),
            &tr31::Key::new(key).unwrap(),
            &tr31::SealOptions::default(),
            tr31::Padding::Random(&mut tr31::OsRandom),
        )
        .unwrap()
    }

    fn import(s: &Service, zone: &str, block: &str) -> Result<m::ImportedKey, Error> {
        s.tr31_import(&m::Tr31Import {
            zone: zone.into(),
            key_block: block.into(),
            label: "partner key".into(),
        })
    }

    fn export(s: &Service, key_id: &str, zone: &str) -> Result<m::KeyBlockOut, Error> {
        s.tr31_export(&m::Tr31Export {
            key_id: key_id.into(),
            zone: zone.into(),
        })
    }

    #[test]
    fn a_tdes_zone_exchanges_version_b_blocks_and_refuses_what_does_not_fit() {
        let store = Arc::new(MemoryStore::new());
        let one = node(&store, [7; 32]);
        let zmk = unhex(TDES_ZMK);
        let info = form(&one, "p1", &zmk).unwrap();
        let legacy = kcv_hex(tr31::kcv::legacy(&zmk).unwrap());
        assert_eq!(kcv_hex(info.kcv), legacy, "the legacy TDES KCV");
        form(&one, "z1", &AES_ZMK).unwrap();
        assert_eq!(one.zone_algorithm("p1").unwrap(), ZmkAlgorithm::Tdes);
        let listed = one.zone_list().unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|z| (z.zone.as_str(), z.algorithm.as_str(), z.kcv.as_str()))
                .collect::<Vec<_>>(),
            [
                ("p1", "tdes", legacy.as_str()),
                ("z1", "aes", kcv_hex(crate::aes_kcv(&AES_ZMK)).as_str())
            ]
        );
        // Halves equal but for parity, and lengths that are neither: refused.
        assert!(matches!(
            form(&one, "p2", &unhex("0123456789ABCDEF0123456789ABCDEF")),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            form(&one, "p2", &[1; 24]),
            Err(Error::BadRequest(_))
        ));

        // A partner's ZPK in a version B block imports; its KCV is the legacy one.
        let zpk = unhex("3F419E1CB7079442AA37474C2EFBF8B8");
        let block = seal(&zmk, "B0000P0TB00E0000", &zpk);
        let imported = import(&one, "p1", &block).unwrap();
        assert_eq!(imported.kcv, tr31::kcv::legacy(&zpk).unwrap());
        // A version D block under a TDES zone says what is wrong; a flipped MAC is the one
        // detail-free failure.
        let d = seal(&AES_ZMK, "D0000P0TB00E0000", &zpk);
        let err = import(&one, "p1", &d).unwrap_err().to_string();
        assert!(err.contains("a TDES KBPK protects version B"), "{err}");
        let mut forged = block.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(matches!(import(&one, "p1", &forged), Err(Error::Auth)));

        // Exported to the TDES zone: a version B block the partner opens with the clear ZMK.
        let out = export(&one, &imported.key_id, "p1").unwrap();
        assert!(out.key_block.starts_with('B'), "{}", out.key_block);
        let opened = tr31::open(
            &out.key_block,
            &tr31::Kbpk::new(&zmk).unwrap(),
            tr31::Profile::Strict,
        )
        .unwrap();
        assert_eq!(opened.key.expose_secret(), &zpk[..]);
        assert_eq!(out.kcv, imported.kcv);
        // To the AES zone the same key goes as a version D block.
        let d = export(&one, &imported.key_id, "z1").unwrap();
        assert!(d.key_block.starts_with('D'));

        // An AES key never goes under the TDES ZMK: export and translation refuse it, clearly.
        let aes_key = one
            .key_generate(
                &tr31::Header::parse("D0000D0AB00E0000", tr31::Profile::Strict).unwrap(),
                "aes data key",
            )
            .unwrap();
        let err = export(&one, &aes_key.key_id, "p1").unwrap_err();
        assert!(
            matches!(err, Error::Policy(why) if why.contains("only DES and TDES keys")),
            "{err}"
        );
        let aes_block = seal(&AES_ZMK, "D0000D0AB00E0000", &[0x42; 32]);
        let to_tdes = m::Tr31Translate {
            from_zone: "z1".into(),
            to_zone: "p1".into(),
            key_block: aes_block,
        };
        assert!(matches!(
            one.tr31_translate_check(&to_tdes),
            Err(Error::Policy(_))
        ));
        assert!(matches!(
            one.tr31_translate(&to_tdes),
            Err(Error::Policy(_))
        ));
        // A TDES key translates both ways, each zone in its own version.
        let to_aes = one
            .tr31_translate(&m::Tr31Translate {
                from_zone: "p1".into(),
                to_zone: "z1".into(),
                key_block: block.clone(),
            })
            .unwrap();
        assert!(to_aes.key_block.starts_with("D"), "{}", to_aes.key_block);
        let back = one
            .tr31_translate(&m::Tr31Translate {
                from_zone: "z1".into(),
                to_zone: "p1".into(),
                key_block: to_aes.key_block,
            })
            .unwrap();
        assert!(back.key_block.starts_with("B"), "{}", back.key_block);
        assert_eq!(
            one.tr31_inspect("p1", &back.key_block).unwrap().1,
            imported.kcv
        );

        // Devices belong to AES zones: a TDES zone takes none, and says why.
        let err = one
            .device_create(&m::DeviceCreate {
                device_id: "POS-00000001".into(),
                zone: "p1".into(),
            })
            .unwrap_err();
        assert!(
            matches!(err, Error::Policy(why) if why.contains("AES")),
            "{err}"
        );
        crate::service::tests::device(&one, "POS-00000002");
        let set = one
            .key_set_create(&m::KeySetCreate {
                device_id: "POS-00000002".into(),
            })
            .unwrap();
        let tdk = set.keys.iter().find(|k| k.kind == "tdk").unwrap();
        assert!(matches!(
            export(&one, &tdk.key_id, "p1"),
            Err(Error::Policy(_))
        ));

        // Another node on the store loads the zone as TDES from its sealed copy.
        let two = node(&store, [7; 32]);
        assert_eq!(two.zone_algorithm("p1").unwrap(), ZmkAlgorithm::Tdes);
        let again = export(&two, &imported.key_id, "p1").unwrap();
        assert!(again.key_block.starts_with('B'));
        assert!(import(&two, "p1", &block).is_ok());
        // Forming the zone again with the AES ZMK of the same name is refused.
        assert!(form(&two, "p1", &AES_ZMK).is_err());
    }

    #[test]
    fn a_tdes_zone_rotates_to_a_tdes_zmk_only() {
        let store = Arc::new(MemoryStore::new());
        let one = node(&store, [7; 32]);
        form(&one, "p1", &unhex(TDES_ZMK)).unwrap();
        let rotate = |key: &[u8]| {
            one.zmk_rotate(&m::ZmkImport {
                zone: "p1".into(),
                key: Secret::new(key),
            })
        };
        let err = rotate(&AES_ZMK).unwrap_err().to_string();
        assert!(err.contains("keeps the zone's algorithm"), "{err}");
        let new = unhex("0123456789ABCDEFFEDCBA9876543210");
        let info = rotate(&new).unwrap();
        assert_eq!(info.kcv, tr31::kcv::legacy(&new).unwrap());
        assert_eq!(one.zone_algorithm("p1").unwrap(), ZmkAlgorithm::Tdes);
        // Blocks are now under the new ZMK; the old one waits for zmk-retire.
        let block = seal(&new, "B0000P0TB00E0000", &unhex(TDES_ZMK));
        assert!(import(&one, "p1", &block).is_ok());
        assert_eq!(
            one.retiring_zmk("p1").unwrap(),
            Some(tr31::kcv::legacy(&unhex(TDES_ZMK)).unwrap())
        );
        one.zmk_retire("p1").unwrap();
        assert_eq!(
            one.hsm()
                .zones()
                .iter()
                .map(|n| one.hsm().zmk_kcv(n).unwrap())
                .collect::<Vec<_>>(),
            [info.kcv]
        );
        // An AES zone does not become TDES either.
        form(&one, "z1", &AES_ZMK).unwrap();
        assert!(
            one.zmk_rotate(&m::ZmkImport {
                zone: "z1".into(),
                key: Secret::new(&new),
            })
            .is_err()
        );
    }
}

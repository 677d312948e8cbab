//! What a zone's ZMK rotation keeps in the store: the zone's new ZMK replaces the current one in
//! `zones` (every key-set delivery uses it from then on), the old one waits in `zone_retiring`
//! until every device of the zone has had a delivery under the new one or an officer retires
//! it, and `device_zmk` remembers the ZMK each device last had its TMK delivered under.

use rusqlite::{OptionalExtension, params};

use super::{MemoryStore, SqliteStore, ZoneRecord};
use crate::Error;

/// The store's part of a ZMK rotation (every [`super::KeyStore`] has it).
pub trait ZmkStore {
    /// Makes `new` the zone's ZMK and keeps the current one as the zone's retiring ZMK, in one
    /// transaction that also moves the state version (every node then delivers under `new`).
    ///
    /// # Errors
    /// [`Error::NotFound`] for a zone not in the store; [`Error::Conflict`] while a rotation of
    /// the zone is under way (its old ZMK not retired yet); [`Error::Store`].
    fn rotate_zmk(&self, new: &ZoneRecord) -> Result<(), Error>;

    /// The zone's retiring ZMK, while a rotation is under way.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn retiring_zmk(&self, zone: &str) -> Result<Option<ZoneRecord>, Error>;

    /// Retires the zone's retiring ZMK (the rotation is over): its sealed block is erased, its
    /// check value kept (see [`ZmkStore::retired_zmks`]); false if there was none. Moves the
    /// state version.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn retire_zmk(&self, zone: &str) -> Result<bool, Error>;

    /// The check values of the zone's retired ZMKs: what every node destroys in its token.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn retired_zmks(&self, zone: &str) -> Result<Vec<[u8; 3]>, Error>;

    /// Records that `device_id`'s TMK was just delivered under the ZMK `kcv`.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn delivered_under(&self, device_id: &str, kcv: [u8; 3]) -> Result<(), Error>;

    /// Up to `limit` devices of `zone` (in id order after `after`) whose TMK was not delivered
    /// under the ZMK `kcv` yet.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn devices_not_under(
        &self,
        zone: &str,
        kcv: [u8; 3],
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, Error>;
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS zone_retiring (
    zone TEXT NOT NULL,
    kcv BLOB NOT NULL,
    block TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    PRIMARY KEY (zone, kcv)
) STRICT;
CREATE TABLE IF NOT EXISTS device_zmk (
    device_id TEXT PRIMARY KEY,
    kcv BLOB NOT NULL
) STRICT;
";

fn zone_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ZoneRecord> {
    let kcv: Vec<u8> = r.get(1)?;
    Ok(ZoneRecord {
        zone: r.get(0)?,
        kcv: kcv
            .as_slice()
            .try_into()
            .map_err(|_| rusqlite::Error::InvalidQuery)?,
        block: r.get(2)?,
        created_at: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
    })
}

fn seconds(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl ZmkStore for SqliteStore {
    fn rotate_zmk(&self, new: &ZoneRecord) -> Result<(), Error> {
        let z = new.clone();
        self.write(move |conn| {
            if conn
                .query_row(
                    "SELECT 1 FROM zone_retiring WHERE zone = ?1 AND retired_at IS NULL",
                    [&z.zone],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            {
                return Err(Error::Conflict(
                    "a rotation of the zone's ZMK is under way: retire its old ZMK first",
                ));
            }
            let moved = conn.execute(
                "INSERT INTO zone_retiring (zone, kcv, block, created_at)
                 SELECT zone, kcv, block, created_at FROM zones WHERE zone = ?1
                 ON CONFLICT (zone, kcv) DO UPDATE
                 SET block = excluded.block, created_at = excluded.created_at, retired_at = NULL",
                [&z.zone],
            )?;
            if moved == 0 {
                return Err(Error::NotFound("zone in the key store"));
            }
            conn.execute(
                "UPDATE zones SET kcv = ?2, block = ?3, created_at = ?4 WHERE zone = ?1",
                params![z.zone, z.kcv.as_slice(), z.block, seconds(z.created_at)],
            )?;
            super::admin::bump_version(conn, &super::Change::All)
        })
    }

    fn retiring_zmk(&self, zone: &str) -> Result<Option<ZoneRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT zone, kcv, block, created_at FROM zone_retiring
             WHERE zone = ?1 AND retired_at IS NULL",
        )?;
        Ok(stmt.query_row([zone], zone_from_row).optional()?)
    }

    fn retired_zmks(&self, zone: &str) -> Result<Vec<[u8; 3]>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT kcv FROM zone_retiring WHERE zone = ?1 AND retired_at IS NOT NULL",
        )?;
        let rows = stmt.query_map([zone], |r| {
            let kcv: Vec<u8> = r.get(0)?;
            <[u8; 3]>::try_from(kcv.as_slice()).map_err(|_| rusqlite::Error::InvalidQuery)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn retire_zmk(&self, zone: &str) -> Result<bool, Error> {
        let zone = zone.to_owned();
        let now = seconds(crate::unix_now());
        self.write_with(move |conn| {
            // secure_delete is on: the old ZMK's sealed block is overwritten in the file.
            let n = conn.execute(
                "UPDATE zone_retiring SET block = '', retired_at = ?2
                 WHERE zone = ?1 AND retired_at IS NULL",
                params![zone, now],
            )?;
            if n > 0 {
                super::admin::bump_version(conn, &super::Change::All)?;
            }
            Ok(n > 0)
        })
    }

    fn delivered_under(&self, device_id: &str, kcv: [u8; 3]) -> Result<(), Error> {
        let device_id = device_id.to_owned();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO device_zmk (device_id, kcv) VALUES (?1, ?2)
                 ON CONFLICT(device_id) DO UPDATE SET kcv = excluded.kcv",
                params![device_id, kcv.as_slice()],
            )?;
            Ok(())
        })
    }

    fn devices_not_under(
        &self,
        zone: &str,
        kcv: [u8; 3],
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT d.device_id FROM devices d LEFT JOIN device_zmk z USING (device_id)
             WHERE d.zone = ?1 AND d.device_id > ?3 AND (z.kcv IS NULL OR z.kcv <> ?2)
             ORDER BY d.device_id LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                zone,
                kcv.as_slice(),
                after,
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl ZmkStore for MemoryStore {
    fn rotate_zmk(&self, new: &ZoneRecord) -> Result<(), Error> {
        let mut t = self.tables();
        if t.retiring.contains_key(&new.zone) {
            return Err(Error::Conflict(
                "a rotation of the zone's ZMK is under way: retire its old ZMK first",
            ));
        }
        let old = t
            .zones
            .insert(new.zone.clone(), new.clone())
            .ok_or(Error::NotFound("zone in the key store"));
        match old {
            Ok(old) => {
                t.retired
                    .retain(|(z, k)| !(*z == new.zone && *k == old.kcv));
                t.retiring.insert(new.zone.clone(), old);
                t.bump(super::Change::All);
                Ok(())
            }
            Err(e) => {
                t.zones.remove(&new.zone);
                Err(e)
            }
        }
    }

    fn retiring_zmk(&self, zone: &str) -> Result<Option<ZoneRecord>, Error> {
        Ok(self.tables().retiring.get(zone).cloned())
    }

    fn retire_zmk(&self, zone: &str) -> Result<bool, Error> {
        let mut t = self.tables();
        let gone = t.retiring.remove(zone);
        if let Some(old) = &gone {
            t.retired.push((zone.to_owned(), old.kcv));
            t.bump(super::Change::All);
        }
        Ok(gone.is_some())
    }

    fn retired_zmks(&self, zone: &str) -> Result<Vec<[u8; 3]>, Error> {
        let t = self.tables();
        Ok(t.retired
            .iter()
            .filter(|(z, _)| z == zone)
            .map(|(_, kcv)| *kcv)
            .collect())
    }

    fn delivered_under(&self, device_id: &str, kcv: [u8; 3]) -> Result<(), Error> {
        self.tables().device_zmk.insert(device_id.to_owned(), kcv);
        Ok(())
    }

    fn devices_not_under(
        &self,
        zone: &str,
        kcv: [u8; 3],
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let t = self.tables();
        let mut ids: Vec<String> = t
            .devices
            .values()
            .filter(|d| d.zone == zone && d.device_id.as_str() > after)
            .filter(|d| t.device_zmk.get(&d.device_id) != Some(&kcv))
            .map(|d| d.device_id.clone())
            .collect();
        ids.sort();
        ids.truncate(limit);
        Ok(ids)
    }
}

/// The trait's tests, run on every store.
#[cfg(test)]
pub(super) fn exercise(store: &dyn super::KeyStore) {
    let zone = |kcv: u8, block: &str| ZoneRecord {
        zone: "zr".into(),
        kcv: [kcv; 3],
        block: block.into(),
        created_at: 5,
    };
    assert!(matches!(
        store.rotate_zmk(&zone(2, "new")),
        Err(Error::NotFound(_))
    ));
    assert_eq!(store.zone("zr").unwrap(), None, "nothing made");
    store.insert_zone(&zone(1, "old")).unwrap();
    for n in 1..=3 {
        store
            .create_device(
                &super::DeviceRecord {
                    device_id: format!("POS-0000ZR0{n}"),
                    zone: "zr".into(),
                    identity_key_id: format!("idk-zr{n}"),
                    key_set_id: None,
                    previous_key_set_id: None,
                    rotated_at: None,
                    created_at: 1,
                },
                &super::KeyRecord {
                    key_id: format!("idk-zr{n}"),
                    device_id: format!("POS-0000ZR0{n}"),
                    key_set_id: None,
                    kind: crate::KeyKind::Identity,
                    kcv: [0; 3],
                    block: "b".into(),
                    revoked: false,
                    created_at: 1,
                },
            )
            .unwrap();
    }
    store.delivered_under("POS-0000ZR01", [1; 3]).unwrap();
    let v = store.state_version().unwrap();
    store.rotate_zmk(&zone(2, "new")).unwrap();
    assert!(store.state_version().unwrap() > v);
    assert_eq!(store.zone("zr").unwrap().unwrap().kcv, [2; 3]);
    assert_eq!(store.retiring_zmk("zr").unwrap().unwrap().block, "old");
    assert!(matches!(
        store.rotate_zmk(&zone(3, "newer")),
        Err(Error::Conflict(_))
    ));
    let all = store.devices_not_under("zr", [2; 3], "", 10).unwrap();
    assert_eq!(all, ["POS-0000ZR01", "POS-0000ZR02", "POS-0000ZR03"]);
    store.delivered_under("POS-0000ZR01", [2; 3]).unwrap();
    store.delivered_under("POS-0000ZR03", [2; 3]).unwrap();
    assert_eq!(
        store.devices_not_under("zr", [2; 3], "", 10).unwrap(),
        ["POS-0000ZR02"]
    );
    assert_eq!(
        store
            .devices_not_under("zr", [2; 3], "POS-0000ZR02", 10)
            .unwrap(),
        Vec::<String>::new()
    );
    assert!(store.retire_zmk("zr").unwrap());
    assert!(!store.retire_zmk("zr").unwrap());
    assert_eq!(store.retiring_zmk("zr").unwrap(), None);
    assert_eq!(store.retired_zmks("zr").unwrap(), vec![[1; 3]]);
    // Back to the first ZMK later: allowed, the retired one comes back as retiring.
    store.rotate_zmk(&zone(1, "old again")).unwrap();
    assert_eq!(store.retiring_zmk("zr").unwrap().unwrap().kcv, [2; 3]);
}

//! The backoffice audit trail's second half: linking entries into a keyed hash chain, and
//! checking it.
//!
//! Entries are written with their mutations (`store::audit`). Every second, the node doing
//! housekeeping (`crate::housekeeping`) links the unlinked ones, oldest first:
//! each gets the next `chain_seq`, the previous entry's MAC, and its own MAC, which keyd
//! computes under a key of its own (`RequestFingerprint` over a label no request fingerprint
//! can start with, the previous MAC and the entry's canonical form). The chain's head (count
//! and last MAC) moves in the same commit, which expects the head and every entry unchanged,
//! so two linkers cannot both commit.
//!
//! Whoever holds only the database cannot forge an entry or change one unseen (they have no
//! key for the MAC), nor drop one from the middle (the sequence has a hole, the next MAC no
//! longer follows). Dropping entries from the end and resetting the head to an earlier state is
//! found only against a count and MAC recorded elsewhere: `api audit-verify` prints both.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::store::audit::Entry;
use crate::store::db::{self, Db, Record};

/// The head's one record.
const HEAD: &str = "chain";
/// The MAC before the first entry.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// What every MAC input starts with: not `{`, so no request fingerprint (a JSON object) can
/// be one.
const LABEL: &[u8] = b"viopay api audit chain v1\n";
/// Entries linked per commit.
const BATCH: usize = 200;

/// Where the chain ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Always `chain`.
    pub name: String,
    /// Entries linked.
    pub count: u64,
    /// The last entry's MAC (hex).
    pub mac: String,
}

impl Record for Head {
    const KIND: &'static str = "audit_head";
    fn id(&self) -> &str {
        &self.name
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// keyd's MAC of an entry after `prev`.
async fn mac(keyd: &Keyd, prev: &str, entry: &Entry) -> Result<String, ApiError> {
    let mut data = LABEL.to_vec();
    data.extend_from_slice(prev.as_bytes());
    data.push(b'\n');
    data.extend_from_slice(&entry.canonical());
    crate::keyd::ops::request_fingerprint(keyd, &data).await
}

/// Links every unlinked entry; returns how many.
///
/// # Errors
/// 503 when the store or keyd is down.
pub async fn link(db: &Db, keyd: &Keyd) -> Result<usize, ApiError> {
    let mut linked = 0;
    loop {
        let page = db.page::<Entry>("audit_unchained", "", None, BATCH).await?;
        if page.items.is_empty() {
            return Ok(linked);
        }
        let mut entries = page.items;
        // Time-ordered ids: oldest first.
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let (mut head, mut writes) = match db.get_versioned::<Head>(HEAD).await? {
            Some((head, version)) => (head, vec![db::expect::<Head>(HEAD, version)]),
            None => (
                Head {
                    name: HEAD.to_owned(),
                    count: 0,
                    mac: GENESIS.to_owned(),
                },
                vec![db::absent::<Head>(HEAD)],
            ),
        };
        let n = entries.len();
        for mut e in entries {
            head.count += 1;
            e.chain_seq = Some(head.count);
            e.prev_mac = Some(head.mac.clone());
            let m = mac(keyd, &head.mac, &e).await?;
            e.mac = Some(m.clone());
            head.mac = m;
            writes.push(db::expect::<Entry>(&e.id, 1));
            writes.push(db::put(&e)?);
        }
        writes.push(db::put(&head)?);
        match db
            .commit(writes, ApiError::new(Code::Conflict, "linked elsewhere"))
            .await
        {
            Ok(()) => linked += n,
            Err(e) if e.code() == Code::Conflict => return Ok(linked),
            Err(e) => return Err(e),
        }
        if !page.has_more {
            return Ok(linked);
        }
    }
}

/// What `audit-verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Entries linked and checked.
    pub count: u64,
    /// The last MAC (hex), to record elsewhere.
    pub mac: String,
    /// Entries not linked yet (written since the last round).
    pub unlinked: u64,
}

/// Checks the whole chain: every entry's MAC under keyd, the sequence without holes, and the
/// head at its end.
///
/// # Errors
/// A message naming the first broken entry; 503-class failures as messages too.
pub async fn verify(db: &Db, keyd: &Keyd) -> Result<Verified, String> {
    let mut linked = Vec::new();
    let mut unlinked = 0;
    db.walk::<Entry>("audit_events", "", |e| {
        if e.chain_seq.is_some() {
            linked.push(e);
        } else {
            unlinked += 1;
        }
        Ok(true)
    })
    .await
    .map_err(|e| e.message().to_owned())?;
    linked.sort_by_key(|e| e.chain_seq);
    let mut prev = GENESIS.to_owned();
    for (i, e) in linked.iter().enumerate() {
        let want = u64::try_from(i).unwrap_or(u64::MAX) + 1;
        if e.chain_seq != Some(want) {
            return Err(format!(
                "entry {want} of the chain is missing (found {} next)",
                e.chain_seq.unwrap_or_default()
            ));
        }
        if e.prev_mac.as_deref() != Some(prev.as_str()) {
            return Err(format!(
                "entry {want} ({}) does not follow entry {}",
                e.id,
                want - 1
            ));
        }
        let m = mac(keyd, &prev, e)
            .await
            .map_err(|e| e.message().to_owned())?;
        if e.mac.as_deref() != Some(m.as_str()) {
            return Err(format!(
                "entry {want} ({}) is broken: its MAC does not match its contents",
                e.id
            ));
        }
        prev = m;
    }
    let count = u64::try_from(linked.len()).unwrap_or(u64::MAX);
    match db
        .get::<Head>(HEAD)
        .await
        .map_err(|e| e.message().to_owned())?
    {
        Some(h) if h.count == count && h.mac == prev => {}
        None if count == 0 => {}
        Some(h) => {
            return Err(format!(
                "the chain's head says {} entries ending in {}, the entries {count} ending in {prev}",
                h.count, h.mac
            ));
        }
        None => return Err("the chain's head is missing".to_owned()),
    }
    Ok(Verified {
        count,
        mac: prev,
        unlinked,
    })
}

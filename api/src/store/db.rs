//! Typed records over the [`Store`]: what each record is called, which lists it is in, and the
//! read-modify-write loop every update goes through.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ApiError, Code};
use crate::store::{Store, StoreError, Write, tables};

/// A record kind the API keeps.
pub trait Record: Serialize + DeserializeOwned {
    /// The store's kind name (its table: [`crate::store::tables::TABLES`]).
    const KIND: &'static str;
    /// The record's id.
    fn id(&self) -> &str;
    /// The lists the record is in, `(index, key)` ([`crate::store::tables::LISTS`]); fixed for
    /// its life, so every field used here must be immutable after creation. Most are its
    /// columns; the multi-valued ones (a record under each reseller above it) are join rows
    /// written when it is created.
    fn indexes(&self) -> Vec<(String, String)>;
}

/// The typed view of the store.
#[derive(Debug, Clone)]
pub struct Db {
    store: Arc<dyn Store>,
}

/// A page of a list: the records and whether more follow.
#[derive(Debug)]
pub struct Page<R> {
    /// Newest first.
    pub items: Vec<R>,
    /// Whether another page exists.
    pub has_more: bool,
}

fn unavailable(e: &StoreError) -> ApiError {
    tracing::error!(error = %e, "storage failed");
    ApiError::new(Code::Unavailable, "storage unavailable")
}

/// The namespace of used nonces (`{scope}:{nonce}`, a unique column of `nonces`): a conflict
/// in it is a nonce already used, on this node or another.
pub const NONCES: &str = "nonce";

/// Maps a store error to the wire: a conflict becomes `conflict`, the rest 503/`5030`; except
/// a nonce another node took first, which is 401/`4013` whatever the batch was for (the nonce
/// rides in the first commit of every signed request).
pub fn store_error(e: &StoreError, conflict: ApiError) -> ApiError {
    match e {
        StoreError::Conflict(ns) if ns == NONCES => {
            ApiError::new(Code::NonceReused, "nonce already used")
        }
        StoreError::Conflict(_) => conflict,
        StoreError::Unavailable(_) => unavailable(e),
    }
}

impl Db {
    /// Wraps a store.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The underlying store (health checks).
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// One record, or `None`.
    pub async fn get<R: Record>(&self, id: &str) -> Result<Option<R>, ApiError> {
        Ok(self.get_versioned(id).await?.map(|(record, _)| record))
    }

    /// One record with its version (for [`expect`] in a later commit), or `None`.
    pub async fn get_versioned<R: Record>(&self, id: &str) -> Result<Option<(R, u64)>, ApiError> {
        let Some(stored) = self
            .store
            .get(R::KIND, id)
            .await
            .map_err(|e| unavailable(&e))?
        else {
            return Ok(None);
        };
        Ok(Some((decode_ref(&stored.body)?, stored.version)))
    }

    /// One record, or 404/`4040`.
    pub async fn find<R: Record>(&self, id: &str) -> Result<R, ApiError> {
        self.get(id).await?.ok_or_else(ApiError::not_found)
    }

    /// The creation sequence of a record (cursor positions).
    pub async fn seq<R: Record>(&self, id: &str) -> Result<Option<u64>, ApiError> {
        Ok(self
            .store
            .get(R::KIND, id)
            .await
            .map_err(|e| unavailable(&e))?
            .map(|s| s.seq))
    }

    /// Who holds a unique value.
    pub async fn owner(&self, ns: &str, value: &str) -> Result<Option<String>, ApiError> {
        self.store
            .owner(ns, value)
            .await
            .map_err(|e| unavailable(&e))
    }

    /// The events webhook fan-out has not taken yet, oldest first ([`Store::outbox`]), and
    /// whether there may be more.
    pub async fn outbox<R: Record>(&self, limit: usize) -> Result<(Vec<R>, bool), ApiError> {
        let rows = self
            .store
            .outbox(limit)
            .await
            .map_err(|e| unavailable(&e))?;
        let more = rows.len() >= limit;
        let items = rows
            .into_iter()
            .map(|(_, stored)| decode(stored.body))
            .collect::<Result<Vec<R>, _>>()?;
        Ok((items, more))
    }

    /// A page of an index, newest first, starting after the record `after` (a cursor that is
    /// not a record of this kind is a 400 naming `starting_after`).
    pub async fn page<R: Record>(
        &self,
        index: &str,
        key: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<R>, ApiError> {
        self.page_filtered(index, key, after, limit, |_| true).await
    }

    /// Like [`Db::page`], keeping only records `keep` accepts (filters on mutable fields).
    pub async fn page_filtered<R: Record>(
        &self,
        index: &str,
        key: &str,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Page<R>, ApiError> {
        let before = match after {
            None => None,
            Some(id) => Some(
                self.seq::<R>(id)
                    .await?
                    .ok_or_else(|| ApiError::field("starting_after", "unknown cursor"))?,
            ),
        };
        self.page_from(index, key, before, limit, keep).await
    }

    /// Like [`Db::page_filtered`] from a sequence number (a cursor of another kind).
    pub async fn page_before<R: Record>(
        &self,
        index: &str,
        key: &str,
        before: u64,
        limit: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Page<R>, ApiError> {
        self.page_from(index, key, Some(before), limit, keep).await
    }

    async fn page_from<R: Record>(
        &self,
        index: &str,
        key: &str,
        mut before: Option<u64>,
        limit: usize,
        keep: impl Fn(&R) -> bool,
    ) -> Result<Page<R>, ApiError> {
        let mut items = Vec::with_capacity(limit.min(100));
        loop {
            let batch = self
                .store
                .list(index, key, before, 200)
                .await
                .map_err(|e| unavailable(&e))?;
            let exhausted = batch.len() < 200;
            for (_, stored) in batch {
                before = Some(stored.seq);
                let record: R = decode(stored.body)?;
                if keep(&record) {
                    if items.len() == limit {
                        return Ok(Page {
                            items,
                            has_more: true,
                        });
                    }
                    items.push(record);
                }
            }
            if exhausted {
                return Ok(Page {
                    items,
                    has_more: false,
                });
            }
        }
    }

    /// Visits an index newest first until `visit` says stop (returns false).
    pub async fn walk<R: Record>(
        &self,
        index: &str,
        key: &str,
        mut visit: impl FnMut(R) -> Result<bool, ApiError>,
    ) -> Result<(), ApiError> {
        let mut before = None;
        loop {
            let batch = self
                .store
                .list(index, key, before, 200)
                .await
                .map_err(|e| unavailable(&e))?;
            let exhausted = batch.len() < 200;
            for (_, stored) in batch {
                before = Some(stored.seq);
                if !visit(decode(stored.body)?)? {
                    return Ok(());
                }
            }
            if exhausted {
                return Ok(());
            }
        }
    }

    /// Visits every record of a kind by descending id (time-ordered ids: newest first) until
    /// `visit` says stop (returns false), reading in batches.
    pub async fn walk_back<R: Record>(
        &self,
        mut visit: impl FnMut(R) -> Result<bool, ApiError>,
    ) -> Result<(), ApiError> {
        let mut before: Option<String> = None;
        loop {
            let batch = self
                .store
                .scan_back(R::KIND, before.as_deref(), 500)
                .await
                .map_err(|e| unavailable(&e))?;
            let exhausted = batch.len() < 500;
            for (id, stored) in batch {
                if !visit(decode(stored.body)?)? {
                    return Ok(());
                }
                before = Some(id);
            }
            if exhausted {
                return Ok(());
            }
        }
    }

    /// Records of a kind by descending id (time-ordered ids: newest first), before `before`.
    pub async fn scan_back<R: Record>(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<R>, ApiError> {
        self.store
            .scan_back(R::KIND, before, limit)
            .await
            .map_err(|e| unavailable(&e))?
            .into_iter()
            .map(|(_, s)| decode(s.body))
            .collect()
    }

    /// Deletes the records filed under the numbered buckets `from..=to` of an index (time
    /// buckets: expired tokens, old idempotent answers); returns the first bucket not yet done,
    /// so a failed pass resumes there next time.
    pub async fn delete_buckets<R: Record>(&self, index: &str, from: i64, to: i64) -> i64 {
        let mut bucket = from;
        while bucket <= to {
            let Ok(old) = self.all::<R>(index, &bucket.to_string()).await else {
                return bucket;
            };
            if !old.is_empty() {
                let writes = old.iter().map(|r| delete::<R>(r.id())).collect();
                if self
                    .commit(writes, ApiError::new(Code::Conflict, "sweep"))
                    .await
                    .is_err()
                {
                    return bucket;
                }
            }
            bucket += 1;
        }
        bucket
    }

    /// Every record of an index (small lists: a merchant's locations, a reseller's subtree).
    pub async fn all<R: Record>(&self, index: &str, key: &str) -> Result<Vec<R>, ApiError> {
        Ok(self.page(index, key, None, usize::MAX).await?.items)
    }

    /// Applies writes atomically and durably; a conflict answers `conflict`.
    pub async fn commit(&self, writes: Vec<Write>, conflict: ApiError) -> Result<(), ApiError> {
        self.apply(writes, false)
            .await
            .map_err(|e| store_error(&e, conflict))
    }

    /// Every commit of the typed view: inside a Bearer mutation, the first that changes a
    /// record takes the request's audit entry along (see `store::audit`), about the batch's
    /// first record changed, or its last for [`Db::update`], which puts its record last.
    async fn apply(&self, mut writes: Vec<Write>, record_last: bool) -> Result<(), StoreError> {
        let entry = super::audit::entry_for(self.store.as_ref(), &writes, record_last).await;
        let audited = entry.is_some();
        writes.extend(entry);
        self.store.commit(writes).await?;
        if audited {
            super::audit::written();
        }
        Ok(())
    }

    /// Read-modify-write of one record with optimistic concurrency: `change` runs on the current
    /// version and returns extra writes to commit with it; if another writer got in between, the
    /// whole thing runs again on the newer version.
    pub async fn update<R: Record>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut R) -> Result<Vec<Write>, ApiError>,
    ) -> Result<R, ApiError> {
        for _ in 0..8 {
            let Some(stored) = self
                .store
                .get(R::KIND, id)
                .await
                .map_err(|e| unavailable(&e))?
            else {
                return Err(ApiError::not_found());
            };
            let mut record: R = decode_ref(&stored.body)?;
            let mut writes = vec![Write::Expect {
                kind: R::KIND.into(),
                id: id.into(),
                version: Some(stored.version),
            }];
            writes.extend(change(&mut record)?);
            writes.push(put(&record)?);
            match self.apply(writes, true).await {
                Ok(()) => return Ok(record),
                Err(StoreError::Conflict(ns)) if ns.starts_with("expect:") => {}
                Err(e) => {
                    return Err(store_error(
                        &e,
                        ApiError::new(Code::Conflict, "conflicts with existing data"),
                    ));
                }
            }
        }
        Err(ApiError::new(
            Code::Conflict,
            "the record is being changed by another request; try again",
        ))
    }
}

fn decode<R: DeserializeOwned>(body: Map<String, Value>) -> Result<R, ApiError> {
    serde_json::from_value(Value::Object(body))
        .map_err(|e| ApiError::internal(&format!("stored record: {e}")))
}

/// [`decode`] from a record the store shares (see [`Store::get`]): no copy of its map first.
fn decode_ref<R: DeserializeOwned>(body: &Map<String, Value>) -> Result<R, ApiError> {
    R::deserialize(body).map_err(|e| ApiError::internal(&format!("stored record: {e}")))
}

/// A record's fields (its serde form, an object).
#[cfg(debug_assertions)]
fn fields<R: Serialize>(record: &R) -> Result<Map<String, Value>, ApiError> {
    match serde_json::to_value(record).map_err(|e| ApiError::internal(&e))? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::internal(&"a record is not an object")),
    }
}

/// The write that stores a record (its join rows count only when it is new), its fields bound
/// to its table's columns here, on the caller's thread.
pub fn put<R: Record>(record: &R) -> Result<Write, ApiError> {
    put_view::<R, R>(record.id(), record.indexes(), record)
}

/// [`put`] from a view of a record `R`: anything that serialises as `R` does (borrowed
/// fields, a nested value serialised straight from its own type), with `R`'s id and join
/// rows. Debug builds check that what is stored reads back as an `R`.
pub fn put_view<R: Record, V: Serialize>(
    id: &str,
    indexes: Vec<(String, String)>,
    view: &V,
) -> Result<Write, ApiError> {
    let table = tables::of(R::KIND)
        .ok_or_else(|| ApiError::internal(&format!("no table for record kind {}", R::KIND)))?
        .table;
    let bound = super::row::bind(table, view).map_err(|e| ApiError::internal(&e))?;
    // Both ways of binding agree on every record any debug build writes (JSON columns as
    // JSON: a struct keeps its field order in the text, a map sorts its keys).
    #[cfg(debug_assertions)]
    {
        // Only names in the messages: records hold card data.
        let read = |f: &[tables::Field]| tables::fields_body(table, id, f);
        let through_json = tables::bind(table, &fields(view)?).and_then(|f| read(&f));
        let stored = read(&bound);
        let differ: Vec<&str> = match (&stored, &through_json) {
            (Ok(a), Ok(b)) => table
                .cols
                .iter()
                .map(|(name, _)| *name)
                .filter(|name| a.get(*name) != b.get(*name))
                .collect(),
            (a, b) => {
                assert_eq!(a.is_ok(), b.is_ok(), "{} binds one way only", R::KIND);
                Vec::new()
            }
        };
        assert!(differ.is_empty(), "{} binds two ways: {differ:?}", R::KIND);
        if let Ok(body) = stored {
            assert!(decode::<R>(body).is_ok(), "{} does not read back", R::KIND);
        }
    }
    Ok(Write::Put {
        kind: R::KIND.into(),
        id: id.into(),
        fields: bound,
        indexes,
    })
}

/// The write that requires a record to be still at `version` (as read with
/// [`Db::get_versioned`]): optimistic concurrency on a record the caller read.
pub fn expect<R: Record>(id: &str, version: u64) -> Write {
    Write::Expect {
        kind: R::KIND.into(),
        id: id.into(),
        version: Some(version),
    }
}

/// The write that requires a record to be absent (creation races).
pub fn absent<R: Record>(id: &str) -> Write {
    Write::Expect {
        kind: R::KIND.into(),
        id: id.into(),
        version: None,
    }
}

/// The write that deletes a record.
pub fn delete<R: Record>(id: &str) -> Write {
    Write::Delete {
        kind: R::KIND.into(),
        id: id.into(),
    }
}

/// Claims a unique value.
pub fn claim(ns: &str, value: &str, owner: &str) -> Write {
    Write::Claim {
        ns: ns.into(),
        value: value.into(),
        owner: owner.into(),
    }
}

/// Releases a unique value.
pub fn release(ns: &str, value: &str) -> Write {
    Write::Release {
        ns: ns.into(),
        value: value.into(),
    }
}

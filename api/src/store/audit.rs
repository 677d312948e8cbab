//! The backoffice audit trail's first half: one entry per Bearer mutation, written in the same
//! commit as the mutation.
//!
//! The HTTP layer runs each Bearer call that may change something inside [`scope`], with who
//! asks and what for. The first commit of that call that puts or deletes a record other than
//! bookkeeping (idempotency keys, leases, events) takes an [`Entry`] along, about the record
//! the batch is for: so an entry exists exactly when the mutation does, whatever crashes. A request makes at most one entry,
//! however many commits it makes. The entry names the record, its tenancy, and SHA-256 digests
//! of the record before and after (never its contents, so no secret reaches the trail).
//!
//! Linking entries into the keyed hash chain is the second half (`domain::audit`), done after
//! the fact by one node, because a chain needs one order and a MAC from keyd, neither of which
//! should make a backoffice call wait or fail.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::db::Record;
use super::{Store, Write, tables};

/// Who asks, and what for: what every entry of one request shares.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The token's subject.
    pub subject: String,
    /// The caller's role.
    pub role: String,
    /// The operation (the route table's name for it).
    pub action: String,
    /// Method and path as asked.
    pub method: String,
    /// The path.
    pub path: String,
    /// The request id (`X-Request-Id`, given or drawn).
    pub request_id: String,
    /// The client's address.
    pub source: String,
    /// Unix seconds.
    pub at: i64,
    /// The entry's id, drawn once per request (a retried commit writes the same entry).
    pub entry_id: String,
}

#[derive(Debug, Default)]
struct State {
    context: Context,
    written: bool,
}

tokio::task_local! {
    static CURRENT: Arc<Mutex<State>>;
}

/// Runs `f` as the Bearer mutation `context` describes.
pub async fn scope<F: Future>(context: Context, f: F) -> F::Output {
    CURRENT
        .scope(
            Arc::new(Mutex::new(State {
                context,
                written: false,
            })),
            f,
        )
        .await
}

/// Names the caller of the mutation in scope, once its token is verified.
pub fn caller(subject: &str, role: &str) {
    let _ = CURRENT.try_with(|state| {
        let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
        s.context.subject = subject.to_owned();
        s.context.role = role.to_owned();
    });
}

/// One audited mutation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `au_`, time-ordered.
    pub id: String,
    /// Unix seconds.
    pub at: i64,
    /// The token's subject.
    pub subject: String,
    /// The caller's role.
    pub role: String,
    /// The operation.
    pub action: String,
    /// `POST`, `PUT`, `PATCH`, `DELETE`.
    pub method: String,
    /// The path asked.
    pub path: String,
    /// The record changed (its kind).
    pub object_kind: String,
    /// Its id.
    pub object_id: String,
    /// The merchant it belongs to (tenancy).
    pub merchant_id: Option<String>,
    /// The reseller it belongs to, for records above merchants (tenancy).
    pub reseller_id: Option<String>,
    /// The request id.
    pub request_id: String,
    /// The client's address.
    pub source: String,
    /// SHA-256 (hex) of the record before (`None`: it did not exist).
    pub digest_before: Option<String>,
    /// SHA-256 (hex) of the record after (`None`: deleted).
    pub digest_after: Option<String>,
    /// Its place in the chain, from 1 (`None` until linked).
    pub chain_seq: Option<u64>,
    /// The MAC of the entry before it (hex; 64 zeros for the first).
    pub prev_mac: Option<String>,
    /// keyd's MAC over `prev_mac` and this entry (hex).
    pub mac: Option<String>,
}

impl Record for Entry {
    const KIND: &'static str = "audit_event";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl Entry {
    /// The bytes the chain MAC covers besides the previous MAC: every field but the chain's
    /// own, each as `name=value` on its own line (no value holds a newline: ids, names,
    /// digests, an address, a path the router matched).
    pub fn canonical(&self) -> Vec<u8> {
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let lines = [
            ("id", self.id.clone()),
            ("at", self.at.to_string()),
            ("subject", self.subject.clone()),
            ("role", self.role.clone()),
            ("action", self.action.clone()),
            ("method", self.method.clone()),
            ("path", self.path.clone()),
            ("object_kind", self.object_kind.clone()),
            ("object_id", self.object_id.clone()),
            ("merchant_id", opt(&self.merchant_id)),
            ("reseller_id", opt(&self.reseller_id)),
            ("request_id", self.request_id.clone()),
            ("source", self.source.clone()),
            ("digest_before", opt(&self.digest_before)),
            ("digest_after", opt(&self.digest_after)),
            (
                "chain_seq",
                self.chain_seq.map(|n| n.to_string()).unwrap_or_default(),
            ),
        ];
        let mut out = b"viopay api audit v1\n".to_vec();
        for (name, value) in lines {
            out.extend_from_slice(name.as_bytes());
            out.push(b'=');
            out.extend_from_slice(value.replace('\n', " ").as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// Kinds whose writes are bookkeeping around a mutation, not the mutation.
const BOOKKEEPING: &[&str] = &[
    "idempotency",
    "nonce",
    "lease",
    "boot",
    "event",
    "event_outbox",
    "audit_event",
    "audit_head",
];

/// SHA-256 (hex) of a record's fields.
pub fn digest(body: &Map<String, Value>) -> String {
    sha256_hex(Value::Object(body.clone()).to_string().as_bytes())
}

fn sha256_hex(text: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text))
}

/// The entry a batch brings along, when it runs inside a mutation's [`scope`], is its first
/// mutating commit, and changes a record that is not bookkeeping. `store` gives the record's
/// state before.
pub(crate) async fn entry_for(
    store: &dyn Store,
    writes: &[Write],
    record_last: bool,
) -> Option<Write> {
    let state = CURRENT.try_with(Arc::clone).ok()?;
    let context = {
        let s = state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.written {
            return None;
        }
        s.context.clone()
    };
    // The record the request is about: handlers write it first and what goes with it after
    // (events, cascades); `Db::update` puts it after the writes that go with it.
    /// A changed record's kind, id and fields after (`None`: deleted).
    type Changed<'a> = (String, String, Option<&'a [tables::Field]>);
    fn changed(w: &Write) -> Option<Changed<'_>> {
        match w {
            Write::Put {
                kind, id, fields, ..
            } if !BOOKKEEPING.contains(&kind.as_str()) => {
                Some((kind.clone(), id.clone(), Some(fields)))
            }
            Write::Delete { kind, id } if !BOOKKEEPING.contains(&kind.as_str()) => {
                Some((kind.clone(), id.clone(), None))
            }
            _ => None,
        }
    }
    let (kind, id, after) = if record_last {
        writes.iter().rev().find_map(changed)?
    } else {
        writes.iter().find_map(changed)?
    };
    // As the store will hold it once written, so one change's "after" is the next one's
    // "before". Fields that cannot be read back that way (never, for fields `db::put` bound)
    // still get their entry: digested as they are, and said in the log.
    let (after, after_digest) = match after {
        Some(fields) => {
            match tables::of(&kind).map(|st| tables::fields_body(st.table, &id, fields)) {
                Some(Ok(body)) => {
                    let d = digest(&body);
                    (Some(body), Some(d))
                }
                other => {
                    let why = match other {
                        Some(Err(e)) => e,
                        _ => format!("no table for record kind {kind}"),
                    };
                    tracing::error!(kind = %kind, error = %why, "audit: a changed record's fields do not read back");
                    (None, Some(sha256_hex(format!("{fields:?}").as_bytes())))
                }
            }
        }
        None => (None, None),
    };
    let before = store.get(&kind, &id).await.ok().flatten();
    let fields = after.as_ref().or(before.as_ref().map(|s| &s.body));
    let text = |name: &str| {
        fields
            .and_then(|f| f.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (merchant_id, reseller_id) = match kind.as_str() {
        "merchant" => (Some(id.clone()), text("reseller_id")),
        "reseller" => (None, Some(id.clone())),
        _ => (text("merchant_id"), text("reseller_id")),
    };
    let entry = Entry {
        id: context.entry_id,
        at: context.at,
        subject: context.subject,
        role: context.role,
        action: context.action,
        method: context.method,
        path: context.path,
        object_kind: kind,
        object_id: id,
        merchant_id,
        reseller_id,
        request_id: context.request_id,
        source: context.source,
        digest_before: before.as_ref().map(|s| digest(&s.body)),
        digest_after: after_digest,
        chain_seq: None,
        prev_mac: None,
        mac: None,
    };
    super::db::put(&entry).ok()
}

/// Marks the request's entry written (its commit succeeded).
pub(crate) fn written() {
    let _ = CURRENT.try_with(|state| {
        state.lock().unwrap_or_else(PoisonError::into_inner).written = true;
    });
}

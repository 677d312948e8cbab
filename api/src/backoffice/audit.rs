//! `GET /audit-events`: who changed what, for admins, within their subtree.

use super::*;
use crate::store::audit::Entry;

crate::reply! {
    /// One audited change: who, what, when, from where, and digests of the record before and
    /// after (never its contents).
    pub struct AuditEventReply<'a> as "audit_event" {
        /// `au_…`.
        pub id: &'a str,
        /// When.
        pub at: reply::Time,
        /// The token's subject.
        pub subject: &'a str,
        /// The caller's role.
        pub role: &'a str,
        /// The operation (`MerchantPatch`, `DeviceDisable`…).
        pub action: &'a str,
        /// The method asked.
        pub method: &'a str,
        /// The path asked.
        pub path: &'a str,
        /// The kind of record changed.
        pub object_kind: &'a str,
        /// Its id.
        pub object_id: &'a str,
        /// The merchant it belongs to.
        pub merchant_id: Option<&'a str>,
        /// The reseller it belongs to (records above merchants).
        pub reseller_id: Option<&'a str>,
        /// The request's `X-Request-Id`.
        pub request_id: &'a str,
        /// The client's address.
        pub source: &'a str,
        /// SHA-256 of the record before (`null`: created).
        pub digest_before: Option<&'a str>,
        /// SHA-256 of the record after (`null`: deleted).
        pub digest_after: Option<&'a str>,
        /// Its place in the chain (`null` for a second or so, until linked).
        pub chain_seq: Option<u64>,
        /// The MAC of the entry before it.
        pub prev_mac: Option<&'a str>,
        /// keyd's MAC over `prev_mac` and this entry.
        pub mac: Option<&'a str>,
    }
}

fn shown(e: &Entry) -> Value {
    reply::json(&AuditEventReply {
        id: &e.id,
        at: reply::Time(e.at),
        subject: &e.subject,
        role: &e.role,
        action: &e.action,
        method: &e.method,
        path: &e.path,
        object_kind: &e.object_kind,
        object_id: &e.object_id,
        merchant_id: e.merchant_id.as_deref(),
        reseller_id: e.reseller_id.as_deref(),
        request_id: &e.request_id,
        source: &e.source,
        digest_before: e.digest_before.as_deref(),
        digest_after: e.digest_after.as_deref(),
        chain_seq: e.chain_seq,
        prev_mac: e.prev_mac.as_deref(),
        mac: e.mac.as_deref(),
    })
}

crate::reply! {
    /// What a check of the whole chain found.
    pub struct AuditVerification<'a> as "audit_verification" {
        /// Every linked entry's MAC checks, the sequence has no hole, the head is at its end.
        pub intact: bool,
        /// Entries linked and checked.
        pub count: u64,
        /// The last MAC: record it elsewhere to detect a truncated chain later.
        pub mac: Option<&'a str>,
        /// Entries written but not linked yet.
        pub unlinked: u64,
        /// The first problem found.
        pub problem: Option<&'a str>,
    }
}

/// `POST /audit-events/verify` (platform admins): checks the whole chain with keyd.
pub async fn audit_verify(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    allow(call.who()?, Action::ManagePlatform)?;
    Ok(match crate::domain::audit::verify(app.db, app.keyd).await {
        Ok(v) => reply::json(&AuditVerification {
            intact: true,
            count: v.count,
            mac: Some(&v.mac),
            unlinked: v.unlinked,
            problem: None,
        }),
        Err(problem) => reply::json(&AuditVerification {
            intact: false,
            count: 0,
            mac: None,
            unlinked: 0,
            problem: Some(&problem),
        }),
    })
}

/// `GET /audit-events`: newest first; `merchant_id`, `subject`, `action`, `object_id` and
/// `request_id` narrow it.
pub async fn audit_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::ManageMerchant)?;
    let (limit, after) = call.page()?;
    let (index, key) = match call.query("merchant_id") {
        Some(id) => {
            let m = merchant(app, p, id, Action::ManageMerchant).await?;
            ("merchant_audit", m.id)
        }
        None => match &p.scope {
            Scope::Platform => ("audit_events", String::new()),
            Scope::Reseller(r) => ("reseller_audit", r.clone()),
            Scope::Merchant(m) => ("merchant_audit", m.clone()),
        },
    };
    let filters: Vec<(&str, &str)> = ["subject", "action", "object_id", "request_id"]
        .into_iter()
        .filter_map(|name| call.query(name).map(|v| (name, v)))
        .collect();
    let page = app
        .db
        .page_filtered::<Entry>(index, &key, after, limit, |e| {
            filters.iter().all(|(name, want)| {
                let got = match *name {
                    "subject" => &e.subject,
                    "action" => &e.action,
                    "object_id" => &e.object_id,
                    _ => &e.request_id,
                };
                got == want
            })
        })
        .await?;
    let items = page.items.iter().map(shown).collect();
    Ok(list(items, page.has_more, "id"))
}

//! One request as handlers see it: path values, query, headers, the body already read, the
//! time, and (for bearer routes) the authenticated principal.

use hyper::HeaderMap;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::auth::authz::Principal;
use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::domain::charges::Engine;
use crate::domain::idem::Idempotency;
use crate::domain::locks::Locks;
use crate::domain::replay::Replay;
use crate::error::ApiError;
use crate::keyd::Keyd;
use crate::store::db::Db;
use crate::wire::fields::Money;

/// A request, read and authenticated.
#[derive(Debug)]
pub struct Call<'a> {
    /// `{…}` values of the route's path, in order.
    pub params: Vec<&'a str>,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Request headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Unix seconds at arrival.
    pub now: i64,
    /// The caller, on bearer routes.
    pub principal: Option<Principal>,
}

impl Call<'_> {
    /// The `n`th path value.
    pub fn param(&self, n: usize) -> &str {
        self.params.get(n).copied().unwrap_or_default()
    }

    /// The authenticated caller (bearer routes always have one).
    ///
    /// # Errors
    /// 401/`4010` if the route was wrongly declared public.
    pub fn who(&self) -> Result<&Principal, ApiError> {
        self.principal.as_ref().ok_or_else(|| {
            ApiError::new(crate::error::Code::Unauthenticated, "missing bearer token")
        })
    }

    /// A query value.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `limit` (1-100, default 20) and `starting_after` of cursor pagination.
    ///
    /// # Errors
    /// 400/`4000` naming `limit`.
    pub fn page(&self) -> Result<(usize, Option<&str>), ApiError> {
        let limit = match self.query("limit") {
            None => 20,
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| ApiError::field("limit", "an integer from 1 to 100"))?,
        };
        Ok((
            limit,
            self.query("starting_after").filter(|s| !s.is_empty()),
        ))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The contract's list object; `next_cursor` is the last item's id when more follow.
pub fn list(items: Vec<Value>, has_more: bool, id_field: &str) -> Value {
    let next = if has_more {
        items.last().and_then(|v| v.get(id_field)).cloned()
    } else {
        None
    };
    json!({"object": "list", "data": items, "has_more": has_more, "next_cursor": next})
}

/// Splits and percent-decodes a query string as forms encode it (`+` is a space). A `%` not
/// followed by two hex digits stays a `%` (and then fails the parameter's own check).
pub fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query.map_or_else(Vec::new, |q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
}

/// Everything the service holds: configuration, records, keyd, token verification, used
/// nonces, locks, keyed requests in progress and the charge engine. Built once by `app`;
/// handlers never see it whole: each gets its layer's part (`backoffice::Backoffice`,
/// `pos::Terminals`), and the HTTP layer adds its own metrics.
#[derive(Debug)]
pub struct Services {
    /// The configuration it started with.
    pub config: Config,
    /// Records.
    pub db: Db,
    /// The key service.
    pub keyd: Keyd,
    /// Bearer tokens.
    pub auth: Auth,
    /// Used nonces.
    pub replay: Replay,
    /// Per-object serialisation of read-check-write sequences (devices here; charges through
    /// the engine, which shares them).
    pub locks: Arc<Locks>,
    /// Keyed requests in progress.
    pub idempotency: Idempotency,
    /// The charge engine.
    pub charges: Engine,
    /// API nodes alive on the store (1 on a store of its own), which share each rate limit;
    /// counted by housekeeping from the nodes' checkpoints.
    pub live_nodes: std::sync::atomic::AtomicUsize,
}

crate::enum_field! {
    /// Why a charge is refunded.
    pub enum RefundReason {
        RequestedByCustomer = "requested_by_customer",
        Duplicate = "duplicate",
        Fraudulent = "fraudulent",
        Other = "other",
    }
}

crate::body! {
    /// A refund, for the backoffice (`POST /charges/{id}/refund`, the body may be empty) and
    /// the terminal (the payload of `POST /pos/charge/{id}/refund`) alike.
    #[derive(Debug)]
    pub struct RefundRequest {
        /// How much; the whole remaining amount when absent.
        pub amount: Option<Money>,
        /// Why.
        pub reason: Option<RefundReason>,
    }
}

/// A refund request's members, read from its object.
///
/// # Errors
/// 400/`4000` naming the bad fields.
pub fn refund_body(
    obj: serde_json::Map<String, Value>,
) -> Result<(Option<Money>, Option<String>), ApiError> {
    let b: RefundRequest = crate::wire::body::from_value(Value::Object(obj))?;
    Ok((b.amount, b.reason.map(|r| r.as_str().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        let q = parse_query(Some("from=2026-11-27T10%3A15%3A30Z&x=a+b&bad=%zz&empty"));
        assert_eq!(q[0], ("from".into(), "2026-11-27T10:15:30Z".into()));
        assert_eq!(q[1].1, "a b");
        assert_eq!(q[2].1, "%zz");
        assert_eq!(q[3], ("empty".into(), String::new()));
        assert!(parse_query(None).is_empty());
        // "%+f" is no escape (the hand-written decoder once read it as byte 0x0f).
        assert_eq!(parse_query(Some("c=%+f"))[0].1, "% f");
    }
}

//! One request as handlers see it: path values, query, headers, the body already read, the
//! time, and (for bearer routes) the authenticated principal.

use hyper::HeaderMap;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::authz::Principal;
use crate::error::ApiError;

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
        self.principal
            .as_ref()
            .ok_or_else(|| ApiError::new(crate::Code::Unauthenticated, "missing bearer token"))
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

/// Splits and percent-decodes a query string (`+` is a space, as forms send it).
pub fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    let Some(q) = query else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    }
}

//! `GET /events` and `GET /events/{id}`: what happened in the caller's subtree, newest first.
//!
//! Tenancy as everywhere: a merchant's people see its events, a reseller's the events of
//! every merchant below it, the platform's all; anything else is 404 (an event id) or simply
//! absent (a list).

use super::*;
use crate::domain::events::{Event, type_matches, valid_pattern};

/// The list an event listing reads, and its key: the caller's view, or one merchant in it.
async fn view(
    app: &Backoffice<'_>,
    p: &Principal,
    call: &Call<'_>,
) -> Result<(&'static str, String), ApiError> {
    if let Some(id) = call.query("merchant_id") {
        let m = merchant(app, p, id, Action::Read).await?;
        return Ok(("merchant_events", m.id));
    }
    Ok(match &p.scope {
        Scope::Platform => ("events", String::new()),
        Scope::Reseller(r) => ("reseller_events", r.clone()),
        Scope::Merchant(m) => ("merchant_events", m.clone()),
    })
}

/// Whether the caller may see an event: through its merchant's tenancy (events without a
/// merchant are the platform's).
async fn visible(app: &Backoffice<'_>, p: &Principal, e: &Event) -> Result<bool, ApiError> {
    let Some(merchant_id) = &e.merchant_id else {
        return Ok(matches!(p.scope, Scope::Platform));
    };
    if p.merchant() == Some(merchant_id.as_str()) || matches!(p.scope, Scope::Platform) {
        return Ok(true);
    }
    let Some(m) = app.db.get::<Merchant>(merchant_id).await? else {
        return Ok(false);
    };
    Ok(p.sees(&m.tenancy()))
}

/// `GET /events`: `type` (a type, `<object>.*` or `*`), `object_id`, `merchant_id`, and the
/// cursor.
pub async fn event_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let (limit, after) = call.page()?;
    let pattern = match call.query("type") {
        None => None,
        Some(t) if valid_pattern(t) => Some(t.to_owned()),
        Some(_) => {
            return Err(ApiError::field("type", "an event type, <object>.* or *"));
        }
    };
    let keep = |e: &Event| {
        pattern
            .as_deref()
            .is_none_or(|t| type_matches(t, &e.event_type))
    };
    let page = match call.query("object_id") {
        Some(object) => {
            if object.is_empty() || object.len() > 64 {
                return Err(ApiError::field("object_id", "an object's id"));
            }
            let only = match call.query("merchant_id") {
                Some(id) => Some(merchant(app, p, id, Action::Read).await?.id),
                None => None,
            };
            let page = app
                .db
                .page_filtered::<Event>("object_events", object, after, limit, keep)
                .await?;
            // Every event of one object has the object's merchant: the first one tells whether
            // the caller may see any of them.
            let shown = match page.items.first() {
                None => true,
                Some(first) => {
                    only.as_ref()
                        .is_none_or(|m| first.merchant_id.as_ref() == Some(m))
                        && visible(app, p, first).await?
                }
            };
            if shown {
                page
            } else {
                db::Page {
                    items: Vec::new(),
                    has_more: false,
                }
            }
        }
        None => {
            let (index, key) = view(app, p, call).await?;
            app.db
                .page_filtered::<Event>(index, &key, after, limit, keep)
                .await?
        }
    };
    let items = page.items.iter().map(Event::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /events/{id}`.
pub async fn event_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let id = call.param(0);
    if !ids::is_prefixed(id, "evt_", 20) || id.len() > 64 {
        return Err(ApiError::not_found());
    }
    let e: Event = app.db.find(id).await?;
    if !visible(app, p, &e).await? {
        return Err(ApiError::not_found());
    }
    Ok(e.to_json())
}

//! Webhook endpoints of merchants and resellers, their delivery logs and manual resends.
//!
//! The signing secret is made by keyd and shown in the answer that creates the endpoint (or
//! rotates its secret) and nowhere else: keyd draws the salt it derives the secret from, so
//! not even the API can ask for it again. A rotation keeps the previous secret signing beside
//! the new one for an overlap the caller chooses, so receivers can switch without a gap.

use super::*;
use crate::domain::webhooks::{
    DeliveryStatus, EndpointStatus, MAX_EVENT_TYPES, MAX_SECRETS, SecretRef, WebhookDelivery,
    WebhookEndpoint, WebhookEndpointReply,
};
use crate::wire::body::{Int, List};
use crate::wire::fields::WebhookUrl;

crate::string_field!(
    /// An event type, `<object>.*` for all of one object's, or `*` for all.
    EventPattern,
    crate::domain::events::valid_pattern,
    "an event type, <object>.* or *",
    {"type": "string", "pattern": "^(\\*|[a-z]+\\.(\\*|[a-z_]+))$"}
);

/// The most endpoints one merchant or reseller has.
pub const MAX_ENDPOINTS: usize = 16;

/// The default overlap of a rotated secret (a day), and the longest (a week).
const OVERLAP_DEFAULT: i64 = 86_400;
const OVERLAP_MAX: i64 = 7 * 86_400;

crate::enum_field! {
    /// Whether an endpoint is sent events.
    pub enum StatusField { Enabled = "enabled", Disabled = "disabled" }
}

crate::body! {
    /// `POST …/webhook-endpoints`.
    #[derive(Debug)]
    pub struct EndpointCreate {
        /// Where events are POSTed: https://, or http:// to a loopback host.
        pub url: WebhookUrl,
        /// Event types, `<object>.*` or `*` (1 to 32).
        pub enabled_events: List<EventPattern, MAX_EVENT_TYPES>,
        /// For people.
        pub description: Option<Text<NAME_MAX>>,
    }
}

crate::body! {
    /// `PATCH …/webhook-endpoints/{id}`.
    #[derive(Debug)]
    pub struct EndpointPatch {
        /// Where events are POSTed.
        pub url: Option<WebhookUrl>,
        /// Event types, `<object>.*` or `*` (replaced whole).
        pub enabled_events: Option<List<EventPattern, MAX_EVENT_TYPES>>,
        /// For people; `null` removes it.
        pub description: Nullable<Text<NAME_MAX>>,
        /// `enabled` or `disabled` (a disabled endpoint is sent nothing, and events meanwhile
        /// are not kept for it).
        pub status: Option<StatusField>,
    }
}

crate::body! {
    /// `POST …/webhook-endpoints/{id}/rotate-secret` (the body may be empty).
    #[derive(Debug)]
    pub struct SecretRotate {
        /// How long the secret being replaced keeps signing beside the new one: 0 to 604800
        /// seconds, a day when left out.
        pub expire_previous_in_secs: Option<Int<0, OVERLAP_MAX>>,
    }
}

crate::reply! {
    /// An endpoint with its new signing secret, shown this once.
    pub struct EndpointWithSecret<'a> {
        /// The endpoint.
        pub endpoint: WebhookEndpointReply<'a>,
        /// `whsec_…`: the key of the `v1` HMAC-SHA256 signatures. Only keyd keeps it.
        pub secret: ShownOnce<'a>,
    }
}

fn patterns(list: List<EventPattern, MAX_EVENT_TYPES>) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = list.0.into_iter().map(String::from).collect();
    if out.is_empty() {
        return Err(ApiError::field("enabled_events", "at least one event type"));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn with_secret(e: &WebhookEndpoint, secret: &str, now: i64) -> Value {
    reply::json(&EndpointWithSecret {
        endpoint: e.reply(now),
        secret: ShownOnce(secret),
    })
}

/// `POST /merchants/{id}/webhook-endpoints`, `POST /resellers/{id}/webhook-endpoints`.
pub async fn endpoint_create(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let (owner_id, _) = owner_of_call(app, call, owner, true).await?;
    let EndpointCreate {
        url,
        enabled_events,
        description,
    } = body::parse(&call.body)?;
    let enabled_events = patterns(enabled_events)?;
    let existing = app
        .db
        .page::<WebhookEndpoint>("webhook_endpoints", &owner_id, None, MAX_ENDPOINTS)
        .await?;
    if existing.items.len() >= MAX_ENDPOINTS {
        return Err(conflict("16 webhook endpoints already: delete one first"));
    }
    let id = ids::prefixed("we_")?;
    let (salt, secret) = crate::keyd::ops::webhook_secret(app.keyd, &id).await?;
    let e = WebhookEndpoint {
        merchant_id: (owner == Owner::Merchant).then(|| owner_id.clone()),
        reseller_id: (owner == Owner::Reseller).then(|| owner_id.clone()),
        id,
        url: url.into(),
        description: description.map(String::from),
        enabled_events,
        status: EndpointStatus::Enabled,
        secrets: vec![SecretRef {
            salt: hex::encode(salt),
            created_at: call.now,
            expires_at: None,
        }],
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(
            vec![db::absent::<WebhookEndpoint>(&e.id), db::put(&e)?],
            conflict("endpoint exists"),
        )
        .await?;
    Ok(with_secret(&e, &secret, call.now))
}

async fn endpoint(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
    write: bool,
) -> Result<WebhookEndpoint, ApiError> {
    let (owner_id, _) = owner_of_call(app, call, owner, write).await?;
    child(
        app,
        call.param(1),
        |id| ids::is_prefixed(id, "we_", 20) && id.len() <= 64,
        |e: &WebhookEndpoint| e.owner() == owner_id,
    )
    .await
}

/// `GET …/webhook-endpoints`.
pub async fn endpoint_list(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let (owner_id, _) = owner_of_call(app, call, owner, false).await?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<WebhookEndpoint>("webhook_endpoints", &owner_id, after, limit)
        .await?;
    let items = page.items.iter().map(|e| e.to_json(call.now)).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET …/webhook-endpoints/{id}`.
pub async fn endpoint_get(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    Ok(endpoint(app, call, owner, false).await?.to_json(call.now))
}

/// `PATCH …/webhook-endpoints/{id}`.
pub async fn endpoint_patch(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let e = endpoint(app, call, owner, true).await?;
    let EndpointPatch {
        url,
        enabled_events,
        description,
        status,
    } = body::parse(&call.body)?;
    let url = url.map(String::from);
    let enabled_events = enabled_events.map(patterns).transpose()?;
    let description = description.change().map(|d| d.map(String::from));
    let status = status.map(|s| match s {
        StatusField::Enabled => EndpointStatus::Enabled,
        StatusField::Disabled => EndpointStatus::Disabled,
    });
    let now = call.now;
    let updated = app
        .db
        .update::<WebhookEndpoint>(&e.id, |e| {
            set(&mut e.url, &url);
            set(&mut e.enabled_events, &enabled_events);
            set(&mut e.status, &status);
            if let Some(d) = &description {
                e.description.clone_from(d);
            }
            e.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json(now))
}

/// `DELETE …/webhook-endpoints/{id}`: nothing more is sent to it; deliveries still pending
/// fail at their next turn.
pub async fn endpoint_delete(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let e = endpoint(app, call, owner, true).await?;
    app.db
        .commit(
            vec![db::delete::<WebhookEndpoint>(&e.id)],
            conflict("changed"),
        )
        .await?;
    Ok(deleted(&e.id, "webhook_endpoint"))
}

/// `POST …/webhook-endpoints/{id}/rotate-secret`: a new secret, shown this once; the one it
/// replaces keeps signing beside it for the overlap asked (a day by default).
pub async fn endpoint_rotate_secret(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let e = endpoint(app, call, owner, true).await?;
    let SecretRotate {
        expire_previous_in_secs,
    } = if call.body.is_empty() {
        SecretRotate {
            expire_previous_in_secs: None,
        }
    } else {
        body::parse(&call.body)?
    };
    let overlap = expire_previous_in_secs.map_or(OVERLAP_DEFAULT, |n| n.0);
    let (salt, secret) = crate::keyd::ops::webhook_secret(app.keyd, &e.id).await?;
    let now = call.now;
    let fresh = SecretRef {
        salt: hex::encode(salt),
        created_at: now,
        expires_at: None,
    };
    let updated = app
        .db
        .update::<WebhookEndpoint>(&e.id, |e| {
            for s in &mut e.secrets {
                let ends = now + overlap;
                s.expires_at = Some(s.expires_at.map_or(ends, |at| at.min(ends)));
            }
            e.secrets.retain(|s| s.expires_at.is_none_or(|at| at > now));
            e.secrets.insert(0, fresh.clone());
            e.secrets.truncate(MAX_SECRETS);
            e.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(with_secret(&updated, &secret, now))
}

/// `GET …/webhook-endpoints/{id}/deliveries`: newest first, `status` to filter.
pub async fn delivery_list(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let e = endpoint(app, call, owner, false).await?;
    let (limit, after) = call.page()?;
    let status = match call.query("status") {
        None => None,
        Some("pending") => Some(DeliveryStatus::Pending),
        Some("succeeded") => Some(DeliveryStatus::Succeeded),
        Some("failed") => Some(DeliveryStatus::Failed),
        Some(_) => {
            return Err(ApiError::field("status", "pending, succeeded or failed"));
        }
    };
    let page = app
        .db
        .page_filtered::<WebhookDelivery>("webhook_deliveries", &e.id, after, limit, |d| {
            status.is_none_or(|s| d.status == s)
        })
        .await?;
    let items = page.items.iter().map(WebhookDelivery::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `POST …/webhook-endpoints/{id}/deliveries/{delivery_id}/resend`: tried again at once,
/// whatever became of it; its log goes on.
pub async fn delivery_resend(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let e = endpoint(app, call, owner, true).await?;
    let d = child(
        app,
        call.param(2),
        |id| ids::is_prefixed(id, "wd_", 20) && id.len() <= 64,
        |d: &WebhookDelivery| d.endpoint_id == e.id,
    )
    .await?;
    if e.status != EndpointStatus::Enabled {
        return Err(conflict("the endpoint is disabled: enable it first"));
    }
    let now = call.now;
    let updated = app
        .db
        .update::<WebhookDelivery>(&d.id, |d| {
            d.status = DeliveryStatus::Pending;
            d.next_attempt_at = Some(now);
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

//! The merchant and reseller API (contract sections 3 and 9): every handler reads its body,
//! finds its object, calls [`authorize`] once, and commits durably before answering.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::app::App;
use crate::authz::{Action, Principal, Scope, allow, authorize};
use crate::call::{Call, list};
use crate::db::{self, Record};
use crate::error::{ApiError, Code};
use crate::ids;
use crate::input::{self, Input, is_country, is_currency, is_mcc};
use crate::model::{
    Amount, ApiClient, BrandFee, Device, DeviceStatus, FeeTemplate, Location, Merchant, Reseller,
    Role, Session, Tenancy, User,
};

const NAME_MAX: usize = 200;
/// Deepest reseller nesting (the hierarchy answer walks it recursively).
const MAX_DEPTH: usize = 32;
const BRANDS: &[&str] = &["visa", "mastercard", "amex", "discover", "unknown"];

fn conflict(message: &str) -> ApiError {
    ApiError::new(Code::Conflict, message)
}

fn deleted(id: &str, object: &str) -> Value {
    json!({"id": id, "object": object, "deleted": true})
}

// ---------------------------------------------------------------------------------------------
// Sessions and API-client credentials (section 3).

/// `POST /session/initiate`.
pub async fn session_initiate(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let host = input.matching("host", valid_host, "a host name");
    input.finish()?;
    let host = host.unwrap_or_default().to_ascii_lowercase();
    let host_reseller = if app.config.platform.hosts.contains(&host) {
        None
    } else {
        let id = app
            .db
            .owner("portal_host", &host)?
            .ok_or_else(ApiError::not_found)?;
        let reseller: Reseller = app.db.find(&id)?;
        // A reseller's portal serves only its own subtree.
        let inside = match &p.scope {
            Scope::Platform => true,
            Scope::Reseller(r) => {
                reseller.tenancy().resellers.contains(r) || {
                    let mine: Reseller = app.db.find(r)?;
                    mine.ancestors.contains(&reseller.id)
                }
            }
            Scope::Merchant(m) => {
                let merchant: Merchant = app.db.find(m)?;
                merchant.resellers.contains(&reseller.id)
            }
        };
        if !inside {
            return Err(ApiError::not_found());
        }
        Some(reseller.id)
    };
    let (own_reseller, merchant_id) = match &p.scope {
        Scope::Platform => (None, None),
        Scope::Reseller(r) => (Some(r.clone()), None),
        Scope::Merchant(m) => {
            let merchant: Merchant = app.db.find(m)?;
            (Some(merchant.reseller_id), Some(m.clone()))
        }
    };
    let session = Session {
        sub: p.sub.clone(),
        session_id: ids::prefixed("ses_")?,
        expires_at: p.token_exp,
        host,
        reseller_id: host_reseller.or(own_reseller),
        merchant_id,
    };
    app.db
        .commit(vec![db::put(&session)?], conflict("session"))
        .await?;
    Ok(json!({
        "session_id": session.session_id,
        "user": {"id": p.user_id.as_deref().unwrap_or(&p.sub), "email": p.email, "roles": p.roles},
        "reseller_id": session.reseller_id,
        "merchant_id": session.merchant_id,
        "channel": "web",
        "application": "backoffice",
        "expires_at": crate::time::rfc3339(session.expires_at),
    }))
}

/// API-client tokens live an hour (contract section 3: `expires_in` 3600).
const CLIENT_TOKEN_SECS: i64 = 3600;
/// Failed attempts in a row that lock an API client.
const LOCK_AFTER: u32 = 10;
/// How long the lock lasts.
const LOCK_SECS: i64 = 30 * 60;

/// `POST /client/session` and `POST /auth/token`.
pub async fn client_session(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let client_id = input.text("client_id", 64);
    let secret = input.text("client_secret", 256);
    input.finish()?;
    let (client_id, secret) = (client_id.unwrap_or_default(), secret.unwrap_or_default());
    let bad = || ApiError::new(Code::ClientCredentials, "client credentials invalid");
    let locked = |until: i64| {
        ApiError::new(Code::ClientLocked, "client locked after repeated failures")
            .with_retry_after(u64::try_from(until - call.now).unwrap_or(1).max(1))
    };
    if !ids::is_client_id(&client_id) {
        return Err(bad());
    }
    let Some(client) = app.db.get::<ApiClient>(&client_id)? else {
        return Err(bad());
    };
    if client.locked_until > call.now {
        return Err(locked(client.locked_until));
    }
    let good = secret_matches(&client, &secret);
    let now = call.now;
    let updated = app
        .db
        .update::<ApiClient>(&client_id, |c| {
            if good {
                c.failures = 0;
            } else {
                c.failures = c.failures.saturating_add(1);
                if c.failures >= LOCK_AFTER {
                    c.failures = 0;
                    c.locked_until = now + LOCK_SECS;
                }
            }
            Ok(Vec::new())
        })
        .await?;
    if !good {
        tracing::info!(client_id = %client_id, "API client authentication failed");
        return Err(if updated.locked_until > now {
            locked(updated.locked_until)
        } else {
            bad()
        });
    }
    let (token, exp) = app.auth.mint_for(
        CLIENT_TOKEN_SECS,
        &client_id,
        &[Role::MerchantAdmin.as_str()],
        now,
        Some(json!({"merchant_id": client.merchant_id})),
    )?;
    let session = Session {
        sub: client_id.clone(),
        session_id: ids::prefixed("ses_")?,
        expires_at: exp,
        host: String::new(),
        reseller_id: None,
        merchant_id: Some(client.merchant_id.clone()),
    };
    app.db
        .commit(vec![db::put(&session)?], conflict("session"))
        .await?;
    Ok(json!({
        "access_token": token, "token_type": "Bearer", "expires_in": CLIENT_TOKEN_SECS,
        "session_id": session.session_id, "merchant_id": client.merchant_id,
    }))
}

/// API-client secrets are 48 random alphanumerics (285 bits) made here, so a salted SHA-256 is
/// enough: a slow password hash protects guessable secrets, and these are not guessable.
fn secret_hash(salt: &[u8], secret: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"viopay api-client secret v1\0");
    ctx.update(salt);
    ctx.update(secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn secret_matches(client: &ApiClient, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (Some(salt), Some(want)) = (
        crate::envelope::hex_decode(&client.salt),
        crate::envelope::hex_decode(&client.secret_hash),
    ) else {
        return false;
    };
    bool::from(secret_hash(&salt, secret).as_slice().ct_eq(&want))
}

/// A DNS host name: labels of letters, digits and hyphens, lower-cased by the caller.
pub fn valid_host(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && h.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

// ---------------------------------------------------------------------------------------------
// Finding objects with their tenancy.

fn reseller(app: &App, p: &Principal, id: &str, action: Action) -> Result<Reseller, ApiError> {
    let r: Reseller = if ids::is_uuid(id) {
        app.db.find(id)?
    } else {
        return Err(ApiError::not_found());
    };
    authorize(p, action, &r.tenancy())?;
    Ok(r)
}

/// A merchant by id in a path, authorised for `action` (404 for a malformed id too).
pub(crate) fn merchant(
    app: &App,
    p: &Principal,
    id: &str,
    action: Action,
) -> Result<Merchant, ApiError> {
    let m: Merchant = if ids::is_uuid(id) {
        app.db.find(id)?
    } else {
        return Err(ApiError::not_found());
    };
    authorize(p, action, &m.tenancy())?;
    Ok(m)
}

/// A child object: found by id, and 404 unless it belongs to `parent`.
fn child<R: Record>(
    app: &App,
    id: &str,
    valid: fn(&str) -> bool,
    parent: impl Fn(&R) -> bool,
) -> Result<R, ApiError> {
    if !valid(id) {
        return Err(ApiError::not_found());
    }
    let record: R = app.db.find(id)?;
    if parent(&record) {
        Ok(record)
    } else {
        Err(ApiError::not_found())
    }
}

/// Lists resellers or merchants are platform- or reseller-level views.
fn tree_scope(p: &Principal) -> Result<Option<&str>, ApiError> {
    match &p.scope {
        Scope::Platform => Ok(None),
        Scope::Reseller(r) => Ok(Some(r)),
        Scope::Merchant(_) => Err(ApiError::forbidden()),
    }
}

// ---------------------------------------------------------------------------------------------
// Resellers.

/// `POST /resellers`.
pub async fn reseller_create(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let name = input.text("name", NAME_MAX);
    let parent_id = input.opt_matching("parent_id", ids::is_uuid, "a reseller id");
    input.finish()?;
    let ancestors = match &parent_id {
        Some(parent) => {
            let parent = reseller(app, p, parent, Action::ManageReseller)?;
            if parent.ancestors.len() >= MAX_DEPTH - 1 {
                return Err(ApiError::field(
                    "parent_id",
                    "resellers nest at most 32 levels deep",
                ));
            }
            parent.tenancy().resellers
        }
        None => {
            allow(p, Action::ManagePlatform)?;
            Vec::new()
        }
    };
    let record = Reseller {
        id: ids::uuid()?,
        name: name.unwrap_or_default(),
        parent_id,
        ancestors,
        branding: None,
        portal_hosts: Vec::new(),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(
            vec![db::absent::<Reseller>(&record.id), db::put(&record)?],
            conflict("reseller exists"),
        )
        .await?;
    Ok(record.to_json())
}

/// `GET /resellers`.
pub fn reseller_list(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let (limit, after) = call.page()?;
    let page = match tree_scope(p)? {
        None => app.db.page::<Reseller>("resellers", "", after, limit)?,
        Some(r) => app.db.page::<Reseller>("reseller_tree", r, after, limit)?,
    };
    let items = page.items.iter().map(Reseller::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /resellers/{id}`.
pub fn reseller_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(reseller(app, call.who()?, call.param(0), Action::Read)?.to_json())
}

/// `PATCH /resellers/{id}`.
pub async fn reseller_patch(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let current = reseller(app, p, call.param(0), Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let name = input.opt_text("name", NAME_MAX);
    if obj.contains_key("parent_id") && obj.get("parent_id") != Some(&json!(current.parent_id)) {
        input.fail("parent_id", "a reseller cannot be moved");
    }
    input.finish()?;
    let now = call.now;
    let updated = app
        .db
        .update::<Reseller>(&current.id, |r| {
            if let Some(n) = &name {
                r.name.clone_from(n);
            }
            r.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /resellers/{id}`: refused while it has merchants or sub-resellers.
pub async fn reseller_delete(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let r = reseller(app, p, call.param(0), Action::ManageReseller)?;
    if p.scope == Scope::Reseller(r.id.clone()) {
        return Err(ApiError::new(
            Code::Forbidden,
            "a reseller admin cannot delete its own reseller",
        ));
    }
    let children = app
        .db
        .page::<Reseller>("reseller_children", &r.id, None, 1)?;
    let merchants = app.db.page::<Merchant>("merchant_tree", &r.id, None, 1)?;
    if !children.items.is_empty() || !merchants.items.is_empty() {
        return Err(conflict(
            "the reseller still has merchants or sub-resellers",
        ));
    }
    let mut writes = vec![db::delete::<Reseller>(&r.id)];
    for host in &r.portal_hosts {
        writes.push(db::release("portal_host", host));
    }
    for t in app.db.all::<FeeTemplate>("fee_templates", &r.id)? {
        writes.push(db::delete::<FeeTemplate>(&t.id));
    }
    for u in app.db.all::<User>("users", &r.id)? {
        writes.push(db::release("user_sub", &u.idp_subject));
        writes.push(db::delete::<User>(&u.id));
        writes.push(db::delete::<Session>(&u.idp_subject));
    }
    app.db.commit(writes, conflict("reseller changed")).await?;
    Ok(deleted(&r.id, "reseller"))
}

/// `GET /resellers/{id}/hierarchy`: the subtree with merchant and device counts.
pub fn reseller_hierarchy(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let root = reseller(app, p, call.param(0), Action::Read)?;
    tree_scope(p)?;
    Ok(hierarchy_node(app, &root, 0)?.0)
}

/// One node: (json, merchants below, devices below).
fn hierarchy_node(app: &App, r: &Reseller, depth: usize) -> Result<(Value, u64, u64), ApiError> {
    if depth > MAX_DEPTH {
        return Err(ApiError::internal(&"reseller tree deeper than 32"));
    }
    let mut merchant_count = 0u64;
    let mut device_count = 0u64;
    let mut merchants = Vec::new();
    for m in app.db.all::<Merchant>("merchant_tree", &r.id)? {
        if m.reseller_id != r.id {
            continue;
        }
        let devices = app.db.all::<Device>("devices", &m.id)?.len() as u64;
        merchant_count += 1;
        device_count += devices;
        merchants.push(json!({"id": m.id, "name": m.name, "device_count": devices}));
    }
    let mut resellers = Vec::new();
    for child in app.db.all::<Reseller>("reseller_children", &r.id)? {
        let (node, m, d) = hierarchy_node(app, &child, depth + 1)?;
        merchant_count += m;
        device_count += d;
        resellers.push(node);
    }
    Ok((
        json!({
            "id": r.id, "name": r.name, "parent_id": r.parent_id,
            "merchant_count": merchant_count, "device_count": device_count,
            "resellers": resellers, "merchants": merchants,
        }),
        merchant_count,
        device_count,
    ))
}

// ---------------------------------------------------------------------------------------------
// Fee templates.

fn fee_fields(input: &mut Input<'_>, required: bool) -> Option<FeeFields> {
    let name = if required {
        input.text("name", NAME_MAX)
    } else {
        input.opt_text("name", NAME_MAX)
    };
    let bps = if required {
        input.int("percent_bps", 0..=10_000)
    } else {
        input.opt_int("percent_bps", 0..=10_000)
    };
    let fixed = input.money("fixed", false, true, None);
    let per_brand = input.nested("per_brand", false, |rows| {
        let mut out = BTreeMap::new();
        for brand in rows.keys() {
            if !BRANDS.contains(&brand.as_str()) {
                rows.fail(&brand, &format!("brand is one of {}", BRANDS.join(", ")));
                continue;
            }
            let row = rows.nested(&brand, true, |row| {
                let bps = row.int("percent_bps", 0..=10_000);
                let fixed = row.money("fixed", false, true, None);
                Some(BrandFee {
                    percent_bps: u32::try_from(bps?).ok()?,
                    fixed: fixed.map(Amount::from),
                })
            });
            if let Some(row) = row {
                out.insert(brand, row);
            }
        }
        Some(out)
    });
    Some(FeeFields {
        name,
        percent_bps: bps.and_then(|b| u32::try_from(b).ok()),
        fixed: fixed.map(Amount::from),
        fixed_given: input.has("fixed"),
        per_brand,
    })
}

struct FeeFields {
    name: Option<String>,
    percent_bps: Option<u32>,
    fixed: Option<Amount>,
    fixed_given: bool,
    per_brand: Option<BTreeMap<String, BrandFee>>,
}

/// `POST /resellers/{id}/fee-templates`.
pub async fn fee_template_create(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let fields = fee_fields(&mut input, true);
    input.finish()?;
    let Some(f) = fields else {
        return Err(ApiError::field("", "invalid"));
    };
    let t = FeeTemplate {
        id: ids::uuid()?,
        reseller_id: r.id,
        name: f.name.unwrap_or_default(),
        percent_bps: f.percent_bps.unwrap_or_default(),
        fixed: f.fixed,
        per_brand: f.per_brand.unwrap_or_default(),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&t)?], conflict("fee template exists"))
        .await?;
    Ok(t.to_json())
}

fn fee_template(app: &App, call: &Call<'_>, action: Action) -> Result<FeeTemplate, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), action)?;
    child(app, call.param(1), ids::is_uuid, |t: &FeeTemplate| {
        t.reseller_id == r.id
    })
}

/// `GET /resellers/{id}/fee-templates`.
pub fn fee_template_list(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<FeeTemplate>("fee_templates", &r.id, after, limit)?;
    let items = page.items.iter().map(FeeTemplate::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /resellers/{id}/fee-templates/{tid}`.
pub fn fee_template_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(fee_template(app, call, Action::Read)?.to_json())
}

/// `PATCH /resellers/{id}/fee-templates/{tid}`.
pub async fn fee_template_patch(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let t = fee_template(app, call, Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let fields = fee_fields(&mut input, false);
    input.finish()?;
    let Some(f) = fields else {
        return Err(ApiError::field("", "invalid"));
    };
    let now = call.now;
    let updated = app
        .db
        .update::<FeeTemplate>(&t.id, |t| {
            if let Some(n) = &f.name {
                t.name.clone_from(n);
            }
            if let Some(b) = f.percent_bps {
                t.percent_bps = b;
            }
            if f.fixed_given {
                t.fixed.clone_from(&f.fixed);
            }
            if let Some(rows) = &f.per_brand {
                t.per_brand.clone_from(rows);
            }
            t.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /resellers/{id}/fee-templates/{tid}`: refused while a merchant uses it.
pub async fn fee_template_delete(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let t = fee_template(app, call, Action::ManageReseller)?;
    let in_use =
        app.db
            .page_filtered::<Merchant>("merchant_tree", &t.reseller_id, None, 1, |m| {
                m.fee_template_id.as_deref() == Some(t.id.as_str())
            })?;
    if !in_use.items.is_empty() {
        return Err(conflict("a merchant still uses this fee template"));
    }
    app.db
        .commit(vec![db::delete::<FeeTemplate>(&t.id)], conflict("changed"))
        .await?;
    Ok(deleted(&t.id, "fee_template"))
}

// ---------------------------------------------------------------------------------------------
// Branding and domains.

fn branding_json(r: &Reseller) -> Value {
    let b = r.branding.clone().unwrap_or_default();
    let field = |k: &str| b.get(k).cloned().unwrap_or(Value::Null);
    json!({
        "reseller_id": r.id,
        "display_name": field("display_name"), "logo_url": field("logo_url"),
        "primary_color": field("primary_color"), "support_email": field("support_email"),
        "theme": field("theme"),
    })
}

/// `GET /resellers/{id}/branding`.
pub fn branding_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(branding_json(&reseller(
        app,
        call.who()?,
        call.param(0),
        Action::Read,
    )?))
}

/// `PUT /resellers/{id}/branding`.
pub async fn branding_put(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let mut branding = Map::new();
    let fields: [(&str, Option<String>); 5] = [
        ("display_name", input.opt_text("display_name", NAME_MAX)),
        (
            "logo_url",
            input.opt_matching(
                "logo_url",
                |u| {
                    u.len() <= 2048 && u.starts_with("https://") && !u.contains(char::is_whitespace)
                },
                "an https:// address",
            ),
        ),
        (
            "primary_color",
            input.opt_matching(
                "primary_color",
                |c| {
                    c.len() == 7
                        && c.starts_with('#')
                        && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit())
                },
                "#RRGGBB",
            ),
        ),
        (
            "support_email",
            input.opt_matching("support_email", valid_email, "an e-mail address"),
        ),
        ("theme", input.opt_text("theme", 32)),
    ];
    input.finish()?;
    for (k, v) in fields {
        if let Some(v) = v {
            branding.insert(k.into(), Value::String(v));
        }
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Reseller>(&r.id, |r| {
            r.branding = Some(branding.clone());
            r.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(branding_json(&updated))
}

/// `GET /resellers/{id}/domains`.
pub fn domains_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::Read)?;
    Ok(json!({"reseller_id": r.id, "portal_hosts": r.portal_hosts}))
}

/// `PUT /resellers/{id}/domains`: a host belongs to at most one reseller.
pub async fn domains_put(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    if !input.has("portal_hosts") {
        input.fail("portal_hosts", "required");
    }
    let hosts = input.opt_strings(
        "portal_hosts",
        20,
        |h| valid_host(h) && h == h.to_ascii_lowercase(),
        "a lower-case host name",
    );
    input.finish()?;
    let mut hosts = hosts.unwrap_or_default();
    hosts.sort();
    hosts.dedup();
    if hosts.iter().any(|h| app.config.platform.hosts.contains(h)) {
        return Err(conflict("that host is one of the platform's own"));
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Reseller>(&r.id, |r| {
            let mut writes = Vec::new();
            for old in &r.portal_hosts {
                if !hosts.contains(old) {
                    writes.push(db::release("portal_host", old));
                }
            }
            for new in &hosts {
                writes.push(db::claim("portal_host", new, &r.id));
            }
            r.portal_hosts.clone_from(&hosts);
            r.updated_at = now;
            Ok(writes)
        })
        .await
        .map_err(|e| {
            if e.code() == Code::Conflict {
                conflict("a host is already used by another reseller")
            } else {
                e
            }
        })?;
    Ok(json!({"reseller_id": updated.id, "portal_hosts": updated.portal_hosts}))
}

fn valid_email(e: &str) -> bool {
    e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && valid_host(domain) && domain.contains('.')
        })
}

// ---------------------------------------------------------------------------------------------
// Merchants.

/// `POST /merchants`.
pub async fn merchant_create(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let reseller_id = input.matching("reseller_id", ids::is_uuid, "a reseller id");
    let name = input.text("name", NAME_MAX);
    let mcc = input.matching("mcc", is_mcc, "four digits");
    let country = input.matching("country", is_country, "an ISO 3166-1 alpha-2 code");
    let currency = input.matching("currency", is_currency, "an ISO 4217 code");
    let fee_template_id = input.opt_matching("fee_template_id", ids::is_uuid, "a fee template id");
    let tip = settings(&mut input, "tip_info");
    let tax = settings(&mut input, "tax_info");
    let surcharge = settings(&mut input, "surcharge_info");
    input.finish()?;
    let r = reseller(
        app,
        p,
        &reseller_id.unwrap_or_default(),
        Action::ManageReseller,
    )?;
    let resellers = r.tenancy().resellers;
    if let Some(t) = &fee_template_id {
        check_fee_template(app, t, &resellers, currency.as_deref().unwrap_or_default())?;
    }
    let m = Merchant {
        id: ids::uuid()?,
        reseller_id: r.id,
        resellers,
        name: name.unwrap_or_default(),
        mcc: mcc.unwrap_or_default(),
        country: country.unwrap_or_default(),
        currency: currency.unwrap_or_default(),
        fee_template_id,
        tip_info: tip.unwrap_or_default(),
        tax_info: tax.unwrap_or_default(),
        surcharge_info: surcharge.unwrap_or_default(),
        merchant_key: ids::prefixed("mk_")?,
        terminal_parameters: None,
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&m)?], conflict("merchant exists"))
        .await?;
    Ok(m.to_json())
}

/// A fee template must belong to a reseller above (or at) the merchant.
/// A fee template must belong to a reseller above (or at) the merchant, and its fixed parts
/// must be in the merchant's currency.
fn check_fee_template(
    app: &App,
    id: &str,
    resellers: &[String],
    currency: &str,
) -> Result<(), ApiError> {
    match app.db.get::<FeeTemplate>(id)? {
        Some(t) if resellers.contains(&t.reseller_id) => {
            let fixed = t
                .fixed
                .iter()
                .chain(t.per_brand.values().filter_map(|b| b.fixed.as_ref()));
            if fixed.into_iter().all(|f| f.currency == currency) {
                Ok(())
            } else {
                Err(ApiError::field(
                    "fee_template_id",
                    "the template's fixed fees are in another currency",
                ))
            }
        }
        _ => Err(ApiError::field(
            "fee_template_id",
            "no such fee template in the merchant's reseller chain",
        )),
    }
}

/// Free-form merchant settings shown in every terminal's config: an object of at most 4 KiB,
/// so the config stays well inside one envelope.
fn settings(input: &mut Input<'_>, field: &str) -> Option<Map<String, Value>> {
    let value = input.opt_object(field)?;
    if serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len()) > 4096 {
        input.fail(field, "at most 4096 bytes of JSON");
        return None;
    }
    Some(value)
}

/// `GET /merchants`.
pub fn merchant_list(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let (limit, after) = call.page()?;
    let page = match &p.scope {
        Scope::Platform => app.db.page::<Merchant>("merchants", "", after, limit)?,
        Scope::Reseller(r) => app.db.page::<Merchant>("merchant_tree", r, after, limit)?,
        Scope::Merchant(m) => {
            let mine: Merchant = app.db.find(m)?;
            let show = after.is_none();
            db::Page {
                items: if show { vec![mine] } else { Vec::new() },
                has_more: false,
            }
        }
    };
    let items = page.items.iter().map(Merchant::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /merchants/{id}`.
pub fn merchant_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(merchant(app, call.who()?, call.param(0), Action::Read)?.to_json())
}

/// `PATCH /merchants/{id}`. Changing the fee template is the reseller's decision.
pub async fn merchant_patch(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let m = merchant(app, p, call.param(0), Action::ManageMerchant)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let name = input.opt_text("name", NAME_MAX);
    let mcc = input.opt_matching("mcc", is_mcc, "four digits");
    let country = input.opt_matching("country", is_country, "an ISO 3166-1 alpha-2 code");
    let currency = input.opt_matching("currency", is_currency, "an ISO 4217 code");
    let fee_given = obj.contains_key("fee_template_id");
    let fee_template_id = input.opt_matching("fee_template_id", ids::is_uuid, "a fee template id");
    let tip = settings(&mut input, "tip_info");
    let tax = settings(&mut input, "tax_info");
    let surcharge = settings(&mut input, "surcharge_info");
    if obj.contains_key("reseller_id") && obj.get("reseller_id") != Some(&json!(m.reseller_id)) {
        input.fail("reseller_id", "a merchant cannot be moved");
    }
    input.finish()?;
    if fee_given {
        allow(p, Action::ManageReseller)?;
    }
    let new_currency = currency.as_deref().unwrap_or(&m.currency);
    if new_currency != m.currency
        && !app
            .db
            .store()
            .list("transactions", &m.id, None, 1)
            .map_err(|_| ApiError::new(Code::Unavailable, "storage unavailable"))?
            .is_empty()
    {
        return Err(conflict(
            "the merchant has charges in its currency; it cannot change",
        ));
    }
    let template = if fee_given {
        fee_template_id.clone()
    } else {
        m.fee_template_id.clone()
    };
    if let Some(t) = &template {
        check_fee_template(app, t, &m.resellers, new_currency)?;
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Merchant>(&m.id, |m| {
            set(&mut m.name, &name);
            set(&mut m.mcc, &mcc);
            set(&mut m.country, &country);
            set(&mut m.currency, &currency);
            if fee_given {
                m.fee_template_id.clone_from(&fee_template_id);
            }
            set(&mut m.tip_info, &tip);
            set(&mut m.tax_info, &tax);
            set(&mut m.surcharge_info, &surcharge);
            m.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        field.clone_from(v);
    }
}

/// `PUT /merchants/{id}/terminal-parameters`.
pub async fn merchant_parameters(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant)?;
    let params = input::object(&call.body)?;
    let now = call.now;
    app.db
        .update::<Merchant>(&m.id, |m| {
            m.terminal_parameters = Some(params.clone());
            m.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(Value::Object(params))
}

// ---------------------------------------------------------------------------------------------
// Locations.

fn address(input: &mut Input<'_>, required: bool) -> Option<Map<String, Value>> {
    input.nested("address", required, |a| {
        let line1 = a.text("line1", NAME_MAX);
        let line2 = a.opt_text("line2", NAME_MAX);
        let city = a.text("city", NAME_MAX);
        let postal = a.text("postal_code", 20);
        let country = a.matching("country", is_country, "an ISO 3166-1 alpha-2 code");
        let mut out = Map::new();
        out.insert("line1".into(), line1?.into());
        if let Some(l2) = line2 {
            out.insert("line2".into(), l2.into());
        }
        out.insert("city".into(), city?.into());
        out.insert("postal_code".into(), postal?.into());
        out.insert("country".into(), country?.into());
        Some(out)
    })
}

fn valid_timezone(tz: &str) -> bool {
    (1..=64).contains(&tz.len())
        && tz
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'-' | b'+'))
}

/// `POST /merchants/{id}/locations`.
pub async fn location_create(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let name = input.text("name", NAME_MAX);
    let address = address(&mut input, true);
    let timezone = input.opt_matching("timezone", valid_timezone, "an IANA time zone name");
    input.finish()?;
    let l = Location {
        id: ids::uuid()?,
        merchant_id: m.id,
        name: name.unwrap_or_default(),
        address: address.unwrap_or_default(),
        timezone,
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&l)?], conflict("location exists"))
        .await?;
    Ok(l.to_json())
}

fn location(app: &App, call: &Call<'_>, action: Action) -> Result<Location, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), action)?;
    child(app, call.param(1), ids::is_uuid, |l: &Location| {
        l.merchant_id == m.id
    })
}

/// `GET /merchants/{id}/locations`.
pub fn location_list(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app.db.page::<Location>("locations", &m.id, after, limit)?;
    let items = page.items.iter().map(Location::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /merchants/{id}/locations/{lid}`.
pub fn location_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(location(app, call, Action::Read)?.to_json())
}

/// `PATCH /merchants/{id}/locations/{lid}`.
pub async fn location_patch(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let l = location(app, call, Action::ManageMerchant)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let name = input.opt_text("name", NAME_MAX);
    let address = address(&mut input, false);
    let tz_given = obj.contains_key("timezone");
    let timezone = input.opt_matching("timezone", valid_timezone, "an IANA time zone name");
    input.finish()?;
    let now = call.now;
    let updated = app
        .db
        .update::<Location>(&l.id, |l| {
            set(&mut l.name, &name);
            set(&mut l.address, &address);
            if tz_given {
                l.timezone.clone_from(&timezone);
            }
            l.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /merchants/{id}/locations/{lid}`: refused while a device is placed there.
pub async fn location_delete(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let l = location(app, call, Action::ManageMerchant)?;
    let used = app
        .db
        .page_filtered::<Device>("devices", &l.merchant_id, None, 1, |d| {
            d.location_id.as_deref() == Some(l.id.as_str())
        })?;
    if !used.items.is_empty() {
        return Err(conflict("a device is still placed at this location"));
    }
    app.db
        .commit(vec![db::delete::<Location>(&l.id)], conflict("changed"))
        .await?;
    Ok(deleted(&l.id, "location"))
}

// ---------------------------------------------------------------------------------------------
// Devices.

/// A location given in a body must be one of the merchant's (400 naming `location_id`).
pub(crate) fn check_location(app: &App, merchant_id: &str, id: &str) -> Result<(), ApiError> {
    match app.db.get::<Location>(id)? {
        Some(l) if l.merchant_id == merchant_id => Ok(()),
        _ => Err(ApiError::field(
            "location_id",
            "no such location of this merchant",
        )),
    }
}

/// `POST /merchants/{id}/devices`: the identity key is made in keyd; its secret is in this
/// answer and nowhere else.
pub async fn device_create(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let device_id = input.matching(
        "device_id",
        ids::is_device_id,
        "POS- and 8 upper-case hex digits",
    );
    let model = input.text("model", 100);
    let serial = input.text("serial", 100);
    let label = input.opt_text("label", 100);
    let location_id = input.opt_matching("location_id", ids::is_uuid, "a location id");
    let zone = input.opt_matching("zone", ids::is_zone, "1-64 characters of [0-9A-Za-z_.-]");
    input.finish()?;
    let device_id = device_id.unwrap_or_default();
    if let Some(l) = &location_id {
        check_location(app, &m.id, l)?;
    }
    let zone = zone.unwrap_or_else(|| app.config.platform.default_zone.clone());
    let taken = || conflict("a device with this device_id is already registered");
    if app.db.owner("device_id", &device_id)?.is_some() {
        return Err(taken());
    }
    // Reserve the id first, so two registrations cannot both reach keyd.
    app.db
        .commit(vec![db::claim("device_id", &device_id, &m.id)], taken())
        .await?;
    let identity = match crate::keyd_ops::register_device(app, &device_id, &zone).await {
        Ok(k) => k,
        Err(e) => {
            let _ = app
                .db
                .commit(vec![db::release("device_id", &device_id)], taken())
                .await;
            return Err(e);
        }
    };
    let d = Device {
        device_id: device_id.clone(),
        merchant_id: m.id,
        model: model.unwrap_or_default(),
        serial: serial.unwrap_or_default(),
        label,
        location_id,
        zone,
        status: DeviceStatus::Inactive,
        terminal_id: None,
        identity_key_id: identity.key_id.clone(),
        identity_kcv: identity.kcv.clone(),
        rotate_keys: false,
        terminal_parameters: None,
        auth_epoch: 0,
        key_set: None,
        previous_key_set: None,
        pairing_code: None,
        pairing_issued: Vec::new(),
        created_at: call.now,
        updated_at: call.now,
        activated_at: None,
    };
    app.db
        .commit(
            vec![db::absent::<Device>(&device_id), db::put(&d)?],
            taken(),
        )
        .await?;
    Ok(json!({"device": d.to_json(), "identity_key": identity.to_json()}))
}

fn device(app: &App, call: &Call<'_>, action: Action) -> Result<Device, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), action)?;
    child(app, call.param(1), ids::is_device_id, |d: &Device| {
        d.merchant_id == m.id
    })
}

/// `GET /merchants/{id}/devices`.
pub fn device_list(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app.db.page::<Device>("devices", &m.id, after, limit)?;
    let items = page.items.iter().map(Device::to_json).collect();
    Ok(list(items, page.has_more, "device_id"))
}

/// `GET /merchants/{id}/devices/{device_id}`.
pub fn device_get(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(device(app, call, Action::Read)?.to_json())
}

/// `PATCH /merchants/{id}/devices/{device_id}`.
pub async fn device_patch(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let model = input.opt_text("model", 100);
    let serial = input.opt_text("serial", 100);
    let label_given = obj.contains_key("label");
    let label = input.opt_text("label", 100);
    let location_given = obj.contains_key("location_id");
    let location_id = input.opt_matching("location_id", ids::is_uuid, "a location id");
    for fixed in ["device_id", "zone", "device_status", "terminal_id"] {
        if obj.contains_key(fixed) {
            input.fail(fixed, "cannot be changed here");
        }
    }
    input.finish()?;
    if let Some(l) = &location_id {
        check_location(app, &d.merchant_id, l)?;
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&d.device_id, |d| {
            set(&mut d.model, &model);
            set(&mut d.serial, &serial);
            if label_given {
                d.label.clone_from(&label);
            }
            if location_given {
                d.location_id.clone_from(&location_id);
            }
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `POST …/disable`: the record first (every POS call checks it), then keyd drops the working
/// keys. Disabling again answers the device again and repeats the revocation.
pub async fn device_disable(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant)?;
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&d.device_id, |d| {
            if d.status != DeviceStatus::Disabled {
                d.status = DeviceStatus::Disabled;
                d.auth_epoch += 1;
                d.updated_at = now;
            }
            // keyd revokes the sets; the record forgets them, so the next delivery makes anew.
            d.key_set = None;
            d.previous_key_set = None;
            Ok(Vec::new())
        })
        .await?;
    crate::keyd_ops::revoke_key_sets(app, &d.device_id).await?;
    Ok(updated.to_json())
}

/// `POST …/enable`: back to `inactive` with keys and tokens revoked; the terminal id stays.
pub async fn device_enable(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant)?;
    if d.status != DeviceStatus::Disabled {
        return Err(ApiError::new(
            Code::DeviceState,
            "only a disabled device can be enabled",
        ));
    }
    crate::keyd_ops::revoke_key_sets(app, &d.device_id).await?;
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&d.device_id, |d| {
            if d.status != DeviceStatus::Disabled {
                return Err(ApiError::new(
                    Code::DeviceState,
                    "only a disabled device can be enabled",
                ));
            }
            d.status = DeviceStatus::Inactive;
            d.auth_epoch += 1;
            d.activated_at = None;
            d.key_set = None;
            d.previous_key_set = None;
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `POST …/identity-keys`: a new identity key; the old one stops verifying at once.
pub async fn device_identity_key(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant)?;
    let identity = crate::keyd_ops::rotate_identity(app, &d.device_id).await?;
    let now = call.now;
    let (key_id, kcv) = (identity.key_id.clone(), identity.kcv.clone());
    app.db
        .update::<Device>(&d.device_id, |d| {
            d.identity_key_id.clone_from(&key_id);
            d.identity_kcv.clone_from(&kcv);
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    let mut out = identity.to_json();
    if let Some(map) = out.as_object_mut() {
        map.insert("device_id".into(), d.device_id.into());
    }
    Ok(out)
}

/// `POST …/rotate-keys`: the next key delivery makes a new set.
pub async fn device_rotate_keys(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant)?;
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&d.device_id, |d| {
            d.rotate_keys = true;
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    let mut out = updated.to_json();
    if let Some(map) = out.as_object_mut() {
        map.insert("key_rotation".into(), "scheduled".into());
    }
    Ok(out)
}

/// `PUT …/devices/{device_id}/terminal-parameters`.
pub async fn device_parameters(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant)?;
    let params = input::object(&call.body)?;
    let now = call.now;
    app.db
        .update::<Device>(&d.device_id, |d| {
            d.terminal_parameters = Some(params.clone());
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(Value::Object(params))
}

// ---------------------------------------------------------------------------------------------
// Users (merchant users under merchants, reseller admins under resellers).

/// Whose users a route manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOwner {
    /// `/merchants/{id}/users`.
    Merchant,
    /// `/resellers/{id}/users`.
    Reseller,
}

fn user_parent(
    app: &App,
    call: &Call<'_>,
    owner: UserOwner,
    write: bool,
) -> Result<(String, Tenancy), ApiError> {
    let p = call.who()?;
    match owner {
        UserOwner::Merchant => {
            let action = if write {
                Action::ManageMerchant
            } else {
                Action::Read
            };
            let m = merchant(app, p, call.param(0), action)?;
            Ok((m.id.clone(), m.tenancy()))
        }
        UserOwner::Reseller => {
            let action = if write {
                Action::ManageReseller
            } else {
                Action::Read
            };
            let r = reseller(app, p, call.param(0), action)?;
            Ok((r.id.clone(), r.tenancy()))
        }
    }
}

fn roles_for(owner: UserOwner) -> &'static [&'static str] {
    match owner {
        UserOwner::Merchant => &["merchant_admin", "merchant_user"],
        UserOwner::Reseller => &["reseller_admin"],
    }
}

fn valid_subject(s: &str) -> bool {
    (1..=255).contains(&s.len()) && !s.chars().any(char::is_control)
}

/// Only the platform binds a user to an identity-provider subject.
///
/// A subject decides who the token's bearer is across every tenant, so a tenant admin who
/// could choose it could claim a person not yet onboarded elsewhere, and a 409 for a taken one
/// would tell them who exists in other tenants. A tenant admin's user gets its own id as
/// subject; naming one is refused with the same answer whatever the value.
fn subject_by_platform(call: &Call<'_>, obj: &Map<String, Value>) -> Result<(), ApiError> {
    if obj.contains_key("idp_subject") && call.who()?.role != Role::PlatformAdmin {
        return Err(ApiError::new(
            Code::Forbidden,
            "only a platform admin binds a user to an identity-provider subject",
        ));
    }
    Ok(())
}

/// `POST …/users`.
pub async fn user_create(app: &App, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    let (parent, _) = user_parent(app, call, owner, true)?;
    let obj = input::object(&call.body)?;
    subject_by_platform(call, &obj)?;
    let mut input = Input::new(&obj);
    let email = input.matching("email", valid_email, "an e-mail address");
    let name = input.opt_text("name", NAME_MAX);
    let role = if owner == UserOwner::Reseller && !input.has("role") {
        Some("reseller_admin".to_owned())
    } else {
        input.one_of("role", roles_for(owner), true)
    };
    let subject = input.opt_matching("idp_subject", valid_subject, "1-255 characters");
    input.finish()?;
    let id = ids::uuid()?;
    let u = User {
        idp_subject: subject.unwrap_or_else(|| id.clone()),
        id,
        email: email.unwrap_or_default(),
        name,
        role: role
            .as_deref()
            .and_then(Role::parse)
            .unwrap_or(Role::MerchantUser),
        merchant_id: (owner == UserOwner::Merchant).then(|| parent.clone()),
        reseller_id: (owner == UserOwner::Reseller).then(|| parent.clone()),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(
            vec![db::claim("user_sub", &u.idp_subject, &u.id), db::put(&u)?],
            conflict("a user with this idp_subject exists"),
        )
        .await?;
    Ok(u.to_json())
}

fn user(app: &App, call: &Call<'_>, owner: UserOwner, write: bool) -> Result<User, ApiError> {
    let (parent, _) = user_parent(app, call, owner, write)?;
    child(app, call.param(1), ids::is_uuid, |u: &User| {
        u.owner() == parent
    })
}

/// `GET …/users`.
pub fn user_list(app: &App, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    let (parent, _) = user_parent(app, call, owner, false)?;
    let (limit, after) = call.page()?;
    let page = app.db.page::<User>("users", &parent, after, limit)?;
    let items = page.items.iter().map(User::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET …/users/{uid}`.
pub fn user_get(app: &App, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    Ok(user(app, call, owner, false)?.to_json())
}

/// `PATCH …/users/{uid}`.
pub async fn user_patch(app: &App, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    let u = user(app, call, owner, true)?;
    let obj = input::object(&call.body)?;
    subject_by_platform(call, &obj)?;
    let mut input = Input::new(&obj);
    let email = input.opt_matching("email", valid_email, "an e-mail address");
    let name_given = obj.contains_key("name");
    let name = input.opt_text("name", NAME_MAX);
    let role = input.one_of("role", roles_for(owner), false);
    let subject = input.opt_matching("idp_subject", valid_subject, "1-255 characters");
    input.finish()?;
    let now = call.now;
    let updated = app
        .db
        .update::<User>(&u.id, |u| {
            set(&mut u.email, &email);
            if name_given {
                u.name.clone_from(&name);
            }
            if let Some(r) = role.as_deref().and_then(Role::parse) {
                u.role = r;
            }
            u.updated_at = now;
            // The platform rebinds the user: the old subject's session ends with the binding.
            let mut writes = Vec::new();
            if let Some(new) = subject.as_ref().filter(|s| **s != u.idp_subject) {
                writes.push(db::release("user_sub", &u.idp_subject));
                writes.push(db::delete::<Session>(&u.idp_subject));
                writes.push(db::claim("user_sub", new, &u.id));
                u.idp_subject.clone_from(new);
            }
            Ok(writes)
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE …/users/{uid}`: the user's session ends with it.
pub async fn user_delete(app: &App, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    let u = user(app, call, owner, true)?;
    app.db
        .commit(
            vec![
                db::delete::<User>(&u.id),
                db::release("user_sub", &u.idp_subject),
                db::delete::<Session>(&u.idp_subject),
            ],
            conflict("changed"),
        )
        .await?;
    Ok(deleted(&u.id, "user"))
}

// ---------------------------------------------------------------------------------------------
// API clients.

/// `POST /merchants/{id}/api-clients`: the secret is in this answer and nowhere else.
pub async fn api_client_create(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant)?;
    let obj = if call.body.is_empty() {
        Map::new()
    } else {
        input::object(&call.body)?
    };
    let mut input = Input::new(&obj);
    let name = input.opt_text("name", NAME_MAX);
    input.finish()?;
    let secret = ids::random_alnum(48)?;
    let salt = ids::random_bytes::<16>()?;
    let c = ApiClient {
        client_id: ids::prefixed("cli_")?,
        merchant_id: m.id,
        name,
        salt: crate::envelope::hex_upper(&salt),
        secret_hash: crate::envelope::hex_upper(&secret_hash(&salt, &secret)),
        failures: 0,
        locked_until: 0,
        created_at: call.now,
    };
    app.db
        .commit(
            vec![db::absent::<ApiClient>(&c.client_id), db::put(&c)?],
            conflict("client exists"),
        )
        .await?;
    let mut out = c.to_json();
    if let Some(map) = out.as_object_mut() {
        map.insert("client_secret".into(), secret.into());
    }
    Ok(out)
}

/// `GET /merchants/{id}/api-clients`.
pub fn api_client_list(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<ApiClient>("api_clients", &m.id, after, limit)?;
    let items = page.items.iter().map(ApiClient::to_json).collect();
    Ok(list(items, page.has_more, "client_id"))
}

/// `DELETE /merchants/{id}/api-clients/{client_id}`: its tokens stop working at once.
pub async fn api_client_delete(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant)?;
    let c = child(app, call.param(1), ids::is_client_id, |c: &ApiClient| {
        c.merchant_id == m.id
    })?;
    app.db
        .commit(
            vec![
                db::delete::<ApiClient>(&c.client_id),
                db::delete::<Session>(&c.client_id),
            ],
            conflict("changed"),
        )
        .await?;
    Ok(deleted(&c.client_id, "api_client"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_emails() {
        assert!(valid_host("merchant.example.com") && valid_host("localhost"));
        assert!(!valid_host("-a.com") && !valid_host("a..b") && !valid_host("a b"));
        assert!(valid_email("ops@example.com"));
        assert!(!valid_email("ops@localhost") && !valid_email("@example.com"));
    }

    #[test]
    fn client_secrets_are_hashed_with_their_salt() {
        let salt = [7u8; 16];
        let c = ApiClient {
            client_id: "cli_x".into(),
            merchant_id: "m".into(),
            name: None,
            salt: crate::envelope::hex_upper(&salt),
            secret_hash: crate::envelope::hex_upper(&secret_hash(&salt, "right")),
            failures: 0,
            locked_until: 0,
            created_at: 0,
        };
        assert!(secret_matches(&c, "right"));
        assert!(!secret_matches(&c, "wrong") && !secret_matches(&c, ""));
    }
}

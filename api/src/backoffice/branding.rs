//! A reseller's branding and portal domains.

use super::*;

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
pub fn branding_get(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(branding_json(&reseller(
        app,
        call.who()?,
        call.param(0),
        Action::Read,
    )?))
}

/// `PUT /resellers/{id}/branding`.
pub async fn branding_put(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
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
pub fn domains_get(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::Read)?;
    Ok(json!({"reseller_id": r.id, "portal_hosts": r.portal_hosts}))
}

/// `PUT /resellers/{id}/domains`: a host belongs to at most one reseller.
pub async fn domains_put(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
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

//! A reseller's branding and portal domains.

use super::*;

crate::body! {
    /// `PUT /resellers/{id}/branding`: replaces the whole branding.
    #[derive(Debug)]
    pub struct Branding {
        /// The name people see.
        pub display_name: Option<Text<NAME_MAX>>,
        /// The logo's address.
        pub logo_url: Option<HttpsUrl>,
        /// `#RRGGBB`.
        pub primary_color: Option<Colour>,
        /// Where merchants ask for help.
        pub support_email: Option<Email>,
        /// A theme name the portal knows.
        pub theme: Option<Text<32>>,
    }
}

crate::body! {
    /// `PUT /resellers/{id}/domains`: replaces the list.
    #[derive(Debug)]
    pub struct Domains {
        /// Host names of the reseller's portal, lower case.
        pub portal_hosts: body::List<LowerHost, 20>,
    }
}

crate::reply! {
    /// A reseller's branding (`null` where unset).
    pub struct BrandingReply<'a> {
        /// The reseller.
        pub reseller_id: &'a str,
        /// The name people see.
        pub display_name: Option<&'a str>,
        /// The logo's address.
        pub logo_url: Option<&'a str>,
        /// `#RRGGBB`.
        pub primary_color: Option<&'a str>,
        /// Where merchants ask for help.
        pub support_email: Option<&'a str>,
        /// A theme name.
        pub theme: Option<&'a str>,
    }
}

crate::reply! {
    /// A reseller's portal hosts.
    pub struct DomainsReply<'a> {
        /// The reseller.
        pub reseller_id: &'a str,
        /// Host names, lower case.
        pub portal_hosts: &'a [String],
    }
}

fn branding_json(r: &Reseller) -> Value {
    let field = |k: &str| {
        r.branding
            .as_ref()
            .and_then(|b| b.get(k))
            .and_then(Value::as_str)
    };
    reply::json(&BrandingReply {
        reseller_id: &r.id,
        display_name: field("display_name"),
        logo_url: field("logo_url"),
        primary_color: field("primary_color"),
        support_email: field("support_email"),
        theme: field("theme"),
    })
}

fn domains_json(r: &Reseller) -> Value {
    reply::json(&DomainsReply {
        reseller_id: &r.id,
        portal_hosts: &r.portal_hosts,
    })
}

/// `GET /resellers/{id}/branding`.
pub async fn branding_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(branding_json(
        &reseller(app, call.who()?, call.param(0), Action::Read).await?,
    ))
}

/// `PUT /resellers/{id}/branding`.
pub async fn branding_put(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller).await?;
    let b: Branding = body::parse(&call.body)?;
    let mut branding = Map::new();
    let fields: [(&str, Option<String>); 5] = [
        ("display_name", b.display_name.map(String::from)),
        ("logo_url", b.logo_url.map(String::from)),
        ("primary_color", b.primary_color.map(String::from)),
        ("support_email", b.support_email.map(String::from)),
        ("theme", b.theme.map(String::from)),
    ];
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
pub async fn domains_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::Read).await?;
    Ok(domains_json(&r))
}

/// `PUT /resellers/{id}/domains`: a host belongs to at most one reseller.
pub async fn domains_put(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller).await?;
    let Domains { portal_hosts } = body::parse(&call.body)?;
    let mut hosts: Vec<String> = portal_hosts.0.into_iter().map(String::from).collect();
    hosts.sort();
    hosts.dedup();
    if hosts.iter().any(|h| app.platform.hosts.contains(h)) {
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
    Ok(domains_json(&updated))
}

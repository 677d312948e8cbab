//! Sessions and API-client credentials (contract section 3): `POST /session/initiate`,
//! `POST /client/session` and its alias `POST /auth/token`.

use super::*;
use crate::domain::credentials::Lockout;

crate::body! {
    /// `POST /session/initiate`.
    #[derive(Debug)]
    pub struct SessionInitiate {
        /// The host the person signed in at: the platform's own or a reseller's portal.
        pub host: Host,
    }
}

crate::reply! {
    /// Who a session is for.
    pub struct SessionUser<'a> {
        /// The user's id (the token's subject for people not yet known as users).
        pub id: &'a str,
        /// From the token.
        pub email: Option<&'a str>,
        /// From the token.
        pub roles: &'a [String],
    }
}

crate::reply! {
    /// `POST /session/initiate`.
    pub struct SessionReply<'a> {
        /// `ses_…`.
        pub session_id: &'a str,
        /// Who it is for.
        pub user: SessionUser<'a>,
        /// The portal host's reseller, if any.
        pub reseller_id: Option<&'a str>,
        /// The user's merchant, if any.
        pub merchant_id: Option<&'a str>,
        /// Always `web`.
        pub channel: &'a str,
        /// Always `backoffice`.
        pub application: &'a str,
        /// When the session ends.
        pub expires_at: reply::Time,
    }
}

crate::reply! {
    /// `POST /client/session` and `POST /auth/token`.
    pub struct TokenReply<'a> {
        /// A bearer token (ES256 JWT).
        pub access_token: ShownOnce<'a>,
        /// Always `Bearer`.
        pub token_type: &'a str,
        /// Seconds the token lives.
        pub expires_in: i64,
        /// The session the token carries.
        pub session_id: &'a str,
        /// The client's merchant.
        pub merchant_id: &'a str,
    }
}

crate::secret_string_field!(
    /// An API client's secret as presented.
    ClientSecret,
    |s: &str| (1..=256).contains(&s.chars().count()),
    "1 to 256 characters",
    {"type": "string", "minLength": 1, "maxLength": 256}
);

crate::body! {
    /// `POST /client/session` and `POST /auth/token`.
    #[derive(Debug)]
    pub struct ClientCredentials {
        /// `cli_…`.
        pub client_id: Text<64>,
        /// The secret shown once at creation.
        pub client_secret: ClientSecret,
    }
}

/// `POST /session/initiate`.
pub async fn session_initiate(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let SessionInitiate { host } = body::parse(&call.body)?;
    let host = host.to_ascii_lowercase();
    let host_reseller = if app.platform.hosts.contains(&host) {
        None
    } else {
        let id = app
            .db
            .owner("portal_host", &host)
            .await?
            .ok_or_else(ApiError::not_found)?;
        let reseller: Reseller = app.db.find(&id).await?;
        // A reseller's portal serves only its own subtree.
        let inside = match &p.scope {
            Scope::Platform => true,
            Scope::Reseller(r) => {
                reseller.tenancy().resellers.contains(r) || {
                    let mine: Reseller = app.db.find(r).await?;
                    mine.ancestors.contains(&reseller.id)
                }
            }
            Scope::Merchant(m) => {
                let merchant: Merchant = app.db.find(m).await?;
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
            let merchant: Merchant = app.db.find(m).await?;
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
    Ok(reply::json(&SessionReply {
        session_id: &session.session_id,
        user: SessionUser {
            id: p.user_id.as_deref().unwrap_or(&p.sub),
            email: p.email.as_deref(),
            roles: &p.roles,
        },
        reseller_id: session.reseller_id.as_deref(),
        merchant_id: session.merchant_id.as_deref(),
        channel: "web",
        application: "backoffice",
        expires_at: reply::Time(session.expires_at),
    }))
}

/// API-client tokens live an hour (contract section 3: `expires_in` 3600).
const CLIENT_TOKEN_SECS: i64 = 3600;
/// Ten failed attempts in a row lock an API client for 30 minutes.
const CLIENT_LOCKOUT: Lockout = Lockout {
    after: 10,
    secs: 30 * 60,
};

/// `POST /client/session` and `POST /auth/token`.
pub async fn client_session(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let ClientCredentials {
        client_id,
        client_secret,
    } = body::parse(&call.body)?;
    let (client_id, secret) = (String::from(client_id), client_secret);
    let bad = || ApiError::new(Code::ClientCredentials, "client credentials invalid");
    let locked = |until: i64| {
        ApiError::new(Code::ClientLocked, "client locked after repeated failures")
            .with_retry_after(u64::try_from(until - call.now).unwrap_or(1).max(1))
    };
    if !ids::is_client_id(&client_id) {
        return Err(bad());
    }
    let Some(client) = app.db.get::<ApiClient>(&client_id).await? else {
        return Err(bad());
    };
    if client.locked_until > call.now {
        return Err(locked(client.locked_until));
    }
    let good = secret_matches(&client, secret.expose());
    let now = call.now;
    let updated = app
        .db
        .update::<ApiClient>(&client_id, |c| {
            CLIENT_LOCKOUT.count(good, &mut c.failures, &mut c.locked_until, now);
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
    Ok(reply::json(&TokenReply {
        access_token: ShownOnce(&token),
        token_type: "Bearer",
        expires_in: CLIENT_TOKEN_SECS,
        session_id: &session.session_id,
        merchant_id: &client.merchant_id,
    }))
}

pub(super) fn secret_matches(client: &ApiClient, secret: &str) -> bool {
    use subtle::ConstantTimeEq;
    let (Some(salt), Some(want)) = (
        hex::decode(&client.salt).ok(),
        hex::decode(&client.secret_hash).ok(),
    ) else {
        return false;
    };
    bool::from(secret_hash(&salt, secret).as_slice().ct_eq(&want))
}

//! The merchant and reseller API (contract sections 3 and 9): every handler reads its body,
//! finds its object, calls [`authorize`] once, and commits durably before answering.

pub mod api_clients;
pub mod app_versions;
pub mod audit;
pub mod branding;
pub mod charges;
pub mod devices;
pub mod events;
pub mod fee_templates;
pub mod locations;
pub mod merchants;
pub mod resellers;
pub mod sessions;
pub mod users;
pub mod webhooks;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::auth::Auth;
use crate::auth::authz::{Action, Principal, Scope, allow, authorize};
use crate::config::{PlatformConfig, PortalConfig};
use crate::domain::charges::Engine;
use crate::domain::events::{EventType, event};
use crate::domain::idem::Idempotency;
use crate::domain::model::{
    Amount, ApiClient, BrandFee, Connectivity, Device, DeviceStatus, FeeTemplate, Location,
    Merchant, Reseller, Role, Session, Tenancy, User,
};
use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::request::{Call, Services, list};
use crate::store::db::Db;
use crate::store::db::{self, Record};
use crate::wire::body::{self, Nullable, Text};
use crate::wire::fields::{
    Colour, Country, Currency, DeviceId, Email, Host, HttpsUrl, Id, LowerHost, Mcc, MoneyOrZero,
    Timezone, Zone,
};
use crate::wire::ids;
use crate::wire::reply::{self, Shape, ShownOnce};

/// What backoffice handlers work with: records, keyd, the token signer (for API-client
/// tokens), the platform's settings, keyed requests and the charge engine. Terminals' nonces and
/// locks are not here: nothing in the backoffice needs them.
#[derive(Debug, Clone, Copy)]
pub struct Backoffice<'a> {
    /// Records.
    pub db: &'a Db,
    /// The key service.
    pub keyd: &'a Keyd,
    /// Bearer tokens and the embedded signer.
    pub auth: &'a Auth,
    /// The platform's own settings.
    pub platform: &'a PlatformConfig,
    /// Keyed requests in progress.
    pub idempotency: &'a Idempotency,
    /// The charge engine.
    pub charges: &'a Engine,
    /// The portal's settings (password stretching).
    pub portal: &'a PortalConfig,
}

impl<'a> Backoffice<'a> {
    /// The backoffice's part of the services.
    pub fn of(s: &'a Services) -> Self {
        Self {
            db: &s.db,
            keyd: &s.keyd,
            auth: &s.auth,
            platform: &s.config.platform,
            idempotency: &s.idempotency,
            charges: &s.charges,
            portal: &s.config.portal,
        }
    }
}

const NAME_MAX: usize = 200;
/// Deepest reseller nesting (the hierarchy answer walks it recursively).
const MAX_DEPTH: usize = 32;

fn conflict(message: &str) -> ApiError {
    ApiError::new(Code::Conflict, message)
}

crate::reply! {
    /// What a delete answers.
    pub struct Deleted<'a> {
        /// The id of what is gone.
        pub id: &'a str,
        /// What kind of object it was.
        pub object: &'a str,
        /// Always `true`.
        pub deleted: bool,
    }
}

fn deleted(id: &str, object: &str) -> Value {
    reply::json(&Deleted {
        id,
        object,
        deleted: true,
    })
}

// ---------------------------------------------------------------------------------------------
// Finding objects with their tenancy.

async fn reseller(
    app: &Backoffice<'_>,
    p: &Principal,
    id: &str,
    action: Action,
) -> Result<Reseller, ApiError> {
    let r: Reseller = if ids::is_uuid(id) {
        app.db.find(id).await?
    } else {
        return Err(ApiError::not_found());
    };
    authorize(p, action, &r.tenancy())?;
    Ok(r)
}

/// A merchant by id in a path, authorised for `action` (404 for a malformed id too).
pub(crate) async fn merchant(
    app: &Backoffice<'_>,
    p: &Principal,
    id: &str,
    action: Action,
) -> Result<Merchant, ApiError> {
    let m: Merchant = if ids::is_uuid(id) {
        app.db.find(id).await?
    } else {
        return Err(ApiError::not_found());
    };
    authorize(p, action, &m.tenancy())?;
    Ok(m)
}

/// Whose objects a route manages (users, webhook endpoints): the merchant or the reseller in
/// its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `/merchants/{id}/…`.
    Merchant,
    /// `/resellers/{id}/…`.
    Reseller,
}

pub(crate) async fn owner_of_call(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
    write: bool,
) -> Result<(String, Tenancy), ApiError> {
    let p = call.who()?;
    match owner {
        Owner::Merchant => {
            let action = if write {
                Action::ManageMerchant
            } else {
                Action::Read
            };
            let m = merchant(app, p, call.param(0), action).await?;
            Ok((m.id.clone(), m.tenancy()))
        }
        Owner::Reseller => {
            let action = if write {
                Action::ManageReseller
            } else {
                Action::Read
            };
            let r = reseller(app, p, call.param(0), action).await?;
            Ok((r.id.clone(), r.tenancy()))
        }
    }
}

/// A child object: found by id, and 404 unless it belongs to `parent`.
async fn child<R: Record>(
    app: &Backoffice<'_>,
    id: &str,
    valid: fn(&str) -> bool,
    parent: impl Fn(&R) -> bool,
) -> Result<R, ApiError> {
    if !valid(id) {
        return Err(ApiError::not_found());
    }
    let record: R = app.db.find(id).await?;
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

fn set<T: Clone>(field: &mut T, value: &Option<T>) {
    if let Some(v) = value {
        field.clone_from(v);
    }
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

#[cfg(test)]
mod tests {
    use super::sessions::secret_matches;
    use super::*;

    #[test]
    fn client_secrets_are_hashed_with_their_salt() {
        let salt = [7u8; 16];
        let c = ApiClient {
            client_id: "cli_x".into(),
            merchant_id: "m".into(),
            name: None,
            salt: hex::encode_upper(salt),
            secret_hash: hex::encode_upper(secret_hash(&salt, "right")),
            failures: 0,
            locked_until: 0,
            created_at: 0,
        };
        assert!(secret_matches(&c, "right"));
        assert!(!secret_matches(&c, "wrong") && !secret_matches(&c, ""));
    }
}

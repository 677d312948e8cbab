//! Users: merchant users under merchants, reseller admins under resellers; only a
//! platform admin binds one to an identity-provider subject.

use super::*;
use crate::domain::credentials::{self, Credential};

crate::enum_field! {
    /// The roles of a merchant's users.
    pub enum MerchantRole { MerchantAdmin = "merchant_admin", MerchantUser = "merchant_user" }
}

crate::enum_field! {
    /// The roles of a reseller's users.
    pub enum ResellerRole { ResellerAdmin = "reseller_admin" }
}

crate::secret_string_field!(
    /// A password as chosen: 12 to 128 characters.
    Password,
    |s: &str| credentials::PASSWORD_CHARS.contains(&s.chars().count()),
    "12 to 128 characters",
    {"type": "string", "minLength": 12, "maxLength": 128, "writeOnly": true}
);

crate::body! {
    /// `PUT …/users/{uid}/password`.
    #[derive(Debug)]
    pub struct PasswordPut {
        /// The password the user signs in to the portal with (embedded mode).
        pub password: Password,
    }
}

/// An identity-provider subject (`sub`).
type Subject = Text<255>;

crate::body! {
    /// `POST /merchants/{id}/users`.
    #[derive(Debug)]
    pub struct MerchantUserCreate {
        /// E-mail address.
        pub email: Email,
        /// Display name.
        pub name: Option<Text<NAME_MAX>>,
        /// What the user may do.
        pub role: MerchantRole,
        /// The subject of the user's tokens; only a platform admin sets it.
        pub idp_subject: Option<Subject>,
    }
}

crate::body! {
    /// `POST /resellers/{id}/users`.
    #[derive(Debug)]
    pub struct ResellerUserCreate {
        /// E-mail address.
        pub email: Email,
        /// Display name.
        pub name: Option<Text<NAME_MAX>>,
        /// What the user may do (`reseller_admin` when absent).
        pub role: Option<ResellerRole>,
        /// The subject of the user's tokens; only a platform admin sets it.
        pub idp_subject: Option<Subject>,
    }
}

crate::body! {
    /// `PATCH /merchants/{id}/users/{uid}`.
    #[derive(Debug)]
    pub struct MerchantUserPatch {
        /// E-mail address.
        pub email: Option<Email>,
        /// Display name; `null` removes it.
        pub name: Nullable<Text<NAME_MAX>>,
        /// What the user may do.
        pub role: Option<MerchantRole>,
        /// The subject of the user's tokens; only a platform admin sets it.
        pub idp_subject: Option<Subject>,
    }
}

crate::body! {
    /// `PATCH /resellers/{id}/users/{uid}`.
    #[derive(Debug)]
    pub struct ResellerUserPatch {
        /// E-mail address.
        pub email: Option<Email>,
        /// Display name; `null` removes it.
        pub name: Nullable<Text<NAME_MAX>>,
        /// What the user may do.
        pub role: Option<ResellerRole>,
        /// The subject of the user's tokens; only a platform admin sets it.
        pub idp_subject: Option<Subject>,
    }
}

/// A user's fields from either owner's body, as optional changes.
struct UserFields {
    email: Option<String>,
    name: Option<Option<String>>,
    role: Option<Role>,
    subject: Option<String>,
}

fn merchant_role(r: MerchantRole) -> Role {
    match r {
        MerchantRole::MerchantAdmin => Role::MerchantAdmin,
        MerchantRole::MerchantUser => Role::MerchantUser,
    }
}

fn reseller_role(r: ResellerRole) -> Role {
    match r {
        ResellerRole::ResellerAdmin => Role::ResellerAdmin,
    }
}

/// Reads a create (`create`) or change body of `owner`'s users.
fn user_fields(
    owner: Owner,
    create: bool,
    obj: Map<String, Value>,
) -> Result<UserFields, ApiError> {
    let value = Value::Object(obj);
    Ok(match (owner, create) {
        (Owner::Merchant, true) => {
            let b: MerchantUserCreate = body::from_value(value)?;
            UserFields {
                email: Some(b.email.into()),
                name: Some(b.name.map(String::from)),
                role: Some(merchant_role(b.role)),
                subject: b.idp_subject.map(String::from),
            }
        }
        (Owner::Reseller, true) => {
            let b: ResellerUserCreate = body::from_value(value)?;
            UserFields {
                email: Some(b.email.into()),
                name: Some(b.name.map(String::from)),
                role: Some(b.role.map_or(Role::ResellerAdmin, reseller_role)),
                subject: b.idp_subject.map(String::from),
            }
        }
        (Owner::Merchant, false) => {
            let b: MerchantUserPatch = body::from_value(value)?;
            UserFields {
                email: b.email.map(String::from),
                name: b.name.change().map(|n| n.map(String::from)),
                role: b.role.map(merchant_role),
                subject: b.idp_subject.map(String::from),
            }
        }
        (Owner::Reseller, false) => {
            let b: ResellerUserPatch = body::from_value(value)?;
            UserFields {
                email: b.email.map(String::from),
                name: b.name.change().map(|n| n.map(String::from)),
                role: b.role.map(reseller_role),
                subject: b.idp_subject.map(String::from),
            }
        }
    })
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
pub async fn user_create(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let (parent, _) = owner_of_call(app, call, owner, true).await?;
    let obj = body::object(&call.body)?;
    subject_by_platform(call, &obj)?;
    let UserFields {
        email,
        name,
        role,
        subject,
    } = user_fields(owner, true, obj)?;
    let id = ids::uuid()?;
    let u = User {
        idp_subject: subject.unwrap_or_else(|| id.clone()),
        id,
        email: email.unwrap_or_default(),
        name: name.flatten(),
        role: role.unwrap_or(Role::MerchantUser),
        merchant_id: (owner == Owner::Merchant).then(|| parent.clone()),
        reseller_id: (owner == Owner::Reseller).then(|| parent.clone()),
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

async fn user(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
    write: bool,
) -> Result<User, ApiError> {
    let (parent, _) = owner_of_call(app, call, owner, write).await?;
    child(app, call.param(1), ids::is_uuid, |u: &User| {
        u.owner() == parent
    })
    .await
}

/// `GET …/users`.
pub async fn user_list(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let (parent, _) = owner_of_call(app, call, owner, false).await?;
    let (limit, after) = call.page()?;
    let page = app.db.page::<User>("users", &parent, after, limit).await?;
    let items = page.items.iter().map(User::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET …/users/{uid}`.
pub async fn user_get(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    Ok(user(app, call, owner, false).await?.to_json())
}

/// `PATCH …/users/{uid}`.
pub async fn user_patch(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let u = user(app, call, owner, true).await?;
    let obj = body::object(&call.body)?;
    subject_by_platform(call, &obj)?;
    let UserFields {
        email,
        name,
        role,
        subject,
    } = user_fields(owner, false, obj)?;
    let now = call.now;
    let credential = app.db.get::<Credential>(&u.id).await?;
    let updated = app
        .db
        .update::<User>(&u.id, |u| {
            let mut writes = Vec::new();
            // The sign-in name follows the address.
            if let (Some(c), Some(new)) = (&credential, &email) {
                let login = credentials::login_name(new);
                if login != c.login {
                    writes.push(db::release(credentials::LOGIN, &c.login));
                    writes.push(db::claim(credentials::LOGIN, &login, &u.id));
                    let mut moved = c.clone();
                    moved.login = login;
                    writes.push(db::put(&moved)?);
                }
            }
            set(&mut u.email, &email);
            if let Some(n) = &name {
                u.name.clone_from(n);
            }
            if let Some(r) = role {
                u.role = r;
            }
            u.updated_at = now;
            // The platform rebinds the user: the old subject's session ends with the binding.
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

/// `PUT …/users/{uid}/password`: the password the user signs in with at the embedded
/// provider, by their e-mail address (unique among users with a password). Lifts a lock. In
/// keycloak mode people's passwords are the realm's business, so there is none to set.
pub async fn user_password(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let u = user(app, call, owner, true).await?;
    if !app.auth.signs_people() {
        return Err(conflict(
            "people sign in at the identity provider in keycloak mode: no password to set here",
        ));
    }
    let PasswordPut { password } = body::parse(&call.body)?;
    let previous = app.db.get::<Credential>(&u.id).await?;
    let writes = credentials::set(
        app.keyd,
        previous.as_ref(),
        &u.id,
        &u.email,
        password.expose(),
        app.portal.kdf_iterations,
        call.now,
    )
    .await?;
    app.db
        .commit(
            writes,
            conflict("another user signs in with this e-mail address"),
        )
        .await?;
    Ok(u.to_json())
}

/// `DELETE …/users/{uid}`: the user's session ends with it.
pub async fn user_delete(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    owner: Owner,
) -> Result<Value, ApiError> {
    let u = user(app, call, owner, true).await?;
    let mut writes = vec![
        db::delete::<User>(&u.id),
        db::release("user_sub", &u.idp_subject),
        db::delete::<Session>(&u.idp_subject),
    ];
    if let Some(c) = app.db.get::<Credential>(&u.id).await? {
        writes.extend(credentials::remove(&c));
    }
    app.db.commit(writes, conflict("changed")).await?;
    Ok(deleted(&u.id, "user"))
}

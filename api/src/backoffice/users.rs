//! Users: merchant users under merchants, reseller admins under resellers; only a
//! platform admin binds one to an identity-provider subject.

use super::*;

/// Whose users a route manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOwner {
    /// `/merchants/{id}/users`.
    Merchant,
    /// `/resellers/{id}/users`.
    Reseller,
}

fn user_parent(
    app: &Services,
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
pub async fn user_create(
    app: &Services,
    call: &Call<'_>,
    owner: UserOwner,
) -> Result<Value, ApiError> {
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

fn user(app: &Services, call: &Call<'_>, owner: UserOwner, write: bool) -> Result<User, ApiError> {
    let (parent, _) = user_parent(app, call, owner, write)?;
    child(app, call.param(1), ids::is_uuid, |u: &User| {
        u.owner() == parent
    })
}

/// `GET …/users`.
pub fn user_list(app: &Services, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    let (parent, _) = user_parent(app, call, owner, false)?;
    let (limit, after) = call.page()?;
    let page = app.db.page::<User>("users", &parent, after, limit)?;
    let items = page.items.iter().map(User::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET …/users/{uid}`.
pub fn user_get(app: &Services, call: &Call<'_>, owner: UserOwner) -> Result<Value, ApiError> {
    Ok(user(app, call, owner, false)?.to_json())
}

/// `PATCH …/users/{uid}`.
pub async fn user_patch(
    app: &Services,
    call: &Call<'_>,
    owner: UserOwner,
) -> Result<Value, ApiError> {
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
pub async fn user_delete(
    app: &Services,
    call: &Call<'_>,
    owner: UserOwner,
) -> Result<Value, ApiError> {
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

//! A merchant's devices: registration with a keyd-made identity key, disable and
//! enable, identity-key rotation, key-set rotation, terminal-parameter overrides.

use super::*;

crate::reply! {
    /// A new identity key, its secret shown this once.
    pub struct IdentityKeyShown<'a> {
        /// `idk-…`.
        pub key_id: &'a str,
        /// The 32-byte secret, base64.
        pub secret: ShownOnce<'a>,
        /// Its check value.
        pub kcv: &'a str,
    }
}

crate::reply! {
    /// `POST /merchants/{id}/devices`.
    pub struct DeviceCreated<'a> {
        /// The device, `inactive`.
        pub device: crate::domain::replies::DeviceReply<'a>,
        /// Its identity key.
        pub identity_key: IdentityKeyShown<'a>,
    }
}

crate::reply! {
    /// `POST …/identity-keys`: the old key is revoked.
    pub struct IdentityKeyReplaced<'a> {
        /// The device.
        pub device_id: &'a str,
        /// `idk-…`.
        pub key_id: &'a str,
        /// The 32-byte secret, base64.
        pub secret: ShownOnce<'a>,
        /// Its check value.
        pub kcv: &'a str,
    }
}

crate::body! {
    /// `POST /merchants/{id}/devices`.
    #[derive(Debug)]
    pub struct DeviceCreate {
        /// The terminal's id, as printed on it.
        pub device_id: DeviceId,
        /// Hardware model.
        pub model: Text<100>,
        /// Serial number.
        pub serial: Text<100>,
        /// A name for people.
        pub label: Option<Text<100>>,
        /// Where it stands.
        pub location_id: Option<Id>,
        /// The zone whose ZMK the terminal was injected with (the platform's default when
        /// absent).
        pub zone: Option<Zone>,
    }
}

crate::body! {
    /// `PATCH /merchants/{id}/devices/{device_id}`.
    #[derive(Debug)]
    pub struct DevicePatch {
        /// Hardware model.
        pub model: Option<Text<100>>,
        /// Serial number.
        pub serial: Option<Text<100>>,
        /// A name for people; `null` removes it.
        pub label: Nullable<Text<100>>,
        /// Where it stands; `null` removes it.
        pub location_id: Nullable<Id>,
        /// Fixed.
        pub device_id: body::Refused,
        /// Fixed.
        pub zone: body::Refused,
        /// Changed by the lifecycle, not here.
        pub device_status: body::Refused,
        /// Fixed.
        pub terminal_id: body::Refused,
    }
}

/// `POST /merchants/{id}/devices`: the identity key is made in keyd; its secret is in this
/// answer and nowhere else.
pub async fn device_create(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant).await?;
    let DeviceCreate {
        device_id,
        model,
        serial,
        label,
        location_id,
        zone,
    } = body::parse(&call.body)?;
    let device_id = String::from(device_id);
    let (model, serial) = (String::from(model), String::from(serial));
    let label = label.map(String::from);
    let location_id = location_id.map(String::from);
    let zone = zone.map(String::from);
    if let Some(l) = &location_id {
        crate::domain::model::check_location(app.db, &m.id, l).await?;
    }
    let zone = zone.unwrap_or_else(|| app.platform.default_zone.clone());
    let taken = || conflict("a device with this device_id is already registered");
    if app.db.owner("device_id", &device_id).await?.is_some() {
        return Err(taken());
    }
    // Reserve the id first, so two registrations cannot both reach keyd.
    app.db
        .commit(vec![db::claim("device_id", &device_id, &m.id)], taken())
        .await?;
    let identity = match crate::keyd::ops::register_device(app.keyd, &device_id, &zone).await {
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
        model,
        serial,
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
        last_seen_at: None,
        app_version: None,
        connectivity: None,
        heartbeat: None,
    };
    app.db
        .commit(
            [
                vec![db::absent::<Device>(&device_id), db::put(&d)?],
                event(EventType::DeviceRegistered, &d, call.now)?,
            ]
            .concat(),
            taken(),
        )
        .await?;
    Ok(reply::json(&DeviceCreated {
        device: d.reply(),
        identity_key: IdentityKeyShown {
            key_id: &identity.key_id,
            secret: ShownOnce(identity.secret()),
            kcv: &identity.kcv,
        },
    }))
}

async fn device(app: &Backoffice<'_>, call: &Call<'_>, action: Action) -> Result<Device, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), action).await?;
    child(app, call.param(1), ids::is_device_id, |d: &Device| {
        d.merchant_id == m.id
    })
    .await
}

/// `GET /merchants/{id}/devices`.
pub async fn device_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read).await?;
    let (limit, after) = call.page()?;
    let connectivity = match call.query("connectivity") {
        None => None,
        Some("online") => Some(Some(Connectivity::Online)),
        Some("offline") => Some(Some(Connectivity::Offline)),
        Some("unknown") => Some(None),
        Some(_) => {
            return Err(ApiError::field(
                "connectivity",
                "online, offline or unknown",
            ));
        }
    };
    let page = app
        .db
        .page_filtered::<Device>("devices", &m.id, after, limit, |d| {
            connectivity.is_none_or(|c| d.connectivity == c)
        })
        .await?;
    let items = page.items.iter().map(Device::to_json).collect();
    Ok(list(items, page.has_more, "device_id"))
}

/// `GET /merchants/{id}/devices/{device_id}`.
pub async fn device_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(device(app, call, Action::Read).await?.to_json())
}

/// `PATCH /merchants/{id}/devices/{device_id}`.
pub async fn device_patch(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant).await?;
    let DevicePatch {
        model,
        serial,
        label,
        location_id,
        ..
    } = body::parse(&call.body)?;
    let (model, serial) = (model.map(String::from), serial.map(String::from));
    let label = label.change().map(|l| l.map(String::from));
    let location = location_id.change().map(|l| l.map(String::from));
    if let Some(Some(l)) = &location {
        crate::domain::model::check_location(app.db, &d.merchant_id, l).await?;
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&d.device_id, |d| {
            set(&mut d.model, &model);
            set(&mut d.serial, &serial);
            if let Some(l) = &label {
                d.label.clone_from(l);
            }
            if let Some(l) = &location {
                d.location_id.clone_from(l);
            }
            d.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `POST …/disable`: the record first (every POS call checks it), then keyd drops the working
/// keys. Disabling again answers the device again and repeats the revocation.
pub async fn device_disable(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant).await?;
    let now = call.now;
    let updated = app
        .db
        .update::<Device>(&d.device_id, |d| {
            let disabling = d.status != DeviceStatus::Disabled;
            if disabling {
                d.status = DeviceStatus::Disabled;
                d.auth_epoch += 1;
                d.updated_at = now;
            }
            // keyd revokes the sets; the record forgets them, so the next delivery makes anew.
            d.key_set = None;
            d.previous_key_set = None;
            if disabling {
                event(EventType::DeviceDisabled, &*d, now)
            } else {
                Ok(Vec::new())
            }
        })
        .await?;
    crate::keyd::ops::revoke_key_sets(app.keyd, &d.device_id).await?;
    Ok(updated.to_json())
}

/// `POST …/enable`: back to `inactive` with keys and tokens revoked; the terminal id stays.
pub async fn device_enable(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant).await?;
    if d.status != DeviceStatus::Disabled {
        return Err(ApiError::new(
            Code::DeviceState,
            "only a disabled device can be enabled",
        ));
    }
    crate::keyd::ops::revoke_key_sets(app.keyd, &d.device_id).await?;
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
            event(EventType::DeviceEnabled, &*d, now)
        })
        .await?;
    Ok(updated.to_json())
}

/// `POST …/identity-keys`: a new identity key; the old one stops verifying at once.
pub async fn device_identity_key(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant).await?;
    let identity = crate::keyd::ops::rotate_identity(app.keyd, &d.device_id).await?;
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
    Ok(reply::json(&IdentityKeyReplaced {
        device_id: &d.device_id,
        key_id: &identity.key_id,
        secret: ShownOnce(identity.secret()),
        kcv: &identity.kcv,
    }))
}

/// `POST …/rotate-keys`: the next key delivery makes a new set.
pub async fn device_rotate_keys(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant).await?;
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

/// The schema of `POST …/rotate-keys`: the device, and `"key_rotation": "scheduled"`.
pub fn rotation_schema() -> Value {
    reply::with_member(
        crate::domain::replies::DeviceReply::schema(),
        "key_rotation",
        json!({"const": "scheduled"}),
    )
}

/// `PUT …/devices/{device_id}/terminal-parameters`.
pub async fn device_parameters(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let d = device(app, call, Action::ManageMerchant).await?;
    let params = body::object(&call.body)?;
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

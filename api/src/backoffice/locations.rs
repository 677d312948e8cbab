//! A merchant's locations.

use super::*;

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
pub async fn location_create(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
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

fn location(app: &Services, call: &Call<'_>, action: Action) -> Result<Location, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), action)?;
    child(app, call.param(1), ids::is_uuid, |l: &Location| {
        l.merchant_id == m.id
    })
}

/// `GET /merchants/{id}/locations`.
pub fn location_list(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app.db.page::<Location>("locations", &m.id, after, limit)?;
    let items = page.items.iter().map(Location::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /merchants/{id}/locations/{lid}`.
pub fn location_get(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(location(app, call, Action::Read)?.to_json())
}

/// `PATCH /merchants/{id}/locations/{lid}`.
pub async fn location_patch(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
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
pub async fn location_delete(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
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

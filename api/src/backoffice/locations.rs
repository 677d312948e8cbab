//! A merchant's locations.

use super::*;

crate::body! {
    /// A postal address.
    #[derive(Debug)]
    pub struct Address {
        /// First line.
        pub line1: Text<NAME_MAX>,
        /// Second line.
        pub line2: Option<Text<NAME_MAX>>,
        /// City.
        pub city: Text<NAME_MAX>,
        /// Postal code.
        pub postal_code: Text<20>,
        /// Country.
        pub country: Country,
    }
}

impl Address {
    /// As stored and answered.
    fn into_map(self) -> Map<String, Value> {
        let mut out = Map::new();
        out.insert("line1".into(), self.line1.0.into());
        if let Some(l2) = self.line2 {
            out.insert("line2".into(), l2.0.into());
        }
        out.insert("city".into(), self.city.0.into());
        out.insert("postal_code".into(), self.postal_code.0.into());
        out.insert("country".into(), self.country.0.into());
        out
    }
}

crate::body! {
    /// `POST /merchants/{id}/locations`.
    #[derive(Debug)]
    pub struct LocationCreate {
        /// Display name.
        pub name: Text<NAME_MAX>,
        /// Where it is.
        pub address: Address,
        /// Its IANA time zone.
        pub timezone: Option<Timezone>,
    }
}

crate::body! {
    /// `PATCH /merchants/{id}/locations/{lid}`.
    #[derive(Debug)]
    pub struct LocationPatch {
        /// Display name.
        pub name: Option<Text<NAME_MAX>>,
        /// Where it is (replaced whole).
        pub address: Option<Address>,
        /// Its IANA time zone; `null` removes it.
        pub timezone: Nullable<Timezone>,
    }
}

/// `POST /merchants/{id}/locations`.
pub async fn location_create(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant).await?;
    let LocationCreate {
        name,
        address,
        timezone,
    } = body::parse(&call.body)?;
    let l = Location {
        id: ids::uuid()?,
        merchant_id: m.id,
        name: name.into(),
        address: address.into_map(),
        timezone: timezone.map(String::from),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&l)?], conflict("location exists"))
        .await?;
    Ok(l.to_json())
}

async fn location(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    action: Action,
) -> Result<Location, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), action).await?;
    child(app, call.param(1), ids::is_uuid, |l: &Location| {
        l.merchant_id == m.id
    })
    .await
}

/// `GET /merchants/{id}/locations`.
pub async fn location_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read).await?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<Location>("locations", &m.id, after, limit)
        .await?;
    let items = page.items.iter().map(Location::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /merchants/{id}/locations/{lid}`.
pub async fn location_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(location(app, call, Action::Read).await?.to_json())
}

/// `PATCH /merchants/{id}/locations/{lid}`.
pub async fn location_patch(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let l = location(app, call, Action::ManageMerchant).await?;
    let LocationPatch {
        name,
        address,
        timezone,
    } = body::parse(&call.body)?;
    let name = name.map(String::from);
    let address = address.map(Address::into_map);
    let timezone = timezone.change().map(|t| t.map(String::from));
    let now = call.now;
    let updated = app
        .db
        .update::<Location>(&l.id, |l| {
            set(&mut l.name, &name);
            set(&mut l.address, &address);
            if let Some(t) = &timezone {
                l.timezone.clone_from(t);
            }
            l.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /merchants/{id}/locations/{lid}`: refused while a device is placed there.
pub async fn location_delete(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let l = location(app, call, Action::ManageMerchant).await?;
    let used = app
        .db
        .page_filtered::<Device>("devices", &l.merchant_id, None, 1, |d| {
            d.location_id.as_deref() == Some(l.id.as_str())
        })
        .await?;
    if !used.items.is_empty() {
        return Err(conflict("a device is still placed at this location"));
    }
    app.db
        .commit(vec![db::delete::<Location>(&l.id)], conflict("changed"))
        .await?;
    Ok(deleted(&l.id, "location"))
}

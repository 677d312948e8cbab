//! The POS app versions the operator publishes per device model, which terminals learn through
//! `POST /pos/update-check`. Platform admins publish; anyone signed in may read.

use super::*;
use crate::domain::model::AppVersion;
use crate::wire::fields::AppVersionText;

crate::body! {
    /// `PUT /app-versions/{model}`.
    #[derive(Debug)]
    pub struct AppVersionPut {
        /// The newest version.
        pub latest_version: AppVersionText,
        /// Where terminals download it.
        pub url: HttpsUrl,
        /// Terminals below it must update (the platform's minimum when absent).
        pub min_supported_version: Option<AppVersionText>,
    }
}

crate::reply! {
    /// The app published for one device model.
    pub struct AppVersionReply<'a> as "app_version" {
        /// The device model.
        pub model: &'a str,
        /// The newest version.
        pub latest_version: &'a str,
        /// Where terminals download it.
        pub url: &'a str,
        /// Terminals below it must update (`null`: the platform's minimum).
        pub min_supported_version: Option<&'a str>,
        /// Last changed.
        pub updated_at: reply::Time,
    }
}

fn shown(v: &AppVersion) -> Value {
    reply::json(&AppVersionReply {
        model: &v.model,
        latest_version: &v.latest_version,
        url: &v.url,
        min_supported_version: v.min_supported_version.as_deref(),
        updated_at: reply::Time(v.updated_at),
    })
}

/// A device model as a path segment: 1-64 of letters, digits, `.`, `_` and `-`.
fn valid_model(model: &str) -> bool {
    (1..=64).contains(&model.len())
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `PUT /app-versions/{model}`.
pub async fn app_version_put(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    allow(call.who()?, Action::ManagePlatform)?;
    let model = call.param(0);
    if !valid_model(model) {
        return Err(ApiError::not_found());
    }
    let AppVersionPut {
        latest_version,
        url,
        min_supported_version,
    } = body::parse(&call.body)?;
    let latest = String::from(latest_version);
    let minimum = min_supported_version.map(String::from);
    if minimum
        .as_deref()
        .and_then(ids::pos_version)
        .is_some_and(|m| ids::pos_version(&latest).is_some_and(|l| m > l))
    {
        return Err(ApiError::field(
            "min_supported_version",
            "at most latest_version",
        ));
    }
    let v = AppVersion {
        model: model.to_owned(),
        latest_version: latest,
        url: url.into(),
        min_supported_version: minimum,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&v)?], conflict("app version changed"))
        .await?;
    Ok(shown(&v))
}

/// `GET /app-versions`.
pub async fn app_version_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    allow(call.who()?, Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<AppVersion>("app_versions", "", after, limit)
        .await?;
    let items = page.items.iter().map(shown).collect();
    Ok(list(items, page.has_more, "model"))
}

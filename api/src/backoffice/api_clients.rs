//! A merchant's API clients: the secret is shown once, kept salted and hashed.

use super::*;

crate::reply! {
    /// A new API client, its secret shown this once.
    pub struct ApiClientCreated<'a> as "api_client" {
        /// `cli_…`.
        pub client_id: &'a str,
        /// Owning merchant.
        pub merchant_id: &'a str,
        /// A name for people.
        pub name: Option<&'a str>,
        /// Created.
        pub created_at: reply::Time,
        /// 48 characters; only its salted hash is kept.
        pub client_secret: ShownOnce<'a>,
    }
}

crate::body! {
    /// `POST /merchants/{id}/api-clients` (the body may be empty).
    #[derive(Debug)]
    pub struct ApiClientCreate {
        /// A name for people.
        pub name: Option<Text<NAME_MAX>>,
    }
}

/// `POST /merchants/{id}/api-clients`: the secret is in this answer and nowhere else.
pub async fn api_client_create(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant).await?;
    let ApiClientCreate { name } = if call.body.is_empty() {
        ApiClientCreate { name: None }
    } else {
        body::parse(&call.body)?
    };
    let name = name.map(String::from);
    let secret = ids::random_alnum(48)?;
    let salt = ids::random_bytes::<16>()?;
    let c = ApiClient {
        client_id: ids::prefixed("cli_")?,
        merchant_id: m.id,
        name,
        salt: hex::encode_upper(salt),
        secret_hash: hex::encode_upper(secret_hash(&salt, &secret)),
        failures: 0,
        locked_until: 0,
        created_at: call.now,
    };
    app.db
        .commit(
            vec![db::absent::<ApiClient>(&c.client_id), db::put(&c)?],
            conflict("client exists"),
        )
        .await?;
    let shown = c.reply();
    Ok(reply::json(&ApiClientCreated {
        client_id: shown.client_id,
        merchant_id: shown.merchant_id,
        name: shown.name,
        created_at: shown.created_at,
        client_secret: ShownOnce(&secret),
    }))
}

/// `GET /merchants/{id}/api-clients`.
pub async fn api_client_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::Read).await?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<ApiClient>("api_clients", &m.id, after, limit)
        .await?;
    let items = page.items.iter().map(ApiClient::to_json).collect();
    Ok(list(items, page.has_more, "client_id"))
}

/// `DELETE /merchants/{id}/api-clients/{client_id}`: its tokens stop working at once.
pub async fn api_client_delete(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant).await?;
    let c = child(app, call.param(1), ids::is_client_id, |c: &ApiClient| {
        c.merchant_id == m.id
    })
    .await?;
    app.db
        .commit(
            vec![
                db::delete::<ApiClient>(&c.client_id),
                db::delete::<Session>(&c.client_id),
            ],
            conflict("changed"),
        )
        .await?;
    Ok(deleted(&c.client_id, "api_client"))
}

//! Merchants: create, list, get, patch, and terminal-parameter overrides.

use super::*;

/// Free-form merchant settings shown in every terminal's config: small enough that the config
/// stays well inside one envelope.
pub type Settings = body::Object<4096>;

crate::body! {
    /// `POST /merchants`.
    #[derive(Debug)]
    pub struct MerchantCreate {
        /// The reseller the merchant belongs to (fixed for life).
        pub reseller_id: Id,
        /// Display name.
        pub name: Text<NAME_MAX>,
        /// Merchant category code.
        pub mcc: Mcc,
        /// Where the merchant trades.
        pub country: Country,
        /// The currency of every charge.
        pub currency: Currency,
        /// A fee template of a reseller above the merchant.
        pub fee_template_id: Option<Id>,
        /// Tip settings shown to terminals.
        pub tip_info: Option<Settings>,
        /// Tax settings shown to terminals.
        pub tax_info: Option<Settings>,
        /// Surcharge settings shown to terminals.
        pub surcharge_info: Option<Settings>,
    }
}

crate::body! {
    /// `PATCH /merchants/{id}`.
    #[derive(Debug)]
    pub struct MerchantPatch {
        /// Accepted only when it is the current reseller: a merchant cannot be moved.
        pub reseller_id: Option<Id>,
        /// Display name.
        pub name: Option<Text<NAME_MAX>>,
        /// Merchant category code.
        pub mcc: Option<Mcc>,
        /// Where the merchant trades.
        pub country: Option<Country>,
        /// Changes only while the merchant has no charges.
        pub currency: Option<Currency>,
        /// The reseller's decision: `null` removes the template.
        pub fee_template_id: Nullable<Id>,
        /// Tip settings shown to terminals.
        pub tip_info: Option<Settings>,
        /// Tax settings shown to terminals.
        pub tax_info: Option<Settings>,
        /// Surcharge settings shown to terminals.
        pub surcharge_info: Option<Settings>,
    }
}

/// Digits of a merchant's `acquirer_mid` (DE 42 is ans15).
const ACQUIRER_MID_DIGITS: usize = 15;

/// `POST /merchants`.
pub async fn merchant_create(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let MerchantCreate {
        reseller_id,
        name,
        mcc,
        country,
        currency,
        fee_template_id,
        tip_info,
        tax_info,
        surcharge_info,
    } = body::parse(&call.body)?;
    let fee_template_id = fee_template_id.map(String::from);
    let r = reseller(app, p, &reseller_id, Action::ManageReseller).await?;
    let resellers = r.tenancy().resellers;
    if let Some(t) = &fee_template_id {
        check_fee_template(app, t, &resellers, &currency).await?;
    }
    let mut m = Merchant {
        id: ids::uuid()?,
        reseller_id: r.id,
        resellers,
        name: name.into(),
        mcc: mcc.into(),
        country: country.into(),
        currency: currency.into(),
        fee_template_id,
        tip_info: tip_info.unwrap_or_default().0,
        tax_info: tax_info.unwrap_or_default().0,
        surcharge_info: surcharge_info.unwrap_or_default().0,
        merchant_key: ids::prefixed("mk_")?,
        terminal_parameters: None,
        created_at: call.now,
        updated_at: call.now,
        acquirer_mid: ids::random_digits(ACQUIRER_MID_DIGITS)?,
    };
    // The acquirer id is random, so two merchants may draw the same one; the column's UNIQUE
    // index refuses the second, which then draws again (at 10^15 values, a handful of tries
    // is plenty even with millions of merchants).
    let mut tries = 0;
    loop {
        match app
            .db
            .commit(
                [
                    vec![db::put(&m)?],
                    event(EventType::MerchantCreated, &m, call.now)?,
                ]
                .concat(),
                conflict("merchant exists"),
            )
            .await
        {
            Ok(()) => return Ok(m.to_json()),
            Err(e) if e.code() == Code::Conflict && tries < 5 => {
                tries += 1;
                m.id = ids::uuid()?;
                m.acquirer_mid = ids::random_digits(ACQUIRER_MID_DIGITS)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A fee template must belong to a reseller above (or at) the merchant.
/// A fee template must belong to a reseller above (or at) the merchant, and its fixed parts
/// must be in the merchant's currency.
async fn check_fee_template(
    app: &Backoffice<'_>,
    id: &str,
    resellers: &[String],
    currency: &str,
) -> Result<(), ApiError> {
    match app.db.get::<FeeTemplate>(id).await? {
        Some(t) if resellers.contains(&t.reseller_id) => {
            let fixed = t
                .fixed
                .iter()
                .chain(t.per_brand.values().filter_map(|b| b.fixed.as_ref()));
            if fixed.into_iter().all(|f| f.currency == currency) {
                Ok(())
            } else {
                Err(ApiError::field(
                    "fee_template_id",
                    "the template's fixed fees are in another currency",
                ))
            }
        }
        _ => Err(ApiError::field(
            "fee_template_id",
            "no such fee template in the merchant's reseller chain",
        )),
    }
}

/// `GET /merchants`.
pub async fn merchant_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let (limit, after) = call.page()?;
    let page = match &p.scope {
        Scope::Platform => {
            app.db
                .page::<Merchant>("merchants", "", after, limit)
                .await?
        }
        Scope::Reseller(r) => {
            app.db
                .page::<Merchant>("merchant_tree", r, after, limit)
                .await?
        }
        Scope::Merchant(m) => {
            let mine: Merchant = app.db.find(m).await?;
            let show = after.is_none();
            db::Page {
                items: if show { vec![mine] } else { Vec::new() },
                has_more: false,
            }
        }
    };
    let items = page.items.iter().map(Merchant::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /merchants/{id}`.
pub async fn merchant_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(merchant(app, call.who()?, call.param(0), Action::Read)
        .await?
        .to_json())
}

/// `PATCH /merchants/{id}`. Changing the fee template is the reseller's decision.
pub async fn merchant_patch(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let m = merchant(app, p, call.param(0), Action::ManageMerchant).await?;
    let MerchantPatch {
        name,
        mcc,
        country,
        currency,
        fee_template_id,
        tip_info,
        tax_info,
        surcharge_info,
        ..
    } = body::parse_checked(&call.body, |b: &MerchantPatch, p| {
        if b.reseller_id.as_deref().is_some_and(|r| r != m.reseller_id) {
            p.fail_member("reseller_id", "a merchant cannot be moved");
        }
    })?;
    let (name, mcc, country, currency) = (
        name.map(String::from),
        mcc.map(String::from),
        country.map(String::from),
        currency.map(String::from),
    );
    let fee_template = fee_template_id.change().map(|t| t.map(String::from));
    let fee_given = fee_template.is_some();
    let (tip, tax, surcharge) = (
        tip_info.map(|s| s.0),
        tax_info.map(|s| s.0),
        surcharge_info.map(|s| s.0),
    );
    if fee_given {
        allow(p, Action::ManageReseller)?;
    }
    let new_currency = currency.as_deref().unwrap_or(&m.currency);
    if new_currency != m.currency
        && !app
            .db
            .store()
            .list("transactions", &m.id, None, 1)
            .await
            .map_err(|_| ApiError::new(Code::Unavailable, "storage unavailable"))?
            .is_empty()
    {
        return Err(conflict(
            "the merchant has charges in its currency; it cannot change",
        ));
    }
    let template = match &fee_template {
        Some(t) => t.clone(),
        None => m.fee_template_id.clone(),
    };
    if let Some(t) = &template {
        check_fee_template(app, t, &m.resellers, new_currency).await?;
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Merchant>(&m.id, |m| {
            set(&mut m.name, &name);
            set(&mut m.mcc, &mcc);
            set(&mut m.country, &country);
            set(&mut m.currency, &currency);
            if let Some(t) = &fee_template {
                m.fee_template_id.clone_from(t);
            }
            set(&mut m.tip_info, &tip);
            set(&mut m.tax_info, &tax);
            set(&mut m.surcharge_info, &surcharge);
            m.updated_at = now;
            event(EventType::MerchantUpdated, &*m, now)
        })
        .await?;
    Ok(updated.to_json())
}

/// `PUT /merchants/{id}/terminal-parameters`.
pub async fn merchant_parameters(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant).await?;
    let params = body::object(&call.body)?;
    let now = call.now;
    app.db
        .update::<Merchant>(&m.id, |m| {
            m.terminal_parameters = Some(params.clone());
            m.updated_at = now;
            event(EventType::MerchantUpdated, &*m, now)
        })
        .await?;
    Ok(Value::Object(params))
}

//! Merchants: create, list, get, patch, and terminal-parameter overrides.

use super::*;

/// `POST /merchants`.
pub async fn merchant_create(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let reseller_id = input.matching("reseller_id", ids::is_uuid, "a reseller id");
    let name = input.text("name", NAME_MAX);
    let mcc = input.matching("mcc", is_mcc, "four digits");
    let country = input.matching("country", is_country, "an ISO 3166-1 alpha-2 code");
    let currency = input.matching("currency", is_currency, "an ISO 4217 code");
    let fee_template_id = input.opt_matching("fee_template_id", ids::is_uuid, "a fee template id");
    let tip = settings(&mut input, "tip_info");
    let tax = settings(&mut input, "tax_info");
    let surcharge = settings(&mut input, "surcharge_info");
    input.finish()?;
    let r = reseller(
        app,
        p,
        &reseller_id.unwrap_or_default(),
        Action::ManageReseller,
    )?;
    let resellers = r.tenancy().resellers;
    if let Some(t) = &fee_template_id {
        check_fee_template(app, t, &resellers, currency.as_deref().unwrap_or_default())?;
    }
    let m = Merchant {
        id: ids::uuid()?,
        reseller_id: r.id,
        resellers,
        name: name.unwrap_or_default(),
        mcc: mcc.unwrap_or_default(),
        country: country.unwrap_or_default(),
        currency: currency.unwrap_or_default(),
        fee_template_id,
        tip_info: tip.unwrap_or_default(),
        tax_info: tax.unwrap_or_default(),
        surcharge_info: surcharge.unwrap_or_default(),
        merchant_key: ids::prefixed("mk_")?,
        terminal_parameters: None,
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&m)?], conflict("merchant exists"))
        .await?;
    Ok(m.to_json())
}

/// A fee template must belong to a reseller above (or at) the merchant.
/// A fee template must belong to a reseller above (or at) the merchant, and its fixed parts
/// must be in the merchant's currency.
fn check_fee_template(
    app: &Services,
    id: &str,
    resellers: &[String],
    currency: &str,
) -> Result<(), ApiError> {
    match app.db.get::<FeeTemplate>(id)? {
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

/// Free-form merchant settings shown in every terminal's config: an object of at most 4 KiB,
/// so the config stays well inside one envelope.
fn settings(input: &mut Input<'_>, field: &str) -> Option<Map<String, Value>> {
    let value = input.opt_object(field)?;
    if serde_json::to_vec(&value).map_or(usize::MAX, |v| v.len()) > 4096 {
        input.fail(field, "at most 4096 bytes of JSON");
        return None;
    }
    Some(value)
}

/// `GET /merchants`.
pub fn merchant_list(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    allow(p, Action::Read)?;
    let (limit, after) = call.page()?;
    let page = match &p.scope {
        Scope::Platform => app.db.page::<Merchant>("merchants", "", after, limit)?,
        Scope::Reseller(r) => app.db.page::<Merchant>("merchant_tree", r, after, limit)?,
        Scope::Merchant(m) => {
            let mine: Merchant = app.db.find(m)?;
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
pub fn merchant_get(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(merchant(app, call.who()?, call.param(0), Action::Read)?.to_json())
}

/// `PATCH /merchants/{id}`. Changing the fee template is the reseller's decision.
pub async fn merchant_patch(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let m = merchant(app, p, call.param(0), Action::ManageMerchant)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let name = input.opt_text("name", NAME_MAX);
    let mcc = input.opt_matching("mcc", is_mcc, "four digits");
    let country = input.opt_matching("country", is_country, "an ISO 3166-1 alpha-2 code");
    let currency = input.opt_matching("currency", is_currency, "an ISO 4217 code");
    let fee_given = obj.contains_key("fee_template_id");
    let fee_template_id = input.opt_matching("fee_template_id", ids::is_uuid, "a fee template id");
    let tip = settings(&mut input, "tip_info");
    let tax = settings(&mut input, "tax_info");
    let surcharge = settings(&mut input, "surcharge_info");
    if obj.contains_key("reseller_id") && obj.get("reseller_id") != Some(&json!(m.reseller_id)) {
        input.fail("reseller_id", "a merchant cannot be moved");
    }
    input.finish()?;
    if fee_given {
        allow(p, Action::ManageReseller)?;
    }
    let new_currency = currency.as_deref().unwrap_or(&m.currency);
    if new_currency != m.currency
        && !app
            .db
            .store()
            .list("transactions", &m.id, None, 1)
            .map_err(|_| ApiError::new(Code::Unavailable, "storage unavailable"))?
            .is_empty()
    {
        return Err(conflict(
            "the merchant has charges in its currency; it cannot change",
        ));
    }
    let template = if fee_given {
        fee_template_id.clone()
    } else {
        m.fee_template_id.clone()
    };
    if let Some(t) = &template {
        check_fee_template(app, t, &m.resellers, new_currency)?;
    }
    let now = call.now;
    let updated = app
        .db
        .update::<Merchant>(&m.id, |m| {
            set(&mut m.name, &name);
            set(&mut m.mcc, &mcc);
            set(&mut m.country, &country);
            set(&mut m.currency, &currency);
            if fee_given {
                m.fee_template_id.clone_from(&fee_template_id);
            }
            set(&mut m.tip_info, &tip);
            set(&mut m.tax_info, &tax);
            set(&mut m.surcharge_info, &surcharge);
            m.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `PUT /merchants/{id}/terminal-parameters`.
pub async fn merchant_parameters(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let m = merchant(app, call.who()?, call.param(0), Action::ManageMerchant)?;
    let params = input::object(&call.body)?;
    let now = call.now;
    app.db
        .update::<Merchant>(&m.id, |m| {
            m.terminal_parameters = Some(params.clone());
            m.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(Value::Object(params))
}

//! A reseller's fee templates.

use super::*;

fn fee_fields(input: &mut Input<'_>, required: bool) -> Option<FeeFields> {
    let name = if required {
        input.text("name", NAME_MAX)
    } else {
        input.opt_text("name", NAME_MAX)
    };
    let bps = if required {
        input.int("percent_bps", 0..=10_000)
    } else {
        input.opt_int("percent_bps", 0..=10_000)
    };
    let fixed = input.money("fixed", false, true, None);
    let per_brand = input.nested("per_brand", false, |rows| {
        let mut out = BTreeMap::new();
        for brand in rows.keys() {
            if !BRANDS.contains(&brand.as_str()) {
                rows.fail(&brand, &format!("brand is one of {}", BRANDS.join(", ")));
                continue;
            }
            let row = rows.nested(&brand, true, |row| {
                let bps = row.int("percent_bps", 0..=10_000);
                let fixed = row.money("fixed", false, true, None);
                Some(BrandFee {
                    percent_bps: u32::try_from(bps?).ok()?,
                    fixed: fixed.map(Amount::from),
                })
            });
            if let Some(row) = row {
                out.insert(brand, row);
            }
        }
        Some(out)
    });
    Some(FeeFields {
        name,
        percent_bps: bps.and_then(|b| u32::try_from(b).ok()),
        fixed: fixed.map(Amount::from),
        fixed_given: input.has("fixed"),
        per_brand,
    })
}

struct FeeFields {
    name: Option<String>,
    percent_bps: Option<u32>,
    fixed: Option<Amount>,
    fixed_given: bool,
    per_brand: Option<BTreeMap<String, BrandFee>>,
}

/// `POST /resellers/{id}/fee-templates`.
pub async fn fee_template_create(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let fields = fee_fields(&mut input, true);
    input.finish()?;
    let Some(f) = fields else {
        return Err(ApiError::field("", "invalid"));
    };
    let t = FeeTemplate {
        id: ids::uuid()?,
        reseller_id: r.id,
        name: f.name.unwrap_or_default(),
        percent_bps: f.percent_bps.unwrap_or_default(),
        fixed: f.fixed,
        per_brand: f.per_brand.unwrap_or_default(),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&t)?], conflict("fee template exists"))
        .await?;
    Ok(t.to_json())
}

fn fee_template(app: &Services, call: &Call<'_>, action: Action) -> Result<FeeTemplate, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), action)?;
    child(app, call.param(1), ids::is_uuid, |t: &FeeTemplate| {
        t.reseller_id == r.id
    })
}

/// `GET /resellers/{id}/fee-templates`.
pub fn fee_template_list(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<FeeTemplate>("fee_templates", &r.id, after, limit)?;
    let items = page.items.iter().map(FeeTemplate::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /resellers/{id}/fee-templates/{tid}`.
pub fn fee_template_get(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(fee_template(app, call, Action::Read)?.to_json())
}

/// `PATCH /resellers/{id}/fee-templates/{tid}`.
pub async fn fee_template_patch(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let t = fee_template(app, call, Action::ManageReseller)?;
    let obj = input::object(&call.body)?;
    let mut input = Input::new(&obj);
    let fields = fee_fields(&mut input, false);
    input.finish()?;
    let Some(f) = fields else {
        return Err(ApiError::field("", "invalid"));
    };
    let now = call.now;
    let updated = app
        .db
        .update::<FeeTemplate>(&t.id, |t| {
            if let Some(n) = &f.name {
                t.name.clone_from(n);
            }
            if let Some(b) = f.percent_bps {
                t.percent_bps = b;
            }
            if f.fixed_given {
                t.fixed.clone_from(&f.fixed);
            }
            if let Some(rows) = &f.per_brand {
                t.per_brand.clone_from(rows);
            }
            t.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /resellers/{id}/fee-templates/{tid}`: refused while a merchant uses it.
pub async fn fee_template_delete(app: &Services, call: &Call<'_>) -> Result<Value, ApiError> {
    let t = fee_template(app, call, Action::ManageReseller)?;
    let in_use =
        app.db
            .page_filtered::<Merchant>("merchant_tree", &t.reseller_id, None, 1, |m| {
                m.fee_template_id.as_deref() == Some(t.id.as_str())
            })?;
    if !in_use.items.is_empty() {
        return Err(conflict("a merchant still uses this fee template"));
    }
    app.db
        .commit(vec![db::delete::<FeeTemplate>(&t.id)], conflict("changed"))
        .await?;
    Ok(deleted(&t.id, "fee_template"))
}

//! A reseller's fee templates.

use super::*;

crate::enum_field! {
    /// A card brand with its own fee row.
    pub enum Brand {
        Visa = "visa",
        Mastercard = "mastercard",
        Amex = "amex",
        Discover = "discover",
        Unknown = "unknown",
    }
}

/// A fee rate in basis points: 0 to 100 %.
type Bps = body::Int<0, 10_000>;

crate::body! {
    /// A brand's own fee row.
    #[derive(Debug)]
    pub struct BrandRow {
        /// The rate, in basis points of the amount.
        pub percent_bps: Bps,
        /// A fixed part, in the merchant's currency.
        pub fixed: Option<MoneyOrZero>,
    }
}

/// Rows by brand.
type PerBrand = body::Keyed<Brand, BrandRow>;

crate::body! {
    /// `POST /resellers/{id}/fee-templates`.
    #[derive(Debug)]
    pub struct FeeTemplateCreate {
        /// Display name.
        pub name: Text<NAME_MAX>,
        /// The rate, in basis points of the amount.
        pub percent_bps: Bps,
        /// A fixed part, in the merchant's currency.
        pub fixed: Option<MoneyOrZero>,
        /// Rows that replace the rate and fixed part for a brand.
        pub per_brand: Option<PerBrand>,
    }
}

crate::body! {
    /// `PATCH /resellers/{id}/fee-templates/{tid}`.
    #[derive(Debug)]
    pub struct FeeTemplatePatch {
        /// Display name.
        pub name: Option<Text<NAME_MAX>>,
        /// The rate, in basis points of the amount.
        pub percent_bps: Option<Bps>,
        /// A fixed part; `null` removes it.
        pub fixed: Nullable<MoneyOrZero>,
        /// Rows by brand, replaced whole.
        pub per_brand: Option<PerBrand>,
    }
}

fn rows(per_brand: PerBrand) -> BTreeMap<String, BrandFee> {
    per_brand
        .into_entries()
        .into_iter()
        .map(|(brand, row)| {
            let fee = BrandFee {
                percent_bps: bps(row.percent_bps),
                fixed: row.fixed.map(|f| Amount::from(f.0)),
            };
            (brand.as_str().to_owned(), fee)
        })
        .collect()
}

fn bps(b: Bps) -> u32 {
    u32::try_from(b.0).unwrap_or_default()
}

/// `POST /resellers/{id}/fee-templates`.
pub async fn fee_template_create(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::ManageReseller).await?;
    let f: FeeTemplateCreate = body::parse(&call.body)?;
    let t = FeeTemplate {
        id: ids::uuid()?,
        reseller_id: r.id,
        name: f.name.into(),
        percent_bps: bps(f.percent_bps),
        fixed: f.fixed.map(|m| Amount::from(m.0)),
        per_brand: f.per_brand.map(rows).unwrap_or_default(),
        created_at: call.now,
        updated_at: call.now,
    };
    app.db
        .commit(vec![db::put(&t)?], conflict("fee template exists"))
        .await?;
    Ok(t.to_json())
}

async fn fee_template(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    action: Action,
) -> Result<FeeTemplate, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), action).await?;
    child(app, call.param(1), ids::is_uuid, |t: &FeeTemplate| {
        t.reseller_id == r.id
    })
    .await
}

/// `GET /resellers/{id}/fee-templates`.
pub async fn fee_template_list(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let r = reseller(app, call.who()?, call.param(0), Action::Read).await?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<FeeTemplate>("fee_templates", &r.id, after, limit)
        .await?;
    let items = page.items.iter().map(FeeTemplate::to_json).collect();
    Ok(list(items, page.has_more, "id"))
}

/// `GET /resellers/{id}/fee-templates/{tid}`.
pub async fn fee_template_get(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(fee_template(app, call, Action::Read).await?.to_json())
}

/// `PATCH /resellers/{id}/fee-templates/{tid}`.
pub async fn fee_template_patch(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let t = fee_template(app, call, Action::ManageReseller).await?;
    let f: FeeTemplatePatch = body::parse(&call.body)?;
    let name = f.name.map(String::from);
    let percent_bps = f.percent_bps.map(bps);
    let fixed = f.fixed.change().map(|m| m.map(|m| Amount::from(m.0)));
    let per_brand = f.per_brand.map(rows);
    let now = call.now;
    let updated = app
        .db
        .update::<FeeTemplate>(&t.id, |t| {
            if let Some(n) = &name {
                t.name.clone_from(n);
            }
            if let Some(b) = percent_bps {
                t.percent_bps = b;
            }
            if let Some(f) = &fixed {
                t.fixed.clone_from(f);
            }
            if let Some(rows) = &per_brand {
                t.per_brand.clone_from(rows);
            }
            t.updated_at = now;
            Ok(Vec::new())
        })
        .await?;
    Ok(updated.to_json())
}

/// `DELETE /resellers/{id}/fee-templates/{tid}`: refused while a merchant uses it.
pub async fn fee_template_delete(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let t = fee_template(app, call, Action::ManageReseller).await?;
    let in_use = app
        .db
        .page_filtered::<Merchant>("merchant_tree", &t.reseller_id, None, 1, |m| {
            m.fee_template_id.as_deref() == Some(t.id.as_str())
        })
        .await?;
    if !in_use.items.is_empty() {
        return Err(conflict("a merchant still uses this fee template"));
    }
    app.db
        .commit(vec![db::delete::<FeeTemplate>(&t.id)], conflict("changed"))
        .await?;
    Ok(deleted(&t.id, "fee_template"))
}

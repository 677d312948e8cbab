//! Reseller users' pages: merchants, sub-resellers, fee templates, branding and domains,
//! users.

use serde_json::Value;

use super::{Ctx, at, items, money};
use crate::error::ApiError;
use crate::portal::html::{self, text};
use crate::portal::{Api, WebResponse};

pub(super) async fn merchants<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let list = c.get("/merchants?limit=100").await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|m| {
            vec![
                text(at(m, "name")),
                text(at(m, "id")),
                text(at(m, "mcc")),
                text(at(m, "country")),
                text(at(m, "currency")),
            ]
        })
        .collect();
    Ok(c.show(
        "Merchants",
        &html::table(&["Name", "Id", "MCC", "Country", "Currency"], &rows),
    ))
}

pub(super) async fn resellers<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let list = c.get("/resellers?limit=100").await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|r| {
            vec![
                text(at(r, "name")),
                text(at(r, "id")),
                text(at(r, "parent_id")),
            ]
        })
        .collect();
    Ok(c.show("Resellers", &html::table(&["Name", "Id", "Above"], &rows)))
}

pub(super) async fn fee_templates<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let r = c.reseller()?;
    let list = c
        .get(&format!("/resellers/{r}/fee-templates?limit=100"))
        .await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|t| {
            vec![
                text(at(t, "name")),
                text(at(t, "percent_bps")),
                t.get("fixed").map_or_else(String::new, money),
            ]
        })
        .collect();
    let mut body = html::table(&["Name", "Percent (basis points)", "Fixed"], &rows);
    body.push_str("<h2>Add a fee template</h2>");
    body.push_str(
        &c.form(
            "/portal/fee-templates",
            &[
                html::input("name", "Name", "text", "", true),
                html::input("percent_bps", "Basis points", "number", "", true),
            ]
            .concat(),
            "Add",
        ),
    );
    Ok(c.show("Fee templates", &body))
}

pub(super) async fn branding<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let r = c.reseller()?;
    let b = c.get(&format!("/resellers/{r}/branding")).await?;
    let d = c.get(&format!("/resellers/{r}/domains")).await?;
    let value = |k: &str| at(&b, k).as_str().unwrap_or_default().to_owned();
    let mut body = c.form(
        "/portal/branding",
        &[
            html::input(
                "display_name",
                "Name",
                "text",
                &value("display_name"),
                false,
            ),
            html::input(
                "logo_url",
                "Logo (https address)",
                "url",
                &value("logo_url"),
                false,
            ),
            html::input(
                "primary_color",
                "Colour (#RRGGBB)",
                "text",
                &value("primary_color"),
                false,
            ),
            html::input(
                "support_email",
                "Support e-mail",
                "email",
                &value("support_email"),
                false,
            ),
        ]
        .concat(),
        "Save branding",
    );
    let hosts = at(&d, "portal_hosts")
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    body.push_str("<h2>Portal domains</h2>");
    body.push_str(&c.form(
        "/portal/branding/domains",
        &html::input(
            "portal_hosts",
            "Host names, comma separated",
            "text",
            &hosts,
            false,
        ),
        "Save domains",
    ));
    Ok(c.show("Branding", &body))
}

pub(super) async fn users<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let r = c.reseller()?;
    let list = c.get(&format!("/resellers/{r}/users?limit=100")).await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|u| {
            let id = at(u, "id").as_str().unwrap_or_default();
            vec![
                text(at(u, "email")),
                text(at(u, "name")),
                text(at(u, "role")),
                c.form(
                    &format!("/portal/users/{id}/password"),
                    &html::input("password", "New password", "password", "", true),
                    "Set password",
                ),
            ]
        })
        .collect();
    let mut body = html::table(&["E-mail", "Name", "Role", "Portal password"], &rows);
    body.push_str("<h2>Add an admin</h2>");
    body.push_str(
        &c.form(
            "/portal/users",
            &[
                html::input("email", "E-mail address", "email", "", true),
                html::input("name", "Name", "text", "", false),
                html::input(
                    "password",
                    "Password (12 characters or more)",
                    "password",
                    "",
                    true,
                ),
            ]
            .concat(),
            "Add",
        ),
    );
    Ok(c.show("Users", &body))
}

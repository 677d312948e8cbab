//! Merchant users' pages: overview with sales by day, devices, charges, settlements,
//! locations.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;

use super::{Ctx, at, items, money, when};
use crate::error::ApiError;
use crate::portal::html::{self, esc, text};
use crate::portal::{Api, WebResponse};

pub(super) async fn overview<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let m = c.merchant()?;
    let merchant = c.get(&format!("/merchants/{m}")).await?;
    // Sales of the last 14 days, by day: approved charges (later refunds shown apart).
    let since = c.req.now - 14 * 86_400;
    let mut by_day: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for d in 0..14 {
        let day = crate::wire::time::rfc3339(since + (d + 1) * 86_400);
        by_day.insert(day.chars().take(10).collect(), (0, 0));
    }
    let mut after = String::new();
    let mut currency = String::new();
    'pages: for _ in 0..20 {
        let page = c
            .get(&format!("/charges?merchant_id={m}&limit=100{after}"))
            .await?;
        let list = items(&page);
        for ch in &list {
            let created = at(ch, "created_at").as_str().unwrap_or_default();
            if crate::wire::time::parse_rfc3339(created).is_some_and(|t| t < since) {
                break 'pages;
            }
            let counted = matches!(
                at(ch, "status").as_str(),
                Some("approved" | "settled" | "partially_refunded" | "refunded")
            );
            if let (true, Some(slot)) = (
                counted,
                by_day.get_mut(&created.chars().take(10).collect::<String>()),
            ) {
                let value: u64 = at(ch, "amount.value")
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                slot.0 += value;
                slot.1 += 1;
                currency = at(ch, "amount.currency")
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        }
        match (at(&page, "has_more").as_bool(), list.last()) {
            (Some(true), Some(last)) => {
                after = format!(
                    "&starting_after={}",
                    at(last, "charge_id").as_str().unwrap_or_default()
                );
            }
            _ => break,
        }
    }
    let total: u64 = by_day.values().map(|(v, _)| v).sum();
    let count: u64 = by_day.values().map(|(_, n)| n).sum();
    let currency = if currency.is_empty() {
        at(&merchant, "currency")
            .as_str()
            .unwrap_or_default()
            .to_owned()
    } else {
        currency
    };
    let figure = |v: u64| money(&json!({"value": v.to_string(), "currency": currency}));
    let mut body = format!(
        r#"<div class="cards"><div class="card"><div>Sales, last 14 days</div><div class="figure">{}</div></div><div class="card"><div>Charges</div><div class="figure">{count}</div></div></div><h2>Sales by day</h2>"#,
        figure(total)
    );
    body.push_str(&chart(&by_day, &figure));
    body.push_str(r#"<p><a href="/portal/charges">All charges</a></p>"#);
    Ok(c.show(at(&merchant, "name").as_str().unwrap_or("Overview"), &body))
}

/// Bars of sales by day, as an SVG drawn here (no script), with a text table for screen
/// readers.
fn chart(by_day: &BTreeMap<String, (u64, u64)>, figure: &dyn Fn(u64) -> String) -> String {
    let max = by_day.values().map(|(v, _)| *v).max().unwrap_or(0).max(1);
    let (w, h, bar) = (700u64, 180u64, 42u64);
    let mut svg = format!(
        r#"<svg class="chart" role="img" aria-label="Sales by day" viewBox="0 0 {w} {}" width="100%">"#,
        h + 30
    );
    for (i, (day, (value, _))) in (0u64..).zip(by_day.iter()) {
        let height = value * h / max;
        let x = i * (bar + 8) + 4;
        let _ = write!(
            svg,
            r#"<rect x="{x}" y="{}" width="{bar}" height="{height}"><title>{} {}</title></rect><text x="{}" y="{}">{}</text>"#,
            h - height,
            esc(day),
            figure(*value),
            x + 2,
            h + 16,
            esc(day.get(5..).unwrap_or_default()),
        );
    }
    svg.push_str("</svg>");
    let rows: Vec<Vec<String>> = by_day
        .iter()
        .filter(|(_, (v, _))| *v > 0)
        .map(|(day, (v, n))| vec![esc(day), n.to_string(), figure(*v)])
        .collect();
    format!(
        "{svg}<details><summary>As a table</summary>{}</details>",
        html::table(&["Day", "Charges", "Sales"], &rows)
    )
}

pub(super) async fn devices<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let m = c.merchant()?;
    let list = c.get(&format!("/merchants/{m}/devices?limit=100")).await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|d| {
            let id = at(d, "device_id").as_str().unwrap_or_default();
            let status = at(d, "device_status").as_str().unwrap_or_default();
            let mut actions = String::new();
            let toggle = if status == "disabled" {
                ("enable", "Enable")
            } else {
                ("disable", "Disable")
            };
            actions.push_str(&c.form(&format!("/portal/devices/{id}/{}", toggle.0), "", toggle.1));
            if status == "activated" {
                actions.push_str(&c.form(
                    &format!("/portal/devices/{id}/rotate-keys"),
                    "",
                    "Rotate keys",
                ));
            }
            vec![
                esc(id),
                text(at(d, "model")),
                text(at(d, "label")),
                esc(status),
                text(at(d, "connectivity")),
                when(at(d, "last_seen_at")),
                text(at(d, "app_version")),
                actions,
            ]
        })
        .collect();
    let mut body = html::table(
        &[
            "Device",
            "Model",
            "Label",
            "Status",
            "Connectivity",
            "Last seen",
            "App",
            "",
        ],
        &rows,
    );
    body.push_str("<h2>Claim a terminal</h2><p>Enter the code the terminal shows.</p>");
    body.push_str(&c.form(
        "/portal/devices",
        &format!(
            r#"<input type="hidden" name="action" value="claim">{}{}"#,
            html::input("device_id", "Device", "text", "", true),
            html::input("pairing_code", "Pairing code", "text", "", true),
        ),
        "Claim",
    ));
    body.push_str("<h2>Register a device</h2>");
    body.push_str(&c.form(
        "/portal/devices",
        &format!(
            "{}{}{}",
            html::input("device_id", "Device id", "text", "", true),
            html::input("model", "Model", "text", "", true),
            html::input("serial", "Serial number", "text", "", true),
        ),
        "Register",
    ));
    Ok(c.show("Devices", &body))
}

pub(super) async fn charges<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let m = c.merchant()?;
    let status = c.req.query("status").unwrap_or_default();
    let (from, to) = (
        c.req.query("from").unwrap_or_default(),
        c.req.query("to").unwrap_or_default(),
    );
    // The page's own filters (kept in the "Older" link), and the API's: whole days, UTC. (In
    // a block: a serializer is not `Send`, and must be gone before the call below.)
    let (filters, query) = {
        let mut filters = form_urlencoded::Serializer::new(String::new());
        let mut asked = form_urlencoded::Serializer::new(String::new());
        asked.append_pair("limit", "50");
        for (name, value, api) in [
            ("status", status, status.to_owned()),
            ("from", from, format!("{from}T00:00:00Z")),
            ("to", to, format!("{to}T23:59:59Z")),
        ] {
            if !value.is_empty() {
                filters.append_pair(name, value);
                asked.append_pair(name, &api);
            }
        }
        let filters = filters.finish();
        if let Some(after) = c.req.query("starting_after") {
            asked.append_pair("starting_after", after);
        }
        (
            filters,
            format!("/merchants/{m}/transactions?{}", asked.finish()),
        )
    };
    let list = c.get(&query).await?;
    let data = items(&list);
    let rows: Vec<Vec<String>> = data
        .iter()
        .map(|t| {
            // A refund links to its charge's page, where it is listed.
            let kind = if at(t, "type").as_str() == Some("refund") {
                "Refund"
            } else {
                "Charge"
            };
            vec![
                format!(
                    r#"<a href="/portal/charges/{}">{}</a>"#,
                    text(at(t, "charge_id")),
                    text(at(t, "id"))
                ),
                kind.to_owned(),
                text(at(t, "status")),
                money(at(t, "amount")),
                text(at(t, "terminal_id")),
                when(at(t, "created_at")),
            ]
        })
        .collect();
    let options: String = [
        "",
        "approved",
        "declined",
        "failed",
        "cancelled",
        "settled",
        "partially_refunded",
        "refunded",
        "succeeded",
    ]
    .iter()
    .map(|s| {
        format!(
            r#"<option value="{s}"{}>{}</option>"#,
            if *s == status { " selected" } else { "" },
            if s.is_empty() { "any" } else { s }
        )
    })
    .collect();
    let mut body = format!(
        r#"<form method="get" action="/portal/charges"><label>Status <select name="status">{options}</select></label>{}{}<button type="submit" class="secondary">Filter</button></form>"#,
        html::input("from", "From", "date", from, false),
        html::input("to", "To", "date", to, false),
    );
    body.push_str(&html::table(
        &["Id", "Kind", "Status", "Amount", "Terminal", "Created"],
        &rows,
    ));
    if at(&list, "has_more").as_bool() == Some(true)
        && let Some(next) = at(&list, "next_cursor").as_str()
    {
        let _ = write!(
            body,
            r#"<p><a href="/portal/charges?{}">Older</a></p>"#,
            esc(&format!(
                "{filters}&starting_after={}",
                form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
            ))
        );
    }
    Ok(c.show("Charges", &body))
}

pub(super) async fn charge<A: Api>(c: &Ctx<'_, A>, id: &str) -> Result<WebResponse, ApiError> {
    let ch = c.get(&format!("/charges/{id}")).await?;
    let rows = [
        ("Status", text(at(&ch, "status"))),
        ("Amount", money(at(&ch, "amount"))),
        ("Refunded", money(at(&ch, "amount_refunded"))),
        (
            "Card",
            format!(
                "{} {} ({})",
                text(at(&ch, "card.brand")),
                text(at(&ch, "card.last4")),
                text(at(&ch, "card.entry_mode"))
            ),
        ),
        ("Authorization", text(at(&ch, "authorization_code"))),
        ("Terminal", text(at(&ch, "terminal_id"))),
        ("Created", when(at(&ch, "created_at"))),
        ("Settled", when(at(&ch, "settled_at"))),
        ("Fee", money(at(&ch, "fee"))),
    ];
    let mut body = String::from("<dl>");
    for (k, v) in rows {
        let _ = write!(body, "<dt>{k}</dt><dd>{v}</dd>");
    }
    body.push_str("</dl>");
    let status = at(&ch, "status").as_str().unwrap_or_default();
    let currency = at(&ch, "amount.currency").as_str().unwrap_or_default();
    if matches!(status, "approved" | "settled" | "partially_refunded") {
        body.push_str("<h2>Refund</h2><p>Leave the amount empty to refund what is left.</p>");
        body.push_str(&c.form(
            &format!("/portal/charges/{id}/refund"),
            &format!(
                r#"{}<input type="hidden" name="currency" value="{}">"#,
                html::input("amount", &format!("Amount ({currency})"), "text", "", false),
                esc(currency)
            ),
            "Refund",
        ));
    }
    if status == "approved" {
        body.push_str("<h2>Cancel</h2><p>Voids the charge before its batch is closed.</p>");
        body.push_str(&c.form(&format!("/portal/charges/{id}/cancel"), "", "Cancel charge"));
    }
    let refunds: Vec<Vec<String>> = at(&ch, "refunds")
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            vec![
                text(at(r, "refund_id")),
                text(at(r, "status")),
                money(at(r, "amount")),
                when(at(r, "created_at")),
            ]
        })
        .collect();
    if !refunds.is_empty() {
        body.push_str("<h2>Refunds</h2>");
        body.push_str(&html::table(
            &["Refund", "Status", "Amount", "Created"],
            &refunds,
        ));
    }
    Ok(c.show(&format!("Charge {id}"), &body))
}

pub(super) async fn settlements<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let m = c.merchant()?;
    let list = c
        .get(&format!("/merchants/{m}/settlements?limit=50"))
        .await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|s| {
            vec![
                text(at(s, "settlement_id")),
                text(at(s, "count")),
                money(at(s, "total")),
                when(at(s, "created_at")),
            ]
        })
        .collect();
    let mut body = c.form("/portal/settlements", "", "Close the current batch");
    body.push_str(&html::table(
        &["Settlement", "Charges", "Total", "Closed"],
        &rows,
    ));
    Ok(c.show("Settlements", &body))
}

pub(super) async fn locations<A: Api>(c: &Ctx<'_, A>) -> Result<WebResponse, ApiError> {
    let m = c.merchant()?;
    let list = c
        .get(&format!("/merchants/{m}/locations?limit=100"))
        .await?;
    let rows: Vec<Vec<String>> = items(&list)
        .iter()
        .map(|l| {
            let a = &at(l, "address");
            vec![
                text(at(l, "name")),
                format!(
                    "{}, {} {}, {}",
                    text(at(a, "line1")),
                    text(at(a, "postal_code")),
                    text(at(a, "city")),
                    text(at(a, "country"))
                ),
            ]
        })
        .collect();
    let mut body = html::table(&["Name", "Address"], &rows);
    body.push_str("<h2>Add a location</h2>");
    body.push_str(
        &c.form(
            "/portal/locations",
            &[
                html::input("name", "Name", "text", "", true),
                html::input("line1", "Street", "text", "", true),
                html::input("postal_code", "Postal code", "text", "", true),
                html::input("city", "City", "text", "", true),
                html::input("country", "Country (2 letters)", "text", "", true),
            ]
            .concat(),
            "Add",
        ),
    );
    Ok(c.show("Locations", &body))
}

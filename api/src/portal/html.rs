//! HTML for the portal: one escaping function every value goes through, and the page frame
//! in the host's branding.
//!
//! Pages are built with `format!` around [`esc`]: a value never reaches the page unescaped,
//! and attributes are always double-quoted, so `esc` covering `& < > " '` is enough.

use std::fmt::Write as _;

use hyper::StatusCode;
use serde_json::Value;

use super::{WebResponse, page};
use crate::domain::model::Reseller;
use crate::error::ApiError;

/// Text made safe for an element's content or a double-quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A JSON value as page text: strings as they are, `null` as a dash, others as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => "–".to_owned(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    }
}

/// How a host's pages look: the reseller's branding, or the platform's.
#[derive(Debug, Clone)]
pub struct Brand {
    /// The name in the header and titles.
    pub name: String,
    /// A logo over HTTPS.
    pub logo_url: Option<String>,
    /// `#RRGGBB` of the header bar.
    pub colour: String,
    /// Where to ask for help.
    pub support_email: Option<String>,
}

impl Brand {
    /// The branding of a host's owner (`None`: the platform's own hosts).
    pub fn of(owner: Option<&Reseller>) -> Self {
        let field = |k: &str| {
            owner
                .and_then(|r| r.branding.as_ref())
                .and_then(|b| b.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Self {
            name: field("display_name")
                .or_else(|| owner.map(|r| r.name.clone()))
                .unwrap_or_else(|| "VioPay".to_owned()),
            logo_url: field("logo_url"),
            // Validated as #RRGGBB when set (backoffice::branding); anything else is ignored.
            colour: field("primary_color")
                .filter(|c| {
                    c.len() == 7
                        && c.starts_with('#')
                        && c[1..].bytes().all(|b| b.is_ascii_hexdigit())
                })
                .unwrap_or_else(|| "#1f3a5f".to_owned()),
            support_email: field("support_email"),
        }
    }
}

/// Who is signed in, for the header.
#[derive(Debug, Clone, Copy)]
pub struct Viewer<'a> {
    /// E-mail or subject.
    pub name: &'a str,
    /// The session's CSRF token (for the sign-out form).
    pub csrf: &'a str,
    /// Which navigation to show.
    pub reseller: bool,
    /// The page's path (its link in the navigation is marked current).
    pub path: &'a str,
}

/// A whole page: the branded header (with navigation and sign-out when someone is signed
/// in), a notice if any, and `body`.
pub fn frame(
    brand: &Brand,
    title: &str,
    viewer: Option<Viewer<'_>>,
    notice: Option<&str>,
    body: &str,
) -> String {
    let mut out = String::new();
    let logo = brand.logo_url.as_deref().map_or_else(String::new, |u| {
        format!(r#"<img class="logo" src="{}" alt="">"#, esc(u))
    });
    let _ = write!(
        out,
        r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · {name}</title>
<link rel="stylesheet" href="/portal/assets/portal.css">
<link rel="stylesheet" href="/portal/theme.css">
</head><body>
<a class="skip" href="#main">Skip to the content</a>
<header><div class="bar">{logo}<span class="brand">{name}</span>"##,
        title = esc(title),
        name = esc(&brand.name),
    );
    if let Some(v) = viewer {
        let links: &[(&str, &str)] = if v.reseller {
            &[
                ("/portal/", "Merchants"),
                ("/portal/resellers", "Resellers"),
                ("/portal/fee-templates", "Fee templates"),
                ("/portal/branding", "Branding"),
                ("/portal/users", "Users"),
            ]
        } else {
            &[
                ("/portal/", "Overview"),
                ("/portal/devices", "Devices"),
                ("/portal/charges", "Charges"),
                ("/portal/settlements", "Settlements"),
                ("/portal/locations", "Locations"),
            ]
        };
        out.push_str(r#"<nav aria-label="Main">"#);
        for (href, label) in links {
            let current = if v.path.trim_end_matches('/') == href.trim_end_matches('/') {
                r#" aria-current="page""#
            } else {
                ""
            };
            let _ = write!(out, r#"<a href="{href}"{current}>{label}</a>"#);
        }
        let _ = write!(
            out,
            r#"</nav><form class="signout" method="post" action="/portal/logout"><input type="hidden" name="csrf" value="{csrf}"><span class="who">{who}</span> <button type="submit">Sign out</button></form>"#,
            csrf = esc(v.csrf),
            who = esc(v.name),
        );
    }
    out.push_str("</div></header>\n<main id=\"main\">\n");
    let _ = writeln!(out, "<h1>{}</h1>", esc(title));
    if let Some(n) = notice {
        let _ = write!(out, r#"<p class="notice" role="status">{}</p>"#, esc(n));
    }
    out.push_str(body);
    out.push_str("\n</main>");
    if let Some(mail) = &brand.support_email {
        let _ = write!(
            out,
            r#"<footer>Help: <a href="mailto:{m}">{m}</a></footer>"#,
            m = esc(mail)
        );
    }
    out.push_str("</body></html>\n");
    out
}

/// A table of `rows` (already escaped cells) under `headings`.
pub fn table(headings: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return r#"<p class="empty">Nothing here yet.</p>"#.to_owned();
    }
    let mut out = String::from("<table><thead><tr>");
    for h in headings {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(h));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A form posting to `action` with the CSRF token, `fields` (already built inputs) and a
/// submit button.
pub fn form(action: &str, csrf: &str, fields: &str, button: &str) -> String {
    format!(
        r#"<form method="post" action="{action}"><input type="hidden" name="csrf" value="{csrf}">{fields}<button type="submit">{button}</button></form>"#,
        action = esc(action),
        csrf = esc(csrf),
        button = esc(button),
    )
}

/// A labelled input.
pub fn input(name: &str, label: &str, kind: &str, value: &str, required: bool) -> String {
    format!(
        r#"<label>{label} <input name="{name}" type="{kind}" value="{value}"{req}></label>"#,
        label = esc(label),
        name = esc(name),
        kind = esc(kind),
        value = esc(value),
        req = if required { " required" } else { "" },
    )
}

/// The host's stylesheet: its brand colour (a stylesheet of its own, as the CSP allows no
/// inline style).
pub fn theme(brand: &Brand) -> String {
    format!(":root {{ --brand: {}; }}\n", brand.colour)
}

/// The page an error becomes: its status and the API's own words (which never carry a
/// secret), in plain branding (the host may be the unknown one).
pub fn error_page(error: &ApiError) -> WebResponse {
    let status =
        StatusCode::from_u16(error.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let title = match status.as_u16() {
        401 => "Please sign in",
        403 => "Not allowed",
        404 => "Not found",
        409 => "Not possible now",
        429 => "Too many requests",
        400..=499 => "Cannot do that",
        _ => "Something went wrong",
    };
    let body = format!(
        r#"<p>{}</p><p><a href="/portal/">Back to the portal</a></p>"#,
        esc(error.message())
    );
    page(status, frame(&Brand::of(None), title, None, None, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_what_breaks_out_of_text_and_quoted_attributes() {
        assert_eq!(
            esc(r#"<a href="x" onclick='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
        assert_eq!(text(&Value::Null), "–");
        assert_eq!(text(&serde_json::json!("<b>")), "&lt;b&gt;");
    }

    #[test]
    fn a_colour_that_is_not_rrggbb_falls_back() {
        let mut r: Reseller = serde_json::from_value(serde_json::json!({
            "id": "r", "name": "R<", "parent_id": null, "ancestors": [],
            "branding": {"primary_color": "red;}"}, "portal_hosts": [],
            "created_at": 0, "updated_at": 0
        }))
        .unwrap();
        assert_eq!(Brand::of(Some(&r)).colour, "#1f3a5f");
        assert_eq!(Brand::of(Some(&r)).name, "R<");
        r.branding =
            Some(serde_json::from_value(serde_json::json!({"primary_color": "#aa00FF"})).unwrap());
        assert_eq!(Brand::of(Some(&r)).colour, "#aa00FF");
        assert!(frame(&Brand::of(Some(&r)), "T", None, None, "").contains("R&lt;"));
    }
}

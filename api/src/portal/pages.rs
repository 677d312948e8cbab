//! What signed-in people see and do. Every read and every change is an API call made as them
//! ([`super::Api`]); a page only arranges the answers. Changes are forms posted back to the
//! page's own address with the session's CSRF token, answered with a redirect (so a reload
//! does not repeat them) carrying a notice from a fixed list.

mod merchant;
mod reseller;

use hyper::StatusCode;
use serde_json::{Value, json};

use super::html::{self, Brand, Viewer, esc, text};
use super::signin::{self, Visitor};
use super::{Api, Portal, WebRequest, WebResponse, field, page, redirect};
use crate::error::{ApiError, Code};

/// One page request with who asks.
struct Ctx<'a, A: Api> {
    api: &'a A,
    req: &'a WebRequest<'a>,
    v: &'a Visitor,
    brand: &'a Brand,
}

impl<A: Api> Ctx<'_, A> {
    async fn get(&self, path: &str) -> Result<Value, ApiError> {
        self.api
            .call(&self.v.claims, self.req.source, "GET", path, None)
            .await
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, ApiError> {
        self.api
            .call(&self.v.claims, self.req.source, method, path, body)
            .await
    }

    fn show(&self, title: &str, body: &str) -> WebResponse {
        let notice = self.req.query("notice").and_then(notice);
        let viewer = Viewer {
            name: self.v.shown(),
            csrf: &self.v.csrf,
            reseller: self.v.merchant_id.is_none(),
            path: self.req.path,
        };
        page(
            StatusCode::OK,
            html::frame(self.brand, title, Some(viewer), notice, body),
        )
    }

    fn form(&self, action: &str, fields: &str, button: &str) -> String {
        html::form(action, &self.v.csrf, fields, button)
    }

    fn merchant(&self) -> Result<&str, ApiError> {
        self.v
            .merchant_id
            .as_deref()
            .ok_or_else(ApiError::not_found)
    }

    fn reseller(&self) -> Result<&str, ApiError> {
        self.v
            .reseller_id
            .as_deref()
            .ok_or_else(ApiError::not_found)
    }
}

/// The notices a redirect may ask for: fixed text, so no address can make a page say
/// something of its choosing.
fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "claimed" => "Terminal claimed: it continues its set-up on its own.",
        "disabled" => "Device disabled.",
        "enabled" => "Device enabled.",
        "rotated" => "New keys will be installed at the terminal's next key download.",
        "refunded" => "Refund done.",
        "cancelled" => "Charge cancelled.",
        "settled" => "Batch closed.",
        "location" => "Location added.",
        "branding" => "Branding saved.",
        "domains" => "Portal domains saved.",
        "template" => "Fee template added.",
        "user" => "User added: they can sign in now.",
        "password" => "Password set.",
        _ => return None,
    })
}

/// `/portal/…` for a signed-in person (others are sent to sign in).
///
/// # Errors
/// What the API answered, as a page.
pub async fn serve(
    p: &Portal<'_>,
    api: &impl Api,
    req: &WebRequest<'_>,
    brand: &Brand,
) -> Result<WebResponse, ApiError> {
    let Some(v) = signin::visitor(p, req).await? else {
        return Ok(redirect("/portal/login"));
    };
    let c = Ctx {
        api,
        req,
        v: &v,
        brand,
    };
    let path = req.path.trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').skip(2).collect();
    if req.method == "POST" {
        let form = req.form();
        if !v.sent(req, &form) {
            return Err(ApiError::new(
                Code::Forbidden,
                "the form expired or came from elsewhere: reload the page",
            ));
        }
        return act(&c, &parts, &form).await;
    }
    let merchant = v.merchant_id.is_some();
    match (merchant, parts.as_slice()) {
        (true, [] | [""]) => merchant::overview(&c).await,
        (true, ["devices"]) => merchant::devices(&c).await,
        (true, ["charges"]) => merchant::charges(&c).await,
        (true, ["charges", id]) => merchant::charge(&c, id).await,
        (true, ["settlements"]) => merchant::settlements(&c).await,
        (true, ["locations"]) => merchant::locations(&c).await,
        (false, [] | [""]) => reseller::merchants(&c).await,
        (false, ["resellers"]) => reseller::resellers(&c).await,
        (false, ["fee-templates"]) => reseller::fee_templates(&c).await,
        (false, ["branding"]) => reseller::branding(&c).await,
        (false, ["users"]) => reseller::users(&c).await,
        _ => Err(ApiError::not_found()),
    }
}

/// A change, then back to its page.
async fn act<A: Api>(
    c: &Ctx<'_, A>,
    parts: &[&str],
    form: &[(String, String)],
) -> Result<WebResponse, ApiError> {
    let f = |name: &str| field(form, name).trim().to_owned();
    let (back, done) = match parts {
        ["devices"] if f("action") == "claim" => {
            c.send(
                "POST",
                "/pos/claim",
                Some(json!({"pairing_code": f("pairing_code"), "device_id": f("device_id")})),
            )
            .await?;
            ("/portal/devices", "claimed")
        }
        ["devices"] => {
            let m = c.merchant()?;
            let made = c
                .send(
                    "POST",
                    &format!("/merchants/{m}/devices"),
                    Some(json!({"device_id": f("device_id"), "model": f("model"), "serial": f("serial")})),
                )
                .await?;
            // The identity secret exists in this answer only: shown here, once, never kept.
            let body = format!(
                r#"<p class="notice" role="status">Device {id} registered. Load its identity key into the terminal now: the secret is shown this once.</p><dl><dt>Key id</dt><dd><code id="key-id">{key}</code></dd><dt>Secret</dt><dd><code id="identity-secret">{secret}</code></dd></dl><p><a href="/portal/devices">Back to devices</a></p>"#,
                id = text(at(&made, "device_id")),
                key = text(at(&made, "identity_key.key_id")),
                secret = text(at(&made, "identity_key.secret")),
            );
            return Ok(c.show("Device registered", &body));
        }
        [
            "devices",
            id,
            action @ ("disable" | "enable" | "rotate-keys"),
        ] => {
            let m = c.merchant()?;
            c.send(
                "POST",
                &format!("/merchants/{m}/devices/{id}/{action}"),
                None,
            )
            .await?;
            let done = match *action {
                "disable" => "disabled",
                "enable" => "enabled",
                _ => "rotated",
            };
            ("/portal/devices", done)
        }
        ["charges", id, "refund"] => {
            let body = match (f("amount").as_str(), f("currency").as_str()) {
                ("", _) => None,
                (amount, currency) => Some(json!({"amount": {
                    "value": minor_units(amount, currency)
                        .ok_or_else(|| ApiError::field("amount", "an amount such as 12.50"))?,
                    "currency": currency,
                }})),
            };
            c.send("POST", &format!("/charges/{id}/refund"), body)
                .await?;
            return Ok(redirect(&format!("/portal/charges/{id}?notice=refunded")));
        }
        ["charges", id, "cancel"] => {
            c.send("POST", &format!("/charges/{id}/cancel"), None)
                .await?;
            return Ok(redirect(&format!("/portal/charges/{id}?notice=cancelled")));
        }
        ["settlements"] => {
            let m = c.merchant()?;
            c.send(
                "POST",
                &format!("/merchants/{m}/settlements"),
                Some(json!({})),
            )
            .await?;
            ("/portal/settlements", "settled")
        }
        ["locations"] => {
            let m = c.merchant()?;
            c.send(
                "POST",
                &format!("/merchants/{m}/locations"),
                Some(json!({"name": f("name"), "address": {
                    "line1": f("line1"), "city": f("city"),
                    "postal_code": f("postal_code"), "country": f("country"),
                }})),
            )
            .await?;
            ("/portal/locations", "location")
        }
        ["branding"] => {
            let r = c.reseller()?;
            let mut body = serde_json::Map::new();
            for k in ["display_name", "logo_url", "primary_color", "support_email"] {
                let value = f(k);
                if !value.is_empty() {
                    body.insert(k.into(), Value::String(value));
                }
            }
            c.send(
                "PUT",
                &format!("/resellers/{r}/branding"),
                Some(Value::Object(body)),
            )
            .await?;
            ("/portal/branding", "branding")
        }
        ["branding", "domains"] => {
            let r = c.reseller()?;
            let hosts: Vec<String> = f("portal_hosts")
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect();
            c.send(
                "PUT",
                &format!("/resellers/{r}/domains"),
                Some(json!({"portal_hosts": hosts})),
            )
            .await?;
            ("/portal/branding", "domains")
        }
        ["users"] => {
            let r = c.reseller()?;
            // Checked before the user exists, so a short password leaves no user without one.
            let password = field(form, "password");
            if !crate::domain::credentials::PASSWORD_CHARS.contains(&password.chars().count()) {
                return Err(ApiError::field("password", "12 to 128 characters"));
            }
            let name = f("name");
            let user = if name.is_empty() {
                json!({"email": f("email")})
            } else {
                json!({"email": f("email"), "name": name})
            };
            let made = c
                .send("POST", &format!("/resellers/{r}/users"), Some(user))
                .await?;
            let id = at(&made, "id").as_str().unwrap_or_default();
            c.send(
                "PUT",
                &format!("/resellers/{r}/users/{id}/password"),
                Some(json!({"password": password})),
            )
            .await?;
            ("/portal/users", "user")
        }
        ["users", id, "password"] => {
            let r = c.reseller()?;
            c.send(
                "PUT",
                &format!("/resellers/{r}/users/{id}/password"),
                Some(json!({"password": field(form, "password")})),
            )
            .await?;
            ("/portal/users", "password")
        }
        ["fee-templates"] => {
            let r = c.reseller()?;
            let bps: u32 = f("percent_bps")
                .parse()
                .map_err(|_| ApiError::field("percent_bps", "a whole number of basis points"))?;
            c.send(
                "POST",
                &format!("/resellers/{r}/fee-templates"),
                Some(json!({"name": f("name"), "percent_bps": bps})),
            )
            .await?;
            ("/portal/fee-templates", "template")
        }
        _ => return Err(ApiError::not_found()),
    };
    Ok(redirect(&format!("{back}?notice={done}")))
}

/// Digits after the decimal point of a currency's minor unit.
fn exponent(currency: &str) -> usize {
    match currency {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" => 0,
        "BHD" | "JOD" | "KWD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `{value, currency}` as people read it: `12.50 EUR`.
fn money(amount: &Value) -> String {
    let value = amount.get("value").and_then(Value::as_str).unwrap_or("0");
    let currency = amount.get("currency").and_then(Value::as_str).unwrap_or("");
    let e = exponent(currency);
    let digits = format!("{value:0>width$}", width = e + 1);
    let (whole, fraction) = digits.split_at(digits.len() - e);
    let shown = if e == 0 {
        whole.to_owned()
    } else {
        format!("{whole}.{fraction}")
    };
    esc(&format!("{shown} {currency}"))
}

/// `12.5` in `EUR` → `"1250"`; `None` for anything that is not such an amount.
fn minor_units(amount: &str, currency: &str) -> Option<String> {
    let e = exponent(currency);
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > e
        || whole.len() > 12
    {
        return None;
    }
    let units = format!("{whole}{fraction:0<e$}");
    let trimmed = units.trim_start_matches('0');
    Some(if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed.into()
    })
}

/// A member of a JSON answer by dotted path (`card.last4`), `null` where absent.
fn at<'v>(value: &'v Value, path: &str) -> &'v Value {
    path.split('.')
        .try_fold(value, |v, k| v.get(k))
        .unwrap_or(&Value::Null)
}

fn items(list: &Value) -> Vec<Value> {
    list.get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A time as `2026-12-03 14:05` (UTC).
fn when(value: &Value) -> String {
    value.as_str().map_or_else(
        || "–".to_owned(),
        |t| esc(&t.replace('T', " ").chars().take(16).collect::<String>()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_and_written_in_the_currencys_minor_unit() {
        assert_eq!(
            money(&json!({"value": "1250", "currency": "EUR"})),
            "12.50 EUR"
        );
        assert_eq!(money(&json!({"value": "5", "currency": "EUR"})), "0.05 EUR");
        assert_eq!(
            money(&json!({"value": "500", "currency": "JPY"})),
            "500 JPY"
        );
        assert_eq!(minor_units("12.5", "EUR").as_deref(), Some("1250"));
        assert_eq!(minor_units("0.05", "EUR").as_deref(), Some("5"));
        assert_eq!(minor_units("7", "JPY").as_deref(), Some("7"));
        for bad in ["", "1.234", "-1", "1e3", ".5", "12,50"] {
            assert_eq!(minor_units(bad, "EUR"), None, "{bad}");
        }
    }

    #[test]
    fn notices_are_a_fixed_list() {
        assert!(notice("refunded").is_some());
        assert!(notice("<script>").is_none());
    }
}

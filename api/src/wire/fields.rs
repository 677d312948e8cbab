//! The value types request bodies are made of: identifiers, codes, money, hex. Each reads
//! itself from JSON and states the same rule as a JSON Schema (`pattern`, `format`), so the
//! OpenAPI document says exactly what the server accepts.

use serde_json::{Value, json};

use crate::wire::body::{At, Field, Problems};
use crate::wire::ids;
use crate::{secret_string_field, string_field};

/// Money as the contract writes it: minor units as a string of 1 to 12 digits, and an ISO 4217
/// code. As a body member it must be positive; [`MoneyOrZero`] allows `"0"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Money {
    /// Minor units.
    pub value: u64,
    /// Upper-case ISO 4217 alpha code.
    pub currency: String,
}

impl Money {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems, allow_zero: bool) -> Option<Self> {
        let Value::Object(mut obj) = value else {
            problems.fail(at, "must be an object");
            return None;
        };
        let minor = problems.member::<MinorUnits>(&mut obj, at, "value");
        let currency = problems.member::<Currency>(&mut obj, at, "currency");
        let minor = minor?;
        if minor.0 == 0 && !allow_zero {
            problems.fail(
                &At::Member(at, "value"),
                "a positive integer in minor units: digits only, no leading zeros, at most 12",
            );
            return None;
        }
        Some(Self {
            value: minor.0,
            currency: currency?.0,
        })
    }

    fn schema(allow_zero: bool) -> Value {
        let pattern = if allow_zero {
            "^(0|[1-9][0-9]{0,11})$"
        } else {
            "^[1-9][0-9]{0,11}$"
        };
        json!({
            "type": "object",
            "required": ["value", "currency"],
            "properties": {
                "value": {"type": "string", "pattern": pattern,
                          "description": "Minor units: digits, no leading zeros, at most 12."},
                "currency": Currency::schema(),
            },
        })
    }
}

impl Field for Money {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        Self::read(value, at, problems, false)
    }

    fn schema() -> Value {
        Self::schema(false)
    }
}

/// Money that may be `"0"` (a tip, a fixed fee).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyOrZero(pub Money);

impl Field for MoneyOrZero {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        Money::read(value, at, problems, true).map(Self)
    }

    fn schema() -> Value {
        Money::schema(true)
    }
}

/// A tip must be in the amount's currency: the check of a charge body across its members.
pub fn tip_in_currency(amount: &Money, tip: Option<&MoneyOrZero>, problems: &mut Problems) {
    if let Some(t) = tip
        && t.0.currency != amount.currency
    {
        problems.fail_member("tip.currency", format!("must be {}", amount.currency));
    }
}

/// The largest amount money can carry: 12 digits (the body readers, the total of a charge and
/// a settlement's sum all hold to it).
pub const MAX_MINOR: u64 = 999_999_999_999;

/// Minor units: digits, no leading zeros, at most 12.
struct MinorUnits(u64);

impl Field for MinorUnits {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        match value.as_str() {
            Some(v) if valid_minor_units(v, true) => v.parse().ok().map(Self),
            Some(_) => {
                problems.fail(at, "digits only, no leading zeros, at most 12");
                None
            }
            None => {
                problems.fail(at, "must be a string");
                None
            }
        }
    }

    fn schema() -> Value {
        json!({"type": "string", "pattern": "^(0|[1-9][0-9]{0,11})$"})
    }
}

/// `value` of money: digits, no leading zeros, 1-12 digits; `"0"` only when allowed.
pub fn valid_minor_units(v: &str, allow_zero: bool) -> bool {
    !v.is_empty()
        && v.len() <= 12
        && v.bytes().all(|c| c.is_ascii_digit())
        && (v == "0" && allow_zero || !v.starts_with('0'))
}

/// Three upper-case letters. (Which codes ISO 4217 currently lists is not checked: the
/// processor is the authority, and a stale list here would refuse new currencies.)
pub fn is_currency(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// An ISO 3166-1 alpha-2 country code (two upper-case letters).
pub fn is_country(c: &str) -> bool {
    c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())
}

/// A merchant category code: four digits.
pub fn is_mcc(c: &str) -> bool {
    c.len() == 4 && c.bytes().all(|b| b.is_ascii_digit())
}

/// A DNS host name: labels of 1-63 letters, digits and hyphens, not starting or ending with a
/// hyphen, 253 characters in all.
pub fn is_host(h: &str) -> bool {
    (1..=253).contains(&h.len())
        && h.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

/// An e-mail address as far as the platform cares: something before an `@`, a host name with a
/// dot after it, no white space, 254 characters at most.
pub fn is_email(e: &str) -> bool {
    e.len() <= 254
        && !e.contains(char::is_whitespace)
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && is_host(domain) && domain.contains('.')
        })
}

fn is_hex(s: &str) -> bool {
    s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

const HOST_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";

string_field!(
    /// Three upper-case letters (ISO 4217 alpha).
    Currency, is_currency, "an upper-case ISO 4217 code",
    {"type": "string", "pattern": "^[A-Z]{3}$"}
);

string_field!(
    /// Two upper-case letters (ISO 3166-1 alpha-2).
    Country, is_country, "an ISO 3166-1 alpha-2 code",
    {"type": "string", "pattern": "^[A-Z]{2}$"}
);

string_field!(
    /// A merchant category code.
    Mcc, is_mcc, "four digits",
    {"type": "string", "pattern": "^[0-9]{4}$"}
);

string_field!(
    /// An object id: a UUID, lower-case and hyphenated.
    Id, ids::is_uuid, "a UUID, lower-case and hyphenated",
    {"type": "string", "format": "uuid",
     "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"}
);

string_field!(
    /// A terminal's device id.
    DeviceId, ids::is_device_id, "POS- and 8 upper-case hex digits",
    {"type": "string", "pattern": "^POS-[0-9A-F]{8}$"}
);

string_field!(
    /// The zone (ZMK) a device was injected with.
    Zone, ids::is_zone, "1-64 characters of [0-9A-Za-z_.-]",
    {"type": "string", "pattern": "^[0-9A-Za-z_.-]{1,64}$"}
);

string_field!(
    /// A DNS host name.
    Host, is_host, "a host name",
    {"type": "string", "maxLength": 253, "pattern": HOST_PATTERN}
);

string_field!(
    /// A DNS host name in lower case (portal hosts are stored as they are matched).
    LowerHost, |h: &str| is_host(h) && h == h.to_ascii_lowercase(), "a lower-case host name",
    {"type": "string", "maxLength": 253,
     "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"}
);

string_field!(
    /// An e-mail address.
    Email, is_email, "an e-mail address",
    {"type": "string", "format": "email", "maxLength": 254}
);

string_field!(
    /// An IANA time zone name (`Europe/Paris`).
    Timezone,
    |tz: &str| (1..=64).contains(&tz.len())
        && tz.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'-' | b'+')),
    "an IANA time zone name",
    {"type": "string", "pattern": "^[0-9A-Za-z/_+-]{1,64}$"}
);

string_field!(
    /// An `https://` address without white space.
    HttpsUrl,
    |u: &str| u.len() <= 2048 && u.starts_with("https://") && !u.contains(char::is_whitespace),
    "an https:// address",
    {"type": "string", "maxLength": 2048, "pattern": "^https://[^\\s]*$"}
);

string_field!(
    /// Where webhooks go: `https://`, or plain `http://` to a loopback host only (a receiver on
    /// the same machine, as in development); no user info, at most 2,048 characters.
    WebhookUrl,
    |u: &str| u.len() <= 2048
        && !u.contains(char::is_whitespace)
        && !u.contains('#')
        && crate::wire::url::parse(u)
            .is_ok_and(|t| t.https || crate::wire::url::is_loopback_host(&t.host)),
    "an https:// address (http:// only to a loopback host)",
    {"type": "string", "maxLength": 2048, "pattern": "^https?://[^\\s#]*$",
     "description": "https://, or http:// to localhost, 127.0.0.0/8 or ::1 only."}
);

string_field!(
    /// A POS app version, `MAJOR.MINOR.PATCH`.
    AppVersionText,
    |v: &str| ids::pos_version(v).is_some(),
    "MAJOR.MINOR.PATCH",
    {"type": "string", "pattern": "^[0-9]{1,9}\\.[0-9]{1,9}\\.[0-9]{1,9}$"}
);

string_field!(
    /// A colour as `#RRGGBB`.
    Colour,
    |c: &str| c.len() == 7 && c.starts_with('#') && c.bytes().skip(1).all(|b| b.is_ascii_hexdigit()),
    "#RRGGBB",
    {"type": "string", "pattern": "^#[0-9A-Fa-f]{6}$"}
);

secret_string_field!(
    /// A primary account number: 12-19 digits with a valid Luhn check digit.
    CardNumber, luhn_ok, "a card number passing the Luhn check",
    {"type": "string", "pattern": "^[0-9]{12,19}$",
     "description": "12-19 digits whose last digit is the Luhn check digit."}
);

secret_string_field!(
    /// A card verification code: validated, never kept.
    Cvc, |v: &str| (3..=4).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()),
    "3 or 4 digits",
    {"type": "string", "pattern": "^[0-9]{3,4}$"}
);

string_field!(
    /// Card data encrypted under the terminal's TDK: whole AES blocks, at most 1 KiB, in hex.
    Ciphertext, |d: &str| is_hex(d) && d.len().is_multiple_of(32) && (32..=2048).contains(&d.len()),
    "hex ciphertext",
    {"type": "string", "pattern": "^([0-9A-Fa-f]{32}){1,64}$"}
);

string_field!(
    /// A 16-byte initialisation vector in hex.
    Iv, |v: &str| v.len() == 32 && is_hex(v), "32 hex digits",
    {"type": "string", "pattern": "^[0-9A-Fa-f]{32}$"}
);

secret_string_field!(
    /// A PIN block as the terminal sends it: ISO 9564-1 format 4 under its TPK, 16 bytes in hex.
    /// Enciphered, but still the cardholder's PIN under a key: redacted like card data.
    PinBlockHex, |v: &str| v.len() == 32 && is_hex(v), "32 hex digits",
    {"type": "string", "pattern": "^[0-9A-Fa-f]{32}$"}
);

string_field!(
    /// EMV data (TLV) in hex, at most 2 KiB.
    EmvData, |e: &str| e.len() <= 4096 && is_hex(e), "hex TLV",
    {"type": "string", "pattern": "^([0-9A-Fa-f]{2}){0,2048}$"}
);

/// Whether `pan` is 12 to 19 ASCII digits with a valid Luhn check digit.
pub fn luhn_ok(pan: &str) -> bool {
    if !(12..=19).contains(&pan.len()) {
        return false;
    }
    let mut sum = 0u32;
    for (i, b) in pan.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_emails() {
        assert!(is_host("merchant.example.com") && is_host("localhost"));
        assert!(!is_host("-a.com") && !is_host("a..b") && !is_host("a b"));
        assert!(is_email("ops@example.com"));
        assert!(!is_email("ops@localhost") && !is_email("@example.com"));
    }

    #[test]
    fn webhook_urls_are_https_or_loopback() {
        let ok = |u: &str| {
            let mut problems = Problems::default();
            WebhookUrl::read(Value::String(u.into()), &At::Root, &mut problems).is_some()
        };
        assert!(ok("https://hooks.example.com/viopay?x=1"));
        assert!(ok("http://127.0.0.1:8080/hook") && ok("http://localhost/h"));
        assert!(ok("http://[::1]:9000/"));
        assert!(!ok("http://hooks.example.com/") && !ok("http://10.0.0.1/"));
        assert!(!ok("ftp://x/") && !ok("https://user@x/") && !ok("https://x/a b"));
        assert!(!ok("https://x/#frag") && !ok(&format!("https://x/{}", "a".repeat(2048))));
    }

    #[test]
    fn money_rules() {
        assert!(valid_minor_units("999999999999", false));
        assert!(!valid_minor_units("1000000000000", false));
        assert!(!valid_minor_units("-1", false) && !valid_minor_units("1.5", false));
        assert!(valid_minor_units("0", true) && !valid_minor_units("0", false));
        assert!(!valid_minor_units("01", true));
    }
}

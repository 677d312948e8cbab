//! Reading request bodies: JSON objects checked field by field, every problem collected into
//! one 400/`4000` with `details.fields`, so a client fixes all of them in one round.

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Code};

/// Money as the contract writes it: minor units as a string of digits, and an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Money {
    /// Minor units.
    pub value: u64,
    /// Upper-case ISO 4217 alpha code.
    pub currency: String,
}

impl Money {
    /// `{"value": "1500", "currency": "EUR"}`.
    pub fn to_json(&self) -> Value {
        json!({"value": self.value.to_string(), "currency": self.currency})
    }

    /// Zero of a currency.
    pub fn zero(currency: &str) -> Self {
        Self {
            value: 0,
            currency: currency.to_owned(),
        }
    }
}

/// Largest money value: 12 digits.
const MAX_MINOR: u64 = 999_999_999_999;

/// Parses a body that must be a JSON object: not JSON or a key given twice → 400/`4002`, not
/// an object → 400/`4000`.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value = crate::wire::json::parse(body)
        .map_err(|e| ApiError::new(Code::BodyUnreadable, e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::field("", "the body must be a JSON object")),
    }
}

/// A JSON object being validated; problems pile up until [`Input::finish`].
#[derive(Debug)]
pub struct Input<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    errors: Vec<(String, String)>,
}

impl<'a> Input<'a> {
    /// Starts validating an object.
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Self {
            obj,
            prefix: String::new(),
            errors: Vec::new(),
        }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// Records a problem with a field.
    pub fn fail(&mut self, field: &str, reason: &str) {
        let name = self.name(field);
        self.errors.push((name, reason.to_owned()));
    }

    /// The object's member names (for maps keyed by data, such as per-brand fees).
    pub fn keys(&self) -> Vec<String> {
        self.obj.keys().cloned().collect()
    }

    /// Whether a field is present and not null.
    pub fn has(&self, field: &str) -> bool {
        self.obj.get(field).is_some_and(|v| !v.is_null())
    }

    /// A required string of 1 to `max` characters (trimmed of nothing: what is sent is kept).
    pub fn text(&mut self, field: &str, max: usize) -> Option<String> {
        if !self.has(field) {
            self.fail(field, "required");
            return None;
        }
        self.opt_text(field, max)
    }

    /// An optional string of 1 to `max` characters; null counts as absent.
    pub fn opt_text(&mut self, field: &str, max: usize) -> Option<String> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.fail(field, "must not be empty");
                None
            }
            Some(Value::String(s)) if s.chars().count() > max => {
                self.fail(field, &format!("at most {max} characters"));
                None
            }
            Some(Value::String(s)) if s.chars().any(char::is_control) => {
                self.fail(field, "must not contain control characters");
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(field, "must be a string");
                None
            }
        }
    }

    /// A required string checked by `valid`, with `reason` when it fails.
    pub fn matching(
        &mut self,
        field: &str,
        valid: impl Fn(&str) -> bool,
        reason: &str,
    ) -> Option<String> {
        if !self.has(field) {
            self.fail(field, "required");
            return None;
        }
        self.opt_matching(field, valid, reason)
    }

    /// An optional string checked by `valid`.
    pub fn opt_matching(
        &mut self,
        field: &str,
        valid: impl Fn(&str) -> bool,
        reason: &str,
    ) -> Option<String> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if valid(s) => Some(s.clone()),
            Some(Value::String(_)) => {
                self.fail(field, reason);
                None
            }
            Some(_) => {
                self.fail(field, "must be a string");
                None
            }
        }
    }

    /// One of a fixed set of strings.
    pub fn one_of(&mut self, field: &str, allowed: &[&str], required: bool) -> Option<String> {
        if required && !self.has(field) {
            self.fail(field, "required");
            return None;
        }
        let reason = format!("one of {}", allowed.join(", "));
        self.opt_matching(field, |s| allowed.contains(&s), &reason)
    }

    /// An optional integer in `range`.
    pub fn opt_int(&mut self, field: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if range.contains(&v) => Some(v),
                _ => {
                    self.fail(
                        field,
                        &format!("an integer from {} to {}", range.start(), range.end()),
                    );
                    None
                }
            },
            Some(_) => {
                self.fail(field, "must be an integer");
                None
            }
        }
    }

    /// A required integer in `range`.
    pub fn int(&mut self, field: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        if !self.has(field) {
            self.fail(field, "required");
            return None;
        }
        self.opt_int(field, range)
    }

    /// An optional boolean.
    pub fn opt_bool(&mut self, field: &str) -> Option<bool> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                self.fail(field, "must be true or false");
                None
            }
        }
    }

    /// An optional JSON object, kept as given (free-form settings such as `tip_info`).
    pub fn opt_object(&mut self, field: &str) -> Option<Map<String, Value>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m.clone()),
            Some(_) => {
                self.fail(field, "must be an object");
                None
            }
        }
    }

    /// An optional array of strings, each checked by `valid`.
    pub fn opt_strings(
        &mut self,
        field: &str,
        max_items: usize,
        valid: impl Fn(&str) -> bool,
        reason: &str,
    ) -> Option<Vec<String>> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.len() <= max_items => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(s) if valid(s) => out.push(s.to_owned()),
                        _ => self.fail(&format!("{field}[{i}]"), reason),
                    }
                }
                Some(out)
            }
            Some(Value::Array(_)) => {
                self.fail(field, &format!("at most {max_items} items"));
                None
            }
            Some(_) => {
                self.fail(field, "must be an array");
                None
            }
        }
    }

    /// Validates a nested object under `field.` names; `f` reads its fields.
    pub fn nested<T>(
        &mut self,
        field: &str,
        required: bool,
        f: impl FnOnce(&mut Input<'_>) -> Option<T>,
    ) -> Option<T> {
        match self.obj.get(field) {
            None | Some(Value::Null) => {
                if required {
                    self.fail(field, "required");
                }
                None
            }
            Some(Value::Object(m)) => {
                let mut inner = Input {
                    obj: m,
                    prefix: format!("{}{field}.", self.prefix),
                    errors: Vec::new(),
                };
                let out = f(&mut inner);
                let failed = !inner.errors.is_empty();
                self.errors.append(&mut inner.errors);
                if failed { None } else { out }
            }
            Some(_) => {
                self.fail(field, "must be an object");
                None
            }
        }
    }

    /// Money: positive unless `allow_zero`; `currency`, when given, must match.
    pub fn money(
        &mut self,
        field: &str,
        required: bool,
        allow_zero: bool,
        currency: Option<&str>,
    ) -> Option<Money> {
        self.nested(field, required, |m| {
            let value = m.matching(
                "value",
                |v| valid_minor_units(v, allow_zero),
                if allow_zero {
                    "digits only, no leading zeros, at most 12"
                } else {
                    "a positive integer in minor units: digits only, no leading zeros, at most 12"
                },
            );
            let cur = m.matching("currency", is_currency, "an upper-case ISO 4217 code");
            if let (Some(c), Some(want)) = (&cur, currency)
                && c != want
            {
                m.fail("currency", &format!("must be {want}"));
                return None;
            }
            Some(Money {
                value: value?.parse().ok().filter(|v| *v <= MAX_MINOR)?,
                currency: cur?,
            })
        })
    }

    /// The collected problems as one 400/`4000`, or Ok.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            return Ok(());
        }
        let fields: Vec<Value> = self
            .errors
            .into_iter()
            .map(|(field, reason)| json!({"field": field, "reason": reason}))
            .collect();
        Err(ApiError::new(Code::BodyInvalid, "body invalid")
            .with_details(json!({"fields": fields})))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_every_problem() {
        let body = br#"{"name":"","amount":{"value":"0150","currency":"eur"},"n":5,"x":{"y":1}}"#;
        let obj = object(body).unwrap();
        let mut input = Input::new(&obj);
        assert_eq!(input.text("name", 10), None);
        assert_eq!(input.money("amount", true, false, None), None);
        assert_eq!(input.text("missing", 10), None);
        assert_eq!(input.opt_int("n", 1..=3), None);
        assert_eq!(input.nested("x", true, |x| x.text("y", 5)), None);
        let err = input.finish().unwrap_err();
        let fields: Vec<String> = err.body("t")["error"]["details"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            fields,
            [
                "name",
                "amount.value",
                "amount.currency",
                "missing",
                "n",
                "x.y"
            ]
        );
    }

    #[test]
    fn money_rules() {
        let obj = object(
            br#"{"a":{"value":"1500","currency":"EUR"},"z":{"value":"0","currency":"EUR"}}"#,
        )
        .unwrap();
        let mut input = Input::new(&obj);
        assert_eq!(
            input.money("a", true, false, Some("EUR")).unwrap().value,
            1500
        );
        assert_eq!(input.money("z", true, true, None).unwrap().value, 0);
        assert!(input.finish().is_ok());
        let mut input = Input::new(&obj);
        assert_eq!(input.money("z", true, false, None), None);
        assert_eq!(input.money("a", true, false, Some("USD")), None);
        assert!(input.finish().is_err());
        assert!(valid_minor_units("999999999999", false));
        assert!(!valid_minor_units("1000000000000", false));
        assert!(!valid_minor_units("-1", false) && !valid_minor_units("1.5", false));
        assert_eq!(object(b"nope").unwrap_err().code(), Code::BodyUnreadable);
        assert_eq!(object(b"[1]").unwrap_err().code(), Code::BodyInvalid);
    }
}

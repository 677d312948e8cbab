//! JSON from clients, read strictly: a duplicated object key is an error, not "the last one
//! wins".
//!
//! `serde_json` keeps the last of two equal keys. Two parsers of one body that disagree on
//! which `amount` counts (a proxy, a log pipeline, a WAF, and this API) are a classic way to
//! have one thing checked and another charged, so a body with a duplicated key, at any depth,
//! is refused as unreadable.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not strict JSON (the message names no value from the body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON at all (syntax, trailing bytes, not UTF-8, nesting too deep).
    Syntax,
    /// An object holds the same key twice.
    DuplicateKey,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "body is not JSON",
            Self::DuplicateKey => "body is not JSON: an object repeats a key",
        })
    }
}

/// Parses `bytes` as one JSON value, refusing duplicated keys.
///
/// # Errors
/// [`JsonError`].
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut de).map_err(|e| classify(&e))?;
    de.end().map_err(|_| JsonError::Syntax)?;
    Ok(value)
}

const DUPLICATE: &str = "duplicate object key";

fn classify(e: &serde_json::Error) -> JsonError {
    if e.is_data() && e.to_string().starts_with(DUPLICATE) {
        JsonError::DuplicateKey
    } else {
        JsonError::Syntax
    }
}

/// A [`Value`] that refuses duplicated keys.
#[derive(Clone, Copy)]
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(Self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(Self)?;
            if object.insert(key, value).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_values_as_serde_json_without_duplicates() {
        for text in [
            r#"{"a":1,"b":[true,null,"x",{"c":-2.5}],"d":{"e":18446744073709551615}}"#,
            "[]",
            "\"s\"",
            " 12 ",
            r#"{"a":{"a":{"a":1}}}"#,
        ] {
            let ours = parse(text.as_bytes()).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(ours, theirs, "{text}");
        }
    }

    #[test]
    fn duplicates_at_any_depth_and_bad_syntax_are_refused() {
        for text in [
            r#"{"amount":1,"amount":2}"#,
            r#"{"card":{"number":"1","number":"2"}}"#,
            r#"[{"x":1},{"y":1,"y":1}]"#,
            r#"{"a":1,"\u0061":2}"#,
        ] {
            assert_eq!(
                parse(text.as_bytes()),
                Err(JsonError::DuplicateKey),
                "{text}"
            );
        }
        for text in ["", "{", "{} {}", "{\"a\":1,}", "nul", "\u{feff}{}"] {
            assert_eq!(parse(text.as_bytes()), Err(JsonError::Syntax), "{text:?}");
        }
        assert_eq!(parse(b"\xff"), Err(JsonError::Syntax));
    }
}

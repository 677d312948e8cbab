//! Typed response bodies: each answer is a struct declared with [`reply!`](crate::reply),
//! which serialises it and describes it as JSON Schema from the same member list, so the
//! OpenAPI document cannot promise a member the server does not send.
//!
//! Replies borrow from the records they show (`&'a str`), so answering does not copy them.
//! Every member is always sent (an absent value is `null`), so every member is `required` in
//! the schema and nullable where its type is an `Option`.

use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};

/// A value a reply member can hold: something serde can write, with its JSON Schema.
pub trait Shape {
    /// The value's JSON Schema.
    fn schema() -> Value;
}

/// One member of a reply type, for its schema.
#[derive(Debug, Clone, Copy)]
pub struct ReplyMember {
    /// The JSON name.
    pub name: &'static str,
    /// The member's doc comment.
    pub doc: &'static str,
    /// Its value's schema.
    pub schema: fn() -> Value,
}

/// The schema of an object with these members, all required, and an optional `object` tag.
pub fn object_schema(object: Option<&str>, members: &[ReplyMember]) -> Value {
    let mut properties = Map::new();
    let mut required = Vec::new();
    if let Some(tag) = object {
        properties.insert("object".into(), json!({"const": tag}));
        required.push("object");
    }
    for m in members {
        let mut schema = (m.schema)();
        if let (Some(obj), false) = (schema.as_object_mut(), m.doc.is_empty()) {
            obj.entry("description")
                .or_insert_with(|| m.doc.trim().into());
        }
        properties.insert(m.name.to_owned(), schema);
        required.push(m.name);
    }
    json!({"type": "object", "properties": properties, "required": required})
}

/// An object schema with one more required member (an answer that is a record plus a word
/// about it).
pub fn with_member(mut schema: Value, name: &str, member: Value) -> Value {
    if let Some(obj) = schema.as_object_mut() {
        if let Some(Value::Object(props)) = obj.get_mut("properties") {
            props.insert(name.to_owned(), member);
        }
        if let Some(Value::Array(required)) = obj.get_mut("required") {
            required.push(name.into());
        }
    }
    schema
}

/// Declares a reply type: the struct, its serialisation and its schema. `as "merchant"` adds
/// the constant member `"object": "merchant"`.
#[macro_export]
macro_rules! reply {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident $(<$lt:lifetime>)? $(as $object:literal)? {
            $(
                $(#[doc = $doc:literal])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name $(<$lt>)? {
            $(
                $(#[doc = $doc])*
                $fvis $field: $ty,
            )*
        }

        impl $(<$lt>)? ::serde::Serialize for $name $(<$lt>)? {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                use ::serde::ser::SerializeStruct;
                // The true count: a serializer may write an empty struct out at once when
                // told it has none (serde_json's text serializer does).
                let len = <[&str]>::len(&[$(stringify!($field)),*]) $( + { let _ = $object; 1 } )?;
                let mut st = s.serialize_struct(stringify!($name), len)?;
                $( st.serialize_field("object", $object)?; )?
                $(
                    st.serialize_field(
                        $crate::wire::body::json_name(stringify!($field)),
                        &self.$field,
                    )?;
                )*
                st.end()
            }
        }

        impl $(<$lt>)? $crate::wire::reply::Shape for $name $(<$lt>)? {
            fn schema() -> ::serde_json::Value {
                let object: ::std::option::Option<&str> = None $( .or(Some($object)) )?;
                $crate::wire::reply::object_schema(object, &[$(
                    $crate::wire::reply::ReplyMember {
                        name: $crate::wire::body::json_name(stringify!($field)),
                        doc: concat!($($doc, "\n",)* ""),
                        schema: <$ty as $crate::wire::reply::Shape>::schema,
                    },
                )*])
            }
        }
    };
}

/// A reply as a JSON value. Replies hold strings, numbers, booleans and maps with string keys,
/// which always serialise; `null` would stand for the impossible failure.
pub fn json<T: Serialize>(reply: &T) -> Value {
    serde_json::to_value(reply).unwrap_or(Value::Null)
}

impl Shape for &str {
    fn schema() -> Value {
        json!({"type": "string"})
    }
}

impl Shape for String {
    fn schema() -> Value {
        json!({"type": "string"})
    }
}

impl Shape for bool {
    fn schema() -> Value {
        json!({"type": "boolean"})
    }
}

macro_rules! integer_shape {
    ($($t:ty),*) => {$(
        impl Shape for $t {
            fn schema() -> Value {
                json!({"type": "integer", "minimum": <$t>::MIN, "maximum": <$t>::MAX})
            }
        }
    )*};
}

integer_shape!(u8, u16, u32, u64, i64, usize);

impl<T: Shape> Shape for Option<T> {
    fn schema() -> Value {
        json!({"anyOf": [T::schema(), {"type": "null"}]})
    }
}

impl<T: Shape> Shape for Vec<T> {
    fn schema() -> Value {
        json!({"type": "array", "items": T::schema()})
    }
}

impl<T: Shape> Shape for &[T] {
    fn schema() -> Value {
        json!({"type": "array", "items": T::schema()})
    }
}

/// A free-form JSON object (merchant settings, terminal parameters, metadata).
impl Shape for Map<String, Value> {
    fn schema() -> Value {
        json!({"type": "object"})
    }
}

impl Shape for &Map<String, Value> {
    fn schema() -> Value {
        json!({"type": "object"})
    }
}

/// A secret shown to its owner once (an identity key, an API client's secret): written out in
/// the reply, redacted in `Debug`.
#[derive(Clone, Copy)]
pub struct ShownOnce<'a>(pub &'a str);

impl std::fmt::Debug for ShownOnce<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShownOnce([redacted])")
    }
}

impl Serialize for ShownOnce<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl Shape for ShownOnce<'_> {
    fn schema() -> Value {
        json!({"type": "string", "description": "Shown this once; keep it safe."})
    }
}

/// A Unix time in seconds, written as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time(pub i64);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::wire::time::rfc3339(self.0))
    }
}

impl Shape for Time {
    fn schema() -> Value {
        json!({"type": "string", "format": "date-time"})
    }
}

/// Money as the contract writes it: minor units as a decimal string, and the currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoneyOut<'a> {
    /// Minor units.
    pub value: u64,
    /// ISO 4217 code.
    pub currency: &'a str,
}

impl Serialize for MoneyOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Money", 2)?;
        st.serialize_field("value", &self.value.to_string())?;
        st.serialize_field("currency", self.currency)?;
        st.end()
    }
}

impl Shape for MoneyOut<'_> {
    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["value", "currency"],
            "properties": {
                "value": {"type": "string", "pattern": "^(0|[1-9][0-9]{0,11})$"},
                "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
            },
        })
    }
}

/// A string from a fixed set (a status, a role), with the set in its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneOf<E: Choices>(pub E);

/// A closed set of wire strings.
pub trait Choices: Copy {
    /// Every wire string.
    const ALL: &'static [&'static str];
    /// This value's wire string.
    fn as_str(self) -> &'static str;
}

impl<E: Choices> Serialize for OneOf<E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}

impl<E: Choices> Shape for OneOf<E> {
    fn schema() -> Value {
        json!({"type": "string", "enum": E::ALL})
    }
}

/// A page of a list, as every list endpoint answers.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, newest first.
    pub data: Vec<T>,
    /// Whether more items follow.
    pub has_more: bool,
    /// The cursor for the next page (`starting_after`), when there is one.
    pub next_cursor: Option<String>,
}

impl<T: Serialize> Serialize for Page<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("List", 4)?;
        st.serialize_field("object", "list")?;
        st.serialize_field("data", &self.data)?;
        st.serialize_field("has_more", &self.has_more)?;
        st.serialize_field("next_cursor", &self.next_cursor)?;
        st.end()
    }
}

impl<T: Shape> Shape for Page<T> {
    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["object", "data", "has_more", "next_cursor"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": T::schema()},
                "has_more": {"type": "boolean"},
                "next_cursor": {"type": ["string", "null"]},
            },
        })
    }
}

#[cfg(test)]
#[allow(unreachable_pub, reason = "declared only to be serialised")]
mod tests {
    use super::*;

    crate::reply! {
        /// A test reply.
        pub struct Thing<'a> as "thing" {
            /// Its id.
            pub id: &'a str,
            /// When.
            pub created_at: Time,
            /// How much.
            pub amount: MoneyOut<'a>,
            /// A label.
            pub label: Option<&'a str>,
            /// A kind.
            pub r#type: &'a str,
        }
    }

    #[test]
    fn a_reply_is_written_as_its_schema_says() {
        let t = Thing {
            id: "t1",
            created_at: Time(0),
            amount: MoneyOut {
                value: 1500,
                currency: "EUR",
            },
            label: None,
            r#type: "x",
        };
        let v = json(&t);
        // Written as text straight from the struct, it is the same JSON, in field order.
        let text = serde_json::to_string(&t).unwrap();
        assert!(
            text.starts_with(r#"{"object":"thing","id":"t1","#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
        assert_eq!(
            v,
            json!({"object": "thing", "id": "t1", "created_at": "1970-01-01T00:00:00Z",
                   "amount": {"value": "1500", "currency": "EUR"}, "label": null, "type": "x"})
        );
        let s = Thing::schema();
        assert_eq!(
            s["required"],
            json!(["object", "id", "created_at", "amount", "label", "type"])
        );
        assert_eq!(s["properties"]["object"]["const"], "thing");
        assert_eq!(s["properties"]["created_at"]["format"], "date-time");
        assert_eq!(s["properties"]["id"]["description"], "Its id.");
        assert!(s["properties"]["label"]["anyOf"].is_array());
        let page = Page {
            data: vec![t],
            has_more: false,
            next_cursor: None,
        };
        assert_eq!(json(&page)["data"][0]["id"], "t1");
        assert_eq!(
            Page::<Thing<'_>>::schema()["properties"]["data"]["items"]["required"][0],
            "object"
        );
    }
}

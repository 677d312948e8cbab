//! Typed request bodies that still report every bad field at once.
//!
//! serde's derive stops at the first error, but the contract wants all of a body's problems in
//! one 400/`4000` (`details.fields`), so a client fixes them in one round. So a body type is
//! declared with [`body!`](crate::body): each member's type implements [`Field`], which reads a
//! JSON value, records a problem under the member's full name (`amount.value`, `hosts[2]`) when
//! it cannot, and describes itself as JSON Schema. The same declaration therefore gives the
//! parser and the OpenAPI schema, and the two cannot drift apart.
//!
//! Unknown members are ignored (contract section 1); `null` counts as absent except for
//! [`Nullable`] members, where it means "clear this".

use std::fmt;

use serde_json::{Map, Value, json};

use crate::error::{ApiError, Code};

/// Where a value sits in the body, for naming it in a problem. Built on the stack while
/// reading; turned into text only when something is wrong.
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    /// The body itself.
    Root,
    /// A member of an object.
    Member(&'a Self, &'a str),
    /// An item of an array.
    Item(&'a Self, usize),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Root => Ok(()),
            Self::Member(Self::Root, name) => f.write_str(name),
            Self::Member(parent, name) => write!(f, "{parent}.{name}"),
            Self::Item(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// The problems found so far, in body order.
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    /// Records that the value at `at` is wrong, and why.
    pub fn fail(&mut self, at: &At<'_>, reason: impl Into<String>) {
        self.0.push((at.to_string(), reason.into()));
    }

    /// Records a problem with a top-level member by name (checks that span members).
    pub fn fail_member(&mut self, name: &str, reason: impl Into<String>) {
        self.0.push((name.to_owned(), reason.into()));
    }

    /// Whether nothing is wrong so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads member `name` of `obj` as a `T`: absent or `null` gives what `T` makes of that.
    pub fn member<T: Field>(
        &mut self,
        obj: &mut Map<String, Value>,
        at: &At<'_>,
        name: &str,
    ) -> Option<T> {
        let here = At::Member(at, name);
        match obj.remove(name) {
            None => T::absent().or_else(|| {
                self.fail(&here, "required");
                None
            }),
            Some(Value::Null) => T::null().or_else(|| {
                self.fail(&here, "required");
                None
            }),
            Some(value) => T::read(value, &here, self),
        }
    }

    /// The problems as one 400/`4000`, or `Ok`.
    ///
    /// # Errors
    /// When anything was recorded.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let fields: Vec<Value> = self
            .0
            .into_iter()
            .map(|(field, reason)| json!({"field": field, "reason": reason}))
            .collect();
        Err(ApiError::new(Code::BodyInvalid, "body invalid")
            .with_details(json!({"fields": fields})))
    }
}

/// A value a body member can hold.
pub trait Field: Sized {
    /// Whether the member must be present (drives the schema's `required`).
    const REQUIRED: bool = true;

    /// Reads a present, non-null value; on failure records why at `at` and gives `None`.
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self>;

    /// What an absent member means; `None` makes it required.
    fn absent() -> Option<Self> {
        None
    }

    /// What an explicit `null` means; by default the same as absent.
    fn null() -> Option<Self> {
        Self::absent()
    }

    /// The value's JSON Schema.
    fn schema() -> Value;
}

/// One member of a body type, for its schema.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    /// The JSON name.
    pub name: &'static str,
    /// The doc comment of the member.
    pub doc: &'static str,
    /// Whether it must be present.
    pub required: bool,
    /// Its value's schema.
    pub schema: fn() -> Value,
}

/// A JSON object with declared members: what [`body!`](crate::body) implements.
pub trait Body: Sized {
    /// Reads the declared members out of `obj`, recording every problem.
    fn read_members(obj: Map<String, Value>, at: &At<'_>, problems: &mut Problems) -> Option<Self>;

    /// The declared members.
    fn members() -> &'static [Member];

    /// The object's schema.
    fn object_schema() -> Value {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for m in Self::members() {
            let mut schema = (m.schema)();
            if let (Some(obj), false) = (schema.as_object_mut(), m.doc.is_empty()) {
                obj.entry("description")
                    .or_insert_with(|| m.doc.trim().into());
            }
            properties.insert(m.name.to_owned(), schema);
            if m.required {
                required.push(m.name);
            }
        }
        json!({"type": "object", "properties": properties, "required": required})
    }
}

/// Parses a body that must be a JSON object: not JSON or a key given twice is 400/`4002`, not
/// an object 400/`4000`. For bodies whose members are data (terminal parameters) or that are
/// looked at before they are read.
///
/// # Errors
/// As above.
pub fn object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match crate::wire::json::parse(bytes)
        .map_err(|e| ApiError::new(Code::BodyUnreadable, e.to_string()))?
    {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::field("", "the body must be a JSON object")),
    }
}

/// Parses a request body into `T`: unreadable JSON (or a key given twice) is 400/`4002`, a
/// body that is not an object or has bad members is 400/`4000` naming every bad member.
///
/// # Errors
/// As above.
pub fn parse<T: Body>(bytes: &[u8]) -> Result<T, ApiError> {
    parse_checked(bytes, |_, _| {})
}

/// [`parse`], then `check` for rules that span members, reported in the same error.
///
/// # Errors
/// As [`parse`], with `check`'s problems added.
pub fn parse_checked<T: Body>(
    bytes: &[u8],
    check: impl FnOnce(&T, &mut Problems),
) -> Result<T, ApiError> {
    let value = crate::wire::json::parse(bytes)
        .map_err(|e| ApiError::new(Code::BodyUnreadable, e.to_string()))?;
    from_value_checked(value, check)
}

/// Reads an already parsed value into `T`.
///
/// # Errors
/// 400/`4000` naming every bad member.
pub fn from_value<T: Body>(value: Value) -> Result<T, ApiError> {
    from_value_checked(value, |_, _| {})
}

/// Reads an already parsed value (a decrypted envelope's payload) into `T`.
///
/// # Errors
/// 400/`4000` naming every bad member.
pub fn from_value_checked<T: Body>(
    value: Value,
    check: impl FnOnce(&T, &mut Problems),
) -> Result<T, ApiError> {
    let Value::Object(obj) = value else {
        return Err(ApiError::field("", "the body must be a JSON object"));
    };
    let mut problems = Problems::default();
    let body = T::read_members(obj, &At::Root, &mut problems);
    if let Some(b) = &body {
        check(b, &mut problems);
    }
    problems.finish()?;
    body.ok_or_else(|| ApiError::new(Code::BodyInvalid, "body invalid"))
}

/// Reads a string member through `accept`, which keeps it or refuses it (`None`, recorded with
/// `reason`); a value that is no string is refused as such.
pub fn string_member<T>(
    value: Value,
    at: &At<'_>,
    problems: &mut Problems,
    reason: &str,
    accept: impl FnOnce(String) -> Option<T>,
) -> Option<T> {
    let Value::String(s) = value else {
        problems.fail(at, "must be a string");
        return None;
    };
    let kept = accept(s);
    if kept.is_none() {
        problems.fail(at, reason);
    }
    kept
}

/// The JSON name of a Rust member name (`r#type` is `type`).
pub const fn json_name(rust: &'static str) -> &'static str {
    match rust.as_bytes() {
        [b'r', b'#', ..] => match rust.split_at_checked(2) {
            Some((_, name)) => name,
            None => rust,
        },
        _ => rust,
    }
}

/// Declares a request body type: the struct, its reader and its schema from one list of
/// members. Each member's doc comment becomes its schema description.
#[macro_export]
macro_rules! body {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                $fvis $field: $ty,
            )*
        }

        impl $crate::wire::body::Body for $name {
            fn read_members(
                mut obj: ::serde_json::Map<::std::string::String, ::serde_json::Value>,
                at: &$crate::wire::body::At<'_>,
                problems: &mut $crate::wire::body::Problems,
            ) -> ::std::option::Option<Self> {
                $(
                    let $field = problems.member::<$ty>(
                        &mut obj,
                        at,
                        $crate::wire::body::json_name(stringify!($field)),
                    );
                )*
                Some(Self { $($field: $field?,)* })
            }

            fn members() -> &'static [$crate::wire::body::Member] {
                const MEMBERS: &[$crate::wire::body::Member] = &[$(
                    $crate::wire::body::Member {
                        name: $crate::wire::body::json_name(stringify!($field)),
                        doc: concat!($($doc, "\n",)* ""),
                        required: <$ty as $crate::wire::body::Field>::REQUIRED,
                        schema: <$ty as $crate::wire::body::Field>::schema,
                    },
                )*];
                MEMBERS
            }
        }

        impl $crate::wire::body::Field for $name {
            fn read(
                value: ::serde_json::Value,
                at: &$crate::wire::body::At<'_>,
                problems: &mut $crate::wire::body::Problems,
            ) -> ::std::option::Option<Self> {
                match value {
                    ::serde_json::Value::Object(obj) => {
                        <Self as $crate::wire::body::Body>::read_members(obj, at, problems)
                    }
                    _ => {
                        problems.fail(at, "must be an object");
                        None
                    }
                }
            }

            fn schema() -> ::serde_json::Value {
                <Self as $crate::wire::body::Body>::object_schema()
            }
        }
    };
}

/// Declares a string type whose values satisfy `valid`, with the JSON Schema that says the
/// same (a unit test per type checks examples against both).
#[macro_export]
macro_rules! string_field {
    ($(#[$meta:meta])* $name:ident, $valid:expr, $reason:literal, $schema:tt) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl $crate::wire::body::Field for $name {
            fn read(
                value: ::serde_json::Value,
                at: &$crate::wire::body::At<'_>,
                problems: &mut $crate::wire::body::Problems,
            ) -> ::std::option::Option<Self> {
                $crate::wire::body::string_member(value, at, problems, $reason, |s| {
                    ($valid)(s.as_str()).then(|| Self(s))
                })
            }

            fn schema() -> ::serde_json::Value {
                ::serde_json::json!($schema)
            }
        }

        impl ::std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl ::std::convert::From<$name> for ::std::string::String {
            fn from(v: $name) -> Self {
                v.0
            }
        }
    };
}

/// Declares a string type for card data: zeroized on drop, redacted in `Debug`, not `Clone`,
/// read only through `expose`.
#[macro_export]
macro_rules! secret_string_field {
    ($(#[$meta:meta])* $name:ident, $valid:expr, $reason:literal, $schema:tt) => {
        $(#[$meta])*
        pub struct $name(::zeroize::Zeroizing<String>);

        impl $name {
            /// The value, for the one place that needs it.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// The value, still zeroized on drop.
            pub fn into_inner(self) -> ::zeroize::Zeroizing<String> {
                self.0
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(concat!(stringify!($name), "([redacted])"))
            }
        }

        impl $crate::wire::body::Field for $name {
            fn read(
                value: ::serde_json::Value,
                at: &$crate::wire::body::At<'_>,
                problems: &mut $crate::wire::body::Problems,
            ) -> ::std::option::Option<Self> {
                $crate::wire::body::string_member(value, at, problems, $reason, |s| {
                    // Wiped on drop whether it is kept or refused.
                    let s = ::zeroize::Zeroizing::new(s);
                    ($valid)(s.as_str()).then(|| Self(s))
                })
            }

            fn schema() -> ::serde_json::Value {
                ::serde_json::json!($schema)
            }
        }
    };
}

/// Declares an enumeration read from fixed strings.
#[macro_export]
macro_rules! enum_field {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$vmeta])* #[doc = concat!("`", $text, "`")] $variant,)* }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            /// The wire text.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)* }
            }
        }

        impl $crate::wire::body::Field for $name {
            fn read(
                value: ::serde_json::Value,
                at: &$crate::wire::body::At<'_>,
                problems: &mut $crate::wire::body::Problems,
            ) -> ::std::option::Option<Self> {
                match value.as_str() {
                    $(Some($text) => Some(Self::$variant),)*
                    _ => {
                        problems.fail(at, concat!("one of" $(, " ", $text)*));
                        None
                    }
                }
            }

            fn schema() -> ::serde_json::Value {
                ::serde_json::json!({"type": "string", "enum": [$($text),*]})
            }
        }

        impl $crate::wire::reply::Choices for $name {
            const ALL: &'static [&'static str] = &[$($text),*];
            fn as_str(self) -> &'static str {
                Self::as_str(self)
            }
        }
    };
}

impl<T: Field> Field for Option<T> {
    const REQUIRED: bool = false;

    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        T::read(value, at, problems).map(Some)
    }

    fn absent() -> Option<Self> {
        Some(None)
    }

    /// `null` is accepted as "absent", so the schema says so.
    fn schema() -> Value {
        json!({"anyOf": [T::schema(), {"type": "null"}]})
    }
}

/// A member of a change request where `null` means "remove the value" and absence means
/// "leave it".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nullable<T> {
    /// Not given: keep what is there.
    Keep,
    /// `null`: remove it.
    Clear,
    /// A new value.
    Set(T),
}

impl<T> Nullable<T> {
    /// The new value when one is given: `Some(None)` to clear, `None` to keep.
    pub fn change(self) -> Option<Option<T>> {
        match self {
            Self::Keep => None,
            Self::Clear => Some(None),
            Self::Set(v) => Some(Some(v)),
        }
    }
}

impl<T: Field> Field for Nullable<T> {
    const REQUIRED: bool = false;

    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        T::read(value, at, problems).map(Self::Set)
    }

    fn absent() -> Option<Self> {
        Some(Self::Keep)
    }

    fn null() -> Option<Self> {
        Some(Self::Clear)
    }

    fn schema() -> Value {
        json!({"anyOf": [T::schema(), {"type": "null"}]})
    }
}

impl Field for bool {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        match value {
            Value::Bool(b) => Some(b),
            _ => {
                problems.fail(at, "must be true or false");
                None
            }
        }
    }

    fn schema() -> Value {
        json!({"type": "boolean"})
    }
}

/// A member that may not be given in this body (a fixed property such as a device id, which
/// clients may echo back from a read): any value but `null` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

impl Field for Refused {
    const REQUIRED: bool = false;

    fn read(_: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        problems.fail(at, "cannot be changed here");
        None
    }

    fn absent() -> Option<Self> {
        Some(Self)
    }

    fn schema() -> Value {
        json!({"not": {}, "description": "Cannot be changed here."})
    }
}

/// `pin_block` where no PIN may come (spec 12.2: a card typed in, as on a backoffice charge,
/// carries none): any value but `null` is refused, so a PIN is never silently dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoPin;

impl Field for NoPin {
    const REQUIRED: bool = false;

    fn read(_: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        problems.fail(at, "a card entered by hand carries no PIN");
        None
    }

    fn absent() -> Option<Self> {
        Some(Self)
    }

    fn schema() -> Value {
        json!({"not": {}, "description": "Never given: a card entered by hand carries no PIN."})
    }
}

/// Whether a character is refused in free text (C0, DEL and C1 controls).
fn is_control(c: char) -> bool {
    c.is_control()
}

/// Free text of 1 to `MAX` characters: not blank, no control characters, kept as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text<const MAX: usize>(pub String);

impl<const MAX: usize> Field for Text<MAX> {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        let Value::String(s) = value else {
            problems.fail(at, "must be a string");
            return None;
        };
        let reason = if s.trim().is_empty() {
            "must not be empty".to_owned()
        } else if s.chars().count() > MAX {
            format!("at most {MAX} characters")
        } else if s.chars().any(is_control) {
            "must not contain control characters".to_owned()
        } else {
            return Some(Self(s));
        };
        problems.fail(at, reason);
        None
    }

    fn schema() -> Value {
        // At least one character that is neither white space nor a control, and no control
        // anywhere: the same rule as `read`, in a regular expression schema tools can sample.
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": MAX,
            "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\s\\u0000-\\u001f\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$",
        })
    }
}

impl<const MAX: usize> std::ops::Deref for Text<MAX> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<const MAX: usize> From<Text<MAX>> for String {
    fn from(v: Text<MAX>) -> Self {
        v.0
    }
}

/// An integer from `MIN` to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int<const MIN: i64, const MAX: i64>(pub i64);

impl<const MIN: i64, const MAX: i64> Field for Int<MIN, MAX> {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        match value {
            // `372.0` is the integer 372 to JSON Schema, so it is to us too.
            Value::Number(n) => match n.as_i64().or_else(|| whole(n.as_f64()?)) {
                Some(v) if (MIN..=MAX).contains(&v) => Some(Self(v)),
                _ => {
                    problems.fail(at, format!("an integer from {MIN} to {MAX}"));
                    None
                }
            },
            _ => {
                problems.fail(at, "must be an integer");
                None
            }
        }
    }

    fn schema() -> Value {
        json!({"type": "integer", "minimum": MIN, "maximum": MAX})
    }
}

/// A float with no fraction, as an integer (when it fits).
#[allow(
    clippy::cast_possible_truncation,
    clippy::float_cmp,
    reason = "the value is whole and inside i64's range when converted"
)]
fn whole(f: f64) -> Option<i64> {
    let in_range = f.is_finite() && f.abs() < 9.0e15;
    (in_range && f.fract() == 0.0).then_some(f as i64)
}

/// An array of at most `MAX` items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List<T, const MAX: usize>(pub Vec<T>);

impl<T: Field, const MAX: usize> Field for List<T, MAX> {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        match value {
            Value::Array(items) if items.len() <= MAX => {
                let before = problems.0.len();
                let out: Vec<T> = items
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, item)| T::read(item, &At::Item(at, i), problems))
                    .collect();
                (problems.0.len() == before).then_some(Self(out))
            }
            Value::Array(_) => {
                problems.fail(at, format!("at most {MAX} items"));
                None
            }
            _ => {
                problems.fail(at, "must be an array");
                None
            }
        }
    }

    fn schema() -> Value {
        json!({"type": "array", "maxItems": MAX, "items": T::schema()})
    }
}

/// A JSON object kept as given, of at most `BYTES` bytes when serialised (free-form settings
/// that travel in every terminal's config and so must stay small).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Object<const BYTES: usize>(pub Map<String, Value>);

impl<const BYTES: usize> Field for Object<BYTES> {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        match value {
            Value::Object(m) => {
                if serde_json::to_vec(&m).map_or(usize::MAX, |v| v.len()) > BYTES {
                    problems.fail(at, format!("at most {BYTES} bytes of JSON"));
                    None
                } else {
                    Some(Self(m))
                }
            }
            _ => {
                problems.fail(at, "must be an object");
                None
            }
        }
    }

    fn schema() -> Value {
        json!({"type": "object"})
    }
}

/// An object whose member names are data (`{"amex": {...}}`), each name of type `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed<K, V>(pub Vec<(K, V)>);

impl<K, V> Keyed<K, V> {
    /// The entries, in the order sent.
    pub fn into_entries(self) -> Vec<(K, V)> {
        self.0
    }
}

impl<K: Field, V: Field> Field for Keyed<K, V> {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        let Value::Object(obj) = value else {
            problems.fail(at, "must be an object");
            return None;
        };
        let before = problems.0.len();
        let mut out = Vec::with_capacity(obj.len());
        for (name, v) in obj {
            let here = At::Member(at, &name);
            let key = K::read(Value::String(name.clone()), &here, problems);
            if key.is_none() {
                continue;
            }
            let value = if v.is_null() {
                problems.fail(&here, "required");
                None
            } else {
                V::read(v, &here, problems)
            };
            if let (Some(k), Some(v)) = (key, value) {
                out.push((k, v));
            }
        }
        (problems.0.len() == before).then_some(Self(out))
    }

    fn schema() -> Value {
        let names = K::schema();
        json!({"type": "object", "propertyNames": names, "additionalProperties": V::schema()})
    }
}

#[cfg(test)]
#[allow(dead_code, unreachable_pub, reason = "types declared only to be read")]
mod tests {
    use super::*;

    crate::body! {
        /// A test body.
        #[derive(Debug)]
        struct Inner {
            /// A name.
            y: Text<5>,
        }
    }

    crate::enum_field! {
        enum Colour { Red = "red", Green = "green" }
    }

    crate::body! {
        #[derive(Debug)]
        struct Outer {
            name: Text<10>,
            n: Option<Int<1, 3>>,
            x: Inner,
            missing: Text<10>,
            colour: Option<Colour>,
            tags: Option<List<Text<3>, 2>>,
            clear: Nullable<Text<3>>,
            r#type: Option<Text<3>>,
        }
    }

    fn names(err: &ApiError) -> Vec<String> {
        err.body("t")["error"]["details"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_problem_is_named_in_body_order() {
        let body = br#"{"name":"","n":5,"x":{"y":"toolong"},"colour":"blue","tags":["ab","abcd"],"type":7}"#;
        let err = parse::<Outer>(body).unwrap_err();
        assert_eq!(err.code(), Code::BodyInvalid);
        assert_eq!(
            names(&err),
            ["name", "n", "x.y", "missing", "colour", "tags[1]", "type"]
        );
    }

    #[test]
    fn absent_null_and_given_members() {
        let whole = parse::<Outer>(br#"{"name":"a","x":{"y":"b"},"missing":"m","n":2.0}"#).unwrap();
        assert_eq!(whole.n, Some(Int(2)));
        assert!(parse::<Outer>(br#"{"name":"a","x":{"y":"b"},"missing":"m","n":2.5}"#).is_err());
        let ok = parse::<Outer>(
            br#"{"name":"a","x":{"y":"b"},"missing":"m","n":null,"clear":null,"type":"t","extra":1}"#,
        )
        .unwrap();
        assert_eq!(ok.n, None);
        assert_eq!(ok.clear, Nullable::Clear);
        assert_eq!(ok.r#type.as_deref(), Some("t"));
        let kept = parse::<Outer>(br#"{"name":"a","x":{"y":"b"},"missing":"m"}"#).unwrap();
        assert_eq!(kept.clear, Nullable::Keep);
        assert_eq!(
            parse::<Outer>(b"nope").unwrap_err().code(),
            Code::BodyUnreadable
        );
        assert_eq!(
            parse::<Outer>(b"[1]").unwrap_err().code(),
            Code::BodyInvalid
        );
        assert_eq!(
            parse::<Outer>(br#"{"name":"a","name":"b"}"#)
                .unwrap_err()
                .code(),
            Code::BodyUnreadable
        );
    }

    #[test]
    fn the_schema_says_what_the_reader_wants() {
        let s = Outer::schema();
        assert_eq!(s["required"], json!(["name", "x", "missing"]));
        assert_eq!(s["properties"]["x"]["properties"]["y"]["maxLength"], 5);
        assert_eq!(
            s["properties"]["x"]["properties"]["y"]["description"],
            "A name."
        );
        assert_eq!(
            s["properties"]["colour"]["anyOf"][0]["enum"],
            json!(["red", "green"])
        );
        assert_eq!(s["properties"]["tags"]["anyOf"][0]["maxItems"], 2);
        assert!(s["properties"]["type"].is_object());
        assert_eq!(Colour::ALL.len(), 2);
        assert_eq!(Colour::Green.as_str(), "green");
    }

    #[test]
    fn checks_across_members_join_the_same_error() {
        let err = parse_checked::<Outer>(br#"{"name":"a","x":{"y":"b"},"missing":"m"}"#, |_, p| {
            p.fail_member("name", "taken")
        })
        .unwrap_err();
        assert_eq!(names(&err), ["name"]);
    }
}

//! A record bound to its table's columns straight from its `Serialize` impl.
//!
//! [`tables::bind`] takes a record's serde form as a `serde_json` map, which costs the whole
//! tree twice over on a hot path: built (a key string and a node per field, every nested value
//! copied), then turned to text column by column, then freed. On the charge path that was about
//! a tenth of the API's CPU. Here a derived `Serialize` struct is walked field by field: a
//! scalar column takes the field's value, a JSON column the field serialised straight to text,
//! an amount its two parts. A record whose serde form is not a plain struct (a map, say) falls
//! back to [`tables::bind`], so every record binds the same way either path takes; debug
//! builds check that on every write (`db::put`).

use serde::Serialize;
use serde::ser::{self, Impossible, SerializeStruct};
use serde_json::Value;

use super::tables::{self, Field, Table, Ty};

/// The values of `record`'s fields in [`tables::columns`] order, as [`tables::bind`] gives them
/// for its serde form.
///
/// # Errors
/// A field its column cannot hold (a nested value in a scalar column, an amount that is not
/// one), named by table and field.
pub(crate) fn bind<R: Serialize + ?Sized>(t: &Table, record: &R) -> Result<Vec<Field>, String> {
    match record.serialize(Row { t }) {
        Ok(fields) => Ok(fields),
        Err(Fail::NotAStruct) => {
            let value = serde_json::to_value(record).map_err(|e| e.to_string())?;
            match value {
                Value::Object(body) => tables::bind(t, &body),
                _ => Err(format!("{}: a record is not an object", t.name)),
            }
        }
        Err(Fail::Field(why)) => Err(why),
    }
}

/// Why [`Row`] did not bind a record.
#[derive(Debug)]
enum Fail {
    /// Its serde form is not a struct: bound through its `serde_json` form instead.
    NotAStruct,
    /// A field its column cannot hold.
    Field(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotAStruct => f.write_str("not a struct"),
            Self::Field(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Fail {}

impl ser::Error for Fail {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Self::Field(msg.to_string())
    }
}

/// The top-level serializer: a struct, or [`Fail::NotAStruct`].
struct Row<'t> {
    t: &'t Table,
}

/// A struct's fields on their way to the columns.
struct Fields<'t> {
    t: &'t Table,
    out: Vec<Field>,
    /// Where the next field is looked for first: the column after the last one found, and
    /// where its values start. Records declare their fields in column order, so the search
    /// is one comparison per field.
    next: (usize, usize),
}

impl Fields<'_> {
    /// Where column `name` starts among the values (an amount takes two), and its type: one
    /// round of the columns from the one after the last found.
    fn slot(&mut self, name: &str) -> Option<(usize, Ty)> {
        let n = self.t.cols.len();
        let (mut i, mut at) = if self.next.0 < n { self.next } else { (0, 0) };
        for _ in 0..n {
            let &(col, ty) = self.t.cols.get(i)?;
            let width = if ty == Ty::Money { 2 } else { 1 };
            if col == name {
                self.next = (i + 1, at + width);
                return Some((at, ty));
            }
            (i, at) = if i + 1 < n {
                (i + 1, at + width)
            } else {
                (0, 0)
            };
        }
        None
    }
}

impl SerializeStruct for Fields<'_> {
    type Ok = Vec<Field>;
    type Error = Fail;

    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Fail> {
        // The key column comes from the write's id; a field no column holds is not stored,
        // as `tables::bind` ignores it.
        let Some((at, ty)) = self.slot(key) else {
            return Ok(());
        };
        let bad = |e: serde_json::Error| Fail::Field(format!("{}.{key}: {e}", self.t.name));
        let tables::Bound(first, second) = match ty {
            Ty::Json => {
                let text = serde_json::to_string(value).map_err(bad)?;
                tables::Bound(
                    if text == "null" {
                        Field::Null
                    } else {
                        Field::Text(text)
                    },
                    None,
                )
            }
            ty => {
                let value = serde_json::to_value(value).map_err(bad)?;
                tables::bind_value(self.t, key, ty, value).map_err(Fail::Field)?
            }
        };
        if let Some(slot) = self.out.get_mut(at) {
            *slot = first;
        }
        if let (Some(second), Some(slot)) = (second, self.out.get_mut(at + 1)) {
            *slot = second;
        }
        Ok(())
    }

    fn end(self) -> Result<Vec<Field>, Fail> {
        Ok(self.out)
    }
}

/// Every serde shape but a struct is [`Fail::NotAStruct`].
macro_rules! not_a_struct {
    ($($name:ident($($arg:ty),*)),* $(,)?) => {
        $(fn $name(self, $(_: $arg),*) -> Result<Vec<Field>, Fail> {
            Err(Fail::NotAStruct)
        })*
    };
}

impl<'t> ser::Serializer for Row<'t> {
    type Ok = Vec<Field>;
    type Error = Fail;
    type SerializeSeq = Impossible<Vec<Field>, Fail>;
    type SerializeTuple = Impossible<Vec<Field>, Fail>;
    type SerializeTupleStruct = Impossible<Vec<Field>, Fail>;
    type SerializeTupleVariant = Impossible<Vec<Field>, Fail>;
    type SerializeMap = Impossible<Vec<Field>, Fail>;
    type SerializeStruct = Fields<'t>;
    type SerializeStructVariant = Impossible<Vec<Field>, Fail>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Fields<'t>, Fail> {
        Ok(Fields {
            t: self.t,
            out: vec![Field::Null; tables::width(self.t)],
            next: (0, 0),
        })
    }

    not_a_struct!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_str(&str),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str),
    );

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<Vec<Field>, Fail> {
        value.serialize(self)
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Vec<Field>, Fail> {
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Vec<Field>, Fail> {
        Err(Fail::NotAStruct)
    }

    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Fail> {
        Err(Fail::NotAStruct)
    }

    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Fail> {
        Err(Fail::NotAStruct)
    }

    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Fail> {
        Err(Fail::NotAStruct)
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Fail> {
        Err(Fail::NotAStruct)
    }

    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Fail> {
        Err(Fail::NotAStruct)
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Fail> {
        Err(Fail::NotAStruct)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Map, json};

    use super::*;

    #[derive(Serialize)]
    struct Money {
        value: i64,
        currency: &'static str,
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Status {
        Active,
    }

    /// A fee template with every column type and a field no column holds.
    #[derive(Serialize)]
    struct Template {
        id: &'static str,
        reseller_id: Option<&'static str>,
        name: String,
        percent_bps: u32,
        fixed: Option<Money>,
        per_brand: BTreeMap<&'static str, u32>,
        created_at: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        updated_at: Option<i64>,
        not_stored: Status,
    }

    fn table(kind: &str) -> &'static Table {
        tables::of(kind).unwrap().table
    }

    /// The record bound directly and through its JSON form, each read back as the store
    /// would (JSON columns parsed: a struct keeps its field order in the text, a map sorts).
    fn both<R: Serialize>(
        t: &Table,
        r: &R,
    ) -> (Vec<Field>, Map<String, Value>, Map<String, Value>) {
        let direct = bind(t, r).unwrap();
        let Value::Object(body) = serde_json::to_value(r).unwrap() else {
            unreachable!()
        };
        let through_json = tables::bind(t, &body).unwrap();
        let read = |f: &[Field]| tables::fields_body(t, "x", f).unwrap();
        (direct.clone(), read(&direct), read(&through_json))
    }

    #[test]
    fn a_struct_binds_as_its_serde_form_does() {
        let t = table("fee_template");
        for (fixed, brands, updated) in [
            (
                Some(Money {
                    value: 30,
                    currency: "EUR",
                }),
                [("visa", 120)].into(),
                Some(9),
            ),
            (None, BTreeMap::new(), None),
        ] {
            let r = Template {
                id: "ft_1",
                reseller_id: Some("rs_1"),
                name: "Standard \"quoted\" ✓".into(),
                percent_bps: 150,
                fixed,
                per_brand: brands,
                created_at: 1_700_000_000,
                updated_at: updated,
                not_stored: Status::Active,
            };
            let (direct, read, through_json) = both(t, &r);
            assert_eq!(read, through_json);
            assert_eq!(direct.len(), tables::width(t));
            assert_eq!(read["name"], json!("Standard \"quoted\" ✓"));
        }
    }

    /// Fields in another order than the columns (each search then goes round the end).
    #[test]
    fn fields_in_any_order_find_their_columns() {
        #[derive(Serialize)]
        struct Backwards {
            updated_at: i64,
            created_at: i64,
            timezone: Option<&'static str>,
            address: BTreeMap<&'static str, &'static str>,
            name: &'static str,
            merchant_id: &'static str,
            id: &'static str,
        }
        let t = table("location");
        let r = Backwards {
            updated_at: 2,
            created_at: 1,
            timezone: Some("Europe/Berlin"),
            address: [("city", "X")].into(),
            name: "Shop",
            merchant_id: "m1",
            id: "l1",
        };
        let (_, read, through_json) = both(t, &r);
        assert_eq!(read, through_json);
        assert_eq!(read["timezone"], json!("Europe/Berlin"));
        assert_eq!(read["updated_at"], json!(2));
    }

    #[test]
    fn other_shapes_bind_through_their_json_form_and_bad_fields_are_named() {
        let t = table("location");
        let as_map = json!({"id": "l1", "merchant_id": "m1", "name": "Shop",
                            "address": {"city": "X"}, "timezone": null,
                            "created_at": 1, "updated_at": 2});
        let (direct, read, through_json) = both(t, &as_map);
        assert_eq!(read, through_json);
        assert!(direct.contains(&Field::Text("{\"city\":\"X\"}".into())));

        #[derive(Serialize)]
        struct Nested {
            merchant_id: Vec<u8>,
        }
        let err = bind(
            t,
            &Nested {
                merchant_id: vec![1],
            },
        )
        .unwrap_err();
        assert!(err.contains("merchant_id"), "{err}");
        #[derive(Serialize)]
        struct NotAnAmount {
            fixed: &'static str,
        }
        let err = bind(table("fee_template"), &NotAnAmount { fixed: "1 EUR" }).unwrap_err();
        assert!(err.contains("fixed"), "{err}");
        assert!(bind(t, &5).is_err());
    }
}

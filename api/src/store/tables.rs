//! The typed tables: which table holds each record kind and with which columns, which SQL
//! answers each list, and where each unique value lives. The schema itself is hand-written in
//! `api/migrations/sqlite/`; this file is the map from the [`super::Store`] operations to it.
//!
//! A record crosses the store as a JSON object (the domain's serde form). Each top-level field
//! is a column of the same name, converted by its [`Ty`]: text, integer, 0/1 boolean, JSON text
//! for nested values read whole, or an amount split into `<field>_value` / `<field>_currency`.
//! Every table also has its key column (the record's id field), `seq` and `version`.
//!
//! The SQL below is SQLite's; a PostgreSQL store would keep the same tables and lists with its
//! own placeholders (`$1`) and types (`BIGINT`, `JSONB`, `BOOLEAN`).

use std::collections::HashMap;
use std::sync::LazyLock;

use rusqlite::types::{Value as Sql, ValueRef};
use serde_json::{Map, Value};

/// How a field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ty {
    /// TEXT (strings, enums, ids).
    Text,
    /// INTEGER (times, counts, amounts).
    Int,
    /// INTEGER 0/1.
    Bool,
    /// TEXT holding JSON (maps, arrays, nested records read whole).
    Json,
    /// `{value, currency}` as two columns `<field>_value` INTEGER, `<field>_currency` TEXT.
    Money,
}

/// One record kind's table.
#[derive(Debug)]
pub(crate) struct Table {
    /// The record kind (`Record::KIND`).
    pub kind: &'static str,
    /// The table name.
    pub name: &'static str,
    /// The key column: the record's id field.
    pub key: &'static str,
    /// The other fields, in column order.
    pub cols: &'static [(&'static str, Ty)],
}

use Ty::{Bool, Int, Json, Money, Text};

/// Every record kind and its table (schema: `0002_typed_tables.sql`).
pub(crate) static TABLES: &[Table] = &[
    Table {
        kind: "reseller",
        name: "resellers",
        key: "id",
        cols: &[
            ("name", Text),
            ("parent_id", Text),
            ("ancestors", Json),
            ("branding", Json),
            ("portal_hosts", Json),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "fee_template",
        name: "fee_templates",
        key: "id",
        cols: &[
            ("reseller_id", Text),
            ("name", Text),
            ("percent_bps", Int),
            ("fixed", Money),
            ("per_brand", Json),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "merchant",
        name: "merchants",
        key: "id",
        cols: &[
            ("reseller_id", Text),
            ("resellers", Json),
            ("name", Text),
            ("mcc", Text),
            ("country", Text),
            ("currency", Text),
            ("fee_template_id", Text),
            ("tip_info", Json),
            ("tax_info", Json),
            ("surcharge_info", Json),
            ("merchant_key", Text),
            ("terminal_parameters", Json),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "location",
        name: "locations",
        key: "id",
        cols: &[
            ("merchant_id", Text),
            ("name", Text),
            ("address", Json),
            ("timezone", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "device",
        name: "devices",
        key: "device_id",
        cols: &[
            ("merchant_id", Text),
            ("model", Text),
            ("serial", Text),
            ("label", Text),
            ("location_id", Text),
            ("zone", Text),
            ("status", Text),
            ("terminal_id", Text),
            ("identity_key_id", Text),
            ("identity_kcv", Text),
            ("rotate_keys", Bool),
            ("terminal_parameters", Json),
            ("auth_epoch", Int),
            ("key_set", Json),
            ("previous_key_set", Json),
            ("pairing_code", Text),
            ("pairing_issued", Json),
            ("created_at", Int),
            ("updated_at", Int),
            ("activated_at", Int),
        ],
    },
    Table {
        kind: "pairing_code",
        name: "pairing_codes",
        key: "code",
        cols: &[
            ("device_id", Text),
            ("status", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("ended_at", Int),
        ],
    },
    Table {
        kind: "user",
        name: "users",
        key: "id",
        cols: &[
            ("email", Text),
            ("name", Text),
            ("role", Text),
            ("idp_subject", Text),
            ("merchant_id", Text),
            ("reseller_id", Text),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "api_client",
        name: "api_clients",
        key: "client_id",
        cols: &[
            ("merchant_id", Text),
            ("name", Text),
            ("salt", Text),
            ("secret_hash", Text),
            ("failures", Int),
            ("locked_until", Int),
            ("created_at", Int),
        ],
    },
    Table {
        kind: "session",
        name: "sessions",
        key: "sub",
        cols: &[
            ("session_id", Text),
            ("expires_at", Int),
            ("host", Text),
            ("reseller_id", Text),
            ("merchant_id", Text),
        ],
    },
    Table {
        kind: "attestation",
        name: "attestations",
        key: "hash",
        cols: &[("device_id", Text), ("epoch", Int), ("expires_at", Int)],
    },
    Table {
        kind: "nonce",
        name: "nonces",
        key: "id",
        cols: &[("at", Int)],
    },
    Table {
        kind: "charge",
        name: "charges",
        key: "charge_id",
        cols: &[
            ("merchant_id", Text),
            ("resellers", Json),
            ("location_id", Text),
            ("terminal_id", Text),
            ("status", Text),
            ("amount", Money),
            ("tip", Money),
            ("amount_refunded", Int),
            ("authorization_code", Text),
            ("iso_response_code", Text),
            ("decline_code", Text),
            ("card", Json),
            ("reference", Text),
            ("description", Text),
            ("metadata", Json),
            ("fee", Money),
            ("processor", Text),
            ("processor_reference", Text),
            ("created_at", Int),
            ("settled_at", Int),
            ("refunds", Json),
        ],
    },
    Table {
        kind: "refund",
        name: "refunds",
        key: "refund_id",
        cols: &[
            ("charge_id", Text),
            ("merchant_id", Text),
            ("terminal_id", Text),
            ("location_id", Text),
            ("amount", Money),
            ("reason", Text),
            ("charge_status", Text),
            ("processor_reference", Text),
            ("created_at", Int),
        ],
    },
    Table {
        kind: "settlement",
        name: "settlements",
        key: "settlement_id",
        cols: &[
            ("merchant_id", Text),
            ("count", Int),
            ("total", Money),
            ("created_at", Int),
            ("left_from", Int),
        ],
    },
    Table {
        kind: "idempotency",
        name: "idempotency",
        key: "id",
        cols: &[
            ("request", Text),
            ("status", Int),
            ("body", Json),
            ("created_at", Int),
        ],
    },
    Table {
        kind: "boot",
        name: "boots",
        key: "id",
        cols: &[("started_at", Int), ("checkpoint", Int)],
    },
];

/// The lists the API runs: `(index name, record kind, the WHERE clause selecting one key's
/// records; ?1 is the key)`. Every list reads newest first by `seq` below a cursor (`?2`).
/// One index may list two kinds (`transactions`: charges and refunds, merged by `seq`).
pub(crate) static LISTS: &[(&str, &str, &str)] = &[
    ("resellers", "reseller", "?1 = ''"),
    (
        "reseller_children",
        "reseller",
        "COALESCE(parent_id, '') = ?1",
    ),
    (
        "reseller_tree",
        "reseller",
        "id IN (SELECT reseller_id FROM reseller_ancestors WHERE ancestor_id = ?1)",
    ),
    ("fee_templates", "fee_template", "reseller_id = ?1"),
    ("merchants", "merchant", "?1 = ''"),
    (
        "merchant_tree",
        "merchant",
        "id IN (SELECT merchant_id FROM merchant_resellers WHERE reseller_id = ?1)",
    ),
    ("locations", "location", "merchant_id = ?1"),
    ("devices", "device", "merchant_id = ?1"),
    (
        "users",
        "user",
        "COALESCE(merchant_id, reseller_id, '') = ?1",
    ),
    ("api_clients", "api_client", "merchant_id = ?1"),
    ("transactions", "charge", "merchant_id = ?1"),
    ("transactions", "refund", "merchant_id = ?1"),
    ("settlements", "settlement", "merchant_id = ?1"),
    (
        "attestation_minute",
        "attestation",
        "expires_at >= CAST(?1 AS INTEGER) * 60 AND expires_at < (CAST(?1 AS INTEGER) + 1) * 60",
    ),
    (
        "idempotency_hour",
        "idempotency",
        "created_at >= CAST(?1 AS INTEGER) * 3600 \
         AND created_at < (CAST(?1 AS INTEGER) + 1) * 3600",
    ),
];

/// Index entries a new record brings that are rows of their own (multi-valued: a record listed
/// under each reseller above it): `(index name, INSERT with ?1 = key, ?2 = record id)`. Other
/// index entries are the record's columns and need no write.
pub(crate) static JOIN_ROWS: &[(&str, &str)] = &[
    (
        "reseller_tree",
        "INSERT OR IGNORE INTO reseller_ancestors (ancestor_id, reseller_id) VALUES (?1, ?2)",
    ),
    (
        "merchant_tree",
        "INSERT OR IGNORE INTO merchant_resellers (reseller_id, merchant_id) VALUES (?1, ?2)",
    ),
];

/// Where a unique value lives, per namespace.
#[derive(Debug)]
pub(crate) struct Unique {
    /// The namespace callers claim in.
    pub ns: &'static str,
    /// The holder of `?1` (one row, one column).
    pub owner: &'static str,
    /// Records `?1` as held by `?2`; `None` when the value is a column of the owner's row
    /// (the claim is then only checked; the row's write sets it and its UNIQUE constraint
    /// enforces it).
    pub insert: Option<&'static str>,
    /// Gives `?1` up; `None` as for `insert`.
    pub delete: Option<&'static str>,
}

/// The namespaces with a table or a column of their own; any other goes to `claims`.
pub(crate) static UNIQUES: &[Unique] = &[
    Unique {
        ns: "portal_host",
        owner: "SELECT reseller_id FROM portal_hosts WHERE host = ?1",
        insert: Some("INSERT INTO portal_hosts (host, reseller_id) VALUES (?1, ?2)"),
        delete: Some("DELETE FROM portal_hosts WHERE host = ?1"),
    },
    Unique {
        ns: "device_id",
        owner: "SELECT merchant_id FROM device_ids WHERE device_id = ?1",
        insert: Some("INSERT INTO device_ids (device_id, merchant_id) VALUES (?1, ?2)"),
        delete: Some("DELETE FROM device_ids WHERE device_id = ?1"),
    },
    Unique {
        ns: "terminal_id",
        owner: "SELECT device_id FROM terminal_ids WHERE terminal_id = ?1",
        insert: Some("INSERT INTO terminal_ids (terminal_id, device_id) VALUES (?1, ?2)"),
        delete: Some("DELETE FROM terminal_ids WHERE terminal_id = ?1"),
    },
    Unique {
        ns: "user_sub",
        owner: "SELECT id FROM users WHERE idp_subject = ?1",
        insert: None,
        delete: None,
    },
];

/// Unique values with no row of their own (`?1` = namespace, `?2` = value, `?3` = owner).
pub(crate) const CLAIM_OWNER: &str = "SELECT owner FROM claims WHERE ns = ?1 AND value = ?2";
/// See [`CLAIM_OWNER`].
pub(crate) const CLAIM_INSERT: &str = "INSERT INTO claims (ns, value, owner) VALUES (?1, ?2, ?3)";
/// See [`CLAIM_OWNER`].
pub(crate) const CLAIM_DELETE: &str = "DELETE FROM claims WHERE ns = ?1 AND value = ?2";

/// A table's statements, built once from its column list.
#[derive(Debug)]
pub(crate) struct Statements {
    /// The table.
    pub table: &'static Table,
    /// `key, seq, version, columns… FROM table` (to be completed with WHERE / ORDER BY).
    pub select: String,
    /// `SELECT … WHERE key = ?1`.
    pub get: String,
    /// `SELECT … WHERE key < ?1 ORDER BY key DESC LIMIT ?2`.
    pub scan_back: String,
    /// `SELECT seq, version … WHERE key = ?1`.
    pub version: String,
    /// `INSERT (key, seq, version = 1, columns…)`.
    pub insert: String,
    /// `UPDATE SET columns…, version = version + 1 WHERE key = ?1`.
    pub update: String,
    /// `DELETE WHERE key = ?1`.
    pub delete: String,
}

/// The SQL column names of a table's fields.
fn columns(t: &Table) -> Vec<String> {
    let mut out = Vec::new();
    for (name, ty) in t.cols {
        if *ty == Money {
            out.push(format!("{name}_value"));
            out.push(format!("{name}_currency"));
        } else {
            out.push((*name).to_owned());
        }
    }
    out
}

fn statements(t: &'static Table) -> Statements {
    let cols = columns(t);
    let (name, key) = (t.name, t.key);
    let select = format!(
        "SELECT {key}, seq, version, {} FROM {name}",
        cols.join(", ")
    );
    let placeholders: Vec<String> = (4..cols.len() + 4).map(|i| format!("?{i}")).collect();
    let sets: Vec<String> = cols
        .iter()
        .zip(2..)
        .map(|(c, i)| format!("{c} = ?{i}"))
        .collect();
    Statements {
        table: t,
        get: format!("{select} WHERE {key} = ?1"),
        scan_back: format!("{select} WHERE {key} < ?1 ORDER BY {key} DESC LIMIT ?2"),
        version: format!("SELECT seq, version FROM {name} WHERE {key} = ?1"),
        insert: format!(
            "INSERT INTO {name} ({key}, seq, version, {}) VALUES (?1, ?2, ?3, {})",
            cols.join(", "),
            placeholders.join(", ")
        ),
        update: format!(
            "UPDATE {name} SET {}, version = version + 1 WHERE {key} = ?1",
            sets.join(", ")
        ),
        delete: format!("DELETE FROM {name} WHERE {key} = ?1"),
        select,
    }
}

static STATEMENTS: LazyLock<HashMap<&'static str, Statements>> =
    LazyLock::new(|| TABLES.iter().map(|t| (t.kind, statements(t))).collect());

/// The statements of a kind, or `None` for a kind the schema does not know.
pub(crate) fn of(kind: &str) -> Option<&'static Statements> {
    STATEMENTS.get(kind)
}

/// The list queries of an index: `(statements of the kind, full SELECT with ?1 = key,
/// ?2 = seq bound, ?3 = limit)`.
pub(crate) fn lists(index: &str) -> Vec<(&'static Statements, String)> {
    LISTS
        .iter()
        .filter(|(name, _, _)| *name == index)
        .filter_map(|(_, kind, filter)| {
            let st = of(kind)?;
            Some((
                st,
                format!(
                    "{} WHERE ({filter}) AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                    st.select
                ),
            ))
        })
        .collect()
}

/// The namespace's table or column, if it has one.
pub(crate) fn unique(ns: &str) -> Option<&'static Unique> {
    UNIQUES.iter().find(|u| u.ns == ns)
}

/// The bound values of a record's fields, in column order (after key, seq, version).
pub(crate) fn bind(t: &Table, body: &Map<String, Value>) -> Result<Vec<Sql>, String> {
    let mut out = Vec::with_capacity(t.cols.len() + 4);
    for (name, ty) in t.cols {
        let v = body.get(*name).unwrap_or(&Value::Null);
        match ty {
            Money => match v {
                Value::Null => {
                    out.push(Sql::Null);
                    out.push(Sql::Null);
                }
                Value::Object(m) => {
                    out.push(scalar(m.get("value").unwrap_or(&Value::Null), name)?);
                    out.push(scalar(m.get("currency").unwrap_or(&Value::Null), name)?);
                }
                _ => return Err(format!("{}.{name}: not an amount", t.name)),
            },
            Json => out.push(match v {
                Value::Null => Sql::Null,
                v => Sql::Text(v.to_string()),
            }),
            Text | Int | Bool => out.push(scalar(v, name)?),
        }
    }
    Ok(out)
}

fn scalar(v: &Value, name: &str) -> Result<Sql, String> {
    Ok(match v {
        Value::Null => Sql::Null,
        Value::Bool(b) => Sql::Integer(i64::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Sql::Integer(i),
            (None, Some(u)) => {
                Sql::Integer(i64::try_from(u).map_err(|_| format!("{name}: number out of range"))?)
            }
            _ => Sql::Real(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Sql::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => return Err(format!("{name}: nested value")),
    })
}

/// A row read with [`Statements::select`]: `(id, seq, version, body)`.
pub(crate) fn row(
    t: &Table,
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, i64, i64, Map<String, Value>)> {
    let id: String = r.get(0)?;
    let mut body = Map::new();
    body.insert(t.key.to_owned(), Value::String(id.clone()));
    let mut i = 3;
    for (name, ty) in t.cols {
        let v = match ty {
            Money => {
                let value = json_of(r.get_ref(i)?, Int, i)?;
                let currency = json_of(r.get_ref(i + 1)?, Text, i + 1)?;
                i += 1;
                if value.is_null() {
                    Value::Null
                } else {
                    let mut m = Map::new();
                    m.insert("value".into(), value);
                    m.insert("currency".into(), currency);
                    Value::Object(m)
                }
            }
            ty => json_of(r.get_ref(i)?, *ty, i)?,
        };
        i += 1;
        body.insert((*name).to_owned(), v);
    }
    Ok((id, r.get(1)?, r.get(2)?, body))
}

fn json_of(v: ValueRef<'_>, ty: Ty, i: usize) -> rusqlite::Result<Value> {
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| {
        rusqlite::Error::FromSqlConversionFailure(i, v.data_type(), e)
    };
    Ok(match (v, ty) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(n), Bool) => Value::Bool(n != 0),
        (ValueRef::Integer(n), _) => Value::from(n),
        (ValueRef::Real(f), _) => Value::from(f),
        (ValueRef::Text(t), Json) => serde_json::from_slice(t).map_err(|e| bad(Box::new(e)))?,
        (ValueRef::Text(t), _) => {
            Value::String(String::from_utf8(t.to_vec()).map_err(|e| bad(Box::new(e)))?)
        }
        (ValueRef::Blob(_), _) => return Err(bad("blob in a typed column".into())),
    })
}

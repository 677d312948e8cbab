//! The typed tables: which table holds each record kind and with which columns, which SQL
//! answers each list, and where each unique value lives. The schemas themselves are
//! hand-written, per database: `api/migrations/sqlite/` and `api/migrations/postgres/`; this file
//! is the map from the [`super::Store`] operations to them, shared by both stores.
//!
//! A record crosses the store as a JSON object (the domain's serde form). Each top-level field
//! is a column of the same name, converted by its [`Ty`]: text, integer, boolean, JSON text
//! for nested values read whole, or an amount split into `<field>_value` / `<field>_currency`.
//! Every table also has its key column (the record's id field), `seq` and `version`.
//!
//! What both databases share lives here: the tables and their columns ([`TABLES`],
//! [`columns`]), the lists' `WHERE` clauses ([`LISTS`]), the join rows and unique values, and the
//! conversion of a record's fields to column values ([`bind`], to neutral [`Field`]s) and back
//! ([`body`]). The statements are SQLite's below (`?1` placeholders); the PostgreSQL store builds
//! its own from the same column lists and turns `?N` into `$N` ([`numbered`]). The shared SQL is
//! written to mean the same in both (`ON CONFLICT DO NOTHING`, `CAST`s that keep a parameter
//! text for PostgreSQL's type inference).

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

/// Every record kind and its table (schema: `0002_typed_tables.sql` to `0009_seq_as_rowid.sql`
/// in `api/migrations/sqlite`).
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
            ("acquirer_mid", Text),
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
            ("last_seen_at", Int),
            ("app_version", Text),
            ("connectivity", Text),
            ("heartbeat", Json),
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
        cols: &[("at", Int), ("key", Text)],
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
            ("processor_data", Json),
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
        cols: &[("started_at", Int), ("checkpoint", Int), ("seen_at", Int)],
    },
    Table {
        kind: "lease",
        name: "leases",
        key: "name",
        cols: &[("holder", Text), ("expires_at", Int)],
    },
    Table {
        kind: "reversal",
        name: "reversals",
        key: "id",
        cols: &[
            ("charge_id", Text),
            ("reason", Text),
            ("original", Json),
            ("stan", Text),
            ("transmission", Text),
            ("attempts", Int),
            ("sent_at", Int),
            ("created_at", Int),
        ],
    },
    Table {
        kind: "event",
        name: "events",
        key: "id",
        cols: &[
            ("event_type", Text),
            ("object_type", Text),
            ("object_id", Text),
            ("merchant_id", Text),
            ("data", Json),
            ("created_at", Int),
        ],
    },
    Table {
        kind: "event_outbox",
        name: "event_outbox",
        key: "id",
        cols: &[
            ("event_type", Text),
            ("object_id", Text),
            ("merchant_id", Text),
            ("created_at", Int),
        ],
    },
    Table {
        kind: "credential",
        name: "credentials",
        key: "user_id",
        cols: &[
            ("login", Text),
            ("salt", Text),
            ("iterations", Int),
            ("verifier", Text),
            ("failures", Int),
            ("locked_until", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "web_session",
        name: "web_sessions",
        key: "id",
        cols: &[
            ("purpose", Text),
            ("sub", Text),
            ("expires_at", Int),
            ("data", Json),
        ],
    },
    Table {
        kind: "app_version",
        name: "app_versions",
        key: "model",
        cols: &[
            ("latest_version", Text),
            ("url", Text),
            ("min_supported_version", Text),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "audit_event",
        name: "audit_events",
        key: "id",
        cols: &[
            ("at", Int),
            ("subject", Text),
            ("role", Text),
            ("action", Text),
            ("method", Text),
            ("path", Text),
            ("object_kind", Text),
            ("object_id", Text),
            ("merchant_id", Text),
            ("reseller_id", Text),
            ("request_id", Text),
            ("source", Text),
            ("digest_before", Text),
            ("digest_after", Text),
            ("chain_seq", Int),
            ("prev_mac", Text),
            ("mac", Text),
        ],
    },
    Table {
        kind: "audit_head",
        name: "audit_heads",
        key: "name",
        cols: &[("count", Int), ("mac", Text)],
    },
    Table {
        kind: "webhook_endpoint",
        name: "webhook_endpoints",
        key: "id",
        cols: &[
            ("merchant_id", Text),
            ("reseller_id", Text),
            ("url", Text),
            ("description", Text),
            ("enabled_events", Json),
            ("status", Text),
            ("secrets", Json),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
    Table {
        kind: "webhook_delivery",
        name: "webhook_deliveries",
        key: "id",
        cols: &[
            ("endpoint_id", Text),
            ("event_id", Text),
            ("event_type", Text),
            ("object_id", Text),
            ("status", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("log", Json),
            ("created_at", Int),
            ("updated_at", Int),
        ],
    },
];

/// The lists the API runs: `(index name, record kind, the WHERE clause selecting one key's
/// records; ?1 is the key)`. Every list reads newest first by `seq` below a cursor (`?2`).
/// One index may list two kinds (`transactions`: charges and refunds, merged by `seq`).
///
/// The key is always bound as text. The time buckets cast it to a number through
/// `CAST(CAST(?1 AS TEXT) AS BIGINT)`: PostgreSQL infers a parameter's type from its first use
/// (a bare `CAST(?1 AS BIGINT)` would make it a number it cannot bind text to), SQLite reads the
/// same expression as before, and BIGINT keeps `minute * 60` from overflowing 32 bits in 2038.
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
        "devices_silent",
        "device",
        "connectivity = 'online' AND last_seen_at < CAST(CAST(?1 AS TEXT) AS BIGINT)",
    ),
    ("app_versions", "app_version", "?1 = ''"),
    (
        "users",
        "user",
        "COALESCE(merchant_id, reseller_id, '') = ?1",
    ),
    ("api_clients", "api_client", "merchant_id = ?1"),
    ("transactions", "charge", "merchant_id = ?1"),
    ("transactions", "refund", "merchant_id = ?1"),
    ("settlements", "settlement", "merchant_id = ?1"),
    ("audit_events", "audit_event", "?1 = ''"),
    (
        "audit_unchained",
        "audit_event",
        "chain_seq IS NULL AND ?1 = ''",
    ),
    ("merchant_audit", "audit_event", "merchant_id = ?1"),
    (
        "reseller_audit",
        "audit_event",
        "merchant_id IN (SELECT merchant_id FROM merchant_resellers WHERE reseller_id = ?1) \
         OR reseller_id IN (SELECT reseller_id FROM reseller_ancestors WHERE ancestor_id = ?1)",
    ),
    ("events", "event", "?1 = ''"),
    ("merchant_events", "event", "merchant_id = ?1"),
    (
        "reseller_events",
        "event",
        "merchant_id IN (SELECT merchant_id FROM merchant_resellers WHERE reseller_id = ?1)",
    ),
    ("object_events", "event", "object_id = ?1"),
    ("event_outbox", "event_outbox", "?1 = ''"),
    (
        "webhook_endpoints",
        "webhook_endpoint",
        "COALESCE(merchant_id, reseller_id, '') = ?1",
    ),
    ("webhook_deliveries", "webhook_delivery", "endpoint_id = ?1"),
    ("webhook_object", "webhook_delivery", "object_id = ?1"),
    (
        "webhook_due",
        "webhook_delivery",
        "status = 'pending' AND next_attempt_at <= CAST(CAST(?1 AS TEXT) AS BIGINT)",
    ),
    (
        "attestation_minute",
        "attestation",
        "expires_at >= CAST(CAST(?1 AS TEXT) AS BIGINT) * 60 \
         AND expires_at < (CAST(CAST(?1 AS TEXT) AS BIGINT) + 1) * 60",
    ),
    (
        "web_session_hour",
        "web_session",
        "expires_at >= CAST(CAST(?1 AS TEXT) AS BIGINT) * 3600 \
         AND expires_at < (CAST(CAST(?1 AS TEXT) AS BIGINT) + 1) * 3600",
    ),
    (
        "idempotency_hour",
        "idempotency",
        "created_at >= CAST(CAST(?1 AS TEXT) AS BIGINT) * 3600 \
         AND created_at < (CAST(CAST(?1 AS TEXT) AS BIGINT) + 1) * 3600",
    ),
];

/// Index entries a new record brings that are rows of their own (multi-valued: a record listed
/// under each reseller above it): `(index name, INSERT with ?1 = key, ?2 = record id)`. Other
/// index entries are the record's columns and need no write.
pub(crate) static JOIN_ROWS: &[(&str, &str)] = &[
    (
        "reseller_tree",
        "INSERT INTO reseller_ancestors (ancestor_id, reseller_id) VALUES (?1, ?2) \
         ON CONFLICT DO NOTHING",
    ),
    (
        "merchant_tree",
        "INSERT INTO merchant_resellers (reseller_id, merchant_id) VALUES (?1, ?2) \
         ON CONFLICT DO NOTHING",
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
        ns: "nonce",
        owner: "SELECT id FROM nonces WHERE key = ?1",
        insert: None,
        delete: None,
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
    /// `INSERT (key, seq = ?2, version = 1, columns…)`, or on a taken key `UPDATE SET
    /// columns…, version = version + 1`, `RETURNING seq`: the offered seq back means a new row.
    pub upsert: String,
    /// `DELETE WHERE key = ?1`.
    pub delete: String,
}

/// The SQL columns of a table's fields, in order, with how each is read: an amount is two
/// columns, its value ([`Ty::Int`]) and its currency ([`Ty::Text`]). Both stores build their
/// statements from this list, and [`bind`] and [`body`] walk it in the same order.
pub(crate) fn columns(t: &Table) -> Vec<(String, Ty)> {
    let mut out = Vec::new();
    for (name, ty) in t.cols {
        if *ty == Money {
            out.push((format!("{name}_value"), Int));
            out.push((format!("{name}_currency"), Text));
        } else {
            out.push(((*name).to_owned(), *ty));
        }
    }
    out
}

/// The column names alone.
pub(crate) fn column_names(t: &Table) -> Vec<String> {
    columns(t).into_iter().map(|(name, _)| name).collect()
}

fn statements(t: &'static Table) -> Statements {
    let cols = column_names(t);
    let (name, key) = (t.name, t.key);
    let select = format!(
        "SELECT {key}, seq, version, {} FROM {name}",
        cols.join(", ")
    );
    let placeholders: Vec<String> = (3..cols.len() + 3).map(|i| format!("?{i}")).collect();
    let sets: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
    Statements {
        table: t,
        get: format!("{select} WHERE {key} = ?1"),
        scan_back: format!("{select} WHERE {key} < ?1 ORDER BY {key} DESC LIMIT ?2"),
        version: format!("SELECT seq, version FROM {name} WHERE {key} = ?1"),
        upsert: format!(
            "INSERT INTO {name} ({key}, seq, version, {}) VALUES (?1, ?2, 1, {}) \
             ON CONFLICT ({key}) DO UPDATE SET {}, version = {name}.version + 1 RETURNING seq",
            cols.join(", "),
            placeholders.join(", "),
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
    list_queries(index, of, |st| &st.select, |filter| filter.to_owned())
}

/// The list queries of an index for either database: for each kind in the list, its
/// statements (`of`) and `<its SELECT> WHERE (<filter>) AND seq < ?2 ORDER BY seq DESC LIMIT ?3`
/// with the placeholders written by `placeholders` (SQLite keeps `?N`, PostgreSQL `$N`).
pub(crate) fn list_queries<S: 'static>(
    index: &str,
    of: impl Fn(&str) -> Option<&'static S>,
    select: impl Fn(&S) -> &str,
    placeholders: impl Fn(&str) -> String,
) -> Vec<(&'static S, String)> {
    LISTS
        .iter()
        .filter(|(name, _, _)| *name == index)
        .filter_map(|(_, kind, filter)| {
            let st = of(kind)?;
            let sql = format!(
                "{} WHERE ({filter}) AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                select(st)
            );
            Some((st, placeholders(&sql)))
        })
        .collect()
}

/// The namespace's table or column, if it has one.
pub(crate) fn unique(ns: &str) -> Option<&'static Unique> {
    UNIQUES.iter().find(|u| u.ns == ns)
}

/// Turns the shared SQL's `?N` placeholders into PostgreSQL's `$N` (the shared SQL has no `?`
/// anywhere else: no string literal holds one).
pub(crate) fn numbered(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A column value as the record gives it, before either database's own type: what [`bind`]
/// produces. SQLite stores `Bool` as 0/1; PostgreSQL checks each against its column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// SQL NULL (an absent or `null` field).
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A number that is not an integer (no column holds one; kept as SQLite always did).
    Real(f64),
    /// Text: a string, or a nested value as JSON text.
    Text(String),
}

/// The values of a record's fields, in [`columns`] order (after key, seq, version), from its
/// serde form. Records on their way to the store take [`super::row::bind`], which gives the
/// same from the record itself.
pub(crate) fn bind(t: &Table, body: &Map<String, Value>) -> Result<Vec<Field>, String> {
    let mut out = Vec::with_capacity(t.cols.len() + 4);
    for (name, ty) in t.cols {
        let v = body.get(*name).cloned().unwrap_or(Value::Null);
        let Bound(first, second) = bind_value(t, name, *ty, v)?;
        out.push(first);
        out.extend(second);
    }
    Ok(out)
}

/// One field's values: an amount gives two.
#[derive(Debug)]
pub(crate) struct Bound(pub Field, pub Option<Field>);

/// Field `name` of table `t`, of column type `ty`, as column values.
///
/// # Errors
/// A value its column cannot hold, named by table and field.
pub(crate) fn bind_value(t: &Table, name: &str, ty: Ty, v: Value) -> Result<Bound, String> {
    Ok(match ty {
        Money => match v {
            Value::Null => Bound(Field::Null, Some(Field::Null)),
            Value::Object(mut m) => Bound(
                scalar(m.remove("value").unwrap_or(Value::Null), name)?,
                Some(scalar(m.remove("currency").unwrap_or(Value::Null), name)?),
            ),
            _ => return Err(format!("{}.{name}: not an amount", t.name)),
        },
        Json => Bound(
            match v {
                Value::Null => Field::Null,
                v => Field::Text(v.to_string()),
            },
            None,
        ),
        Text | Int | Bool => Bound(scalar(v, name)?, None),
    })
}

fn scalar(v: Value, name: &str) -> Result<Field, String> {
    Ok(match v {
        Value::Null => Field::Null,
        Value::Bool(b) => Field::Bool(b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Field::Int(i),
            (None, Some(u)) => {
                Field::Int(i64::try_from(u).map_err(|_| format!("{name}: number out of range"))?)
            }
            _ => Field::Real(n.as_f64().unwrap_or_default()),
        },
        Value::String(s) => Field::Text(s),
        Value::Array(_) | Value::Object(_) => return Err(format!("{name}: nested value")),
    })
}

/// A record's fields from a row: `read(i, ty)` gives column `i` (counted from 0 at the key;
/// the fields start at 3, after seq and version) as JSON, by the column's [`Ty`] (an amount's
/// two columns are read as `Int` and `Text`). The key becomes the id field.
pub(crate) fn body<E>(
    t: &Table,
    id: &str,
    mut read: impl FnMut(usize, Ty) -> Result<Value, E>,
) -> Result<Map<String, Value>, E> {
    let mut body = Map::new();
    body.insert(t.key.to_owned(), Value::String(id.to_owned()));
    let mut i = 3;
    for (name, ty) in t.cols {
        let v = match ty {
            Money => {
                let value = read(i, Int)?;
                let currency = read(i + 1, Text)?;
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
            ty => read(i, *ty)?,
        };
        i += 1;
        body.insert((*name).to_owned(), v);
    }
    Ok(body)
}

/// How many values a table's fields take (an amount takes two).
pub(crate) fn width(t: &Table) -> usize {
    t.cols
        .iter()
        .map(|(_, ty)| if *ty == Money { 2 } else { 1 })
        .sum()
}

/// Whether `fields` are as many values as table `t` takes: what either store checks before
/// binding a `Put` it did not bind itself.
///
/// # Errors
/// Naming the table and both counts.
pub(crate) fn fits(t: &Table, fields: &[Field]) -> Result<(), String> {
    if fields.len() == width(t) {
        Ok(())
    } else {
        Err(format!(
            "{}: {} values for {} columns",
            t.name,
            fields.len(),
            width(t)
        ))
    }
}

/// A record's fields as [`body`] reads them back, from the values [`bind`] gives (what the
/// store will hold once they are written).
///
/// # Errors
/// Values that do not fit the table (too few, or JSON text that does not parse).
pub(crate) fn fields_body(
    t: &Table,
    id: &str,
    fields: &[Field],
) -> Result<Map<String, Value>, String> {
    body(t, id, |i, ty| {
        let field = fields
            .get(i - 3)
            .ok_or_else(|| format!("{}: {} values for its columns", t.name, fields.len()))?;
        Ok(match (field, ty) {
            (Field::Null, _) => Value::Null,
            (Field::Bool(b), _) => Value::Bool(*b),
            (Field::Int(n), Bool) => Value::Bool(*n != 0),
            (Field::Int(n), _) => Value::from(*n),
            (Field::Real(r), _) => Value::from(*r),
            (Field::Text(t), Json) => serde_json::from_str(t).map_err(|e| e.to_string())?,
            (Field::Text(t), _) => Value::String(t.clone()),
        })
    })
}

impl From<Field> for Sql {
    fn from(f: Field) -> Self {
        match f {
            Field::Null => Self::Null,
            Field::Bool(b) => Self::Integer(i64::from(b)),
            Field::Int(i) => Self::Integer(i),
            Field::Real(r) => Self::Real(r),
            Field::Text(t) => Self::Text(t),
        }
    }
}

/// A SQLite row read with [`Statements::select`]: `(id, seq, version, body)`.
pub(crate) fn row(
    t: &Table,
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(String, i64, i64, Map<String, Value>)> {
    let id: String = r.get(0)?;
    let body = body(t, &id, |i, ty| json_of(r.get_ref(i)?, ty, i))?;
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

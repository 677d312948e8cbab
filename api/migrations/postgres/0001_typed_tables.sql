-- PostgreSQL schema version 1: the same tables, keys, UNIQUE constraints and indexes as the
-- SQLite schema's final state (api/migrations/sqlite/, version 2), in PostgreSQL's types.
-- Never edit once applied: add a migration instead.
--
-- Conventions (the store's row mapping in api/src/store/tables.rs relies on them, as for SQLite):
-- * a column is named after the record's field; the primary key is the record's id field;
-- * `seq` is the global creation order (the list cursor), from the sequence `record_seq`;
--   `version` counts writes to the row (optimistic concurrency: "still at version N");
-- * nested values read only whole (maps, key-set refs, arrays) are JSON in TEXT columns, not
--   JSONB: the store writes them and reads them back whole and never queries inside them, TEXT
--   gives back exactly the text written (JSONB would reorder keys, drop duplicates and refuse
--   \u0000) and costs no parsing on the server;
-- * an amount `{value, currency}` is two columns, `<field>_value` and `<field>_currency`;
-- * booleans are BOOLEAN, integers (times, counts, amounts) BIGINT;
-- * primary keys compare bytewise (COLLATE "C"), as SQLite's do: record ids that start with their
--   creation time are read back newest first by key (`scan_back`), which a language collation
--   (that ignores ':' and '-') would misorder.
-- Records' references to their parents (merchant_id, reseller_id) are not declared foreign keys,
-- as in SQLite; the join tables are tied to their records (ON DELETE CASCADE).

CREATE SEQUENCE record_seq AS BIGINT;

CREATE TABLE resellers (
    id           TEXT COLLATE "C" PRIMARY KEY,
    seq          BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version      BIGINT NOT NULL,
    name         TEXT NOT NULL,
    parent_id    TEXT,
    ancestors    TEXT NOT NULL,            -- JSON array, root first
    branding     TEXT,                     -- JSON object
    portal_hosts TEXT NOT NULL,            -- JSON array (unique: portal_hosts table)
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX resellers_by_parent ON resellers ((COALESCE(parent_id, '')), seq);

-- The reseller tree: a reseller is listed under itself and every reseller above it.
CREATE TABLE reseller_ancestors (
    ancestor_id TEXT NOT NULL,
    reseller_id TEXT NOT NULL REFERENCES resellers (id) ON DELETE CASCADE,
    PRIMARY KEY (ancestor_id, reseller_id)
);
CREATE INDEX reseller_ancestors_by_reseller ON reseller_ancestors (reseller_id);

-- Portal host names, unique platform-wide.
CREATE TABLE portal_hosts (
    host        TEXT PRIMARY KEY,
    reseller_id TEXT NOT NULL REFERENCES resellers (id) ON DELETE CASCADE
);
CREATE INDEX portal_hosts_by_reseller ON portal_hosts (reseller_id);

CREATE TABLE fee_templates (
    id             TEXT COLLATE "C" PRIMARY KEY,
    seq            BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version        BIGINT NOT NULL,
    reseller_id    TEXT NOT NULL,
    name           TEXT NOT NULL,
    percent_bps    BIGINT NOT NULL,
    fixed_value    BIGINT,
    fixed_currency TEXT,
    per_brand      TEXT NOT NULL,          -- JSON object
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX fee_templates_by_reseller ON fee_templates (reseller_id, seq);

CREATE TABLE merchants (
    id                  TEXT COLLATE "C" PRIMARY KEY,
    seq                 BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version             BIGINT NOT NULL,
    reseller_id         TEXT NOT NULL,
    resellers           TEXT NOT NULL,     -- JSON array, root first
    name                TEXT NOT NULL,
    mcc                 TEXT NOT NULL,
    country             TEXT NOT NULL,
    currency            TEXT NOT NULL,
    fee_template_id     TEXT,
    tip_info            TEXT NOT NULL,     -- JSON object
    tax_info            TEXT NOT NULL,     -- JSON object
    surcharge_info      TEXT NOT NULL,     -- JSON object
    merchant_key        TEXT NOT NULL,
    terminal_parameters TEXT,              -- JSON object
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

-- A merchant is listed under every reseller above it.
CREATE TABLE merchant_resellers (
    reseller_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    PRIMARY KEY (reseller_id, merchant_id)
);
CREATE INDEX merchant_resellers_by_merchant ON merchant_resellers (merchant_id);

CREATE TABLE locations (
    id          TEXT COLLATE "C" PRIMARY KEY,
    seq         BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version     BIGINT NOT NULL,
    merchant_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    address     TEXT NOT NULL,             -- JSON object
    timezone    TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX locations_by_merchant ON locations (merchant_id, seq);

-- Device ids reserved before keyd registers the device (no device row yet).
CREATE TABLE device_ids (
    device_id   TEXT PRIMARY KEY,
    merchant_id TEXT NOT NULL
);

CREATE TABLE devices (
    device_id           TEXT COLLATE "C" PRIMARY KEY,
    seq                 BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version             BIGINT NOT NULL,
    merchant_id         TEXT NOT NULL,
    model               TEXT NOT NULL,
    serial              TEXT NOT NULL,
    label               TEXT,
    location_id         TEXT,
    zone                TEXT NOT NULL,
    status              TEXT NOT NULL,
    terminal_id         TEXT UNIQUE,
    identity_key_id     TEXT NOT NULL,
    identity_kcv        TEXT NOT NULL,
    rotate_keys         BOOLEAN NOT NULL,
    terminal_parameters TEXT,              -- JSON object
    auth_epoch          BIGINT NOT NULL,
    key_set             TEXT,              -- JSON key-set ref
    previous_key_set    TEXT,              -- JSON key-set ref
    pairing_code        TEXT,
    pairing_issued      TEXT NOT NULL,     -- JSON array of times
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    activated_at        BIGINT
);
CREATE INDEX devices_by_merchant ON devices (merchant_id, seq);

-- Terminal ids, reserved before the device row carries them; unique platform-wide.
CREATE TABLE terminal_ids (
    terminal_id TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL
);

CREATE TABLE pairing_codes (
    code       TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version    BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ended_at   BIGINT
);

CREATE TABLE users (
    id          TEXT COLLATE "C" PRIMARY KEY,
    seq         BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version     BIGINT NOT NULL,
    email       TEXT NOT NULL,
    name        TEXT,
    role        TEXT NOT NULL,
    idp_subject TEXT NOT NULL UNIQUE,
    merchant_id TEXT,
    reseller_id TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
-- Users are listed under their merchant, else their reseller, else the platform ('').
CREATE INDEX users_by_owner ON users ((COALESCE(merchant_id, reseller_id, '')), seq);

CREATE TABLE api_clients (
    client_id    TEXT COLLATE "C" PRIMARY KEY,
    seq          BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version      BIGINT NOT NULL,
    merchant_id  TEXT NOT NULL,
    name         TEXT,
    salt         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    failures     BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX api_clients_by_merchant ON api_clients (merchant_id, seq);

CREATE TABLE sessions (
    sub         TEXT COLLATE "C" PRIMARY KEY,
    seq         BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version     BIGINT NOT NULL,
    session_id  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    host        TEXT NOT NULL,
    reseller_id TEXT,
    merchant_id TEXT
);

CREATE TABLE attestations (
    hash       TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version    BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX attestations_by_expiry ON attestations (expires_at);

-- Used nonces; the id is `{time:012}:{scope}:{nonce}`, read back by time (descending id).
CREATE TABLE nonces (
    id      TEXT COLLATE "C" PRIMARY KEY,
    seq     BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version BIGINT NOT NULL,
    at      BIGINT NOT NULL
);

CREATE TABLE charges (
    charge_id           TEXT COLLATE "C" PRIMARY KEY,
    seq                 BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version             BIGINT NOT NULL,
    merchant_id         TEXT NOT NULL,
    resellers           TEXT NOT NULL,     -- JSON array
    location_id         TEXT,
    terminal_id         TEXT,
    status              TEXT NOT NULL,
    amount_value        BIGINT NOT NULL,
    amount_currency     TEXT NOT NULL,
    tip_value           BIGINT,
    tip_currency        TEXT,
    amount_refunded     BIGINT NOT NULL,
    authorization_code  TEXT,
    iso_response_code   TEXT,
    decline_code        TEXT,
    card                TEXT NOT NULL,     -- JSON: brand, bin, last4, entry mode, fingerprint
    reference           TEXT,
    description         TEXT,
    metadata            TEXT NOT NULL,     -- JSON object
    fee_value           BIGINT NOT NULL,
    fee_currency        TEXT NOT NULL,
    processor           TEXT NOT NULL,
    processor_reference TEXT,
    created_at          BIGINT NOT NULL,
    settled_at          BIGINT,
    refunds             TEXT NOT NULL      -- JSON array (each also a refunds row)
);
CREATE INDEX charges_by_merchant ON charges (merchant_id, seq);

CREATE TABLE refunds (
    refund_id           TEXT COLLATE "C" PRIMARY KEY,
    seq                 BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version             BIGINT NOT NULL,
    charge_id           TEXT NOT NULL,
    merchant_id         TEXT NOT NULL,
    terminal_id         TEXT,
    location_id         TEXT,
    amount_value        BIGINT NOT NULL,
    amount_currency     TEXT NOT NULL,
    reason              TEXT,
    charge_status       TEXT NOT NULL,
    processor_reference TEXT NOT NULL,
    created_at          BIGINT NOT NULL
);
CREATE INDEX refunds_by_merchant ON refunds (merchant_id, seq);
CREATE INDEX refunds_by_charge ON refunds (charge_id);

CREATE TABLE settlements (
    settlement_id  TEXT COLLATE "C" PRIMARY KEY,
    seq            BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version        BIGINT NOT NULL,
    merchant_id    TEXT NOT NULL,
    count          BIGINT NOT NULL,
    total_value    BIGINT NOT NULL,
    total_currency TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    left_from      BIGINT
);
CREATE INDEX settlements_by_merchant ON settlements (merchant_id, seq);

-- Kept answers of idempotent requests; the id is the scoped idempotency key.
CREATE TABLE idempotency (
    id         TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version    BIGINT NOT NULL,
    request    TEXT NOT NULL,
    status     BIGINT NOT NULL,
    body       TEXT,                       -- JSON answer body
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_by_time ON idempotency (created_at);

CREATE TABLE boots (
    id         TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version    BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    checkpoint BIGINT NOT NULL
);

-- Unique values with no row of their own (one-off markers such as finished data migrations).
CREATE TABLE claims (
    ns    TEXT NOT NULL,
    value TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (ns, value)
);

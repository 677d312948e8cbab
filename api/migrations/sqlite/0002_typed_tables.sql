-- Schema version 2: one table per record kind, with real columns, keys, indexes and
-- constraints, replacing the generic `records` / `idx` / `uniq` tables of version 1.
--
-- Foreign keys are checked immediately (each job of a group commit is its own savepoint). They
-- tie the join tables to their records (ON DELETE CASCADE); records' references to their
-- parents (merchant_id, reseller_id) are not declared, because existing callers and tests
-- write children without their parent row (a device of a merchant never stored).
--
-- Conventions (the store's row mapping in api/src/store/tables.rs relies on them):
-- * a column is named after the record's field; the primary key is the record's id field;
-- * `seq` is the global creation order (the list cursor, from `counter`), `version` counts
--   writes to the row (optimistic concurrency: "the row is still at version N");
-- * nested values read only whole (maps, key-set refs, arrays) are JSON text columns;
-- * an amount `{value, currency}` is two columns, `<field>_value` and `<field>_currency`;
-- * booleans are 0/1 integers.
-- The last part moves a version-1 database's rows in, with json_extract, then drops the old
-- tables (an empty new database goes through the same statements).

CREATE TABLE resellers (
    id           TEXT PRIMARY KEY NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    version      INTEGER NOT NULL,
    name         TEXT NOT NULL,
    parent_id    TEXT,
    ancestors    TEXT NOT NULL,            -- JSON array, root first
    branding     TEXT,                     -- JSON object
    portal_hosts TEXT NOT NULL,            -- JSON array (unique: portal_hosts table)
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX resellers_by_parent ON resellers (COALESCE(parent_id, ''), seq);

-- The reseller tree: a reseller is listed under itself and every reseller above it.
CREATE TABLE reseller_ancestors (
    ancestor_id TEXT NOT NULL,
    reseller_id TEXT NOT NULL REFERENCES resellers (id) ON DELETE CASCADE,
    PRIMARY KEY (ancestor_id, reseller_id)
) WITHOUT ROWID;
CREATE INDEX reseller_ancestors_by_reseller ON reseller_ancestors (reseller_id);

-- Portal host names, unique platform-wide.
CREATE TABLE portal_hosts (
    host        TEXT PRIMARY KEY NOT NULL,
    reseller_id TEXT NOT NULL REFERENCES resellers (id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX portal_hosts_by_reseller ON portal_hosts (reseller_id);

CREATE TABLE fee_templates (
    id             TEXT PRIMARY KEY NOT NULL,
    seq            INTEGER NOT NULL UNIQUE,
    version        INTEGER NOT NULL,
    reseller_id    TEXT NOT NULL,
    name           TEXT NOT NULL,
    percent_bps    INTEGER NOT NULL,
    fixed_value    INTEGER,
    fixed_currency TEXT,
    per_brand      TEXT NOT NULL,          -- JSON object
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX fee_templates_by_reseller ON fee_templates (reseller_id, seq);

CREATE TABLE merchants (
    id                  TEXT PRIMARY KEY NOT NULL,
    seq                 INTEGER NOT NULL UNIQUE,
    version             INTEGER NOT NULL,
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
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);

-- A merchant is listed under every reseller above it.
CREATE TABLE merchant_resellers (
    reseller_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL REFERENCES merchants (id) ON DELETE CASCADE,
    PRIMARY KEY (reseller_id, merchant_id)
) WITHOUT ROWID;
CREATE INDEX merchant_resellers_by_merchant ON merchant_resellers (merchant_id);

CREATE TABLE locations (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    merchant_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    address     TEXT NOT NULL,             -- JSON object
    timezone    TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX locations_by_merchant ON locations (merchant_id, seq);

-- Device ids reserved before keyd registers the device (no device row yet).
CREATE TABLE device_ids (
    device_id   TEXT PRIMARY KEY NOT NULL,
    merchant_id TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE devices (
    device_id           TEXT PRIMARY KEY NOT NULL,
    seq                 INTEGER NOT NULL UNIQUE,
    version             INTEGER NOT NULL,
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
    rotate_keys         INTEGER NOT NULL,  -- 0/1
    terminal_parameters TEXT,              -- JSON object
    auth_epoch          INTEGER NOT NULL,
    key_set             TEXT,              -- JSON key-set ref
    previous_key_set    TEXT,              -- JSON key-set ref
    pairing_code        TEXT,
    pairing_issued      TEXT NOT NULL,     -- JSON array of times
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    activated_at        INTEGER
);
CREATE INDEX devices_by_merchant ON devices (merchant_id, seq);

-- Terminal ids, reserved before the device row carries them; unique platform-wide.
CREATE TABLE terminal_ids (
    terminal_id TEXT PRIMARY KEY NOT NULL,
    device_id   TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE pairing_codes (
    code       TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    status     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ended_at   INTEGER
);

CREATE TABLE users (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    email       TEXT NOT NULL,
    name        TEXT,
    role        TEXT NOT NULL,
    idp_subject TEXT NOT NULL UNIQUE,
    merchant_id TEXT,
    reseller_id TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- Users are listed under their merchant, else their reseller, else the platform ('').
CREATE INDEX users_by_owner ON users (COALESCE(merchant_id, reseller_id, ''), seq);

CREATE TABLE api_clients (
    client_id    TEXT PRIMARY KEY NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    version      INTEGER NOT NULL,
    merchant_id  TEXT NOT NULL,
    name         TEXT,
    salt         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    failures     INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
CREATE INDEX api_clients_by_merchant ON api_clients (merchant_id, seq);

CREATE TABLE sessions (
    sub         TEXT PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    session_id  TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    host        TEXT NOT NULL,
    reseller_id TEXT,
    merchant_id TEXT
);

CREATE TABLE attestations (
    hash       TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    device_id  TEXT NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX attestations_by_expiry ON attestations (expires_at);

-- Used nonces; the id is `{time:012}:{scope}:{nonce}`, read back by time (descending id).
CREATE TABLE nonces (
    id      TEXT PRIMARY KEY NOT NULL,
    seq     INTEGER NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    at      INTEGER NOT NULL
);

CREATE TABLE charges (
    charge_id           TEXT PRIMARY KEY NOT NULL,
    seq                 INTEGER NOT NULL UNIQUE,
    version             INTEGER NOT NULL,
    merchant_id         TEXT NOT NULL,
    resellers           TEXT NOT NULL,     -- JSON array
    location_id         TEXT,
    terminal_id         TEXT,
    status              TEXT NOT NULL,
    amount_value        INTEGER NOT NULL,
    amount_currency     TEXT NOT NULL,
    tip_value           INTEGER,
    tip_currency        TEXT,
    amount_refunded     INTEGER NOT NULL,
    authorization_code  TEXT,
    iso_response_code   TEXT,
    decline_code        TEXT,
    card                TEXT NOT NULL,     -- JSON: brand, bin, last4, entry mode, fingerprint
    reference           TEXT,
    description         TEXT,
    metadata            TEXT NOT NULL,     -- JSON object
    fee_value           INTEGER NOT NULL,
    fee_currency        TEXT NOT NULL,
    processor           TEXT NOT NULL,
    processor_reference TEXT,
    created_at          INTEGER NOT NULL,
    settled_at          INTEGER,
    refunds             TEXT NOT NULL      -- JSON array (each also a refunds row)
);
CREATE INDEX charges_by_merchant ON charges (merchant_id, seq);

CREATE TABLE refunds (
    refund_id           TEXT PRIMARY KEY NOT NULL,
    seq                 INTEGER NOT NULL UNIQUE,
    version             INTEGER NOT NULL,
    charge_id           TEXT NOT NULL,
    merchant_id         TEXT NOT NULL,
    terminal_id         TEXT,
    location_id         TEXT,
    amount_value        INTEGER NOT NULL,
    amount_currency     TEXT NOT NULL,
    reason              TEXT,
    charge_status       TEXT NOT NULL,
    processor_reference TEXT NOT NULL,
    created_at          INTEGER NOT NULL
);
CREATE INDEX refunds_by_merchant ON refunds (merchant_id, seq);
CREATE INDEX refunds_by_charge ON refunds (charge_id);

CREATE TABLE settlements (
    settlement_id  TEXT PRIMARY KEY NOT NULL,
    seq            INTEGER NOT NULL UNIQUE,
    version        INTEGER NOT NULL,
    merchant_id    TEXT NOT NULL,
    count          INTEGER NOT NULL,
    total_value    INTEGER NOT NULL,
    total_currency TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    left_from      INTEGER
);
CREATE INDEX settlements_by_merchant ON settlements (merchant_id, seq);

-- Kept answers of idempotent requests; the id is the scoped idempotency key.
CREATE TABLE idempotency (
    id         TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    request    TEXT NOT NULL,
    status     INTEGER NOT NULL,
    body       TEXT,                       -- JSON answer body
    created_at INTEGER NOT NULL
);
CREATE INDEX idempotency_by_time ON idempotency (created_at);

CREATE TABLE boots (
    id         TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    checkpoint INTEGER NOT NULL
);

-- Unique values with no row of their own (one-off markers such as finished data migrations).
CREATE TABLE claims (
    ns    TEXT NOT NULL,
    value TEXT NOT NULL,
    owner TEXT NOT NULL,
    PRIMARY KEY (ns, value)
) WITHOUT ROWID;

-- Moving a version-1 database in. Bodies were written as JSON bytes in a BLOB column; newer
-- SQLite reads a BLOB as JSONB, so make them text first.
UPDATE records SET body = CAST(body AS TEXT);

INSERT INTO resellers SELECT id, seq, 1,
    json_extract(body, '$.name'), json_extract(body, '$.parent_id'),
    json_extract(body, '$.ancestors'), json_extract(body, '$.branding'),
    json_extract(body, '$.portal_hosts'),
    json_extract(body, '$.created_at'), json_extract(body, '$.updated_at')
  FROM records WHERE kind = 'reseller';
INSERT INTO reseller_ancestors (ancestor_id, reseller_id)
  SELECT key, id FROM idx WHERE name = 'reseller_tree' AND kind = 'reseller';
INSERT INTO portal_hosts (host, reseller_id)
  SELECT value, owner FROM uniq WHERE ns = 'portal_host';

INSERT INTO fee_templates SELECT id, seq, 1,
    json_extract(body, '$.reseller_id'), json_extract(body, '$.name'),
    json_extract(body, '$.percent_bps'),
    json_extract(body, '$.fixed.value'), json_extract(body, '$.fixed.currency'),
    json_extract(body, '$.per_brand'),
    json_extract(body, '$.created_at'), json_extract(body, '$.updated_at')
  FROM records WHERE kind = 'fee_template';

INSERT INTO merchants SELECT id, seq, 1,
    json_extract(body, '$.reseller_id'), json_extract(body, '$.resellers'),
    json_extract(body, '$.name'), json_extract(body, '$.mcc'), json_extract(body, '$.country'),
    json_extract(body, '$.currency'), json_extract(body, '$.fee_template_id'),
    json_extract(body, '$.tip_info'), json_extract(body, '$.tax_info'),
    json_extract(body, '$.surcharge_info'), json_extract(body, '$.merchant_key'),
    json_extract(body, '$.terminal_parameters'),
    json_extract(body, '$.created_at'), json_extract(body, '$.updated_at')
  FROM records WHERE kind = 'merchant';
INSERT INTO merchant_resellers (reseller_id, merchant_id)
  SELECT key, id FROM idx WHERE name = 'merchant_tree' AND kind = 'merchant';

INSERT INTO locations SELECT id, seq, 1,
    json_extract(body, '$.merchant_id'), json_extract(body, '$.name'),
    json_extract(body, '$.address'), json_extract(body, '$.timezone'),
    json_extract(body, '$.created_at'), json_extract(body, '$.updated_at')
  FROM records WHERE kind = 'location';

INSERT INTO device_ids (device_id, merchant_id)
  SELECT value, owner FROM uniq WHERE ns = 'device_id';
INSERT INTO devices SELECT id, seq, 1,
    json_extract(body, '$.merchant_id'), json_extract(body, '$.model'),
    json_extract(body, '$.serial'), json_extract(body, '$.label'),
    json_extract(body, '$.location_id'), json_extract(body, '$.zone'),
    json_extract(body, '$.status'), json_extract(body, '$.terminal_id'),
    json_extract(body, '$.identity_key_id'), json_extract(body, '$.identity_kcv'),
    json_extract(body, '$.rotate_keys'), json_extract(body, '$.terminal_parameters'),
    COALESCE(json_extract(body, '$.auth_epoch'), 0),
    json_extract(body, '$.key_set'), json_extract(body, '$.previous_key_set'),
    json_extract(body, '$.pairing_code'),
    COALESCE(json_extract(body, '$.pairing_issued'), '[]'),
    json_extract(body, '$.created_at'), json_extract(body, '$.updated_at'),
    json_extract(body, '$.activated_at')
  FROM records WHERE kind = 'device';
INSERT INTO terminal_ids (terminal_id, device_id)
  SELECT value, owner FROM uniq WHERE ns = 'terminal_id';

INSERT INTO pairing_codes SELECT id, seq, 1,
    json_extract(body, '$.device_id'), json_extract(body, '$.status'),
    json_extract(body, '$.created_at'), json_extract(body, '$.expires_at'),
    json_extract(body, '$.ended_at')
  FROM records WHERE kind = 'pairing_code';

INSERT INTO users SELECT id, seq, 1,
    json_extract(body, '$.email'), json_extract(body, '$.name'), json_extract(body, '$.role'),
    json_extract(body, '$.idp_subject'), json_extract(body, '$.merchant_id'),
    json_extract(body, '$.reseller_id'),
    json_extract(body, '$.created_at'), json_extract(body, '$.updated_at')
  FROM records WHERE kind = 'user';

INSERT INTO api_clients SELECT id, seq, 1,
    json_extract(body, '$.merchant_id'), json_extract(body, '$.name'),
    json_extract(body, '$.salt'), json_extract(body, '$.secret_hash'),
    json_extract(body, '$.failures'), json_extract(body, '$.locked_until'),
    json_extract(body, '$.created_at')
  FROM records WHERE kind = 'api_client';

INSERT INTO sessions SELECT id, seq, 1,
    json_extract(body, '$.session_id'), json_extract(body, '$.expires_at'),
    json_extract(body, '$.host'), json_extract(body, '$.reseller_id'),
    json_extract(body, '$.merchant_id')
  FROM records WHERE kind = 'session';

INSERT INTO attestations SELECT id, seq, 1,
    json_extract(body, '$.device_id'), json_extract(body, '$.epoch'),
    json_extract(body, '$.expires_at')
  FROM records WHERE kind = 'attestation';

INSERT INTO nonces SELECT id, seq, 1, json_extract(body, '$.at')
  FROM records WHERE kind = 'nonce';

INSERT INTO charges SELECT id, seq, 1,
    json_extract(body, '$.merchant_id'), json_extract(body, '$.resellers'),
    json_extract(body, '$.location_id'), json_extract(body, '$.terminal_id'),
    json_extract(body, '$.status'),
    json_extract(body, '$.amount.value'), json_extract(body, '$.amount.currency'),
    json_extract(body, '$.tip.value'), json_extract(body, '$.tip.currency'),
    json_extract(body, '$.amount_refunded'), json_extract(body, '$.authorization_code'),
    json_extract(body, '$.iso_response_code'), json_extract(body, '$.decline_code'),
    json_extract(body, '$.card'), json_extract(body, '$.reference'),
    json_extract(body, '$.description'), json_extract(body, '$.metadata'),
    json_extract(body, '$.fee.value'), json_extract(body, '$.fee.currency'),
    json_extract(body, '$.processor'), json_extract(body, '$.processor_reference'),
    json_extract(body, '$.created_at'), json_extract(body, '$.settled_at'),
    json_extract(body, '$.refunds')
  FROM records WHERE kind = 'charge';

INSERT INTO refunds SELECT id, seq, 1,
    json_extract(body, '$.charge_id'), json_extract(body, '$.merchant_id'),
    json_extract(body, '$.terminal_id'), json_extract(body, '$.location_id'),
    json_extract(body, '$.amount.value'), json_extract(body, '$.amount.currency'),
    json_extract(body, '$.reason'), json_extract(body, '$.charge_status'),
    json_extract(body, '$.processor_reference'), json_extract(body, '$.created_at')
  FROM records WHERE kind = 'refund';

INSERT INTO settlements SELECT id, seq, 1,
    json_extract(body, '$.merchant_id'), json_extract(body, '$.count'),
    json_extract(body, '$.total.value'), json_extract(body, '$.total.currency'),
    json_extract(body, '$.created_at'), json_extract(body, '$.left_from')
  FROM records WHERE kind = 'settlement';

INSERT INTO idempotency SELECT id, seq, 1,
    json_extract(body, '$.request'), json_extract(body, '$.status'),
    NULLIF(body -> '$.body', 'null'), json_extract(body, '$.created_at')
  FROM records WHERE kind = 'idempotency';

INSERT INTO boots SELECT id, seq, 1,
    json_extract(body, '$.started_at'), json_extract(body, '$.checkpoint')
  FROM records WHERE kind = 'boot';

-- user_sub is now users.idp_subject (UNIQUE); the namespaces above have their own tables.
INSERT INTO claims (ns, value, owner)
  SELECT ns, value, owner FROM uniq
  WHERE ns NOT IN ('portal_host', 'device_id', 'terminal_id', 'user_sub');

DROP TABLE idx;
DROP TABLE uniq;
DROP TABLE records;

-- Schema version 9: charges and events kept in seq order, by seq as their rowid (issue 15).
-- Never edit once applied; append a new migration. PostgreSQL keeps its tables as they are.
--
-- Each charge writes a charge row twice and an event row once, and every group commit wrote
-- the right-hand page of each B-tree those rows live in. Both tables had a rowid B-tree that
-- nothing reads by rowid, next to a UNIQUE index on seq, which every list reads. `seq` as
-- `INTEGER PRIMARY KEY` makes the table itself that order: one B-tree fewer per table, the
-- same rows, the same columns in the same order, the same other indexes. (An index's entries
-- end with the rowid, now seq, so `(merchant_id, seq)` stays as written for clarity.)
-- Both tables are copied whole inside the migration's transaction: on a large database the
-- first start of this version takes as long as writing them again, and the WAL grows to
-- their size until the next checkpoint.
CREATE TABLE charges_by_seq (
    charge_id           TEXT NOT NULL UNIQUE,
    seq                 INTEGER PRIMARY KEY NOT NULL,
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
    refunds             TEXT NOT NULL,     -- JSON array (each also a refunds row)
    processor_data      TEXT               -- JSON: what the processor needs to void (schema 3)
);
INSERT INTO charges_by_seq (
    charge_id, seq, version, merchant_id, resellers, location_id, terminal_id, status,
    amount_value, amount_currency, tip_value, tip_currency, amount_refunded, authorization_code,
    iso_response_code, decline_code, card, reference, description, metadata, fee_value,
    fee_currency, processor, processor_reference, created_at, settled_at, refunds,
    processor_data
) SELECT
    charge_id, seq, version, merchant_id, resellers, location_id, terminal_id, status,
    amount_value, amount_currency, tip_value, tip_currency, amount_refunded, authorization_code,
    iso_response_code, decline_code, card, reference, description, metadata, fee_value,
    fee_currency, processor, processor_reference, created_at, settled_at, refunds,
    processor_data
FROM charges ORDER BY seq;
DROP TABLE charges;
ALTER TABLE charges_by_seq RENAME TO charges;
CREATE INDEX charges_by_merchant ON charges (merchant_id, seq);

CREATE TABLE events_by_seq (
    id          TEXT NOT NULL UNIQUE,
    seq         INTEGER PRIMARY KEY NOT NULL,
    version     INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    merchant_id TEXT,
    data        TEXT NOT NULL,     -- JSON: {"object": the object as the API shows it}
    created_at  INTEGER NOT NULL
);
INSERT INTO events_by_seq (id, seq, version, event_type, object_type, object_id, merchant_id, data, created_at)
    SELECT id, seq, version, event_type, object_type, object_id, merchant_id, data, created_at
    FROM events ORDER BY seq;
DROP TABLE events;
ALTER TABLE events_by_seq RENAME TO events;
CREATE INDEX events_by_merchant ON events (merchant_id, seq);
CREATE INDEX events_by_object ON events (object_id, seq);

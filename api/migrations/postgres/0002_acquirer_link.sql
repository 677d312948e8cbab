-- Schema version 2 (PostgreSQL): the ISO 8583 acquirer link, the same tables and columns as
-- SQLite's migration 0003 (contract section 12, spec acquirer-link.md).
-- Never edit once applied; append a new migration instead.

-- A merchant's card acceptor id on the link (DE 42): 15 digits assigned at creation, unique,
-- never changed. Merchants made before this migration get `9` and their seq on 14 digits:
-- unique by construction, so the migration cannot fail on a collision.
ALTER TABLE merchants ADD COLUMN acquirer_mid TEXT NOT NULL DEFAULT '';
UPDATE merchants SET acquirer_mid = '9' || lpad(seq::text, 14, '0');
CREATE UNIQUE INDEX merchants_by_acquirer_mid ON merchants (acquirer_mid);

-- What the processor keeps to reverse or refund a charge later (JSON; null when it needs
-- nothing). Never shown on the charge object.
ALTER TABLE charges ADD COLUMN processor_data TEXT;

-- Reversals (0400, repeated as 0401) not yet acknowledged by a 0410.
CREATE TABLE reversals (
    id           TEXT COLLATE "C" PRIMARY KEY,
    seq          BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version      BIGINT NOT NULL,
    charge_id    TEXT NOT NULL,
    reason       TEXT NOT NULL,     -- timeout | cancel | lost | refund_timeout
    original     TEXT NOT NULL,     -- JSON: the reversed request's fields (PAN sealed by keyd)
    stan         TEXT NOT NULL,     -- the reversal's own DE 11 (kept by every 0401)
    transmission TEXT NOT NULL,     -- the reversal's own DE 7 (kept by every 0401)
    attempts     BIGINT NOT NULL,   -- 0400/0401 sent so far
    sent_at      BIGINT,            -- Unix seconds of the last send
    created_at   BIGINT NOT NULL
);
CREATE INDEX reversals_by_charge ON reversals (charge_id);

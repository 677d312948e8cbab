-- Schema version 3: the ISO 8583 acquirer link (contract section 12, spec acquirer-link.md).
-- Never edit once applied; append a new migration instead.

-- A merchant's card acceptor id on the link (DE 42): 15 digits assigned at creation, unique,
-- never changed. The API draws new ones at random and draws again on a collision with this
-- index. Merchants made before this migration get `9` and their seq on 14 digits: unique by
-- construction, so the migration cannot fail on a collision.
ALTER TABLE merchants ADD COLUMN acquirer_mid TEXT NOT NULL DEFAULT '';
UPDATE merchants SET acquirer_mid = printf('9%014d', seq);
CREATE UNIQUE INDEX merchants_by_acquirer_mid ON merchants (acquirer_mid);

-- What the processor must keep to reverse or refund a charge later (iso8583: the original
-- 0200's STAN, DE 7, RRN, DE 41, DE 42, amount, currency, expiry and the PAN sealed by keyd);
-- JSON, null for processors that need nothing. Never shown on the charge object.
ALTER TABLE charges ADD COLUMN processor_data TEXT;

-- Reversals (0400, repeated as 0401) not yet acknowledged by a 0410: written before the first
-- send and deleted when the 0410 arrives, so one pending at a crash is sent again by the next
-- start's housekeeping. `id` is the reversed charge's id (a purchase is reversed at most once)
-- or `<charge id>/<STAN><DE 7>` for a refund request that went unanswered.
CREATE TABLE reversals (
    id           TEXT PRIMARY KEY NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    version      INTEGER NOT NULL,
    charge_id    TEXT NOT NULL,
    reason       TEXT NOT NULL,     -- timeout | cancel | lost | refund_timeout
    original     TEXT NOT NULL,     -- JSON: the reversed request's fields (PAN sealed by keyd)
    stan         TEXT NOT NULL,     -- the reversal's own DE 11 (kept by every 0401)
    transmission TEXT NOT NULL,     -- the reversal's own DE 7 (kept by every 0401)
    attempts     INTEGER NOT NULL,  -- 0400/0401 sent so far
    sent_at      INTEGER,           -- Unix seconds of the last send
    created_at   INTEGER NOT NULL
);
CREATE INDEX reversals_by_charge ON reversals (charge_id);

-- Schema version 3 (PostgreSQL): what several API nodes on one database coordinate through,
-- the same tables and columns as SQLite's migration 0004 (issue 13).
-- Never edit once applied; append a new migration instead.

-- A nonce is used once per scope in the whole database, not only in the node that saw it:
-- `key` is `{scope}:{nonce}`, unique. The id becomes `{time:012}:{random}` (still time first,
-- so the sweep reads the oldest first); rows from before keep their ids and get their key from
-- them. Should two old rows share a key (a reuse after the window, not yet swept), the older
-- goes: it is out of the window anyway.
ALTER TABLE nonces ADD COLUMN key TEXT COLLATE "C";
UPDATE nonces SET key = substr(id, 14);
DELETE FROM nonces WHERE id NOT IN (SELECT max(id) FROM nonces GROUP BY key);
ALTER TABLE nonces ALTER COLUMN key SET NOT NULL;
CREATE UNIQUE INDEX nonces_by_key ON nonces (key);

-- When each start of the API last wrote its checkpoint: a start silent for long is gone, and
-- its pending charges are another node's to resolve.
ALTER TABLE boots ADD COLUMN seen_at BIGINT NOT NULL DEFAULT 0;
UPDATE boots SET seen_at = checkpoint;

-- Named leases: at most one node at a time does a job (recovery of other nodes' charges, the
-- sweeps) or holds an object across a call to the processor (a refund, a cancel). A lease is
-- taken when it is free or expired, renewed by its holder, and given up by deleting the row.
CREATE TABLE leases (
    name       TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version    BIGINT NOT NULL,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

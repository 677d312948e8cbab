-- Schema version 4: what several API nodes on one database coordinate through (issue 13).
-- SQLite has one process per file, but keeps the same schema as PostgreSQL so that the code
-- above the store is the same for both. Never edit once applied; append a new migration.

-- A nonce is used once per scope in the whole database, not only in the node that saw it:
-- `key` is `{scope}:{nonce}`, unique. The id becomes `{time:012}:{random}` (still time first,
-- so the sweep reads the oldest first); rows from before keep their ids and get their key from
-- them. Should two old rows share a key (a reuse after the window, not yet swept), the older
-- goes: it is out of the window anyway.
ALTER TABLE nonces ADD COLUMN key TEXT;
UPDATE nonces SET key = substr(id, 14);
DELETE FROM nonces WHERE id NOT IN (SELECT max(id) FROM nonces GROUP BY key);
CREATE UNIQUE INDEX nonces_by_key ON nonces (key);

-- When each start of the API last wrote its checkpoint: a start silent for long is gone, and
-- its pending charges are another node's to resolve. Starts from before: now-ish (their
-- checkpoint), which makes them look gone soon, as they are.
ALTER TABLE boots ADD COLUMN seen_at INTEGER NOT NULL DEFAULT 0;
UPDATE boots SET seen_at = checkpoint;

-- Named leases: at most one node at a time does a job (recovery of other nodes' charges, the
-- sweeps) or holds an object across a call to the processor (a refund, a cancel). A lease is
-- taken when it is free or expired, renewed by its holder, and given up by deleting the row.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);

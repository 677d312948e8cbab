-- keyd's key store on PostgreSQL, schema version 2: LMK rotation (issue 16).
--
-- A store that never saw a rotation has no rows in `lmks`: its blocks are all under the LMK
-- `keyd init` made. A rotation's blocks name their LMK by check value in the TR-31 `KP` block.

-- The LMKs since the first rotation: the original one, the one being rotated to (`pending`
-- while other nodes form it, `next` while blocks move to it), retired ones kept in the tokens
-- until `destroy_after`, and destroyed ones.
CREATE TABLE lmks (
    kcv           BYTEA PRIMARY KEY CHECK (length(kcv) = 3),
    original      BOOLEAN NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('current', 'pending', 'next', 'retired', 'destroyed')),
    destroy_after BIGINT,
    changed_at    BIGINT NOT NULL
);

-- The secrets keyd derived from the original LMK (PAN and request fingerprint keys, the PAN
-- storage keys, the officers' pepper, the audit chain's key), sealed under the LMK at the first
-- rotation so that they outlive the original LMK. The name is the derivation's label.
CREATE TABLE lmk_secrets (
    name  TEXT COLLATE "C" PRIMARY KEY,
    block TEXT NOT NULL
);

-- keyd's key store on PostgreSQL, schema version 3: zones' ZMK rotation (issue 16).

-- A zone's old ZMK (sealed under the LMK) while its rotation is under way (`retired_at` NULL):
-- `zones` holds the new one, which every key-set delivery uses. It is retired when every device
-- of the zone has had a delivery under the new ZMK, or by the officers: its block is erased and
-- its check value kept, so that every node destroys it in its own token.
CREATE TABLE zone_retiring (
    zone       TEXT NOT NULL,
    kcv        BYTEA NOT NULL CHECK (length(kcv) = 3),
    block      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    retired_at BIGINT,
    PRIMARY KEY (zone, kcv)
);

-- The ZMK (by check value) each device's TMK was last delivered under.
CREATE TABLE device_zmk (
    device_id TEXT COLLATE "C" PRIMARY KEY,
    kcv       BYTEA NOT NULL CHECK (length(kcv) = 3)
);

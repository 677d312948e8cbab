-- Schema version 5: events, webhook endpoints and their deliveries (issue 17).
-- Never edit once applied; append a new migration.

-- What happened, written in the same transaction as the change it reports: no change without
-- its event, no event without its change. Never changed once written.
CREATE TABLE events (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    merchant_id TEXT,
    data        TEXT NOT NULL,     -- JSON: {"object": the object as the API shows it}
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_by_merchant ON events (merchant_id, seq);
CREATE INDEX events_by_object ON events (object_id, seq);

-- The outbox: a small row per event, written with it, deleted once the event's webhook
-- deliveries exist. What fan-out needs to route the event, so it reads no event bodies.
CREATE TABLE event_outbox (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    event_type  TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    merchant_id TEXT,
    created_at  INTEGER NOT NULL
);

-- Where a merchant or a reseller wants its events sent. The signing secrets live in keyd;
-- `secrets` holds only their salts (keyd's names for them) and when each stops being used.
CREATE TABLE webhook_endpoints (
    id             TEXT PRIMARY KEY NOT NULL,
    seq            INTEGER NOT NULL UNIQUE,
    version        INTEGER NOT NULL,
    merchant_id    TEXT,
    reseller_id    TEXT,
    url            TEXT NOT NULL,
    description    TEXT,
    enabled_events TEXT NOT NULL,  -- JSON array of event types, or ["*"]
    status         TEXT NOT NULL,
    secrets        TEXT NOT NULL,  -- JSON array of {salt, created_at, expires_at}
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX webhook_endpoints_by_owner
    ON webhook_endpoints (COALESCE(merchant_id, reseller_id, ''), seq);

-- One event to one endpoint: its state, when it is tried next and what each attempt got.
CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    seq             INTEGER NOT NULL UNIQUE,
    version         INTEGER NOT NULL,
    endpoint_id     TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    object_id       TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER,
    log             TEXT NOT NULL, -- JSON array of the latest attempts
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, seq);
-- One object's deliveries: a new one waits behind an older one still pending to the same
-- endpoint, so each endpoint gets an object's events in order.
CREATE INDEX webhook_deliveries_by_object ON webhook_deliveries (object_id, seq);
CREATE INDEX webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Terminals' heartbeats: when each was last heard from, with what app, and whether it is
-- online (NULL until its first heartbeat). A device online whose last heartbeat is older than
-- three intervals is turned offline by the sweep, which reads them through this index.
ALTER TABLE devices ADD COLUMN last_seen_at INTEGER;
ALTER TABLE devices ADD COLUMN app_version TEXT;
ALTER TABLE devices ADD COLUMN connectivity TEXT;
ALTER TABLE devices ADD COLUMN heartbeat TEXT;  -- JSON: what the last heartbeat reported
CREATE INDEX devices_online_by_last_seen ON devices (last_seen_at) WHERE connectivity = 'online';

-- The POS app versions the operator publishes, per device model.
CREATE TABLE app_versions (
    model                 TEXT PRIMARY KEY NOT NULL,
    seq                   INTEGER NOT NULL UNIQUE,
    version               INTEGER NOT NULL,
    latest_version        TEXT NOT NULL,
    url                   TEXT NOT NULL,
    min_supported_version TEXT,
    updated_at            INTEGER NOT NULL
);

-- The backoffice audit trail: one entry per Bearer mutation, written in the mutation's own
-- commit; linked afterwards into a chain (chain_seq, prev_mac, mac: keyd's MAC over the
-- previous MAC and the entry) by one node at a time. Digests of the record before and after,
-- never its contents.
CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    version     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    subject     TEXT NOT NULL,
    role        TEXT NOT NULL,
    action      TEXT NOT NULL,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    object_kind TEXT NOT NULL,
    object_id   TEXT NOT NULL,
    merchant_id TEXT,
    reseller_id TEXT,
    request_id  TEXT NOT NULL,
    source      TEXT NOT NULL,
    digest_before TEXT,
    digest_after  TEXT,
    chain_seq   INTEGER UNIQUE,
    prev_mac    TEXT,
    mac         TEXT
);
CREATE INDEX audit_events_unchained ON audit_events (seq) WHERE chain_seq IS NULL;
CREATE INDEX audit_events_by_merchant ON audit_events (merchant_id, seq);
CREATE INDEX audit_events_by_reseller ON audit_events (reseller_id, seq);

-- Where the chain ends: how many entries it links and the last one's MAC.
CREATE TABLE audit_heads (
    name    TEXT PRIMARY KEY NOT NULL,
    seq     INTEGER NOT NULL UNIQUE,
    version INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    mac     TEXT NOT NULL
);

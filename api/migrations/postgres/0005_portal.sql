-- Schema version 5: the portal and the embedded sign-in (issue 18). Same tables as SQLite's
-- 0006_portal.sql, which explains them.
-- Never edit once applied; append a new migration.

CREATE TABLE credentials (
    user_id      TEXT COLLATE "C" PRIMARY KEY,
    seq          BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version      BIGINT NOT NULL,
    login        TEXT NOT NULL,
    salt         TEXT NOT NULL,
    iterations   BIGINT NOT NULL,
    verifier     TEXT NOT NULL,
    failures     BIGINT NOT NULL,
    locked_until BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE web_sessions (
    id         TEXT COLLATE "C" PRIMARY KEY,
    seq        BIGINT NOT NULL UNIQUE DEFAULT nextval('record_seq'),
    version    BIGINT NOT NULL,
    purpose    TEXT NOT NULL,
    sub        TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);

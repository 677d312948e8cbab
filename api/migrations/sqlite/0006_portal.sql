-- Schema version 6: the portal and the embedded sign-in (issue 18).
-- Never edit once applied; append a new migration.

-- A platform user's password, as keyd's officers' are kept: `verifier` is keyd's
-- HMAC-SHA-256 (a key only keyd holds) of PBKDF2-HMAC-SHA-256(password, salt, iterations), so
-- a copy of this table cannot be tried offline. Failures in a row lock sign-in for a while.
CREATE TABLE credentials (
    user_id      TEXT PRIMARY KEY NOT NULL,
    seq          INTEGER NOT NULL UNIQUE,
    version      INTEGER NOT NULL,
    login        TEXT NOT NULL,     -- the e-mail signed in with, lower case (claim `login`)
    salt         TEXT NOT NULL,     -- hex
    iterations   INTEGER NOT NULL,
    verifier     TEXT NOT NULL,     -- hex
    failures     INTEGER NOT NULL,
    locked_until INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

-- What a browser holds a cookie or a one-time code for, keyed by the SHA-256 of that value
-- (the store never holds one a browser could present): the sign-in provider's session, an
-- authorization code, a sign-in in progress, and a portal session.
CREATE TABLE web_sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    seq        INTEGER NOT NULL UNIQUE,
    version    INTEGER NOT NULL,
    purpose    TEXT NOT NULL,       -- idp | code | login | portal
    sub        TEXT NOT NULL,       -- empty for a sign-in in progress
    expires_at INTEGER NOT NULL,
    data       TEXT NOT NULL        -- JSON, by purpose
);
CREATE INDEX web_sessions_by_expiry ON web_sessions (expires_at);

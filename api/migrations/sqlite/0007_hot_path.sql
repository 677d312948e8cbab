-- Schema version 7: two per-request writes SQLite does not need (issue 15).
-- Never edit once applied; append a new migration. PostgreSQL, where several nodes share the
-- tables, keeps both.

-- Used nonces need no unique index. One process owns a SQLite file (the API locks
-- `<database>.lock`), and that process checks every nonce against its in-memory window,
-- rebuilt from these rows at start, under one lock before anything is written. The index
-- repeated that check and cost every signed request an insert at a random place in a large
-- B-tree: a page of WAL per request.
DROP INDEX nonces_by_key;

-- Webhook fan-out follows a cursor over the events instead of an outbox row per event. On
-- SQLite one writer thread numbers rows as it commits them, so an event's `seq` is its commit
-- order, and "every event after the cursor" is exactly what fan-out has not taken: nothing can
-- commit later with a smaller seq. (On PostgreSQL it can, so there each event keeps its
-- outbox row.) Rows already in `event_outbox` are taken first, as before; the cursor starts
-- past every event that has one or had one.
CREATE TABLE event_cursor (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    seq INTEGER NOT NULL
);
INSERT INTO event_cursor (id, seq) SELECT 0, COALESCE(MAX(seq), 0) FROM events;

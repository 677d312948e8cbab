-- Schema version 8: used nonces in one B-tree (issue 15).
-- Never edit once applied; append a new migration. PostgreSQL keeps its table as it is.
--
-- Every signed POS request inserts a nonce, and every group commit wrote a page of each
-- B-tree the nonces live in: the table (by rowid), its id index and its seq index. Nothing
-- reads nonces by rowid or by seq (they are read back by id, newest first, and swept by id),
-- so the rows now live in their id's B-tree alone: WITHOUT ROWID, seq kept as a plain
-- column. Small rows, as WITHOUT ROWID suits.
CREATE TABLE nonces_one_tree (
    id      TEXT PRIMARY KEY NOT NULL,
    seq     INTEGER NOT NULL,
    version INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    key     TEXT
) WITHOUT ROWID;
INSERT INTO nonces_one_tree (id, seq, version, at, key)
    SELECT id, seq, version, at, key FROM nonces;
DROP TABLE nonces;
ALTER TABLE nonces_one_tree RENAME TO nonces;

-- Schema version 1 (applied to databases before typed tables): the generic record store.
-- Never edit: databases in the field recorded it as applied. 0002 replaces these tables.
    CREATE TABLE records (
        kind TEXT NOT NULL,
        id   TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE idx (
        name TEXT NOT NULL,
        key  TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        kind TEXT NOT NULL,
        id   TEXT NOT NULL,
        PRIMARY KEY (name, key, seq)
    ) WITHOUT ROWID;
    CREATE INDEX idx_by_record ON idx (kind, id);
    CREATE TABLE uniq (
        ns    TEXT NOT NULL,
        value TEXT NOT NULL,
        owner TEXT NOT NULL,
        PRIMARY KEY (ns, value)
    ) WITHOUT ROWID;
    CREATE TABLE counter (
        id  INTEGER PRIMARY KEY CHECK (id = 0),
        seq INTEGER NOT NULL
    );
    INSERT INTO counter (id, seq) VALUES (0, 0);

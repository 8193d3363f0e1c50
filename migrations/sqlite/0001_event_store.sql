-- The event log. SQLite has one writer at a time, so position order is commit order.
CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id       TEXT NOT NULL UNIQUE,
    stream_type    TEXT NOT NULL,
    stream_id      TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version > 0),
    event_type     TEXT NOT NULL,
    schema         INTEGER NOT NULL CHECK (schema > 0),
    occurred_at    TEXT NOT NULL,
    actor          TEXT,
    correlation_id TEXT,
    causation_id   TEXT,
    payload        BLOB NOT NULL,
    UNIQUE (stream_type, stream_id, version)
);

CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE projections (
    name       TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE read_model_rows (
    projection TEXT NOT NULL,
    generation INTEGER NOT NULL,
    key        TEXT NOT NULL,
    doc        TEXT NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

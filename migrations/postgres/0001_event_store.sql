-- The event log. `position` identifies an event; `txid` (the writing transaction) orders it:
-- readers only see transactions older than the oldest one still running, in (txid, position)
-- order, so an event whose transaction commits late is never skipped.
CREATE TABLE events (
    position       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid           XID8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id       UUID NOT NULL,
    stream_type    TEXT NOT NULL,
    stream_id      TEXT NOT NULL,
    version        BIGINT NOT NULL CHECK (version > 0),
    event_type     TEXT NOT NULL,
    schema         INTEGER NOT NULL CHECK (schema > 0),
    occurred_at    TIMESTAMPTZ NOT NULL,
    actor          TEXT,
    correlation_id UUID,
    causation_id   UUID,
    payload        BYTEA NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_type, stream_id, version)
);

CREATE INDEX events_commit_order ON events (txid, position);

-- Named cursors into the log (the relay's).
CREATE TABLE checkpoints (
    name       TEXT PRIMARY KEY,
    position   BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per projection: the active generation of its read model and its checkpoint.
CREATE TABLE projections (
    name       TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Read model rows, per projection and generation (a rebuild writes a new generation, then swaps).
CREATE TABLE read_model_rows (
    projection TEXT NOT NULL,
    generation BIGINT NOT NULL,
    key        TEXT NOT NULL,
    doc        JSONB NOT NULL,
    PRIMARY KEY (projection, generation, key)
);

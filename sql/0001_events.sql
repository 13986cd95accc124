-- The event table, publish(), and the NOTIFY doorbell.
--
-- Order and positions: every event is stamped with the id of the transaction
-- that wrote it (pg_current_xact_id(), an xid8 that never wraps) and the
-- stream order is (xid, id). Readers only take rows whose xid is below the
-- xmin of their own snapshot: every transaction below that horizon has ended,
-- so no row can later appear before a row already delivered. See
-- docs/ordering.md.

CREATE SCHEMA IF NOT EXISTS sse_stream;

CREATE TABLE sse_stream.events (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream      text NOT NULL,
    type        text NOT NULL,
    data        jsonb NOT NULL DEFAULT 'null',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, id),
    CONSTRAINT events_stream_valid CHECK (
        length(stream) <= 200
        AND stream ~ '^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$'),
    CONSTRAINT events_type_valid CHECK (type ~ '^[A-Za-z0-9_.:-]{1,200}$')
);

CREATE UNIQUE INDEX events_id ON sse_stream.events (id);
-- Replay of one stream (or a list of them) from a position.
CREATE INDEX events_stream_position ON sse_stream.events (stream, xid, id);

-- One row: the highest position removed by retention (for sse.gap).
CREATE TABLE sse_stream.retention (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_xid  xid8 NOT NULL,
    pruned_id   bigint NOT NULL
);

-- The doorbell. A statement-level trigger so a multi-row insert rings once;
-- PostgreSQL folds identical notifications of one transaction into one, so a
-- transaction rings at most once whatever it writes. The payload is empty:
-- readers always read the table. Setting sse_stream.notify to 'off' (per
-- session, role or database) turns the doorbell off for writers that would
-- rather have servers poll than serialise their commits on the notify queue.
CREATE FUNCTION sse_stream.notify_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('sse_stream.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('sse_stream', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON sse_stream.events
    FOR EACH STATEMENT EXECUTE FUNCTION sse_stream.notify_trigger();

CREATE FUNCTION sse_stream.publish(stream text, type text, data jsonb)
RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO sse_stream.events (stream, type, data)
    VALUES (publish.stream, publish.type, coalesce(publish.data, 'null'::jsonb))
    RETURNING id;
$$;

-- Named queries, used by name from sse_stream/queries.py. Client input only
-- ever reaches them as bind parameters.

-- name: snapshot_xmin
-- The horizon below which every transaction has ended.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint;

-- name: read_live
-- The shared read of one wake-up: every committed row after the watermark, in
-- stream order, with the snapshot's xmin. Rows at or above xmin are committed
-- but not yet final (an older transaction may still write before them); the
-- caller delivers only the prefix below xmin and polls again soon for the rest.
SELECT h.xmin::text::bigint AS xmin, e.xid, e.id, e.stream, e.type, e.data, e.created_at
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) h
LEFT JOIN LATERAL (
    SELECT ev.xid::text::bigint AS xid, ev.id, ev.stream, ev.type, ev.data::text AS data,
           ev.created_at
    FROM sse_stream.events ev
    WHERE (ev.xid, ev.id) > ($1::text::xid8, $2::bigint)
    ORDER BY ev.xid, ev.id
    LIMIT $3
) e ON true;

-- name: read_selected
-- One page of a subscriber's own catch-up: matching rows after its position
-- and below the snapshot's xmin. {selector} is a boolean expression built by
-- sse_stream/subscription.py from bind parameters ($4 onwards) only.
SELECT h.xmin::text::bigint AS xmin, e.xid, e.id, e.stream, e.type, e.data, e.created_at
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) h
LEFT JOIN LATERAL (
    SELECT ev.xid::text::bigint AS xid, ev.id, ev.stream, ev.type, ev.data::text AS data,
           ev.created_at
    FROM sse_stream.events ev
    WHERE (ev.xid, ev.id) > ($1::text::xid8, $2::bigint)
      AND ev.xid < h.xmin
      AND {selector}
    ORDER BY ev.xid, ev.id
    LIMIT $3
) e ON true;

-- name: pruned_position
SELECT pruned_xid::text::bigint, pruned_id FROM sse_stream.retention;

-- name: publish_batch
-- Many events of one stream in one statement; ids follow the input order.
INSERT INTO sse_stream.events (stream, type, data)
SELECT $1, t.type, t.data::jsonb
FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS t(type, data, n)
ORDER BY t.n
RETURNING id;

-- name: migrations_table
CREATE SCHEMA IF NOT EXISTS sse_stream;
CREATE TABLE IF NOT EXISTS sse_stream.migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_applied
SELECT version FROM sse_stream.migrations ORDER BY version;

-- name: migration_record
INSERT INTO sse_stream.migrations (version, name) VALUES ($1, $2);

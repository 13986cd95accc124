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
-- The highest pruned position is read in the same snapshot as the rows: a
-- prune deletes rows and moves it in one transaction, so the page is missing
-- exactly the rows at or before it, never rows the reader was not told about.
SELECT h.xmin::text::bigint AS xmin, h.pruned_xid, h.pruned_id,
       e.xid, e.id, e.stream, e.type, e.data, e.created_at
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
             r.pruned_xid::text::bigint AS pruned_xid, r.pruned_id
      FROM (SELECT) AS one LEFT JOIN sse_stream.retention r ON true) h
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

-- name: prune_batch
-- One small batch of retention: the oldest final rows in stream order
-- (below the snapshot's xmin, $2 at most), up to the first one created at or
-- after the cutoff $1, so the pruned rows are always a prefix of the order
-- and "everything at or before pruned_position is gone" holds exactly. The
-- prefix is deleted as a key range (an index range scan, whatever the table's
-- size) and the position recorded in the same statement; each batch is its
-- own short transaction. No row can appear later inside the range: it is
-- below the horizon, where every transaction has ended.
WITH head AS (
    SELECT ev.xid, ev.id,
           bool_or(ev.created_at >= $1) OVER (ORDER BY ev.xid, ev.id) AS kept
    FROM sse_stream.events ev
    WHERE ev.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY ev.xid, ev.id
    LIMIT $2
), top AS (
    SELECT xid, id FROM head WHERE NOT kept ORDER BY xid DESC, id DESC LIMIT 1
), deleted AS (
    DELETE FROM sse_stream.events e
    USING top
    WHERE (e.xid, e.id) <= (top.xid, top.id)
    RETURNING e.id
), recorded AS (
    INSERT INTO sse_stream.retention AS r (pruned_xid, pruned_id)
    SELECT xid, id FROM top
    ON CONFLICT (singleton) DO UPDATE
        SET pruned_xid = excluded.pruned_xid, pruned_id = excluded.pruned_id
        WHERE (r.pruned_xid, r.pruned_id) < (excluded.pruned_xid, excluded.pruned_id)
)
SELECT (SELECT count(*) FROM deleted) AS deleted,
       (SELECT xid::text::bigint FROM top) AS xid, (SELECT id FROM top) AS id;

-- name: publish_batch
-- A batch of one stream in one statement; ids in input order. The server
-- has checked every item (sse_stream/batch.py), so this skips the second
-- check that sse_stream.publish_many makes for SQL callers (a third of the
-- database's time per event); the table's CHECK constraints still hold.
WITH written AS (
    INSERT INTO sse_stream.events (stream, type, data)
    SELECT $1, t.item ->> 'type', coalesce(t.item -> 'data', 'null'::jsonb)
    FROM jsonb_array_elements($2::jsonb) WITH ORDINALITY AS t(item, n)
    ORDER BY t.n
    RETURNING id
)
SELECT coalesce(array_agg(id ORDER BY id), '{}') FROM written;

-- name: publish_idempotent
-- The same, once per idempotency key (see sql/0002_capture.sql).
SELECT ids, stored_hash, replayed FROM sse_stream.publish_idempotent($1, $2, $3, $4::jsonb);

-- name: prune_idempotency_keys
-- Forget idempotency keys older than $1 seconds.
DELETE FROM sse_stream.idempotency_keys
WHERE created_at < now() - make_interval(secs => $1::float8);

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

-- Named queries, used by name from sse_stream/queries.py. Client input only
-- ever reaches them as bind parameters.

-- name: snapshot_xmin
-- The horizon below which every transaction has ended.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint;

-- name: live_probe
-- Cheap: where the live source stands in the WAL (replayed, on a standby;
-- written, on a primary), so that a poller reads only when it moved.
SELECT pg_is_in_recovery() AS recovery,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text AS lsn;

-- name: standby_replayed
-- Whether the live source is a standby, and the WAL position it has
-- replayed (on a primary: written). The lag is the primary's position less
-- this one, and the time since the primary stood here (core/stats.ReplayClock).
SELECT pg_is_in_recovery() AS recovery,
       (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
             ELSE pg_current_wal_lsn() END)::text AS replayed;

-- name: primary_wal
-- On the primary: where its WAL stands, for the standby's lag in bytes, and
-- the next transaction id it will hand out: a position below it was handed
-- out by this cluster (a standby that lacks it is behind, not replaced).
SELECT pg_current_wal_lsn()::text AS lsn,
       pg_snapshot_xmax(pg_current_snapshot())::text::numeric AS xmax;

-- name: read_live
-- The shared read of one wake-up, on the live path's own connection: the
-- final rows after the watermark (below the snapshot's xmin: every
-- transaction before it has ended), in stream order, at most $3 rows and
-- about $4 bytes of data (a row past the budget comes without its data: the
-- page ends before it). The header row, always present, has the snapshot's
-- xmin and xmax, whether committed rows wait above xmin (`held`: read again
-- soon), and the highest pruned position in the same snapshot, so that a
-- reader retention overtook learns it with the rows.
SELECT h.xmin::text::bigint AS xmin, h.xmax::text::bigint AS xmax, h.held,
       h.pruned_xid::text::bigint AS pruned_xid, h.pruned_id,
       e.xid, e.id, e.stream, e.type, e.data, e.created_at, e.epoch
FROM (
    SELECT s.xmin, s.xmax, r.pruned_xid, r.pruned_id,
           EXISTS (SELECT FROM sse_stream.events ev WHERE ev.xid >= s.xmin) AS held
    FROM (SELECT pg_snapshot_xmin(c.snap) AS xmin, pg_snapshot_xmax(c.snap) AS xmax
          FROM (SELECT pg_current_snapshot() AS snap) c) s
    LEFT JOIN sse_stream.retention r ON true
) h
LEFT JOIN LATERAL (
    SELECT w.xid::text::bigint AS xid, w.id, w.stream, w.type,
           CASE WHEN w.running - octet_length(w.data) < $4 THEN convert_to(w.data, 'UTF8') END
               AS data,
           sse_stream.time_text(w.created_at) AS created_at,
           extract(epoch FROM w.created_at)::float8 AS epoch
    FROM (
        SELECT p.*, sum(octet_length(p.data)) OVER (ORDER BY p.xid, p.id ROWS UNBOUNDED PRECEDING)
                   AS running
        FROM (
            SELECT ev.xid, ev.id, ev.stream, ev.type, ev.data::text AS data, ev.created_at
            FROM sse_stream.events ev
            WHERE (ev.xid, ev.id) > ($1::text::xid8, $2::bigint) AND ev.xid < h.xmin
            ORDER BY ev.xid, ev.id
            LIMIT $3
        ) p
    ) w
    ORDER BY w.xid, w.id
) e ON true;

-- name: read_recent
-- At start, the newest final events (at most $1 rows, their data about $2
-- bytes in all, counted as recent history counts them), oldest first, and
-- the snapshot's xmin they are final below: recent history is then whole
-- from before the oldest of them up to the watermark (engine/recent.py).
-- `selected` is how many rows the limit let through before the byte budget:
-- fewer than $1, all returned, and these are every final event there is.
SELECT h.xmin::text::bigint AS xmin, e.xid, e.id, e.stream, e.type, e.data, e.created_at,
       e.epoch, e.selected
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) h
LEFT JOIN LATERAL (
    SELECT w.xid::text::bigint AS xid, w.id, w.stream, w.type, convert_to(w.data, 'UTF8') AS data,
           sse_stream.time_text(w.created_at) AS created_at,
           extract(epoch FROM w.created_at)::float8 AS epoch, w.selected
    FROM (
        SELECT p.*, sum(2 * octet_length(p.data) + $3) OVER (ORDER BY p.xid DESC, p.id DESC
                                                             ROWS UNBOUNDED PRECEDING) AS running,
               count(*) OVER () AS selected
        FROM (
            SELECT ev.xid, ev.id, ev.stream, ev.type, ev.data::text AS data, ev.created_at
            FROM sse_stream.events ev
            WHERE ev.xid < h.xmin
            ORDER BY ev.xid DESC, ev.id DESC
            LIMIT $1
        ) p
    ) w
    WHERE w.running <= $2
    ORDER BY w.xid, w.id
) e ON true;

-- name: read_selected
-- One page of a subscriber's own catch-up, or of a JSON page: the rows of the
-- selected streams after a position and below the snapshot's xmin, in
-- stream order, tested against the selector's filters, as the bytes the
-- client gets ({frame}: one of the frame_* expressions below, joined by
-- {separator}), so that a replay costs the server no decoding, no encoding
-- and no work per row: the page is one row.
-- Bounded work: the scan examines at most $4 rows of the selected streams
-- (`n` counts them) and stops as soon as $3 rows have come out. A row comes
-- out when it matches (`hit`) or when it is the last one the scan may examine
-- (n = $4), so that a page over a stretch that matches nothing still tells
-- how far it looked. A match is taken while fewer than $3 matches came before
-- it and the data before it stays under about $5 bytes; `over` says a match
-- was left for the next page (the page ends before it).
-- {streams} and {filter} are boolean expressions built by
-- sse_stream/subscription.py from bind parameters ($6 onwards) only.
-- The header has the snapshot's xmin and xmax (a position at or past xmax
-- was never handed out by this database) and the highest pruned position,
-- read in the same snapshot as the rows: a prune deletes rows and moves it
-- in one transaction, so the page is missing exactly the rows at or before
-- it, never rows the reader was not told about.
SELECT h.xmin::text::bigint AS xmin, h.xmax::text::bigint AS xmax,
       h.pruned_xid::text::bigint AS pruned_xid, h.pruned_id, p.taken, p.body, p.last, p.over,
       p.end_n, p.end_at
FROM (
    SELECT s.xmin, s.xmax, r.pruned_xid, r.pruned_id
    FROM (SELECT pg_snapshot_xmin(c.snap) AS xmin, pg_snapshot_xmax(c.snap) AS xmax
          FROM (SELECT pg_current_snapshot() AS snap) c) s
    LEFT JOIN sse_stream.retention r ON true
) h
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE w.taken) AS taken,
           convert_to(string_agg({frame}, {separator} ORDER BY w.xid, w.id)
                      FILTER (WHERE w.taken), 'UTF8') AS body,
           max(ARRAY[w.xid::text::bigint, w.id]) FILTER (WHERE w.taken) AS last,
           coalesce(bool_or(w.hit AND NOT w.taken), false) AS over,
           max(w.n) AS end_n, max(ARRAY[w.xid::text::bigint, w.id]) AS end_at
    FROM (
        SELECT o.*, o.hit AND o.hits < $3 AND o.running - octet_length(o.data) < $5 AS taken
        FROM (
            SELECT t.xid, t.id, t.stream, t.type, t.created_at, t.hit, t.data,
                   row_number() OVER win AS n,
                   count(*) FILTER (WHERE t.hit) OVER win AS hits,
                   coalesce(sum(octet_length(t.data)) OVER win, 0) AS running
            FROM (
                SELECT s.xid, s.id, s.stream, s.type, s.created_at, s.hit,
                       CASE WHEN s.hit THEN s.data::text END AS data
                FROM (
                    SELECT ev.xid, ev.id, ev.stream, ev.type, ev.created_at, ev.data,
                           coalesce({filter}, false) AS hit
                    FROM sse_stream.events ev
                    WHERE (ev.xid, ev.id) > ($1::text::xid8, $2::bigint) AND ev.xid < h.xmin
                      AND {streams}
                    ORDER BY ev.xid, ev.id
                    LIMIT $4
                ) s
            ) t
            WINDOW win AS (ORDER BY t.xid, t.id ROWS UNBOUNDED PRECEDING)
        ) o
        WHERE o.hit OR o.n = $4
        ORDER BY o.xid, o.id
        LIMIT $3
    ) w
) p ON true;

-- name: frame_json
-- The envelope of SPEC §2 over the row `w` of read_selected: stream and type
-- need no JSON escaping (the table's checks), data is jsonb's own text.
-- concat() builds it in one piece (a chain of || copies it at every step).
concat('{"id":', w.id, ',"position":"', w.xid, '-', w.id, '","stream":"', w.stream,
       '","type":"', w.type, '","data":', w.data, ',"created_at":"',
       sse_stream.time_text(w.created_at), '"}')

-- name: frame_json_cloudevents
-- The same event as a CloudEvents 1.0 JSON envelope (structured mode).
concat('{"specversion":"1.0","id":"', w.id, '","source":"/streams/', w.stream,
       '","type":"', w.type, '","time":"', sse_stream.time_text(w.created_at),
       '","datacontenttype":"application/json","data":', w.data, ',"ssestream":"',
       w.stream, '","sseposition":"', w.xid, '-', w.id, '"}')

-- name: frame_sse
-- An SSE frame: the position as its id, the type as its event, an envelope.
concat('id: ', w.xid, '-', w.id, E'\nevent: ', w.type, E'\ndata: ', {envelope}, E'\n\n')

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
-- Unless $3 (force), nothing past the cursor of a webhook that is not
-- disabled is deleted: it has yet to deliver what follows (docs/webhooks.md);
-- but one that is paused or failing holds only for $4 seconds after its
-- cursor last moved forward (progressed_at, which no pause, resume or
-- rewind renews).
WITH hold AS (
    SELECT w.cursor_xid AS xid, w.cursor_id AS id
    FROM sse_stream.webhooks w
    WHERE NOT $3::boolean AND w.state <> 'disabled'
      AND ((w.state = 'active' AND w.failing_since IS NULL)
           OR w.progressed_at > now() - make_interval(secs => $4::float8))
    ORDER BY w.cursor_xid, w.cursor_id
    LIMIT 1
), head AS (
    SELECT ev.xid, ev.id,
           bool_or(ev.created_at >= $1) OVER (ORDER BY ev.xid, ev.id) AS kept
    FROM sse_stream.events ev
    WHERE ev.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY ev.xid, ev.id
    LIMIT $2
), top AS (
    SELECT xid, id FROM head
    WHERE NOT kept AND NOT EXISTS (SELECT FROM hold WHERE (head.xid, head.id) > (hold.xid, hold.id))
    ORDER BY xid DESC, id DESC LIMIT 1
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
SELECT sse_stream.insert_events($1, $2::jsonb);

-- name: publish_idempotent
-- The same, once per idempotency key in its scope (see sql/0004_isolation.sql).
SELECT ids, stored_hash, replayed FROM sse_stream.publish_idempotent($1, $2, $3, $4, $5::jsonb);

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

-- Named queries of webhooks (sse_stream/webhook_store.py), used by name like
-- those of queries.sql. Rows are read as JSON (to_jsonb), which carries every
-- column type, xid8 included, as text or numbers. Client input only ever
-- reaches them as bind parameters. See sql/0005_webhooks.sql for the table
-- and the functions a backend calls from its own transactions.

-- name: webhook_create
SELECT to_jsonb(w) FROM sse_stream.create_webhook($1, $2::text[], $3::text[], $4::text[], $5,
                                                  $6, $7, $8, $9::jsonb) w;

-- name: webhook_owner_lock
-- Serialises the creations of one owner ($1: sub, $2: iss) until the end of
-- the transaction, so that the count below and the insert cannot race.
SELECT pg_advisory_xact_lock(hashtextextended(
    'sse_stream.webhooks/' || coalesce($2::text, '') || '/' || $1::text, 0));

-- name: webhook_owned
SELECT count(*) FROM sse_stream.webhooks w
WHERE w.created_by = $1 AND w.created_by_issuer IS NOT DISTINCT FROM $2::text;

-- name: webhook_get
SELECT to_jsonb(w) FROM sse_stream.webhooks w WHERE w.id = $1::uuid;

-- name: webhook_page
-- Webhooks oldest first after ($4 created_at, $5 id), at most $6: those of
-- owner ($2 sub, $3 iss), or everyone's when $1 (an admin).
SELECT to_jsonb(w) FROM sse_stream.webhooks w
WHERE ($1::boolean OR (w.created_by = $2::text
                       AND w.created_by_issuer IS NOT DISTINCT FROM $3::text))
  AND (w.created_at, w.id) > ($4::timestamptz, $5::uuid)
ORDER BY w.created_at, w.id
LIMIT $6;

-- name: webhook_pause
SELECT to_jsonb(w) FROM sse_stream.pause_webhook($1::uuid) w WHERE w.id IS NOT NULL;

-- name: webhook_resume
SELECT to_jsonb(w) FROM sse_stream.resume_webhook($1::uuid) w WHERE w.id IS NOT NULL;

-- name: webhook_rewind
SELECT to_jsonb(w) FROM sse_stream.rewind_webhook($1::uuid, $2) w WHERE w.id IS NOT NULL;

-- name: webhook_delete
SELECT sse_stream.delete_webhook($1::uuid);

-- name: webhook_attempts
-- The newest attempts of one webhook, newest first.
SELECT a.seq, a.at, a.status, a.latency_ms, a.error, a.events, a.message_id
FROM sse_stream.webhook_attempts a
WHERE a.webhook_id = $1::uuid
ORDER BY a.seq DESC
LIMIT $2;

-- name: webhook_backlog
-- How far a webhook is behind: the matching final events after its cursor
-- ($1, $2) among at most $3 rows of its streams, and the age in seconds of
-- the oldest. {streams} and {filter} as in read_selected, binds from $4.
SELECT count(*) FILTER (WHERE s.hit) AS behind, count(*) AS examined,
       extract(epoch FROM now() - min(s.created_at) FILTER (WHERE s.hit))::float8 AS age
FROM (
    SELECT ev.created_at, coalesce({filter}, false) AS hit
    FROM sse_stream.events ev
    WHERE (ev.xid, ev.id) > ($1::text::xid8, $2::bigint)
      AND ev.xid < pg_snapshot_xmin(pg_current_snapshot()) AND {streams}
    ORDER BY ev.xid, ev.id
    LIMIT $3
) s;

-- name: webhook_counts
SELECT w.state, count(*) AS n FROM sse_stream.webhooks w GROUP BY w.state;

-- name: webhook_heartbeat
-- Say that this deliverer ($1) is alive for $2 seconds more, forget those
-- whose time ran out, and count the live ones (this one included) and the
-- active webhooks they share.
WITH seen AS (
    INSERT INTO sse_stream.webhook_deliverers AS d (owner, seen_until)
    VALUES ($1, now() + make_interval(secs => $2))
    ON CONFLICT (owner) DO UPDATE SET seen_until = excluded.seen_until
), gone AS (
    DELETE FROM sse_stream.webhook_deliverers d WHERE d.seen_until < now() AND d.owner <> $1
)
SELECT (SELECT count(*) FROM sse_stream.webhook_deliverers d
        WHERE d.seen_until >= now() AND d.owner <> $1) + 1 AS owners,
       (SELECT count(*) FROM sse_stream.webhooks w WHERE w.state = 'active') AS active;

-- name: webhook_forget
DELETE FROM sse_stream.webhook_deliverers WHERE owner = $1;

-- name: webhook_claim
-- Lease up to $3 active webhooks whose lease has lapsed (or that never had
-- one) to deliverer $1 for $2 seconds, the most overdue first. SKIP LOCKED:
-- deliverers claiming at the same time take different rows, and each claim
-- bumps the epoch that every later write of the holder names.
UPDATE sse_stream.webhooks w
SET lease_owner = $1, lease_until = now() + make_interval(secs => $2),
    lease_epoch = w.lease_epoch + 1
FROM (
    SELECT c.id
    FROM sse_stream.webhooks c
    WHERE c.state = 'active' AND (c.lease_until IS NULL OR c.lease_until < now())
    ORDER BY c.next_attempt_at, c.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
) free
WHERE w.id = free.id
RETURNING to_jsonb(w);

-- name: webhook_renew
-- Extend the leases that deliverer $1 holds on the webhooks $2 by $3
-- seconds, and give up those that are no longer active; the rows it still
-- holds, as they are now (a paused, rewound or deleted webhook shows here).
WITH mine AS (
    SELECT w.id, w.state = 'active' AS keep
    FROM sse_stream.webhooks w
    WHERE w.id = ANY($2::text[]::uuid[]) AND w.lease_owner = $1
    FOR UPDATE
), released AS (
    UPDATE sse_stream.webhooks w SET lease_owner = NULL, lease_until = NULL
    FROM mine WHERE w.id = mine.id AND NOT mine.keep
)
UPDATE sse_stream.webhooks w SET lease_until = now() + make_interval(secs => $3)
FROM mine
WHERE w.id = mine.id AND mine.keep
RETURNING to_jsonb(w);

-- name: webhook_held
-- The active webhooks among $2 that deliverer $1 holds, as they are now (a
-- paused, rewound or deleted webhook shows here), without writing.
SELECT to_jsonb(w) FROM sse_stream.webhooks w
WHERE w.id = ANY($2::text[]::uuid[]) AND w.lease_owner = $1 AND w.state = 'active';

-- name: webhook_release
UPDATE sse_stream.webhooks SET lease_owner = NULL, lease_until = NULL
WHERE lease_owner = $1 AND id = ANY($2::text[]::uuid[]);

-- name: webhook_begin
-- Before a request whose lease would lapse too soon: renew it ($6 seconds)
-- and record the batch's size ($7 events); only while deliverer $2 holds
-- the lease of epoch $3, the webhook is active and its cursor is still the
-- position the batch was read after ($4, $5).
UPDATE sse_stream.webhooks
SET lease_until = now() + make_interval(secs => $6), pending_events = $7
WHERE id = $1::uuid AND lease_owner = $2 AND lease_epoch = $3 AND state = 'active'
  AND cursor_xid = $4::text::xid8 AND cursor_id = $5
RETURNING lease_until;

-- name: webhook_finish
-- After a request, by the holder of the lease ($2, epoch $3), which it
-- renews ($17 seconds): count and log the attempt ($6 status or NULL, $7 ms,
-- $11 error, $14 events, $15 webhook-id; at most $16 attempts kept per
-- webhook). A 2xx ($8) moves the cursor to ($9, $10) if it is still where
-- the batch was read after ($4, $5): a rewind meanwhile wins. A failure
-- records the batch's size, so that the retry (by any process) sends the
-- same events, schedules it in $12 seconds, and disables the webhook once it
-- has failed for $13 seconds without a success.
WITH held AS (
    SELECT w.id, w.cursor_xid = $4::text::xid8 AND w.cursor_id = $5 AS same,
           $8 AND w.cursor_xid = $4::text::xid8 AND w.cursor_id = $5 AS moves,
           coalesce(w.failing_since, now()) AS since
    FROM sse_stream.webhooks w
    WHERE w.id = $1::uuid AND w.lease_owner = $2 AND w.lease_epoch = $3
    FOR UPDATE
), done AS (
    UPDATE sse_stream.webhooks w
    SET attempts = w.attempts + 1, last_attempt_at = now(), last_status = $6,
        last_latency_ms = $7, last_error = $11,
        cursor_xid = CASE WHEN held.moves THEN $9::text::xid8 ELSE w.cursor_xid END,
        cursor_id = CASE WHEN held.moves THEN $10 ELSE w.cursor_id END,
        pending_events = CASE WHEN held.moves THEN NULL WHEN NOT $8 AND held.same THEN $14
                              ELSE w.pending_events END,
        lease_until = now() + make_interval(secs => $17),
        delivered = w.delivered + CASE WHEN held.moves THEN $14 ELSE 0 END,
        progressed_at = CASE WHEN held.moves THEN now() ELSE w.progressed_at END,
        failures = CASE WHEN $8 THEN 0 ELSE w.failures + 1 END,
        failing_since = CASE WHEN $8 THEN NULL ELSE held.since END,
        next_attempt_at = now() + make_interval(
            secs => CASE WHEN $8 THEN 0 ELSE $12::float8 END),
        state = CASE WHEN NOT $8 AND w.state = 'active'
                          AND held.since <= now() - make_interval(secs => $13::float8)
                     THEN 'disabled' ELSE w.state END
    FROM held
    WHERE w.id = held.id
    RETURNING w.id, w.attempts, w.state, held.moves
), logged AS (
    INSERT INTO sse_stream.webhook_attempts (webhook_id, seq, status, latency_ms, error,
                                             events, message_id)
    SELECT done.id, done.attempts, $6, $7, $11, $14, $15 FROM done
), trimmed AS (
    DELETE FROM sse_stream.webhook_attempts a
    USING done
    WHERE a.webhook_id = done.id AND a.seq <= done.attempts - $16
)
SELECT done.state, done.moves FROM done;

-- name: webhook_skip
-- Move the cursor past events the webhook does not match ($6, $7), with no
-- request: by the lease holder, from where the read started ($4, $5).
UPDATE sse_stream.webhooks
SET cursor_xid = $6::text::xid8, cursor_id = $7, pending_events = NULL, progressed_at = now()
WHERE id = $1::uuid AND lease_owner = $2 AND lease_epoch = $3
  AND cursor_xid = $4::text::xid8 AND cursor_id = $5
RETURNING true;

-- name: webhook_prune_attempts
-- The attempt log goes with the events: nothing older than the retention.
DELETE FROM sse_stream.webhook_attempts WHERE at < now() - make_interval(secs => $1);

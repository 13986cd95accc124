-- Webhooks: durable subscriptions whose matching events the server POSTs to
-- a URL, signed, in stream order, with a cursor kept here. See
-- docs/webhooks.md.
--
-- Delivery: any number of server processes deliver; each webhook is leased
-- to at most one of them at a time (lease_owner until lease_until, claimed
-- with FOR UPDATE SKIP LOCKED and renewed while it delivers). Every write a
-- deliverer makes names its lease (owner and epoch), so a process whose
-- lease lapsed changes nothing. The cursor moves in the statement that
-- records a 2xx, and only from the position the batch was read after.

CREATE TABLE sse_stream.webhooks (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url              text NOT NULL,
    streams          text[] NOT NULL,
    types            text[],                       -- NULL: every type
    filters          text[] NOT NULL DEFAULT '{}', -- data filters, ANDed
    secret           text NOT NULL,                -- the HMAC key, as given (whsec_...)
    state            text NOT NULL DEFAULT 'active',
    -- Every matching event up to this position was delivered (a 2xx).
    cursor_xid       xid8 NOT NULL,
    cursor_id        bigint NOT NULL,
    -- Events in the batch being tried: a retry, by any process, sends the
    -- same events again (same body, same webhook-id). NULL: no batch pending.
    pending_events   integer,
    failures         integer NOT NULL DEFAULT 0,   -- attempts failed since the last 2xx
    failing_since    timestamptz,                  -- the first of them
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    attempts         bigint NOT NULL DEFAULT 0,
    delivered        bigint NOT NULL DEFAULT 0,    -- events acknowledged with a 2xx
    last_attempt_at  timestamptz,
    last_status      integer,                      -- HTTP status; NULL: no response
    last_latency_ms  double precision,
    last_error       text,
    lease_owner      text,
    lease_until      timestamptz,
    lease_epoch      bigint NOT NULL DEFAULT 0,    -- bumped by every claim
    created_by       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhooks_state_valid CHECK (state IN ('active', 'paused', 'disabled')),
    CONSTRAINT webhooks_url_valid CHECK (url ~ '^https?://[^[:space:]]+$' AND length(url) <= 2048),
    CONSTRAINT webhooks_streams_valid CHECK (cardinality(streams) BETWEEN 1 AND 50),
    CONSTRAINT webhooks_secret_valid CHECK (secret ~ '^whsec_[A-Za-z0-9+/]+={0,2}$')
);
CREATE INDEX webhooks_due ON sse_stream.webhooks (next_attempt_at) WHERE state = 'active';
-- Retention holds at the oldest cursor of a webhook that is not disabled.
CREATE INDEX webhooks_cursor ON sse_stream.webhooks (cursor_xid, cursor_id)
    WHERE state <> 'disabled';

-- The last attempts of each webhook (a bounded number per webhook, and none
-- older than the retention), for inspection.
CREATE TABLE sse_stream.webhook_attempts (
    webhook_id   uuid NOT NULL REFERENCES sse_stream.webhooks ON DELETE CASCADE,
    seq          bigint NOT NULL,                 -- the webhook's attempts count
    at           timestamptz NOT NULL DEFAULT now(),
    status       integer,
    latency_ms   double precision,
    error        text,
    events       integer NOT NULL,
    message_id   text NOT NULL,
    PRIMARY KEY (webhook_id, seq)
);
CREATE INDEX webhook_attempts_at ON sse_stream.webhook_attempts (at);

-- The processes delivering webhooks, so that each takes a fair share.
CREATE TABLE sse_stream.webhook_deliverers (
    owner       text PRIMARY KEY,
    seen_until  timestamptz NOT NULL
);

-- A start or rewind position: 'now' (after every event committed so far:
-- the caller's snapshot horizon), '0' (from the oldest retained event) or a
-- position '<xid>-<id>' as the server hands out.
CREATE FUNCTION sse_stream.webhook_position(spec text, OUT xid xid8, OUT id bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF spec = 'now' THEN
        xid := (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text::xid8;
        id := 9223372036854775807;
    ELSIF spec = '0' THEN
        xid := '0'::xid8;
        id := 0;
    ELSIF spec ~ '^(0|[1-9][0-9]{0,19})-(0|[1-9][0-9]{0,18})$'
          AND split_part(spec, '-', 1)::numeric <= 18446744073709551615
          AND split_part(spec, '-', 2)::numeric <= 9223372036854775807 THEN
        xid := split_part(spec, '-', 1)::xid8;
        id := split_part(spec, '-', 2)::bigint;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: %s is not a position (now, 0 or <xid>-<id>)',
                             coalesce(quote_literal(spec), 'NULL'));
    END IF;
END;
$$;

-- A webhook, from the caller's transaction: it exists (and its cursor
-- counts) if and only if that transaction commits. The server checks the
-- filters' syntax and the URL's addresses itself; here the shapes are
-- checked. Without a secret one is generated (244 random bits of two
-- gen_random_uuid(); the server passes 256 bits from Python's `secrets`).
CREATE FUNCTION sse_stream.create_webhook(
    url text, streams text[], types text[] DEFAULT NULL, filters text[] DEFAULT '{}',
    start text DEFAULT 'now', secret text DEFAULT NULL, created_by text DEFAULT NULL)
RETURNS sse_stream.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    bad text;
    here record;
    created sse_stream.webhooks;
BEGIN
    SELECT s INTO bad FROM unnest(streams) s
    WHERE s IS NULL OR length(s) > 200
       OR s !~ '^(([A-Za-z0-9_-]+|\*)(\.([A-Za-z0-9_-]+|\*))*(\.>)?|>)$'
    LIMIT 1;
    IF FOUND OR streams IS NULL OR cardinality(streams) NOT BETWEEN 1 AND 50 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: streams must be 1 to 50 stream names or patterns, '
                             'not %s', coalesce(quote_literal(bad), 'NULL'));
    END IF;
    SELECT t INTO bad FROM unnest(types) t
    WHERE t IS NULL OR t !~ '^([A-Za-z0-9_.:-]{1,200}|[A-Za-z0-9_.:-]{0,200}\*)$' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: invalid type filter %s', coalesce(quote_literal(bad), 'NULL'));
    END IF;
    SELECT f INTO bad FROM unnest(filters) f
    WHERE f IS NULL OR NOT (f ~ '^data\.[^=]+=' OR f LIKE 'or=(%)') LIMIT 1;
    IF FOUND OR filters IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: %s is not a data filter (data.<path>=<op>.<value> '
                             'or or=(...))', coalesce(quote_literal(bad), 'NULL'));
    END IF;
    SELECT * INTO here FROM sse_stream.webhook_position(coalesce(start, 'now'));
    INSERT INTO sse_stream.webhooks AS w (url, streams, types, filters, secret, cursor_xid,
                                          cursor_id, created_by)
    VALUES (url, streams, types, filters,
            coalesce(secret, 'whsec_' || encode(
                decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                       'hex'), 'base64')),
            here.xid, here.id, created_by)
    RETURNING * INTO created;
    RETURN created;
END;
$$;

-- Stop delivering (an attempt in flight still records its result).
CREATE FUNCTION sse_stream.pause_webhook(id uuid) RETURNS sse_stream.webhooks
LANGUAGE sql AS $$
    UPDATE sse_stream.webhooks w SET state = 'paused', updated_at = now()
    WHERE w.id = pause_webhook.id
    RETURNING *;
$$;

-- Deliver again, from the cursor, at once: also after `disabled`.
CREATE FUNCTION sse_stream.resume_webhook(id uuid) RETURNS sse_stream.webhooks
LANGUAGE sql AS $$
    UPDATE sse_stream.webhooks w
    SET state = 'active', failures = 0, failing_since = NULL, next_attempt_at = now(),
        updated_at = now()
    WHERE w.id = resume_webhook.id
    RETURNING *;
$$;

-- Move the cursor ('0', a position, or 'now'); the state stays. A batch in
-- flight does not move the cursor any more (it was read after the old one).
CREATE FUNCTION sse_stream.rewind_webhook(id uuid, to_position text)
RETURNS sse_stream.webhooks
LANGUAGE plpgsql AS $$
DECLARE
    here record;
    changed sse_stream.webhooks;
BEGIN
    SELECT * INTO here FROM sse_stream.webhook_position(to_position);
    UPDATE sse_stream.webhooks w
    SET cursor_xid = here.xid, cursor_id = here.id, pending_events = NULL, failures = 0,
        failing_since = NULL, next_attempt_at = now(), updated_at = now()
    WHERE w.id = rewind_webhook.id
    RETURNING w.* INTO changed;
    RETURN changed;
END;
$$;

CREATE FUNCTION sse_stream.delete_webhook(id uuid) RETURNS boolean
LANGUAGE sql AS $$
    WITH deleted AS (
        DELETE FROM sse_stream.webhooks w WHERE w.id = delete_webhook.id RETURNING 1
    )
    SELECT EXISTS (SELECT FROM deleted);
$$;

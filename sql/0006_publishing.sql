-- Publishing, in one place: the name checks, publish(), publish_many(),
-- captured table changes, and idempotent publishing, as they stand now.
--
-- They were first written in 0002 (whose text was changed after it shipped:
-- databases that ran the earlier text have an older capture()) and 0004.
-- Every function is re-stated here whole, so every database ends with the
-- same definitions whichever text of 0002 it ran, and this file is where to
-- read them. One change: the batch INSERT (the array of {"type", "data"}
-- items, ids in input order) is one function, sse_stream.insert_events, that
-- publish_many(), publish_idempotent() and the server's publish_batch query
-- call; what each of them does is unchanged.
--
-- The CHECK constraints of sse_stream.events stay the last line of defence;
-- the functions below check first so that a caller gets an error that says
-- what is wrong (SQLSTATE 22023, invalid_parameter_value) rather than the
-- name of a constraint.

-- A stream name: 1 to 200 characters, segments of [A-Za-z0-9_-] joined by '.'.
CREATE OR REPLACE FUNCTION sse_stream.is_stream_name(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT name IS NOT NULL AND length(name) <= 200
           AND name ~ '^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$';
$$;

-- A type a producer may write: 1 to 200 characters of [A-Za-z0-9_.:-], not
-- starting with 'sse.' (reserved for the control events of the server).
CREATE OR REPLACE FUNCTION sse_stream.is_type_name(name text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT name IS NOT NULL AND name ~ '^[A-Za-z0-9_.:-]{1,200}$' AND name NOT LIKE 'sse.%';
$$;

CREATE OR REPLACE FUNCTION sse_stream.check_stream(stream text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT sse_stream.is_stream_name(stream) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: invalid stream name %s', coalesce(quote_literal(stream), 'NULL')),
            HINT = 'A stream name is 1 to 200 characters: segments of [A-Za-z0-9_-] joined by ''.''.';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION sse_stream.check_type(type text, what text DEFAULT 'type') RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF NOT sse_stream.is_type_name(type) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: invalid %s %s', what, coalesce(quote_literal(type), 'NULL')),
            HINT = 'A type is 1 to 200 characters of [A-Za-z0-9_.:-]; types starting with '
                   '''sse.'' are reserved.';
    END IF;
END;
$$;

-- One event, checked, inside the caller's transaction; returns its id.
CREATE OR REPLACE FUNCTION sse_stream.publish(stream text, type text, data jsonb)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM sse_stream.check_stream(stream);
    PERFORM sse_stream.check_type(type);
    INSERT INTO sse_stream.events (stream, type, data)
    VALUES (publish.stream, publish.type, coalesce(publish.data, 'null'::jsonb))
    RETURNING id INTO new_id;
    RETURN new_id;
END;
$$;

-- The batch INSERT: the items of `events`, a JSON array of {"type": ...,
-- "data": ...} objects (data may be left out: null), written to `stream` in
-- one statement, so the doorbell rings once; the ids in input order.
-- Internal: it checks nothing itself. publish_many() checks every item
-- first; the server has checked them before it calls (sse_stream/batch.py),
-- with the table's CHECK constraints as the backstop.
CREATE FUNCTION sse_stream.insert_events(stream text, events jsonb)
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    -- ORDER BY the ordinality: identity values are drawn in that order, so
    -- ids follow the input order.
    WITH written AS (
        INSERT INTO sse_stream.events (stream, type, data)
        SELECT insert_events.stream, t.item ->> 'type', coalesce(t.item -> 'data', 'null'::jsonb)
        FROM jsonb_array_elements(events) WITH ORDINALITY AS t(item, n)
        ORDER BY t.n
        RETURNING id
    )
    SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids FROM written;
    RETURN ids;
END;
$$;

-- Many events of one stream in one statement: `events` as for insert_events.
-- Every item is checked before anything is written; the ids come back in
-- input order. An empty array writes nothing and rings no doorbell.
CREATE OR REPLACE FUNCTION sse_stream.publish_many(stream text, events jsonb)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    PERFORM sse_stream.check_stream(stream);
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'sse_stream: events must be a JSON array of {"type": ..., "data": ...} objects';
    END IF;
    IF jsonb_array_length(events) = 0 THEN
        RETURN;  -- nothing to write, and no doorbell to ring
    END IF;
    -- CASE, not OR: only a CASE fixes the order in which the tests run, and
    -- `item - 'type'` fails on a scalar.
    SELECT c.n - 1 AS index, c.problem
    INTO bad
    FROM (
        SELECT t.n, CASE
            WHEN jsonb_typeof(t.item) <> 'object' THEN 'is not an object with "type" and "data"'
            WHEN NOT t.item ? 'type' THEN '"type" is required'
            WHEN jsonb_typeof(t.item -> 'type') <> 'string' THEN '"type" must be a string'
            WHEN NOT sse_stream.is_type_name(t.item ->> 'type') THEN
                format('"type" %s is not a valid type (1 to 200 characters of [A-Za-z0-9_.:-], '
                       'not starting with ''sse.'')', quote_literal(t.item ->> 'type'))
            WHEN (t.item - 'type' - 'data') <> '{}'::jsonb THEN
                format('has an unknown field %s',
                       (SELECT quote_literal(min(k)) FROM jsonb_object_keys(t.item - 'type' - 'data') k))
        END AS problem
        FROM jsonb_array_elements(events) WITH ORDINALITY AS t(item, n)
    ) c
    WHERE c.problem IS NOT NULL
    ORDER BY c.n
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: events[%s] %s', bad.index, bad.problem);
    END IF;
    RETURN QUERY SELECT unnest(sse_stream.insert_events(publish_many.stream, events));
END;
$$;

-- Captured table changes. Attach to any table:
--
--   CREATE TRIGGER orders_events AFTER INSERT OR UPDATE OR DELETE ON orders
--   FOR EACH ROW EXECUTE FUNCTION sse_stream.capture('orders', 'customer_id');
--
-- Arguments: the stream prefix; optionally the key column ('' for none);
-- optionally, as further arguments, the only columns to put in "new" and
-- "old" (the key column need not be one of them).
--
-- Each changed row writes one event of type <prefix>.insert|update|delete with
-- data {"op", "table", "new", "old"} to stream <prefix>.<key value>, or to
-- <prefix> when no key column is given. A key value that cannot be a stream
-- segment (NULL, empty, any character outside [A-Za-z0-9_-], or a stream
-- longer than 200 characters) falls back to the bare <prefix>: the user's
-- write never fails because of the data in it. A wrong configuration (an
-- invalid prefix, an unknown key or listed column) does fail the write, with
-- a message naming the trigger, because silently routing events elsewhere
-- would be worse.
--
-- UPDATE: the stream comes from the new row's key. An UPDATE that leaves
-- every captured column as it was writes no event.
CREATE OR REPLACE FUNCTION sse_stream.capture() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prefix      text := TG_ARGV[0];
    key_column  text := nullif(TG_ARGV[1], '');
    columns     text[] := TG_ARGV[2:];
    op          text := lower(TG_OP);
    new_row     jsonb;
    old_row     jsonb;
    key_value   text;
    stream      text;
BEGIN
    -- As a BEFORE trigger, RETURN NULL would silently skip the user's write.
    IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream.capture on %I.%I (trigger %I) must be an AFTER ... '
                             'FOR EACH ROW trigger', TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_NAME);
    END IF;
    IF prefix IS NULL OR NOT sse_stream.is_stream_name(prefix) OR length(prefix) > 193
       OR prefix = 'sse' OR prefix LIKE 'sse.%' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream.capture on %I.%I (trigger %I): invalid stream prefix %s',
                             TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_NAME, coalesce(quote_literal(prefix), 'NULL')),
            HINT = 'The prefix is a stream name of at most 193 characters (so that '
                   '<prefix>.delete is a valid type) whose first segment is not "sse".';
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;

    IF key_column IS NOT NULL THEN
        IF NOT coalesce(new_row, old_row) ? key_column THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('sse_stream.capture on %I.%I (trigger %I): no key column %I',
                                 TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_NAME, key_column);
        END IF;
        key_value := coalesce(new_row, old_row) ->> key_column;
    END IF;

    IF cardinality(columns) > 0 THEN
        IF NOT coalesce(new_row, old_row) ?& columns THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('sse_stream.capture on %I.%I (trigger %I): no column(s) %s',
                                 TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_NAME,
                                 (SELECT string_agg(quote_ident(c), ', ')
                                  FROM unnest(columns) c
                                  WHERE NOT coalesce(new_row, old_row) ? c));
        END IF;
        new_row := (SELECT jsonb_object_agg(c, new_row -> c) FROM unnest(columns) c
                    WHERE new_row IS NOT NULL);
        old_row := (SELECT jsonb_object_agg(c, old_row -> c) FROM unnest(columns) c
                    WHERE old_row IS NOT NULL);
    END IF;

    IF TG_OP = 'UPDATE' AND new_row = old_row THEN
        RETURN NULL;  -- nothing a subscriber can see has changed
    END IF;

    stream := prefix;
    IF key_value ~ '^[A-Za-z0-9_-]+$' AND length(prefix) + 1 + length(key_value) <= 200 THEN
        stream := prefix || '.' || key_value;
    END IF;

    INSERT INTO sse_stream.events (stream, type, data)
    VALUES (stream, prefix || '.' || op,
            jsonb_build_object('op', op, 'table', TG_TABLE_NAME,
                               'new', coalesce(new_row, 'null'::jsonb),
                               'old', coalesce(old_row, 'null'::jsonb)));
    RETURN NULL;
END;
$$;

-- Idempotent publishing for the server. The key rows (sse_stream.idempotency_keys,
-- created in 0002 and scoped in 0004) are written in the same transaction as
-- the events they stand for, so two retries of one request (on one server
-- process or on two) write once: the second INSERT of the key waits for the
-- first transaction and then finds its row. Keys are scoped to the stream and
-- the token's subject ('' for requests without one).
--
-- Publish `events` once per key: the first call writes and records the ids;
-- any later call with the same key writes nothing and returns the recorded
-- ids and request hash (`replayed` true), for the caller to compare with its
-- own. For the server, which has checked every item already: unlike
-- publish_many it leaves the checks to the table's constraints.
CREATE OR REPLACE FUNCTION sse_stream.publish_idempotent(
    idempotency_key text, subject text, request_hash bytea, stream text, events jsonb,
    OUT ids bigint[], OUT stored_hash bytea, OUT replayed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    -- ON CONFLICT waits for a concurrent transaction that holds the same key
    -- and, if it commits, does nothing.
    INSERT INTO sse_stream.idempotency_keys (stream, subject, key, request_hash, ids)
    VALUES (publish_idempotent.stream, publish_idempotent.subject, idempotency_key,
            publish_idempotent.request_hash, '{}')
    ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    IF FOUND THEN
        ids := sse_stream.insert_events(publish_idempotent.stream, events);
        UPDATE sse_stream.idempotency_keys k SET ids = publish_idempotent.ids
        WHERE k.stream = publish_idempotent.stream AND k.subject = publish_idempotent.subject
          AND k.key = idempotency_key;
        stored_hash := publish_idempotent.request_hash;
        replayed := false;
    ELSE
        -- A new statement, so a new snapshot: it sees the committed row.
        SELECT k.ids, k.request_hash INTO ids, stored_hash
        FROM sse_stream.idempotency_keys k
        WHERE k.stream = publish_idempotent.stream AND k.subject = publish_idempotent.subject
          AND k.key = idempotency_key;
        replayed := true;
    END IF;
END;
$$;

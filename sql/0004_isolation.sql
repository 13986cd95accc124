-- Rows that cannot forge order or control events, and idempotency keys that
-- one client cannot claim or probe for another.

-- Every row gets the database's own transaction id and time, whoever wrote
-- it: publish(), capture(), or a raw INSERT that names xid or created_at.
-- The position is (xid, id), so a forged xid would place an event before
-- rows that readers have already passed (never delivered live), and a forged
-- created_at (year 10000, -infinity) would defeat retention and the lag
-- metric. An UPDATE keeps both. Types starting with 'sse.' are the server's
-- control events (sse.gap, sse.token-expiring): no writer may store one.
-- A bulk import that must keep its original times can disable user triggers
-- for its session (SET session_replication_role = replica, superuser only).
CREATE FUNCTION sse_stream.stamp_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.type LIKE 'sse.%' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sse_stream: type %s is reserved for control events',
                             quote_literal(NEW.type)),
            HINT = 'Types starting with ''sse.'' are written only by the server.';
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.xid := pg_current_xact_id();
        NEW.created_at := now();
    ELSE
        NEW.xid := OLD.xid;
        NEW.created_at := OLD.created_at;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER events_stamp
    BEFORE INSERT OR UPDATE ON sse_stream.events
    FOR EACH ROW EXECUTE FUNCTION sse_stream.stamp_event();

-- Idempotency keys are scoped to the stream and the token's subject ('' for
-- requests without one): the same key sent by another subject, or to another
-- stream, is another key. Keys live a day at most, so the old rows are kept
-- as the scope ('', their stream).
ALTER TABLE sse_stream.idempotency_keys ADD COLUMN subject text NOT NULL DEFAULT '';
ALTER TABLE sse_stream.idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE sse_stream.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (stream, subject, key);

DROP FUNCTION sse_stream.publish_idempotent(text, bytea, text, jsonb);

-- As in 0002, with the key looked up in its scope (stream, subject).
CREATE FUNCTION sse_stream.publish_idempotent(
    idempotency_key text, subject text, request_hash bytea, stream text, events jsonb,
    OUT ids bigint[], OUT stored_hash bytea, OUT replayed boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sse_stream.idempotency_keys (stream, subject, key, request_hash, ids)
    VALUES (publish_idempotent.stream, publish_idempotent.subject, idempotency_key,
            publish_idempotent.request_hash, '{}')
    ON CONFLICT ON CONSTRAINT idempotency_keys_pkey DO NOTHING;
    IF FOUND THEN
        WITH written AS (
            INSERT INTO sse_stream.events (stream, type, data)
            SELECT publish_idempotent.stream, t.item ->> 'type',
                   coalesce(t.item -> 'data', 'null'::jsonb)
            FROM jsonb_array_elements(events) WITH ORDINALITY AS t(item, n)
            ORDER BY t.n
            RETURNING id
        )
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO ids FROM written;
        UPDATE sse_stream.idempotency_keys k SET ids = publish_idempotent.ids
        WHERE k.stream = publish_idempotent.stream AND k.subject = publish_idempotent.subject
          AND k.key = idempotency_key;
        stored_hash := publish_idempotent.request_hash;
        replayed := false;
    ELSE
        SELECT k.ids, k.request_hash INTO ids, stored_hash
        FROM sse_stream.idempotency_keys k
        WHERE k.stream = publish_idempotent.stream AND k.subject = publish_idempotent.subject
          AND k.key = idempotency_key;
        replayed := true;
    END IF;
END;
$$;

-- An event's time as the envelope writes it: RFC 3339 in UTC with "Z", the
-- microseconds only when they are not zero. Text made by PostgreSQL, so any
-- value the column holds (a year past 9999, infinity) reaches the client as
-- text instead of failing a driver's conversion.
CREATE FUNCTION sse_stream.time_text(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(to_char(t AT TIME ZONE 'UTC',
                            CASE WHEN date_trunc('second', t) = t
                                 THEN 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
                                 ELSE 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"' END),
                    t::text);
$$;

-- Webhooks belong to the token subject that made them and read no more than
-- its grants (docs/webhooks.md "Ownership and limits").
--
-- created_by (the token's sub) and created_by_issuer (its iss) name the
-- owner: the API shows a webhook only to its owner, or to a token with the
-- webhooks_admin grant. grant_where holds the data filters of the subscribe
-- grants that covered the webhook's streams when it was made, as
-- [{"streams": [patterns], "where": [filters]}, ...]: an event of a stream
-- is delivered only if it passes the where of an entry whose streams match
-- it (several entries: their union). NULL: unbound, for webhooks made by a
-- trusted backend (create_webhook in SQL), the command line or protected
-- mode, which act as admin.
--
-- progressed_at: when a delivery (or a skip past events it does not match)
-- last moved the cursor forward. A webhook that is paused or failing holds
-- retention back only until --webhooks-max-hold after that: pausing,
-- resuming and rewinding move no cursor forward, so they cannot renew it.

ALTER TABLE sse_stream.webhooks
    ADD COLUMN created_by_issuer text,
    ADD COLUMN grant_where jsonb,
    ADD COLUMN progressed_at timestamptz NOT NULL DEFAULT now(),
    ADD CONSTRAINT webhooks_grant_where_valid
        CHECK (grant_where IS NULL OR jsonb_typeof(grant_where) = 'array');

-- GET /webhooks pages an owner's webhooks (or everyone's) oldest first.
CREATE INDEX webhooks_owner ON sse_stream.webhooks (created_by, created_by_issuer, created_at, id);
CREATE INDEX webhooks_created ON sse_stream.webhooks (created_at, id);

-- create_webhook gains the owner's issuer and the grants' filters. A
-- function's parameters cannot be added in place: drop and re-state it whole
-- (callers that name the first seven arguments, or pass them in order, are
-- unchanged).
DROP FUNCTION sse_stream.create_webhook(text, text[], text[], text[], text, text, text);

CREATE FUNCTION sse_stream.create_webhook(
    url text, streams text[], types text[] DEFAULT NULL, filters text[] DEFAULT '{}',
    start text DEFAULT 'now', secret text DEFAULT NULL, created_by text DEFAULT NULL,
    created_by_issuer text DEFAULT NULL, grant_where jsonb DEFAULT NULL)
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
    IF grant_where IS NOT NULL AND jsonb_typeof(grant_where) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'sse_stream: grant_where must be an array of {"streams", "where"}';
    END IF;
    SELECT * INTO here FROM sse_stream.webhook_position(coalesce(start, 'now'));
    INSERT INTO sse_stream.webhooks AS w (url, streams, types, filters, secret, cursor_xid,
                                          cursor_id, created_by, created_by_issuer, grant_where)
    VALUES (url, streams, types, filters,
            coalesce(secret, 'whsec_' || encode(
                decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                       'hex'), 'base64')),
            here.xid, here.id, created_by, created_by_issuer, grant_where)
    RETURNING * INTO created;
    RETURN created;
END;
$$;

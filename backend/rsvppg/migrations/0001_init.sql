-- rsvp schema version 1: requests, dedupe markers, replies, dead letters and
-- the event log. Runs with search_path set to the target schema. The package
-- documentation (doc.go) describes the tables for programs in other languages.

-- The queues. A row is visible to consumers once not_before has passed; a
-- consumer that takes it sets not_before (and lease_until) to the end of its
-- lease, so an unsettled lease runs out by itself. Ack deletes the row.
CREATE TABLE requests (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue          text        NOT NULL,
    id             text        NOT NULL,
    correlation_id text        NOT NULL,
    reply_to       text        NOT NULL DEFAULT '',
    type           text        NOT NULL DEFAULT '',
    content_type   text        NOT NULL DEFAULT '',
    headers        jsonb,
    body           bytea       NOT NULL DEFAULT '',
    created_at     timestamptz,
    deadline       timestamptz,
    track          boolean     NOT NULL DEFAULT false,
    channel        text        NOT NULL DEFAULT '',
    attempt        integer     NOT NULL DEFAULT 0,   -- deliveries so far
    not_before     timestamptz NOT NULL DEFAULT now(),
    lease_until    timestamptz,                      -- set while leased
    enqueued_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX requests_due ON requests (queue, not_before, seq);

-- Ids seen within the dedupe window: 'r' request ids, 'e' event dedupe keys,
-- 'd' dead letters (id:attempt). A marker older than the window no longer
-- counts and is deleted by the clean-up.
CREATE TABLE dedupe (
    kind "char"      NOT NULL,
    key  text        NOT NULL,
    at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);
CREATE INDEX dedupe_at ON dedupe (at);

-- Final replies, one per correlation id: the first stored wins.
CREATE TABLE replies (
    correlation_id text        PRIMARY KEY,
    inbox          text        NOT NULL,
    status         text        NOT NULL,
    error_code     text        NOT NULL DEFAULT '',
    error_message  text        NOT NULL DEFAULT '',
    content_type   text        NOT NULL DEFAULT '',
    headers        jsonb,
    body           bytea       NOT NULL DEFAULT '',
    created_at     timestamptz,
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replies_stored_at ON replies (stored_at);

CREATE TABLE dead_letters (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue          text        NOT NULL,
    id             text        NOT NULL,
    correlation_id text        NOT NULL,
    reply_to       text        NOT NULL DEFAULT '',
    type           text        NOT NULL DEFAULT '',
    content_type   text        NOT NULL DEFAULT '',
    headers        jsonb,
    body           bytea       NOT NULL DEFAULT '',
    created_at     timestamptz,
    deadline       timestamptz,
    track          boolean     NOT NULL DEFAULT false,
    channel        text        NOT NULL DEFAULT '',
    attempt        integer     NOT NULL DEFAULT 0,
    reason         text        NOT NULL,
    last_error     text        NOT NULL DEFAULT '',
    at             timestamptz,
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_queue ON dead_letters (queue, seq);
CREATE INDEX dead_letters_stored_at ON dead_letters (stored_at);

-- The event log. Appends take a transaction lock first, so events become
-- visible in seq order: a reader resuming after a seq misses nothing.
CREATE TABLE events (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    correlation_id text        NOT NULL,
    channel        text        NOT NULL DEFAULT '',
    type           text        NOT NULL,
    at             timestamptz,
    data           bytea       NOT NULL DEFAULT '',
    dedupe_key     text        NOT NULL DEFAULT '',
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_correlation ON events (correlation_id, seq);
CREATE INDEX events_channel ON events (channel, seq) WHERE channel <> '';
CREATE INDEX events_stored_at ON events (stored_at);

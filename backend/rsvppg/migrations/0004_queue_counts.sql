-- rsvp schema version 4: counts of the requests in and out of each queue,
-- for the rates of the operator's queries (rsvp queues). Runs with
-- search_path set to the target schema.

-- Append only: the enqueue statement adds a row per queue it stored on
-- (n_in), in its own transaction; each process adds its count of
-- acknowledged requests per queue (n_out) every 5 seconds and when it
-- closes. A queue's rate is the sum over the rows of the last minute. The
-- clean-up deletes rows older than 10 minutes.
CREATE TABLE queue_counts (
    seq   bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text        NOT NULL,
    at    timestamptz NOT NULL DEFAULT now(),
    n_in  bigint      NOT NULL DEFAULT 0,
    n_out bigint      NOT NULL DEFAULT 0
);
CREATE INDEX queue_counts_at ON queue_counts (at);

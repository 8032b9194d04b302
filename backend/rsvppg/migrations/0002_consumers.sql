-- rsvp schema version 2: consumer heartbeats, so that any process can tell
-- whether a queue has a responder (Backend.LastActive, rsvp's
-- Config.RequireResponder). Runs with search_path set to the target schema.

-- One row per open consumer, keyed by its queue and a process-unique id. A
-- consumer inserts its row when it starts and sets seen_at = now() every
-- 15 seconds while it is open (one statement per backend for all its
-- consumers); on close it sets open = false and seen_at = now(). A row
-- with open and seen_at fresher than 30 seconds is a live responder. The
-- clean-up folds rows not seen for 30 seconds (closed, or left by a crashed
-- process) into the queue's summary row, id '', whose seen_at is the last
-- time a consumer of the queue was seen; summary rows go after the reply
-- retention.
CREATE TABLE consumers (
    queue   text        NOT NULL,
    id      text        NOT NULL,
    open    boolean     NOT NULL DEFAULT true,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, id)
);
CREATE INDEX consumers_seen_at ON consumers (seen_at);

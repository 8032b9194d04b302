package rsvppg

import (
	"strings"
)

// queries are the statements of one schema. Every table name is qualified
// with the schema, so that the statements also run in a caller's
// transaction (EnqueueTx) whatever its search_path. Durations are passed in
// microseconds.
type queries struct {
	enqueue, claim, nextDue, unclaim, ack, nack, extend string
	putReplies, getReplies, notify, repliesSince        string
	deadLetter                                          string
	lockEvents, appendEvents                            string
	eventsByID, eventsByChannel, eventsBySeq            string
	eventsSince                                         string
	heartbeat, consumerGone, lastActive                 string
	cleanup                                             string
}

// msgCols are the columns of a stored message, in the order scanMessage
// reads them.
const msgCols = "queue, id, correlation_id, reply_to, type, content_type, headers, body, created_at, deadline, track, channel, attempt"

// replyCols are the columns of a stored reply, in the order scanReply reads
// them.
const replyCols = "correlation_id, inbox, status, error_code, error_message, content_type, headers, body, created_at"

const eventCols = "seq, correlation_id, channel, type, at, data"

func newQueries(schema string) queries {
	r := strings.NewReplacer("{s}", ident(schema), "{msg}", msgCols, "{reply}", replyCols, "{event}", eventCols,
		"{us}", "* interval '1 microsecond'")
	sub := func(sql string) string { return strings.TrimSpace(r.Replace(sql)) }
	return queries{
		// Stores a batch of requests whose ids were not seen within the dedupe
		// window ($14), and returns the queues stored on. The ids of one batch
		// are distinct. A request is due at its not_before ($13), or now.
		enqueue: sub(`
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::bytea[], $9::timestamptz[], $10::timestamptz[], $11::boolean[], $12::text[], $13::timestamptz[]) WITH ORDINALITY
		AS m(queue, id, correlation_id, reply_to, type, content_type, headers, body, created_at, deadline, track, channel, not_before, ord)
), fresh AS (
	INSERT INTO {s}.dedupe AS d (kind, key) SELECT 'r', id FROM input
	ON CONFLICT (kind, key) DO UPDATE SET at = now() WHERE d.at < now() - $14::bigint {us}
	RETURNING key
), stored AS (
	INSERT INTO {s}.requests (queue, id, correlation_id, reply_to, type, content_type, headers, body, created_at, deadline, track, channel, not_before)
	SELECT queue, id, correlation_id, reply_to, type, content_type, nullif(headers, '')::jsonb, body, created_at, deadline, track, channel,
		greatest(coalesce(not_before, now()), now())
	FROM input WHERE id IN (SELECT key FROM fresh) ORDER BY ord
	RETURNING queue
)
SELECT DISTINCT queue FROM stored`),

		// Leases up to $2 due requests of queue $1 for $3.
		claim: sub(`
WITH due AS (
	SELECT seq FROM {s}.requests WHERE queue = $1 AND not_before <= now()
	ORDER BY not_before, seq LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE {s}.requests r SET attempt = r.attempt + 1, not_before = now() + $3::bigint {us}, lease_until = now() + $3::bigint {us}
FROM due WHERE r.seq = due.seq
RETURNING r.seq, {msg}`),

		// When the next request of queue $1 comes due (in the past for one
		// due now but locked by another transaction).
		nextDue: sub(`SELECT min(not_before) FROM {s}.requests WHERE queue = $1`),

		// Gives a lease taken for a Next call that left back, as if it had
		// never been taken.
		unclaim: sub(`
WITH u AS (
	UPDATE {s}.requests SET attempt = attempt - 1, not_before = now(), lease_until = NULL
	WHERE seq = $1 AND attempt = $2 RETURNING queue
)
SELECT pg_notify($3, 'q:' || queue) FROM u`),

		// Deletes one leased request. Acks are batched as a pipeline of these:
		// the statement's plan is cached, where one over arrays of leases is
		// planned again on every call.
		ack: sub(`DELETE FROM {s}.requests WHERE seq = $1 AND attempt = $2`),

		nack: sub(`
WITH u AS (
	UPDATE {s}.requests SET not_before = now() + $3::bigint {us}, lease_until = NULL
	WHERE seq = $1 AND attempt = $2 RETURNING queue
)
SELECT pg_notify($4, 'q:' || queue) FROM u`),

		extend: sub(`
UPDATE {s}.requests SET not_before = now() + $3::bigint {us}, lease_until = now() + $3::bigint {us}
WHERE seq = $1 AND attempt = $2`),

		// Stores the first reply to each correlation id of a batch (they are
		// distinct) and returns the stored ones.
		putReplies: sub(`
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::bytea[], $9::timestamptz[]) WITH ORDINALITY
		AS r(correlation_id, inbox, status, error_code, error_message, content_type, headers, body, created_at, ord)
), stored AS (
	INSERT INTO {s}.replies ({reply})
	SELECT correlation_id, inbox, status, error_code, error_message, content_type, nullif(headers, '')::jsonb, body, created_at
	FROM input ORDER BY ord
	ON CONFLICT (correlation_id) DO NOTHING
	RETURNING correlation_id, inbox
)
SELECT correlation_id, inbox FROM stored`),

		// Sends notifications $2 on channel $1.
		notify: sub(`SELECT pg_notify($1, p) FROM unnest($2::text[]) p`),

		getReplies: sub(`SELECT {reply} FROM {s}.replies WHERE correlation_id = ANY($1::text[])`),

		// The replies stored since $1 to inboxes $2 or correlation ids $3.
		repliesSince: sub(`
SELECT {reply} FROM {s}.replies
WHERE stored_at >= $1 AND (inbox = ANY($2::text[]) OR correlation_id = ANY($3::text[]))`),

		// Stores a dead letter unless one for the same id and attempt ($1)
		// was stored within the dedupe window.
		deadLetter: sub(`
WITH fresh AS (
	INSERT INTO {s}.dedupe AS d (kind, key) VALUES ('d', $1)
	ON CONFLICT (kind, key) DO UPDATE SET at = now() WHERE d.at < now() - $2::bigint {us}
	RETURNING key
)
INSERT INTO {s}.dead_letters ({msg}, reason, last_error, at)
SELECT $3, $4, $5, $6, $7, $8, nullif($9::text, '')::jsonb, $10, $11, $12, $13, $14, $15, $16, $17, $18 FROM fresh`),

		// Appends are serialized by this lock, held to the end of their
		// transaction, so that events become visible in seq order.
		lockEvents: sub(`SELECT pg_advisory_xact_lock($1)`),

		// Appends a batch of events, less those whose dedupe keys (distinct
		// within the batch) were seen within the window ($7).
		appendEvents: sub(`
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bytea[], $6::text[]) WITH ORDINALITY
		AS e(correlation_id, channel, type, at, data, dedupe_key, ord)
), fresh AS (
	INSERT INTO {s}.dedupe AS d (kind, key) SELECT 'e', dedupe_key FROM input WHERE dedupe_key <> ''
	ON CONFLICT (kind, key) DO UPDATE SET at = now() WHERE d.at < now() - $7::bigint {us}
	RETURNING key
), stored AS (
	INSERT INTO {s}.events (correlation_id, channel, type, at, data, dedupe_key)
	SELECT correlation_id, channel, type, at, data, dedupe_key FROM input
	WHERE dedupe_key = '' OR dedupe_key IN (SELECT key FROM fresh) ORDER BY ord
	RETURNING seq, dedupe_key
)
SELECT seq, dedupe_key FROM stored ORDER BY seq`),

		eventsByID:      sub(`SELECT {event} FROM {s}.events WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`),
		eventsByChannel: sub(`SELECT {event} FROM {s}.events WHERE channel = $1 AND seq > $2 ORDER BY seq LIMIT $3`),
		eventsBySeq:     sub(`SELECT {event} FROM {s}.events WHERE seq = ANY($1::bigint[]) ORDER BY seq`),
		eventsSince:     sub(`SELECT {event} FROM {s}.events WHERE stored_at >= $1 ORDER BY seq LIMIT $2`),

		// Records that the consumers with queues $1 and ids $2 (distinct)
		// are open now, unless one was closed meanwhile.
		heartbeat: sub(`
INSERT INTO {s}.consumers AS c (queue, id, open, seen_at)
SELECT queue, id, true, now() FROM unnest($1::text[], $2::text[]) AS u(queue, id)
ON CONFLICT (queue, id) DO UPDATE SET seen_at = excluded.seen_at WHERE c.open`),

		// Records that consumer $2 of queue $1 closed now.
		consumerGone: sub(`
INSERT INTO {s}.consumers AS c (queue, id, open, seen_at) VALUES ($1, $2, false, now())
ON CONFLICT (queue, id) DO UPDATE SET open = false, seen_at = excluded.seen_at`),

		// Whether queue $1 has an open consumer seen within $2, and when one
		// was last seen (NULL: never, or forgotten).
		lastActive: sub(`
SELECT coalesce(bool_or(open AND seen_at > now() - $2::bigint {us}), false), max(seen_at)
FROM {s}.consumers WHERE queue = $1`),

		// Deletes up to $4 expired rows of each table; returns the largest
		// number deleted from one, so that a full batch is followed by another.
		// Consumer rows not seen within $5 (closed, or of a crashed process)
		// are folded into their queue's summary row (id ''), which goes after
		// $1 unless it was just updated.
		cleanup: sub(`
WITH r AS (
	DELETE FROM {s}.replies WHERE correlation_id IN (
		SELECT correlation_id FROM {s}.replies WHERE stored_at < now() - $1::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
	RETURNING 1
), e AS (
	DELETE FROM {s}.events WHERE seq IN (
		SELECT seq FROM {s}.events WHERE stored_at < now() - $1::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
	RETURNING 1
), d AS (
	DELETE FROM {s}.dead_letters WHERE seq IN (
		SELECT seq FROM {s}.dead_letters WHERE stored_at < now() - $2::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
	RETURNING 1
), k AS (
	DELETE FROM {s}.dedupe WHERE (kind, key) IN (
		SELECT kind, key FROM {s}.dedupe WHERE at < now() - $3::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
	RETURNING 1
), a AS (
	DELETE FROM {s}.consumers WHERE (queue, id) IN (
		SELECT queue, id FROM {s}.consumers WHERE id <> '' AND seen_at < now() - $5::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
	RETURNING queue, seen_at
), f AS (
	INSERT INTO {s}.consumers AS c (queue, id, open, seen_at)
	SELECT queue, '', false, max(seen_at) FROM a GROUP BY queue
	ON CONFLICT (queue, id) DO UPDATE SET seen_at = greatest(c.seen_at, excluded.seen_at)
	RETURNING 1
), g AS (
	DELETE FROM {s}.consumers WHERE (queue, id) IN (
		SELECT queue, id FROM {s}.consumers WHERE id = '' AND seen_at < now() - $1::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
		AND queue NOT IN (SELECT queue FROM a)
	RETURNING 1
)
SELECT greatest((SELECT count(*) FROM r), (SELECT count(*) FROM e), (SELECT count(*) FROM d), (SELECT count(*) FROM k),
	(SELECT count(*) FROM a), (SELECT count(*) FROM g))`),
	}
}

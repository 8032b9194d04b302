package rsvppg

import (
	"strings"
)

// queries are the statements of one schema. Every table name is qualified
// with the schema, so that the statements also run in a caller's
// transaction (EnqueueTx) whatever its search_path. Durations are passed in
// microseconds.
type queries struct {
	enqueue, enqueueSession, lockSessions        string
	claim, nextDue, unclaim                      string
	ack, ackSession, existing, settled           string
	nack, extend                                 string
	putReplies, getReplies, notify, repliesSince string
	deadLetter                                   string
	lockEvents, appendEvents                     string
	eventsByID, eventsByChannel, eventsBySeq     string
	eventsSince                                  string
	heartbeat, consumerGone, lastActive          string
	countOut, cleanup                            string
}

// msgCols are the columns of a stored message, in the order scanMessage
// reads them.
const msgCols = "queue, id, correlation_id, reply_to, type, content_type, headers, body, created_at, deadline, track, channel, " +
	"session_key, reply_session, attempt"

// replyCols are the columns of a stored reply, in the order scanReply reads
// them.
const replyCols = "correlation_id, inbox, status, error_code, error_message, content_type, headers, body, created_at"

const eventCols = "seq, correlation_id, channel, type, at, data"

// headOfSession holds for a request row r that the claim may take as far as
// sessions go: one without a session, or the first stored of its session
// (no row of its queue and session key with a lower seq). A session's later
// requests wait, whether the first is due, leased or waiting after a Nack,
// until it is deleted (Ack, also after a dead letter). Rows without a
// session do not run the subquery: OR stops at the first true.
//
// Cost: the claim (and nextDue) probes requests_session once for each
// session row it passes over in (not_before, seq) order, including the
// later rows of sessions whose first is leased or waiting for a retry.
// Those keep the not_before of their enqueue, so with a backlog in such
// sessions that was enqueued before the rows the claim takes, every claim
// scans the backlog: about 5 µs a row (10,000 rows: 50-80 ms a claim).
//
// Why two rows of one session are never leased at once, under READ
// COMMITTED and with SKIP LOCKED:
//
//   - Enqueues of a session request take an advisory lock on its queue and
//     session key (sessionLockKey; lockSessions, or enqueueSession when it
//     can take it at once) before the insert gives it its seq, and hold it
//     to their commit, which makes the row visible before the lock is
//     released. So a session's rows become visible in
//     seq order: a snapshot that has a row of the session also has every
//     row of the session with a lower seq, unless that row was deleted
//     before it. (The identity sequence must not be cached per connection,
//     as it is not by default.)
//   - So in any one snapshot at most one row of a session is its head:
//     the one with the lowest seq there. One claim (even with LIMIT $2 > 1)
//     sees one snapshot, so it takes at most one row of a session.
//   - Two claims with different snapshots may take different rows a < b of
//     one session only if b's claim did not see a: then a was deleted
//     before, and a row is deleted only by the Ack of its current lease
//     (ack matches seq and attempt; a claim that takes a row first makes an
//     older lease's Ack match nothing, and a claim that finds the row
//     deleted skips it). So b is leased only after a's delivery was
//     settled, not beside it. A row locked by a claim still in progress is
//     skipped, and its session's later rows stay behind it, as it exists.
//   - A re-check of a row updated by a concurrent claim (READ COMMITTED
//     reads its new version) sees the same session_key and seq, which never
//     change, so the head rule gives the same answer.
const headOfSession = `(r.session_key IS NULL OR NOT EXISTS (
	SELECT FROM {s}.requests o WHERE o.queue = r.queue AND o.session_key = r.session_key AND o.seq < r.seq))`

// enqueueStatement is the enqueue statement: a CTE may come before input
// (gate), input's rows may be filtered (gated), and result is the final
// SELECT.
func enqueueStatement(gate, gated, result string) string {
	return strings.NewReplacer("{gate}", gate, "{gated}", gated, "{result}", result).Replace(enqueueTemplate)
}

const enqueueTemplate = `
WITH {gate}input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::bytea[], $9::timestamptz[], $10::timestamptz[], $11::boolean[], $12::text[], $13::text[], $14::text[],
		$15::timestamptz[]) WITH ORDINALITY
		AS m(queue, id, correlation_id, reply_to, type, content_type, headers, body, created_at, deadline, track, channel,
			session_key, reply_session, not_before, ord){gated}
), fresh AS (
	INSERT INTO {s}.dedupe AS d (kind, key, at) SELECT 'r', id, clock_timestamp() FROM input
	ON CONFLICT (kind, key) DO UPDATE SET at = clock_timestamp() WHERE d.at < clock_timestamp() - $16::bigint {us}
	RETURNING key
), stored AS (
	INSERT INTO {s}.requests (queue, id, correlation_id, reply_to, type, content_type, headers, body, created_at, deadline, track, channel,
		session_key, reply_session, not_before, enqueued_at)
	SELECT queue, id, correlation_id, reply_to, type, content_type, nullif(headers, '')::jsonb, body, created_at, deadline, track, channel,
		nullif(session_key, ''), reply_session, greatest(coalesce(not_before, now()), now()), greatest(coalesce(not_before, now()), now())
	FROM input WHERE id IN (SELECT key FROM fresh) ORDER BY ord
	RETURNING queue
), counted AS (
	INSERT INTO {s}.queue_counts (queue, n_in) SELECT queue, count(*) FROM stored GROUP BY queue
)
{result}`

func newQueries(schema string) queries {
	r := strings.NewReplacer("{s}", ident(schema), "{msg}", msgCols, "{reply}", replyCols, "{event}", eventCols,
		"{us}", "* interval '1 microsecond'", "{head}", strings.ReplaceAll(headOfSession, "{s}", ident(schema)))
	sub := func(sql string) string { return strings.TrimSpace(r.Replace(sql)) }
	return queries{
		// Stores a batch of requests whose ids were not seen within the dedupe
		// window ($16), and returns the queues stored on. The ids of one batch
		// are distinct. A request is due at its not_before ($15), or now, and
		// counts as stored in its queue from then (enqueued_at: the oldest
		// age and stored time of the operator's queries, as on NATS, where a
		// scheduled request is stored in its queue when due). The rows take
		// their seqs in the batch's order.
		enqueue: sub(enqueueStatement("", "", "SELECT DISTINCT queue FROM stored")),

		// enqueue for the requests of one session (or of several sharing the
		// enqueue lock $17, see sessionLockKey), if it can take that lock
		// without waiting: else it stores nothing. Returns whether it took the
		// lock (held to the end of the transaction) and the queues stored on.
		enqueueSession: sub(enqueueStatement("locked AS (SELECT pg_try_advisory_xact_lock($17) AS ok), ",
			" WHERE (SELECT ok FROM locked)", "SELECT ok, ARRAY(SELECT DISTINCT queue FROM stored) FROM locked")),

		// Takes the enqueue locks $1 (sessionLockKey, sorted and distinct, so
		// that two callers taking the same ones cannot deadlock), waiting for
		// those that are busy, held to the end of the transaction. Run before
		// the enqueue statement of session requests (EnqueueTx, and Enqueue
		// after enqueueSession found the lock busy): see headOfSession.
		lockSessions: sub(`SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k`),

		// Leases up to $2 due requests of queue $1 for $3: of a session, only
		// its first (see headOfSession).
		claim: sub(`
WITH due AS (
	SELECT seq FROM {s}.requests r WHERE queue = $1 AND not_before <= now() AND {head}
	ORDER BY not_before, seq LIMIT $2 FOR UPDATE SKIP LOCKED
)
UPDATE {s}.requests r SET attempt = r.attempt + 1, not_before = now() + $3::bigint {us}, lease_until = now() + $3::bigint {us}
FROM due WHERE r.seq = due.seq
RETURNING r.seq, {msg}`),

		// When the next request of queue $1 that the claim may take comes due
		// (in the past for one due now but locked by another transaction). A
		// session request behind another of its session is left out: it is
		// not taken when due, but after the one before it is deleted, whose
		// Ack notifies (ackSession).
		nextDue: sub(`SELECT min(not_before) FROM {s}.requests r WHERE queue = $1 AND {head}`),

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
		// planned again on every call. Like ackSession, nack and extend, it
		// matches the lease ($1, $2) only while it is not settled: a Nack
		// clears lease_until, and a later claim makes another attempt.
		ack: sub(`DELETE FROM {s}.requests WHERE seq = $1 AND attempt = $2 AND lease_until IS NOT NULL`),

		// ack for a request of a session: the session's next request is due
		// now, so the queue's consumers are told ($3 the channel).
		ackSession: sub(`
WITH d AS (DELETE FROM {s}.requests WHERE seq = $1 AND attempt = $2 AND lease_until IS NOT NULL RETURNING queue)
SELECT pg_notify($3, 'q:' || queue) FROM d`),

		// Whether the row of lease ($1, $2) is there, unleased: settled by
		// a Nack of that lease.
		settled: sub(`SELECT EXISTS (SELECT 1 FROM {s}.requests WHERE seq = $1 AND attempt = $2 AND lease_until IS NULL)`),

		// The seqs of $1 whose request rows exist.
		existing: sub(`SELECT seq FROM {s}.requests WHERE seq = ANY($1::bigint[])`),

		nack: sub(`
WITH u AS (
	UPDATE {s}.requests SET not_before = now() + $3::bigint {us}, lease_until = NULL
	WHERE seq = $1 AND attempt = $2 AND lease_until IS NOT NULL RETURNING queue
)
SELECT pg_notify($4, 'q:' || queue) FROM u`),

		extend: sub(`
UPDATE {s}.requests SET not_before = now() + $3::bigint {us}, lease_until = now() + $3::bigint {us}
WHERE seq = $1 AND attempt = $2 AND lease_until IS NOT NULL`),

		// Stores the first reply to each correlation id of a batch (they are
		// distinct) and returns the stored ones. stored_at is the time of the
		// write, not of the transaction's start: CommitWith writes at the end
		// of a handler's transaction.
		putReplies: sub(`
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
		$8::bytea[], $9::timestamptz[]) WITH ORDINALITY
		AS r(correlation_id, inbox, status, error_code, error_message, content_type, headers, body, created_at, ord)
), stored AS (
	INSERT INTO {s}.replies ({reply}, stored_at)
	SELECT correlation_id, inbox, status, error_code, error_message, content_type, nullif(headers, '')::jsonb, body, created_at,
		clock_timestamp()
	FROM input ORDER BY ord
	ON CONFLICT (correlation_id) DO NOTHING
	RETURNING correlation_id, inbox
)
SELECT correlation_id, inbox FROM stored`),

		// Adds counts $2 of requests acknowledged on queues $1.
		countOut: sub(`INSERT INTO {s}.queue_counts (queue, n_out) SELECT * FROM unnest($1::text[], $2::bigint[])`),

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
	INSERT INTO {s}.dedupe AS d (kind, key, at) VALUES ('d', $1, clock_timestamp())
	ON CONFLICT (kind, key) DO UPDATE SET at = clock_timestamp() WHERE d.at < clock_timestamp() - $2::bigint {us}
	RETURNING key
)
INSERT INTO {s}.dead_letters ({msg}, reason, last_error, at)
SELECT $3, $4, $5, $6, $7, $8, nullif($9::text, '')::jsonb, $10, $11, $12, $13, $14, nullif($15::text, ''), $16, $17, $18, $19, $20
FROM fresh`),

		// Appends are serialized by this lock, held to the end of their
		// transaction, so that events become visible in seq order.
		lockEvents: sub(`SELECT pg_advisory_xact_lock($1)`),

		// Appends a batch of events, less those whose dedupe keys (distinct
		// within the batch) were seen within the window ($7). stored_at is
		// the time of the write, after the wait for the events lock, not of
		// the transaction's start.
		appendEvents: sub(`
WITH input AS (
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bytea[], $6::text[]) WITH ORDINALITY
		AS e(correlation_id, channel, type, at, data, dedupe_key, ord)
), fresh AS (
	INSERT INTO {s}.dedupe AS d (kind, key, at) SELECT 'e', dedupe_key, clock_timestamp() FROM input WHERE dedupe_key <> ''
	ON CONFLICT (kind, key) DO UPDATE SET at = clock_timestamp() WHERE d.at < clock_timestamp() - $7::bigint {us}
	RETURNING key
), stored AS (
	INSERT INTO {s}.events (correlation_id, channel, type, at, data, dedupe_key, stored_at)
	SELECT correlation_id, channel, type, at, data, dedupe_key, clock_timestamp() FROM input
	WHERE dedupe_key = '' OR dedupe_key IN (SELECT key FROM fresh) ORDER BY ord
	RETURNING seq, dedupe_key
)
SELECT seq, dedupe_key FROM stored ORDER BY seq`),

		eventsByID:      sub(`SELECT {event} FROM {s}.events WHERE correlation_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`),
		eventsByChannel: sub(`SELECT {event} FROM {s}.events WHERE channel = $1 AND seq > $2 ORDER BY seq LIMIT $3`),
		eventsBySeq:     sub(`SELECT {event} FROM {s}.events WHERE seq = ANY($1::bigint[]) ORDER BY seq`),
		// The events stored since $1 after seq $3, a page of $2.
		eventsSince: sub(`SELECT {event} FROM {s}.events WHERE stored_at >= $1 AND seq > $3 ORDER BY seq LIMIT $2`),

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
), q AS (
	DELETE FROM {s}.queue_counts WHERE seq IN (
		SELECT seq FROM {s}.queue_counts WHERE at < now() - $6::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
	RETURNING 1
), g AS (
	DELETE FROM {s}.consumers WHERE (queue, id) IN (
		SELECT queue, id FROM {s}.consumers WHERE id = '' AND seen_at < now() - $1::bigint {us} LIMIT $4 FOR UPDATE SKIP LOCKED)
		AND queue NOT IN (SELECT queue FROM a)
	RETURNING 1
)
SELECT greatest((SELECT count(*) FROM r), (SELECT count(*) FROM e), (SELECT count(*) FROM d), (SELECT count(*) FROM k),
	(SELECT count(*) FROM a), (SELECT count(*) FROM g), (SELECT count(*) FROM q))`),
	}
}

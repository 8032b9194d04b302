// Package rsvppg is the PostgreSQL backend of rsvp, on pgx v5: requests,
// replies, dead letters and the event log live in tables of one schema, so
// that teams that run PostgreSQL need no broker, and a request can be
// enqueued in the same transaction as the business write that calls for it
// (EnqueueTx).
//
// # Opening
//
// Open connects, creates or upgrades the schema (Options.Schema, default
// "rsvp"; several applications can share a database with one schema each)
// and starts listening for notifications:
//
//	be, err := rsvppg.Open(ctx, "postgres://app@db:5432/app", rsvppg.Options{})
//	if err != nil { ... }
//	defer be.Close()
//	c, err := rsvp.New(ctx, be, rsvp.Config{})
//
// The zero Options work; each field documents its default. Open fails
// within Options.Timeout, with an error naming the server (password
// hidden, see Redact), when the server is down, silent, or refuses the
// credentials or database.
//
// # Schema and migrations
//
// The schema is made by numbered SQL files embedded in the package
// (migrations/NNNN_name.sql), applied in one transaction under an advisory
// lock, so concurrent migrators in any number of processes are safe.
// schema_version records what was applied. A schema migrated by a newer
// rsvp than this one (a version above SchemaVersion) is refused with
// ErrSchemaTooNew rather than misread. Migrate does the same as Open without
// staying connected, for deployments that migrate with a privileged user
// before the applications start; Options.SkipMigrate makes Open refuse a
// schema that is missing or older (ErrSchemaNotReady) instead of changing
// it.
//
// In a rolling upgrade, processes that opened the schema before it was
// migrated keep running their own statements. Those of an rsvp that knows
// schema version 2 at most (before sessions) claim session rows without
// the rule below that a session's first row goes first, and read them as
// requests without a session: a session's requests would run side by
// side, out of order. So send no request with a session key until every
// process that uses the schema runs an rsvp that knows schema version 3.
// Processes of an rsvp that knows version 3 at most do not count their
// traffic in queue_counts (version 4): until they are upgraded, the rates
// of rsvp queues leave it out.
//
// The tables, for programs in other languages:
//
//   - requests: the queues. A consumer leases due rows (not_before <= now())
//     of its queue with FOR UPDATE SKIP LOCKED, ordered by (not_before, seq),
//     setting attempt = attempt + 1 and not_before = lease_until = now() +
//     lease; so a lease that runs out makes the row due again by itself.
//     Ack deletes the row, Nack sets not_before = now() + delay and clears
//     lease_until, Extend pushes both. attempt is the delivery count; a
//     settlement names its lease by (seq, attempt), with lease_until set,
//     and does nothing (the Delivery returns ErrLeaseLost) once the row was
//     nacked or delivered again.
//     session_key (NULL: none) puts a row in a session of its queue: such a
//     row is leased only while no row of the same queue and session_key
//     with a lower seq exists, so a session's requests go one at a time, in
//     seq order, each waiting for the one before to be deleted (acknowledged,
//     or dead-lettered and then acknowledged). Its not_before is never in
//     the future at insert (a session request cannot be scheduled). The
//     transaction that inserts session rows first takes, for each queue and
//     session key, the advisory lock pg_advisory_xact_lock(k) with k the
//     FNV-1a 64 hash, as a signed integer, of
//     "rsvp:session:<schema>:<queue> <session_key>" (when it takes several
//     at once, in ascending order of k): a session's rows then become
//     visible in seq order, which the rule above needs. A program that
//     enqueues session requests must do the same. The Ack of a session row
//     notifies (below), as the session's next row is then due.
//     reply_session (empty for none) is carried for the responder.
//   - dedupe: request ids ('r'), event dedupe keys ('e'; one longer than
//     2000 bytes as "sha256:" and its hex SHA-256) and dead letters ('d',
//     id:attempt, or for an id longer than 128 bytes "sha256:" and the hex
//     SHA-256 of that) seen within the dedupe window. A request whose id is
//     there and younger than the window is not stored again; acknowledging
//     a request leaves its marker. A marker's at is clock_timestamp() when
//     it is written, not now(), so that a long transaction does not start
//     the window early.
//   - replies: one row per correlation id (the primary key), inserted with ON
//     CONFLICT DO NOTHING: the first reply wins, whatever inbox it is
//     addressed to. Reply addresses read rsvp.reply.<correlation id>.<inbox>,
//     as on NATS. stored_at is clock_timestamp() when the row is written, so
//     that a reply written at the end of a long transaction (CommitWith)
//     does not look older than it is to the clean-up and to the catch-up
//     after the listening connection was down.
//   - dead_letters, by queue in seq order, with the request's columns
//     (session_key and reply_session too) and why it was dead-lettered.
//   - events: the event log, seq from an identity column. Appends take a
//     transaction-scoped advisory lock first, so events become visible in
//     seq order and a reader resuming after a seq misses none. stored_at
//     is clock_timestamp() when the row is written, after that lock.
//   - consumers: one row per consumer, by (queue, id), with open and
//     seen_at. A consumer inserts its row when it starts, sets seen_at =
//     now() every 15 seconds while open (one statement per backend), and
//     sets open = false, seen_at = now() when it closes. A queue has a live
//     responder while one of its rows is open and seen within 30 seconds
//     (LastActive, rsvp's Config.RequireResponder); a program in another
//     language that consumes a queue may keep a row the same way. The row
//     with the empty id holds when the queue's consumers gone were last
//     seen.
//   - queue_counts: requests in (n_in) and out (n_out) of each queue, for
//     the rates of rsvp queues (QueueStats.In and Out), append only. The
//     enqueue statement inserts a row per queue it stored on; each backend
//     inserts its count of acknowledged requests per queue every 5 seconds
//     and when it closes. The rates sum the rows of the last minute.
//
// A background goroutine deletes replies and events older than
// ReplyRetention, dead letters older than DeadLetterRetention, dedupe
// markers older than DedupeWindow and queue counts older than 10 minutes,
// every CleanupInterval, at most 1000 rows of each table per statement. It also folds consumer rows not seen for 30
// seconds (closed, or left by a crashed process) into their queue's row
// with the empty id, and deletes those after ReplyRetention.
//
// # Notifications and idling
//
// Writes that someone may wait for notify the channel "rsvp:<schema>" with
// the payload "q:<queue>" (a request is due: enqueued, nacked, given back,
// or next in its session after an Ack),
// "r:<correlation id>.<inbox>" (a reply was stored) or "e:<seq>" (an event
// was appended). Each Backend listens on one connection of its own: a
// waiting consumer leases at once, and SubscribeReplies, WatchReply and
// SubscribeEvents deliver within milliseconds, all without polling. Apart
// from that connection, an idle backend issues one query per consumer a
// minute (in case a notification went astray), one clean-up statement a
// minute, a ping of the listening connection every 15 seconds and, while it has consumers, one heartbeat statement every 15
// seconds for all of them; a consumer also looks when the next delayed or
// leased request of its queue comes due. The listening connection is
// pinged every 15 seconds, so that one that died without a word (a NAT or
// a firewall forgot it) is found out too. When it breaks, or does not
// answer within Timeout, consumers poll every PollInterval until it is
// back (it reconnects with backoff); then the replies and events stored
// since it was last known to work are handed to the subscriptions.
//
// Enqueue, PutReply and AppendEvent notify just after their commit, not in
// their transaction: PostgreSQL holds a database-wide lock from the commit
// of a notifying transaction to its end, which would make those commits
// wait for each other's disk flushes. EnqueueTx, which commits with the
// caller, and settlements notify in their transaction.
//
// # Durability and group commit
//
// Enqueue, PutReply, DeadLetter and AppendEvent return after their commit
// reached the disk (synchronous_commit on, unless the server says
// otherwise). Concurrent calls of one kind share one statement, one commit
// and so one disk flush: each kind has a few workers, each of which takes
// whatever calls are waiting, up to 256. Leasing, Ack, Nack and Extend
// commit without waiting for the disk unless Options.DurableSettle is set:
// losing one to a server crash only delivers a request again, whose
// stored reply the responder then finds (rsvp's responder checks for one on
// every redelivery). Broken connections (a server restart) are replaced,
// and a call that broke with its connection is run once more where running
// it twice does no harm.
//
// Enqueue calls of session requests are grouped by session instead (by
// lock key, to be exact), as each waits for its session's lock, which a
// transaction with an EnqueueTx into the session holds until it ends: the
// calls of one session share one statement and commit, stored in the order
// they came, one batch after the other. A batch first tries the lock
// without waiting, on the pool the other writes use; only if the lock is
// busy does it wait, on a connection of a pool of its own (MaxConns
// connections). So a session blocked by an open transaction holds up its
// own enqueues only (until the transaction ends, or they fail after
// Options.Timeout), never enqueues without a session or of other sessions
// (unless more than MaxConns sessions are blocked at once, when those
// beyond wait for a connection as well as for their lock).
//
// # Transactions
//
// SendTx (or the lower EnqueueTx) stores a request in the caller's pgx.Tx:
// the request exists if and only if the transaction commits, and consumers
// are woken when it does.
//
// A request with a session key takes its session's enqueue lock (see the
// requests table) in the transaction, until it ends, and the other
// enqueues of the session wait for it. A transaction that enqueues into
// several sessions takes their locks in the order it enqueues them, so two
// transactions that enqueue into the same sessions in opposite orders can
// deadlock: PostgreSQL then aborts one of them (SQLSTATE 40P01, after
// deadlock_timeout, 1s by default), which the caller may retry. Enqueueing
// the sessions of a transaction in one order everywhere (say, sorted by
// queue and session key) avoids it. Keep such transactions short: a
// session's Enqueue calls fail after Options.Timeout while one is open.
//
// HandleTx runs a handler inside a transaction in which its business
// writes, its reply and the acknowledgement of its request commit together:
// a handler that fails, panics or is killed before the commit leaves no
// effect, and the request is handled again. Underneath, a Delivery's Begin
// (or Lock in a transaction of the caller's) locks the request row FOR KEY
// SHARE, so no other worker takes it while the transaction is open, and
// CommitWith stores the reply (first reply wins), deletes the request and
// notifies in the transaction, then commits. Those transactions, like the
// application's own on Pool, take their connections from a pool of their
// own (MaxConns connections), not from the one of the backend's writes:
// handlers that hold every connection of theirs do not hold up a Send or
// an rsvp.Progress, in the handlers or elsewhere.
//
// # Tests
//
// The tests need a server: set RSVP_TEST_POSTGRES_URL, for example
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable. Each test uses a
// schema of its own, dropped at the end. Without the variable the tests are
// skipped; with it, a server that cannot be reached fails them.
package rsvppg

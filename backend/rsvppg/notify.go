package rsvppg

import "strconv"

// Notifications. Every write that someone may wait for is followed by a
// notification on the schema's channel ("rsvp:" + schema). Payloads:
//
//	q:<queue>                  the queue has a request due (enqueued, nacked, given back,
//	                           or next in its session after an Ack)
//	r:<correlation id>.<inbox> a reply was stored
//	e:<seq>                    an event was appended
//
// The durable writes (Enqueue, PutReply, AppendEvent) notify after their
// commit, from the notifier, rather than in their transaction: PostgreSQL
// holds a database-wide lock from the commit of a notifying transaction to
// its end, so that notifying transactions wait for each other's disk
// flushes, one after the other, instead of sharing them. The notifier sends
// the notifications of all writes that committed meanwhile in one
// statement, on the pool whose commits do not wait for the disk (a
// transaction that only notifies writes nothing to it anyway). A process
// that dies between a commit and its notification leaves the consumers to
// find the request when they next look (see Options.PollInterval).
// Writes in the caller's transaction (EnqueueTx) and settlements notify in
// their own transaction.

func queueNote(queue string) string       { return "q:" + queue }
func replyNote(corr, inbox string) string { return "r:" + corr + "." + inbox }
func eventNote(seq uint64) string         { return "e:" + strconv.FormatUint(seq, 10) }

// notifyLater queues notifications for the notifier.
func (b *Backend) notifyLater(payloads ...string) {
	for _, p := range payloads {
		select {
		case b.outbox <- p:
		case <-b.life.Done():
			return
		}
	}
}

// notifier sends queued notifications, many in one statement, until the
// backend closes; then it sends those still queued.
func (b *Backend) notifier() {
	for {
		select {
		case p := <-b.outbox:
			b.sendNotes(p)
		case <-b.life.Done():
			for {
				select {
				case p := <-b.outbox:
					b.sendNotes(p)
				default:
					return
				}
			}
		}
	}
}

// sendNotes sends first and whatever else is queued, each payload once.
func (b *Backend) sendNotes(first string) {
	seen := map[string]bool{first: true}
	payloads := []string{first}
fill:
	for len(payloads) < 1024 {
		select {
		case p := <-b.outbox:
			if !seen[p] {
				seen[p] = true
				payloads = append(payloads, p)
			}
		default:
			break fill
		}
	}
	ctx, cancel := b.opCtx()
	defer cancel()
	err := b.retryOnce(ctx, b.fast, func() error {
		_, err := b.fast.Exec(ctx, b.sql.notify, b.channel, payloads)
		return err
	})
	if err != nil {
		b.opts.Logger.Warn("rsvppg: sending notifications failed; waiters find the writes when they next look",
			"err", err, "notifications", len(payloads))
	}
}

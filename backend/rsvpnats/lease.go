package rsvpnats

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// leaseBucket is the key-value bucket in which the consumers of a queue
// register the leases they ask for (docs/wire.md, section 7).
const leaseBucket = "RSVP_LEASES"

// leaseEntry is the value of a queue's key in leaseBucket: the longest
// lease asked for on the JetStream consumer made at Created.
type leaseEntry struct {
	Created time.Time     `json:"consumer_created"`
	AckWait time.Duration `json:"ack_wait"`
}

// leaseKey is queue's key in leaseBucket: ':' is not allowed in keys, '='
// is not in queue names.
func leaseKey(queue string) string { return strings.ReplaceAll(queue, ":", "=") }

// leaseRegistry returns leaseBucket, made on first use.
func (b *Backend) leaseRegistry(ctx context.Context) (jetstream.KeyValue, error) {
	b.leasesMu.Lock()
	defer b.leasesMu.Unlock()
	if b.leases == nil {
		kv, err := b.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      leaseBucket,
			Description: "rsvp: the longest lease asked for on each queue's consumer",
			Storage:     b.storage,
		})
		if err != nil {
			return nil, err
		}
		b.leases = kv
	}
	return b.leases, nil
}

// shareLease makes the JetStream consumer cfg.Durable of queue (or
// updates it) so that its AckWait ends as the longest lease that any
// consumer of it asked for (cfg.AckWait is ours), and returns that AckWait.
//
// The consumer's config cannot be written conditionally, so a consumer
// that read it and then writes it may lower what another wrote meanwhile.
// A registry that only grows decides instead: the queue's entry in
// leaseBucket, changed only by compare-and-set, holds the longest lease
// asked for on the JetStream consumer made at a given time (one made anew
// starts from nothing). Each consumer loops: read the JetStream consumer;
// add our lease to the registry and read its longest (raiseLease); stop if
// the consumer read has at least that AckWait and our lease was registered
// before that read (in an earlier pass); otherwise write the longer of the
// two, and loop.
//
// Why it ends with the longest lease, M, asked by consumer X: let W be the
// last write of the consumer, by Y, leaving v. Y loops after W, and could
// stop only on a registry read after W, with v at least what it read. X
// stopped on a consumer read after it registered, that had at least M. If
// that read came after W it saw v, so v >= M; if before, X registered
// before W, Y's registry read saw M, and again v >= M. No write is longer
// than M or the AckWait the consumer had, so v is the longer of the two.
// It ends: once the registry holds M, every write decided after that is
// of M, and each consumer has at most one write decided before it; after
// those, each consumer stops at its next check. (ctx bounds it anyway,
// against a foreign program writing the consumer otherwise.)
func (b *Backend) shareLease(ctx context.Context, queue string, cfg jetstream.ConsumerConfig) (time.Duration, error) {
	kv, err := b.leaseRegistry(ctx)
	if err != nil {
		return 0, err
	}
	var registered time.Time // our lease is registered for the consumer made then
	for {
		cons, err := b.js.Consumer(ctx, streamRequests, cfg.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			if _, err := b.js.CreateOrUpdateConsumer(ctx, streamRequests, cfg); err != nil {
				return 0, err
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		info := cons.CachedInfo()
		checked := registered.Equal(info.Created)
		longest, err := raiseLease(ctx, kv, leaseKey(queue), info.Created, cfg.AckWait)
		if err != nil {
			return 0, err
		}
		registered = info.Created // (if the entry was of a newer consumer, the next read is of that one)
		if checked && info.Config.AckWait >= longest {
			return info.Config.AckWait, nil
		}
		// Written at least once, also to bring the other fields up to date.
		up := cfg
		up.AckWait = max(info.Config.AckWait, longest)
		if _, err := b.js.CreateOrUpdateConsumer(ctx, streamRequests, up); err != nil {
			return 0, err
		}
	}
}

// raiseLease raises the entry key of kv to at least lease, for the
// consumer made at created, and returns the entry's lease. An entry of an
// older consumer is replaced; for a newer one (the consumer was made anew
// since it was read), lease is returned and nothing is registered.
func raiseLease(ctx context.Context, kv jetstream.KeyValue, key string, created time.Time, lease time.Duration) (time.Duration, error) {
	for {
		var cur leaseEntry
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			e = nil
		case err != nil:
			return 0, err
		default:
			_ = json.Unmarshal(e.Value(), &cur) // unreadable: replaced
		}
		switch {
		case cur.Created.After(created):
			return lease, nil
		case cur.Created.Equal(created) && cur.AckWait >= lease:
			return cur.AckWait, nil
		}
		data, _ := json.Marshal(leaseEntry{Created: created, AckWait: lease}) // plain values always encode
		if e == nil {
			_, err = kv.Create(ctx, key, data)
		} else {
			_, err = kv.Update(ctx, key, data, e.Revision())
		}
		switch {
		case err == nil:
			return lease, nil
		case !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch):
			return 0, err
		}
		// Another consumer wrote it first: read it again.
	}
}

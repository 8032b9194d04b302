package backendtest

import (
	"errors"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

// dlqCases cover the dead-letter operations: filters, cursor paging and
// deletion.
var dlqCases = []testCase{
	{name: "DeadLetterFilters", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		t0 := time.Now().UTC().Truncate(time.Second).Add(-24 * time.Hour)
		reasons := []string{"failed", "expired", "failed", "failed"}
		var ids []string
		for i, reason := range reasons {
			m := newMsg(b, q)
			m.Attempt = 1
			ids = append(ids, m.ID)
			dl := &backend.DeadLetter{Message: m, Reason: reason, At: t0.Add(time.Duration(i) * time.Hour)}
			if err := b.DeadLetter(ctx, dl); err != nil {
				t.Fatal(err)
			}
		}
		list := func(q backend.DeadLetterQuery) []string {
			t.Helper()
			dls, err := b.DeadLetters(ctx, q)
			if err != nil {
				t.Fatalf("%+v: %v", q, err)
			}
			var got []string
			for _, dl := range dls {
				if dl.Key == "" {
					t.Fatalf("%+v: dead letter %s without a key", q, dl.Message.ID)
				}
				got = append(got, dl.Message.ID)
			}
			return got
		}
		check := func(what string, got []string, want ...string) {
			t.Helper()
			if len(got) != len(want) {
				t.Fatalf("%s: %v, want %v", what, got, want)
			}
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("%s: %v, want %v", what, got, want)
				}
			}
		}
		check("all", list(backend.DeadLetterQuery{Queue: q}), ids...)
		check("reason failed", list(backend.DeadLetterQuery{Queue: q, Reason: "failed"}), ids[0], ids[2], ids[3])
		check("reason none", list(backend.DeadLetterQuery{Queue: q, Reason: "bad_payload"}))
		check("since", list(backend.DeadLetterQuery{Queue: q, Since: t0.Add(time.Hour)}), ids[1:]...)
		check("since until", list(backend.DeadLetterQuery{Queue: q, Since: t0.Add(time.Hour), Until: t0.Add(3 * time.Hour)}), ids[1], ids[2])
		check("reason and since", list(backend.DeadLetterQuery{Queue: q, Reason: "failed", Since: t0.Add(30 * time.Minute)}), ids[2], ids[3])
		check("other queue", list(backend.DeadLetterQuery{Queue: uniq("q")}))
	}},
	{name: "DeadLetterPaging", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q, other := uniq("q"), uniq("q")
		var ids []string
		for i := range 5 {
			for _, queue := range []string{q, other} { // interleaved with another queue's
				m := newMsg(b, queue)
				m.Attempt = 1
				reason := "failed"
				if i%2 == 1 {
					reason = "expired"
				}
				if queue == q {
					ids = append(ids, m.ID)
				}
				if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: reason, At: time.Now()}); err != nil {
					t.Fatal(err)
				}
			}
		}
		page := func(q backend.DeadLetterQuery) (got []string) {
			t.Helper()
			for range 10 {
				dls, err := b.DeadLetters(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if len(dls) > q.Limit {
					t.Fatalf("page of %d, limit %d", len(dls), q.Limit)
				}
				if len(dls) == 0 {
					return got
				}
				for _, dl := range dls {
					got = append(got, dl.Message.ID)
				}
				q.After = dls[len(dls)-1].Key
			}
			t.Fatal("paging does not end")
			return nil
		}
		if got := page(backend.DeadLetterQuery{Queue: q, Limit: 2}); len(got) != 5 || got[0] != ids[0] || got[4] != ids[4] {
			t.Fatalf("pages of 2: %v, want %v", got, ids)
		}
		if got := page(backend.DeadLetterQuery{Queue: q, Reason: "failed", Limit: 1}); len(got) != 3 || got[0] != ids[0] || got[1] != ids[2] || got[2] != ids[4] {
			t.Fatalf("failed, pages of 1: %v", got)
		}
	}},
	{name: "DeleteDeadLetter", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		ctx := ctxFor(t, 10*time.Second)
		q := uniq("q")
		for range 3 {
			m := newMsg(b, q)
			m.Attempt = 1
			if err := b.DeadLetter(ctx, &backend.DeadLetter{Message: m, Reason: "failed", At: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		dls, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil || len(dls) != 3 {
			t.Fatalf("%d dead letters, %v", len(dls), err)
		}
		if err := b.DeleteDeadLetter(ctx, uniq("q"), dls[1].Key); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("delete on another queue: %v, want ErrNotFound", err)
		}
		if err := b.DeleteDeadLetter(ctx, q, dls[1].Key); err != nil {
			t.Fatal(err)
		}
		if err := b.DeleteDeadLetter(ctx, q, dls[1].Key); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("delete again: %v, want ErrNotFound", err)
		}
		for _, key := range []string{"no-such-key", "999999999"} {
			if err := b.DeleteDeadLetter(ctx, q, key); !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("delete %q: %v, want ErrNotFound", key, err)
			}
		}
		left, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q})
		if err != nil || len(left) != 2 || left[0].Key != dls[0].Key || left[1].Key != dls[2].Key {
			t.Fatalf("after delete: %v, %v", left, err)
		}
		// Paging after a deleted key still works.
		if after, err := b.DeadLetters(ctx, backend.DeadLetterQuery{Queue: q, After: dls[1].Key}); err != nil || len(after) != 1 || after[0].Key != dls[2].Key {
			t.Fatalf("after the deleted key: %v, %v", after, err)
		}
	}},
}

// replayCases: taking a final reply back (backend.ReplyDeleter), for
// replays under the same correlation id.
var replayCases = []testCase{
	{name: "DeleteReply", run: func(t *testing.T, open Opener, f Features) {
		b := opened(t, open)
		rd, ok := b.(backend.ReplyDeleter)
		if !ok {
			t.Fatalf("%T does not implement backend.ReplyDeleter", b)
		}
		ctx := ctxFor(t, 10*time.Second)
		id := uniq("id-")
		if err := rd.DeleteReply(ctx, &backend.Reply{CorrelationID: id, Status: backend.StatusFailed}); err != nil {
			t.Fatalf("deleting a reply that is not stored: %v", err)
		}
		failed := &backend.Reply{CorrelationID: id, Status: backend.StatusFailed, ErrorCode: "failed", ErrorMessage: "boom",
			CreatedAt: time.Now()}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxA", id), failed); err != nil {
			t.Fatal(err)
		}
		other := &backend.Reply{CorrelationID: uniq("id-"), Status: backend.StatusSucceeded}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxA", other.CorrelationID), other); err != nil {
			t.Fatal(err)
		}
		read, err := b.GetReply(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := rd.DeleteReply(ctx, read); err != nil {
			t.Fatal(err)
		}
		if _, err := b.GetReply(ctx, id); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("GetReply after DeleteReply: %v, want ErrNotFound", err)
		}
		if _, err := b.GetReply(ctx, other.CorrelationID); err != nil {
			t.Fatalf("another correlation id's reply went too: %v", err)
		}
		// A new reply can be stored, at another inbox too, and is seen.
		seen := make(chan *backend.Reply, 1)
		sub, err := b.WatchReply(ctx, id, func(r *backend.Reply) { seen <- r })
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		ok2 := &backend.Reply{CorrelationID: id, Status: backend.StatusSucceeded, Body: []byte("second time"), CreatedAt: time.Now()}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxB", id), ok2); err != nil {
			t.Fatalf("PutReply after DeleteReply: %v", err)
		}
		if got, err := b.GetReply(ctx, id); err != nil || string(got.Body) != "second time" {
			t.Fatalf("GetReply: %+v, %v", got, err)
		}
		select {
		case r := <-seen:
			if string(r.Body) != "second time" {
				t.Fatalf("watched %+v", r)
			}
		case <-ctx.Done():
			t.Fatal("the new reply was not seen by WatchReply")
		}
		if err := b.PutReply(ctx, b.ReplyAddress("inboxA", id), failed); !errors.Is(err, backend.ErrReplyExists) {
			t.Fatalf("third reply: %v, want ErrReplyExists", err)
		}
		// Deleting the reply read before (a concurrent replay that read the
		// failure) leaves the one that took its place.
		if err := rd.DeleteReply(ctx, read); !errors.Is(err, backend.ErrReplyExists) {
			t.Fatalf("deleting a reply another has replaced: %v, want ErrReplyExists", err)
		}
		if got, err := b.GetReply(ctx, id); err != nil || string(got.Body) != "second time" {
			t.Fatalf("GetReply after deleting a replaced reply: %+v, %v; want the second reply", got, err)
		}
		// A reply like the stored one in all but its creation time, or in
		// all but its status, is another.
		current, err := b.GetReply(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		otherTime, otherStatus := *current, *current
		otherTime.CreatedAt = current.CreatedAt.Add(-time.Second)
		otherStatus.Status = backend.StatusFailed
		for _, r := range []*backend.Reply{&otherTime, &otherStatus} {
			if err := rd.DeleteReply(ctx, r); !errors.Is(err, backend.ErrReplyExists) {
				t.Fatalf("deleting %s created at %s while %s created at %s is stored: %v, want ErrReplyExists",
					r.Status, r.CreatedAt, current.Status, current.CreatedAt, err)
			}
		}
		if _, err := b.GetReply(ctx, id); err != nil {
			t.Fatalf("the stored reply went: %v", err)
		}
	}},
}

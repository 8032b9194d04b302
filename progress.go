package rsvp

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/rsvp-go/rsvp/backend"
)

type progressKey struct{}

// Progress records v, encoded as JSON, as the progress (custom status) of
// the request a handler is working on, for watchers of a tracked request
// (Message.Track), such as the HTTP gateway's status resource and event
// streams. For an untracked request, or outside a handler, it does nothing.
func Progress(ctx context.Context, v any) error {
	record, _ := ctx.Value(progressKey{}).(func(context.Context, []byte) error)
	if record == nil {
		return nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("rsvp: progress: %w", err)
	}
	if err := record(ctx, data); err != nil {
		return fmt.Errorf("rsvp: progress: %w", err)
	}
	return nil
}

// withProgress returns ctx on which Progress records events of m, if m is
// tracked.
func withProgress(ctx context.Context, b backend.Backend, m *Message) context.Context {
	if !m.Track {
		return ctx
	}
	return context.WithValue(ctx, progressKey{}, func(pctx context.Context, data []byte) error {
		return b.AppendEvent(pctx, &backend.Event{CorrelationID: m.CorrelationID, Channel: m.Channel,
			Type: backend.EventProgress, At: time.Now(), Data: data})
	})
}

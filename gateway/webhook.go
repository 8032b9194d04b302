package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"mime"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
)

// Webhook deliveries are jobs on the gateway's own queue: durable, shared
// by every gateway on the engine, retried until RetryFor has passed. Each
// attempt is recorded as an event of the request, so its status shows the
// delivery history.
const webhookQueue = internalPrefix + "webhooks"

// errNotYet makes a webhook job come back later: the request has not
// finished, or the next delivery attempt is not due.
var errNotYet = errors.New("webhook not due yet")

// webhookWait bounds how long one job attempt waits for a result or a due
// time before it gives its slot back.
const webhookWait = 20 * time.Second

func (g *Gateway) startWebhooks() error {
	resp, err := g.c.Handle(webhookQueue, rsvp.HandlerFunc(g.deliverWebhook), rsvp.HandleOptions{
		Concurrency: 64,
		MaxAttempts: 1 << 30, // attempts are bounded by RetryFor instead
		Backoff:     func(int) time.Duration { return time.Second },
		Lease:       time.Minute,
	})
	if err != nil {
		return err
	}
	g.closers = append(g.closers, resp.Stop)
	return nil
}

// scheduleWebhook queues the delivery job of a request with a callback.
func (g *Gateway) scheduleWebhook(ctx context.Context, rec *record) error {
	_, err := g.c.Send(ctx, webhookQueue, &rsvp.Message{ID: "webhook:" + rec.ID, ContentType: "text/plain", Body: []byte(rec.ID)})
	return err
}

// webhookDelay is the pause after failed delivery attempt n: 1s doubling,
// at most 5m.
func webhookDelay(n int) time.Duration {
	if n > 9 {
		return 5 * time.Minute
	}
	return min(time.Second<<(n-1), 5*time.Minute)
}

// WebhookPayload is the JSON body POSTed to a callback URL.
type WebhookPayload struct {
	Type      string    `json:"type"` // "request.finished"
	Timestamp time.Time `json:"timestamp"`
	Data      struct {
		*Status
		// Result is the reply body of a succeeded request: as JSON when
		// its content type is JSON, else as a string (base64 for binary).
		Result      any    `json:"result,omitempty"`
		ContentType string `json:"content_type,omitempty"`
	} `json:"data"`
}

func (g *Gateway) deliverWebhook(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
	id := string(m.Body)
	rec, evs, reply, err := g.load(ctx, id)
	if errors.Is(err, errUnknown) {
		return nil, rsvp.Permanent(fmt.Errorf("request %s is gone", id))
	}
	if err != nil {
		return nil, err
	}
	// Waiting for the result, or for the next attempt's time, is no
	// delivery under way: it ends when the gateway closes (Close waits for
	// running deliveries only), and the job comes back.
	waitCtx, cancelWait := context.WithCancel(ctx)
	defer cancelWait()
	defer context.AfterFunc(g.life, cancelWait)()
	if reply == nil {
		if reply, err = g.waitFinal(waitCtx, id, webhookWait); err != nil || reply == nil {
			if waitCtx.Err() != nil {
				return nil, cmp.Or(ctx.Err(), errNotYet)
			}
			return nil, cmp.Or(err, errNotYet)
		}
		if _, evs, reply, err = g.load(ctx, id); err != nil {
			return nil, err
		}
	}
	st := g.fold(rec, evs, reply)
	if reply.ErrorCode == codeNotAccepted && st.StartedAt == nil {
		return nil, nil // never queued: its submission was answered 503, so nothing to tell
	}
	n := len(st.Webhooks)
	if n > 0 {
		last := st.Webhooks[n-1]
		if last.Delivered {
			return nil, nil
		}
		if time.Since(reply.CreatedAt) > g.cfg.Webhooks.RetryFor {
			g.log.Warn("gateway: webhook delivery given up", "queue", rec.Queue, "id", id, "correlation_id", id, "attempts", n)
			return nil, rsvp.Permanent(fmt.Errorf("webhook to %s failed %d times over %s; given up", rec.Callback, n, g.cfg.Webhooks.RetryFor))
		}
		if wait := time.Until(last.At.Add(webhookDelay(n))); wait > 0 {
			t := time.NewTimer(min(wait, webhookWait))
			defer t.Stop()
			select {
			case <-t.C:
			case <-waitCtx.Done():
				return nil, cmp.Or(ctx.Err(), errNotYet)
			}
			if wait > webhookWait {
				return nil, errNotYet
			}
		}
	}
	var p WebhookPayload
	p.Type, p.Timestamp, p.Data.Status = "request.finished", time.Now().UTC(), st
	if reply.Status == backend.StatusSucceeded {
		p.Data.ContentType = reply.ContentType
		p.Data.Result = resultValue(reply)
	}
	body, err := json.Marshal(p)
	if err != nil {
		return nil, rsvp.Permanent(err)
	}
	status, sendErr := g.hooks.send(ctx, rec.Callback, id, body)
	at := WebhookAttempt{Attempt: n + 1, At: time.Now().UTC(), Delivered: sendErr == nil, Status: status}
	if sendErr != nil {
		at.Error = sendErr.Error()
	}
	data, _ := json.Marshal(map[string]any{"attempt": at.Attempt, "delivered": at.Delivered, "status": at.Status, "error": at.Error})
	if err := g.b.AppendEvent(ctx, &backend.Event{CorrelationID: id, Channel: scopedChannel(rec.Tenant, rec.Channel), Type: backend.EventWebhook, At: at.At, Data: data}); err != nil {
		g.log.Warn("gateway: recording a webhook attempt failed", "queue", rec.Queue, "id", id, "correlation_id", id, "err", err)
	}
	g.tel.webhooks.Add(ctx, 1, metric.WithAttributes(attribute.Bool("delivered", sendErr == nil)))
	if sendErr != nil {
		g.log.Info("gateway: webhook delivery failed; will retry", "queue", rec.Queue, "id", id, "correlation_id", id, "attempt", at.Attempt, "err", sendErr)
		return nil, errNotYet
	}
	g.log.Info("gateway: webhook delivered", "queue", rec.Queue, "id", id, "correlation_id", id, "attempt", at.Attempt)
	return nil, nil
}

// resultValue is a reply body as it goes into JSON: raw JSON for a JSON
// content type, else a string (Go's JSON encodes []byte as base64).
func resultValue(r *backend.Reply) any {
	mt, _, _ := mime.ParseMediaType(r.ContentType)
	switch {
	case (mt == "application/json" || len(mt) > 5 && mt[len(mt)-5:] == "+json") && json.Valid(r.Body):
		return json.RawMessage(r.Body)
	case len(mt) > 5 && mt[:5] == "text/":
		return string(r.Body)
	}
	return r.Body
}

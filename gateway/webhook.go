package gateway

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

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

// defaultWebhookSlots is how many webhook jobs a gateway runs at once.
const defaultWebhookSlots = 64

// webhookPollMax caps the pause of a webhook job that came back too early
// while every waiting permit was taken (webhookPoll).
const webhookPollMax = 30 * time.Second

// A webhook job waits in its handler (for its request's result, or for its
// next delivery attempt's time) only with a waiting permit: there are 3/4
// as many as slots, taken without blocking, so that a quarter of the slots
// stays free for the jobs of finished requests however many requests with
// callbacks are unfinished. A job that finds no permit comes back later
// (webhookBackoff).
func (g *Gateway) startWebhooks() error {
	slots := cmp.Or(g.cfg.Webhooks.slots, defaultWebhookSlots)
	g.waits = make(chan struct{}, max(1, slots*3/4))
	resp, err := g.c.Handle(webhookQueue, rsvp.HandlerFunc(g.deliverWebhook), rsvp.HandleOptions{
		Concurrency: slots,
		MaxAttempts: 1 << 30, // attempts are bounded by RetryFor instead
		Backoff:     g.webhookBackoff,
		Lease:       time.Minute,
	})
	if err != nil {
		return err
	}
	g.closers = append(g.closers, resp.Stop)
	return nil
}

// webhookBackoff is the pause before a webhook job comes back after its
// attempt (the job's, not the delivery's) returned errNotYet or failed.
// While a waiting permit is free, 1s: the job comes back to wait in its
// handler, where it sees its request's result, or its delivery's due time,
// at once. When every permit is taken it is webhookPoll of the attempt, so
// that many pending jobs do not poll the engine every second.
func (g *Gateway) webhookBackoff(attempt int) time.Duration {
	if len(g.waits) < cap(g.waits) {
		return time.Second
	}
	return webhookPoll(attempt)
}

// webhookPoll is 1s after the first attempt, doubling, at most
// webhookPollMax (30s).
func webhookPoll(attempt int) time.Duration {
	if attempt > 5 {
		return webhookPollMax
	}
	return min(time.Second<<max(attempt-1, 0), webhookPollMax)
}

// tryWait takes a waiting permit if one is free, without blocking; the
// caller gives it back with endWait.
func (g *Gateway) tryWait() bool {
	select {
	case g.waits <- struct{}{}:
		return true
	default:
		return false
	}
}

func (g *Gateway) endWait() { <-g.waits }

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
	// running deliveries only), and the job comes back. It needs a waiting
	// permit; without one the job comes back later at once.
	waitCtx, cancelWait := context.WithCancel(ctx)
	defer cancelWait()
	defer context.AfterFunc(g.life, cancelWait)()
	if reply == nil {
		if !g.tryWait() {
			return nil, errNotYet
		}
		reply, err = g.waitFinal(waitCtx, id, webhookWait)
		g.endWait()
		if err != nil || reply == nil {
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
			if !g.tryWait() {
				return nil, errNotYet
			}
			t := time.NewTimer(min(wait, webhookWait))
			select {
			case <-t.C:
			case <-waitCtx.Done():
			}
			t.Stop()
			g.endWait()
			if waitCtx.Err() != nil {
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
	// Each attempt has a span in the submission's trace, as a push on a
	// stream has, and the POST carries it on to the receiver.
	sctx, span := g.tel.tracer.Start(g.tel.recordTrace(ctx, rec.Trace, rec.TraceState), "rsvp.gateway.webhook",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.String("rsvp.correlation_id", id),
			attribute.Int("rsvp.webhook.attempt", n+1)))
	status, sendErr := g.hooks.send(sctx, rec.Callback, id, body)
	at := WebhookAttempt{Attempt: n + 1, At: time.Now().UTC(), Delivered: sendErr == nil, Status: status}
	if status != 0 {
		span.SetAttributes(attribute.Int("http.response.status_code", status))
	}
	if sendErr != nil {
		// The tenant's words, without addresses or the URL; the log below
		// has sendErr itself.
		at.Error = webhookFailure(status, sendErr, g.cfg.Webhooks.Timeout)
		span.SetStatus(codes.Error, at.Error)
	}
	span.End()
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

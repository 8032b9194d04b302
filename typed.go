package rsvp

import (
	"context"
	"encoding/json"
	"fmt"
)

// Codec encodes and decodes the values of Call and HandleTyped.
type Codec interface {
	ContentType() string
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default Codec, using encoding/json.
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) ContentType() string                { return "application/json" }
func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Call sends req to queue, encoded with the client's codec, and decodes the
// reply into a Resp. A reply that does not decode is an error; a failed
// request returns a *RemoteError.
func Call[Req, Resp any](ctx context.Context, c *Client, queue string, req Req) (Resp, error) {
	var resp Resp
	body, err := c.cfg.Codec.Marshal(req)
	if err != nil {
		return resp, fmt.Errorf("rsvp: encode request: %w", err)
	}
	msg := &Message{Body: body, ContentType: c.cfg.Codec.ContentType()}
	if t, ok := any(req).(Typer); ok {
		msg.Type = t.RSVPType()
	}
	r, err := c.Request(ctx, queue, msg)
	if err != nil {
		return resp, err
	}
	if err := c.cfg.Codec.Unmarshal(r.Body, &resp); err != nil {
		return resp, fmt.Errorf("rsvp: decode reply %s: %w", r.CorrelationID, err)
	}
	return resp, nil
}

// HandleTyped starts a responder whose handler takes and returns values,
// encoded with the client's codec. A request body that does not decode is a
// permanent failure with code bad_payload: it is not retried.
func HandleTyped[Req, Resp any](c *Client, queue string, fn func(ctx context.Context, req Req) (Resp, error), opts HandleOptions) (*Responder, error) {
	return c.Handle(queue, Typed(c.cfg.Codec, fn), opts)
}

// Typed returns a Handler that decodes the request body into a Req with
// codec, calls fn, and encodes its Resp as the reply. A body that does not
// decode is a permanent failure with code bad_payload.
func Typed[Req, Resp any](codec Codec, fn func(ctx context.Context, req Req) (Resp, error)) Handler {
	return HandlerFunc(func(ctx context.Context, m *Message) (*Reply, error) {
		var req Req
		if err := codec.Unmarshal(m.Body, &req); err != nil {
			return nil, Permanent(&RemoteError{Code: CodeBadPayload, Message: err.Error()})
		}
		resp, err := fn(ctx, req)
		if err != nil {
			return nil, err
		}
		body, err := codec.Marshal(resp)
		if err != nil {
			return nil, Permanent(fmt.Errorf("encode reply: %w", err))
		}
		return &Reply{Body: body, ContentType: codec.ContentType()}, nil
	})
}

// Typer is implemented by request values that name their schema: Call
// sends them with Message.Type set to RSVPType(), so a Mux can route them.
type Typer interface {
	RSVPType() string
}

package rsvp

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
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
// reply into a Resp. An empty reply body (a handler that replied nothing)
// is Resp's zero value; a reply that does not decode is an error; a failed
// request returns a *RemoteError.
func Call[Req, Resp any](ctx context.Context, c *Client, queue string, req Req) (Resp, error) {
	var resp Resp
	body, err := c.cfg.Codec.Marshal(req)
	if err != nil {
		return resp, fmt.Errorf("rsvp: encode request: %w", err)
	}
	msg := &Message{Body: body, ContentType: c.cfg.Codec.ContentType()}
	if t, ok := any(req).(Typer); ok {
		if v := reflect.ValueOf(t); v.Kind() == reflect.Pointer && v.IsNil() {
			// RSVPType may have a value receiver: ask a new value instead.
			t = reflect.New(v.Type().Elem()).Interface().(Typer)
		}
		msg.Type = t.RSVPType()
	}
	r, err := c.Request(ctx, queue, msg)
	if err != nil {
		return resp, err
	}
	if len(r.Body) == 0 {
		return resp, nil
	}
	if err := c.cfg.Codec.Unmarshal(r.Body, &resp); err != nil {
		return resp, fmt.Errorf("rsvp: decode reply %s: %w", r.CorrelationID, err)
	}
	return resp, nil
}

// HandleTyped starts a responder whose handler takes and returns values,
// encoded with the client's codec. A request body that does not decode is a
// permanent failure with code bad_payload, and one of another Type than a
// Typer Req's has code unsupported_type (see Typed): neither is retried.
func HandleTyped[Req, Resp any](c *Client, queue string, fn func(ctx context.Context, req Req) (Resp, error), opts HandleOptions) (*Responder, error) {
	return c.Handle(queue, Typed(c.cfg.Codec, fn), opts)
}

// Typed returns a Handler that decodes the request body into a Req with
// codec, calls fn, and encodes its Resp as the reply. A body that does not
// decode is a permanent failure with code bad_payload. If Req is a Typer, a
// request whose Type is set and is not Req's (another version, say) is a
// permanent failure with code unsupported_type, as in a Mux: it is not
// decoded as a Req. A request with no Type is decoded.
func Typed[Req, Resp any](codec Codec, fn func(ctx context.Context, req Req) (Resp, error)) Handler {
	want, typed := schemaType[Req]()
	return HandlerFunc(func(ctx context.Context, m *Message) (*Reply, error) {
		if typed && m.Type != "" && m.Type != want {
			return nil, Permanent(&RemoteError{Code: CodeUnsupportedType,
				Message: fmt.Sprintf("no handler for type %q; handled: %s", m.Type, want)})
		}
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

// schemaType returns the RSVPType of T's values if T is a Typer: of its
// zero value, or, for a pointer type, of a new value it points to (a
// method with a value receiver cannot be called on a nil pointer).
func schemaType[T any]() (string, bool) {
	var zero T
	v := any(zero)
	if rt := reflect.TypeFor[T](); rt.Kind() == reflect.Pointer {
		v = reflect.New(rt.Elem()).Interface()
	}
	t, ok := v.(Typer)
	if !ok {
		return "", false
	}
	return t.RSVPType(), true
}

// Typer is implemented by request values that name their schema: Call
// sends them with Message.Type set to RSVPType() (of a new value, for a nil
// pointer), so a Mux can route them,
// and Typed refuses requests of another Type.
type Typer interface {
	RSVPType() string
}

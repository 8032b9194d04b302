package backend

import "testing"

func TestReservedHeader(t *testing.T) {
	for k, want := range map[string]bool{
		"Rsvp-Id": true, "rsvp-x": true, "NATS-Msg-Id": true, "Content-Type": true, "content-type": true,
		"traceparent": true, "TraceState": true,
		"Tenant": false, "Rsvp": false, "X-Rsvp-Id": false, "Content-Length": false, "": false,
	} {
		if got := ReservedHeader(k); got != want {
			t.Errorf("ReservedHeader(%q) = %v, want %v", k, got, want)
		}
	}
}

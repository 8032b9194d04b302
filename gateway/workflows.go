package gateway

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/workflow"
)

// The workflow API: start instances of durable workflows (package
// workflow), follow them, raise their external events, terminate and
// purge them. It needs Config.Workflows; without it every route of it
// answers 404 (workflows-disabled).
//
// Rights: a workflow is guarded as a queue of the same name. The "send"
// (or "admin") right on it lets a key start instances, read, list and
// stream them, raise their events, terminate and purge them. Instances
// are not scoped to a tenant: every key with the right on a workflow sees
// all its instances. An instance the caller has no right on is 404, as an
// unknown one.

const (
	// maxEventIDLen and maxReasonLen bound an event id and a
	// termination reason from a client.
	maxEventIDLen = 256
	maxReasonLen  = 1024
	// Defaults and bounds of the limit of GET /v1/instances.
	defaultInstanceLimit = 100
	maxInstanceLimit     = 1000
)

// InstanceLinks are the URLs of a workflow instance's resources, relative
// to the gateway.
type InstanceLinks struct {
	Status string `json:"status"` // GET (long-poll with ?wait=)
	Result string `json:"result"` // GET, once finished
	// RaiseEvent is a template: POST to it with {event} replaced by the
	// event's name.
	RaiseEvent string `json:"raise_event"`
	Terminate  string `json:"terminate"` // POST
	Purge      string `json:"purge"`     // DELETE, once finished
	Events     string `json:"events"`    // GET: Server-Sent Events of status changes
}

func instanceLinks(id string) InstanceLinks {
	base := "/v1/instances/" + id
	return InstanceLinks{Status: base, Result: base + "/result", RaiseEvent: base + "/events/{event}",
		Terminate: base + "/terminate", Purge: base, Events: base + "/events"}
}

// InstanceStarted is the answer to starting an instance: where to follow
// it (as Durable Functions' check-status response).
type InstanceStarted struct {
	ID    string         `json:"id"`
	Name  string         `json:"name"`
	State workflow.State `json:"state"`
	Links InstanceLinks  `json:"links"`
}

// InstanceStatus is the status resource of a workflow instance: the
// workflow.Status with the instance's links.
type InstanceStatus struct {
	workflow.Status
	Links InstanceLinks `json:"links"`
}

func instanceStatus(st *workflow.Status) *InstanceStatus {
	return &InstanceStatus{Status: *st, Links: instanceLinks(st.ID)}
}

// EventAccepted is the answer to raising an event.
type EventAccepted struct {
	Instance string `json:"instance"`
	Event    string `json:"event"`
	EventID  string `json:"event_id"`
}

// seesWorkflow reports whether the caller may work with the instances of
// workflow name.
func (c caller) seesWorkflow(name string) bool {
	return c.may(RightSend, name) || c.may(RightAdmin, name)
}

// wfCall authenticates a call of the workflow API and returns the engine,
// or writes the error response and returns ok false.
func (g *Gateway) wfCall(w http.ResponseWriter, r *http.Request) (caller, *workflow.Engine, bool) {
	c, ok := g.authenticate(w, r)
	if !ok {
		return c, nil, false
	}
	if g.cfg.Workflows == nil {
		problem(w, http.StatusNotFound, "workflows-disabled", "Workflows are not enabled",
			"this gateway has no workflow engine (gateway.Config.Workflows)")
		return c, nil, false
	}
	return c, g.cfg.Workflows, true
}

func unknownInstance(id string) *Problem {
	return &Problem{Type: problemType + "unknown-instance", Title: "No such workflow instance", Status: http.StatusNotFound,
		Detail: fmt.Sprintf("instance %q is unknown, purged, or not yours", id)}
}

// instance reads the status of the instance in the path for c, writing
// the error response (404 also for an instance c has no right on) and
// returning ok false on failure.
func (g *Gateway) instance(w http.ResponseWriter, r *http.Request, c caller, e *workflow.Engine) (*workflow.Status, bool) {
	id := r.PathValue("id")
	st, err := e.Status(r.Context(), id)
	if err == nil && !c.seesWorkflow(st.Name) {
		err = workflow.ErrNotFound
	}
	switch {
	case errors.Is(err, workflow.ErrNotFound), errors.Is(err, workflow.ErrInvalid): // an id that cannot exist is unknown
		writeProblem(w, unknownInstance(id))
		return nil, false
	case err != nil:
		g.engineDown(w, r, err)
		return nil, false
	}
	return st, true
}

// readJSONBody reads a body that must be JSON (empty: null), writing the
// error response and returning ok false on failure. what names the body
// in errors.
func (g *Gateway) readJSONBody(w http.ResponseWriter, r *http.Request, what string) ([]byte, bool) {
	body, ok := g.readBody(w, r, g.cfg.MaxBodySize)
	if !ok {
		return nil, false
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return []byte("null"), true
	}
	if !json.Valid(body) {
		writeProblem(w, &Problem{Type: problemType + "bad-input", Title: "The body is not JSON", Status: http.StatusBadRequest,
			Code: workflow.CodeBadInput, Detail: what + " must be a JSON value (an empty body is null)"})
		return nil, false
	}
	return body, true
}

// startInstance: POST /v1/workflows/{name}/instances[?id=][&version=].
func (g *Gateway) startInstance(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	name := r.PathValue("name")
	if err := backend.ValidateName("workflow name", name); err != nil {
		problem(w, http.StatusBadRequest, "invalid-workflow", "Invalid workflow name", err.Error())
		return
	}
	if !c.may(RightSend, name) {
		problem(w, http.StatusForbidden, "forbidden", "Not allowed",
			fmt.Sprintf("the API key lacks the %q right on workflow %q (a grant on the queue of that name)", RightSend, name))
		return
	}
	q := r.URL.Query()
	opts := workflow.StartOptions{ID: q.Get("id")}
	if q.Has("id") {
		if err := checkInstanceID(opts.ID); err != nil {
			problem(w, http.StatusBadRequest, "invalid-instance-id", "Invalid instance id", err.Error())
			return
		}
	}
	if v := q.Get("version"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", fmt.Sprintf("version %q is not a whole number from 1", v))
			return
		}
		opts.Version = n
	}
	input, ok := g.readJSONBody(w, r, "the workflow's input")
	if !ok {
		return
	}
	st, err := e.StartJSON(r.Context(), name, input, opts)
	switch {
	case errors.Is(err, workflow.ErrIDInUse):
		detail := err.Error() // names the workflow that holds the id
		if held, err := e.Status(r.Context(), opts.ID); err != nil || !c.seesWorkflow(held.Name) {
			// Not to a caller that cannot read that workflow's instances.
			detail = fmt.Sprintf("instance %s runs another workflow than %s", opts.ID, name)
		}
		writeProblem(w, &Problem{Type: problemType + "instance-id-taken", Title: "The instance id is taken", Status: http.StatusConflict,
			Detail: detail})
		return
	case errors.Is(err, workflow.ErrUnknownWorkflow):
		writeProblem(w, &Problem{Type: problemType + "unknown-workflow", Title: "No such workflow", Status: http.StatusNotFound,
			Code: workflow.CodeUnknownWorkflow, Detail: err.Error()})
		return
	case errors.Is(err, workflow.ErrBadInput):
		writeProblem(w, &Problem{Type: problemType + "bad-input", Title: "The input does not fit the workflow", Status: http.StatusBadRequest,
			Code: workflow.CodeBadInput, Detail: err.Error()})
		return
	case errors.Is(err, workflow.ErrInvalid):
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", err.Error())
		return
	case err != nil:
		g.engineDown(w, r, err)
		return
	}
	links := instanceLinks(st.ID)
	g.log.Info("gateway: workflow instance started", "workflow", name, "instance", st.ID, "state", st.State, "tenant", c.tenant)
	w.Header().Set("Location", links.Status)
	w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())))
	writeJSON(w, http.StatusAccepted, &InstanceStarted{ID: st.ID, Name: st.Name, State: st.State, Links: links})
}

// checkInstanceID checks an instance id from a client as the engine will.
func checkInstanceID(id string) error {
	if err := backend.ValidateName("instance id", id); err != nil {
		return err
	}
	if len(id) > workflow.MaxInstanceIDLen {
		return fmt.Errorf("instance id is longer than %d bytes", workflow.MaxInstanceIDLen)
	}
	return nil
}

// getInstance: GET /v1/instances/{id}[?wait=30s][&redirect=false].
func (g *Gateway) getInstance(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	wait, err := g.parseWait(r.URL.Query().Get("wait"))
	if err != nil {
		problem(w, http.StatusBadRequest, "invalid-wait", "Invalid wait", err.Error())
		return
	}
	st, ok := g.instance(w, r, c, e)
	if !ok {
		return
	}
	if wait > 0 && !st.State.Final() {
		release, ok := g.acquireStream(w)
		if !ok {
			return
		}
		ctx, cancel := g.streamCtx(r)
		wctx, wcancel := context.WithTimeout(ctx, wait)
		st, err = nextChange(wctx, e, st)
		wcancel()
		cancel()
		release()
		switch {
		case errors.Is(err, workflow.ErrNotFound): // purged meanwhile
			writeProblem(w, unknownInstance(st.ID))
			return
		case err != nil && wctx.Err() == nil:
			g.engineDown(w, r, err)
			return
		}
	}
	is := instanceStatus(st)
	if st.State.Final() && r.URL.Query().Get("redirect") != "false" {
		w.Header().Set("Location", is.Links.Result)
		writeJSON(w, http.StatusSeeOther, is)
		return
	}
	if !st.State.Final() {
		w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())))
	}
	writeJSON(w, http.StatusOK, is)
}

// nextChange waits until the status of an instance differs from st in
// what a client sees (state, version, custom status, output, error: not
// only in position and time), and returns it; or, when ctx ends, returns
// the latest status read with ctx's error. A history grows by entries a
// status does not show (calls made, replies recorded): they do not end
// the wait.
func nextChange(ctx context.Context, e *workflow.Engine, st *workflow.Status) (*workflow.Status, error) {
	latest := st
	for {
		now, err := e.WaitChange(ctx, st.ID, latest.Position)
		if err != nil {
			if now != nil && !errors.Is(err, workflow.ErrNotFound) {
				latest = now
			}
			return latest, err
		}
		latest = now
		if shownChange(st, now) {
			return now, nil
		}
	}
}

// shownChange reports whether status b shows something else than a.
func shownChange(a, b *workflow.Status) bool {
	return a.State != b.State || a.Version != b.Version || !bytes.Equal(a.CustomStatus, b.CustomStatus) ||
		!bytes.Equal(a.Output, b.Output) || (a.Error == nil) != (b.Error == nil) || a.Error != nil && *a.Error != *b.Error
}

// instanceResult: GET /v1/instances/{id}/result.
func (g *Gateway) instanceResult(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	st, ok := g.instance(w, r, c, e)
	if !ok {
		return
	}
	links := instanceLinks(st.ID)
	p := &Problem{Instance: links.Status}
	if st.Error != nil {
		p.Code, p.Detail = st.Error.Code, st.Error.Message
	}
	switch st.State {
	case workflow.StateCompleted:
		out := st.Output
		if len(out) == 0 {
			out = json.RawMessage("null")
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(out)
		return
	case workflow.StateFailed:
		p.Type, p.Title, p.Status = problemType+"instance-failed", "The workflow instance failed", http.StatusBadGateway
	case workflow.StateTerminated:
		p.Type, p.Title, p.Status = problemType+"instance-terminated", "The workflow instance was terminated", http.StatusGone
	default:
		w.Header().Set("Retry-After", strconv.Itoa(int(g.cfg.RetryAfter.Seconds())))
		p.Type, p.Title, p.Status = problemType+"not-finished", "The workflow instance has not finished", http.StatusConflict
		p.Detail = "state " + string(st.State) + "; poll " + links.Status + " or stream " + links.Events
		p.Instance = links.Result
	}
	writeProblem(w, p)
}

// finishedProblem is the problem of a call that needs a running instance.
func finishedProblem(id string, err error) *Problem {
	return &Problem{Type: problemType + "instance-finished", Title: "The workflow instance has finished", Status: http.StatusConflict,
		Code: "instance_finished", Detail: err.Error(), Instance: instanceLinks(id).Status}
}

// raiseEvent: POST /v1/instances/{id}/events/{event}[?event_id=].
func (g *Gateway) raiseEvent(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	event := r.PathValue("event")
	eventID := cmp.Or(r.Header.Get("Idempotency-Key"), r.URL.Query().Get("event_id"))
	switch {
	case len(event) > 256:
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", "the event name is longer than 256 bytes")
		return
	case len(eventID) > maxEventIDLen:
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request",
			fmt.Sprintf("the event id (Idempotency-Key or event_id) is longer than %d bytes", maxEventIDLen))
		return
	}
	st, ok := g.instance(w, r, c, e)
	if !ok {
		return
	}
	payload, ok := g.readJSONBody(w, r, "the event's payload")
	if !ok {
		return
	}
	if eventID == "" {
		eventID = rsvp.NewID()
	}
	// A retry of a raise that made it is accepted again, however the
	// instance went on since.
	err := e.RaiseEvent(r.Context(), st.ID, event, json.RawMessage(payload), eventID)
	switch {
	case errors.Is(err, workflow.ErrNotFound): // purged meanwhile
		writeProblem(w, unknownInstance(st.ID))
	case errors.Is(err, workflow.ErrFinished):
		writeProblem(w, finishedProblem(st.ID, err))
	case errors.Is(err, workflow.ErrInvalid):
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", err.Error())
	case err != nil:
		g.engineDown(w, r, err)
	default:
		g.log.Info("gateway: workflow event raised", "instance", st.ID, "event", event, "event_id", eventID, "tenant", c.tenant)
		w.Header().Set("Location", instanceLinks(st.ID).Status)
		writeJSON(w, http.StatusAccepted, &EventAccepted{Instance: st.ID, Event: event, EventID: eventID})
	}
}

// terminateInstance: POST /v1/instances/{id}/terminate[?reason=].
func (g *Gateway) terminateInstance(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	reason := cmp.Or(r.URL.Query().Get("reason"), "terminated over HTTP")
	if len(reason) > maxReasonLen {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", fmt.Sprintf("reason is longer than %d bytes", maxReasonLen))
		return
	}
	st, ok := g.instance(w, r, c, e)
	if !ok {
		return
	}
	err := e.Terminate(r.Context(), st.ID, reason)
	switch {
	case errors.Is(err, workflow.ErrNotFound):
		writeProblem(w, unknownInstance(st.ID))
		return
	case errors.Is(err, workflow.ErrFinished):
		writeProblem(w, finishedProblem(st.ID, err))
		return
	case err != nil:
		g.engineDown(w, r, err)
		return
	}
	g.log.Info("gateway: workflow instance terminated", "instance", st.ID, "reason", reason, "tenant", c.tenant)
	if now, err := e.Status(r.Context(), st.ID); err == nil {
		st = now
	}
	w.Header().Set("Location", instanceLinks(st.ID).Status)
	writeJSON(w, http.StatusAccepted, instanceStatus(st))
}

// purgeInstance: DELETE /v1/instances/{id}.
func (g *Gateway) purgeInstance(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	st, ok := g.instance(w, r, c, e)
	if !ok {
		return
	}
	err := e.Purge(r.Context(), st.ID)
	switch {
	case errors.Is(err, workflow.ErrNotFound):
		writeProblem(w, unknownInstance(st.ID))
	case errors.Is(err, workflow.ErrRunning):
		writeProblem(w, &Problem{Type: problemType + "instance-running", Title: "The workflow instance is still running", Status: http.StatusConflict,
			Code: "instance_running", Detail: "terminate it first (" + instanceLinks(st.ID).Terminate + "), or wait until it has finished",
			Instance: instanceLinks(st.ID).Status})
	case err != nil:
		g.engineDown(w, r, err)
	default:
		g.log.Info("gateway: workflow instance purged", "instance", st.ID, "tenant", c.tenant)
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
	}
}

// InstanceList is the answer of GET /v1/instances.
type InstanceList struct {
	Instances []*InstanceStatus `json:"instances"`
}

// listInstances: GET /v1/instances[?name=][&state=][&limit=].
func (g *Gateway) listInstances(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	lq := workflow.ListQuery{Name: q.Get("name"), State: workflow.State(q.Get("state")), Limit: defaultInstanceLimit}
	var errs []error
	if lq.Name != "" {
		if err := backend.ValidateName("workflow name", lq.Name); err != nil {
			errs = append(errs, err)
		}
	}
	switch lq.State {
	case "", workflow.StateRunning, workflow.StateCompleted, workflow.StateFailed, workflow.StateTerminated:
	default:
		errs = append(errs, fmt.Errorf("state %q is none of running, completed, failed, terminated", lq.State))
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxInstanceLimit {
			errs = append(errs, fmt.Errorf("limit %q is not a whole number from 1 to %d", l, maxInstanceLimit))
		}
		lq.Limit = n
	}
	if err := errors.Join(errs...); err != nil {
		problem(w, http.StatusBadRequest, "invalid-request", "Invalid request", err.Error())
		return
	}
	if lq.Name != "" && !c.seesWorkflow(lq.Name) {
		problem(w, http.StatusForbidden, "forbidden", "Not allowed",
			fmt.Sprintf("the API key lacks the %q right on workflow %q (a grant on the queue of that name)", RightSend, lq.Name))
		return
	}
	limit := lq.Limit
	if c.key != nil && lq.Name == "" {
		lq.Limit = 0 // filtered below: the limit applies after
	}
	sts, err := e.List(r.Context(), lq)
	if err != nil {
		g.engineDown(w, r, err)
		return
	}
	out := InstanceList{Instances: []*InstanceStatus{}}
	for _, st := range sts {
		if len(out.Instances) == limit {
			break
		}
		if c.seesWorkflow(st.Name) {
			out.Instances = append(out.Instances, instanceStatus(st))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// instanceEvents: GET /v1/instances/{id}/events. Server-Sent Events of the
// instance's status: one event per change a client sees (see nextChange),
// its id the status's position, its type the state, its data the status;
// the stream ends after the final status. A cursor after the status's
// position is refused.
func (g *Gateway) instanceEvents(w http.ResponseWriter, r *http.Request) {
	c, e, ok := g.wfCall(w, r)
	if !ok {
		return
	}
	after, ok := lastEventID(w, r)
	if !ok {
		return
	}
	st, ok := g.instance(w, r, c, e)
	if !ok {
		return
	}
	if after > st.Position {
		// No event of this stream has had it: an event's id is the
		// position of a status read, and an instance's position only
		// grows. Refused, as a request stream refuses a cursor that names
		// none of its events: the stream would send nothing until the
		// history passed it, or its 204 would tell the client it had seen
		// the end.
		problem(w, http.StatusBadRequest, "invalid-last-event-id", "Invalid Last-Event-ID",
			fmt.Sprintf("%d is after the last change of instance %q (position %d): resume with the id of an event of this stream, or 0",
				after, st.ID, st.Position))
		return
	}
	if st.State.Final() && st.Position <= after {
		// Nothing after the final status. 204 also tells an EventSource
		// to stop reconnecting.
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	write, done, ok := g.openSSE(w)
	if !ok {
		return
	}
	defer done()
	ctx, cancel := g.streamCtx(r)
	defer cancel()
	var sent *workflow.Status // the last status sent
	if after > 0 && st.Position <= after {
		// The client has this status: the one of the event it names (a
		// status is the same at the same position). Only a change it sees
		// comes next, as on a stream that was never cut.
		sent = st
	}
	for {
		if st.Position > after && (sent == nil || shownChange(sent, st) || st.State.Final()) {
			data, err := json.Marshal(instanceStatus(st)) // one line: JSON output escapes newlines
			if err != nil {
				return
			}
			if err := write(fmt.Appendf(nil, "id: %d\nevent: %s\ndata: %s\n\n", st.Position, st.State, data)); err != nil {
				return
			}
			after, sent = st.Position, st
		}
		if st.State.Final() {
			return
		}
		wctx, wcancel := context.WithTimeout(ctx, heartbeatInterval)
		now, err := e.WaitChange(wctx, st.ID, st.Position)
		timedOut := wctx.Err() != nil
		wcancel()
		switch {
		case ctx.Err() != nil: // the client left, or the gateway closes
			return
		case err == nil:
			st = now
		case timedOut:
			if err := write([]byte(": ping\n\n")); err != nil {
				return
			}
		default: // purged, or the engine failed: the client reconnects and learns which
			if !errors.Is(err, workflow.ErrNotFound) {
				g.log.Warn("gateway: instance event stream ended", "instance", st.ID, "cursor", after, "err", err)
			}
			return
		}
	}
}

package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/workflow"
)

// rsvp workflow: start, inspect, signal, end and forget the instances of
// durable workflows. The command runs no workflow: a process with a
// started workflow.Engine does.

const workflowUsage = `Usage: rsvp workflow start NAME [--id ID] [--version N] [--input JSON | --input-file FILE] [--wait DURATION] [--output table|json]
       rsvp workflow status ID [--wait DURATION] [--output table|json]
       rsvp workflow raise ID EVENT [--data JSON] [--event-id ID]
       rsvp workflow terminate ID [--reason TEXT]
       rsvp workflow purge ID
       rsvp workflow ls [--name NAME] [--state STATE] [--limit N] [--output table|json]
       rsvp workflow history ID [--output table|json]

Manage the instances of durable workflows. These commands start and steer
instances; a process that runs a workflow engine with the workflow
registered (workflow.Engine.Start in Go) runs them. Each instance has an ID:
--id, or a new one.

  start      start an instance of the workflow NAME with the JSON input of
             --input, of --input-file (- for stdin), or else of stdin (when
             it is not a terminal); no input is null. Print the instance's
             ID. Starting an ID that exists starts nothing and prints it
             again, whether it is running or finished. With --wait, wait
             until the instance has finished and print its output (JSON)
             instead; exit status 1 if it failed or was terminated
  status     print the instance's state (running, completed, failed or
             terminated), workflow, version, custom status, input, output
             or error, and times. With --wait, wait until it has finished
  raise      deliver the external event EVENT to the instance, with the
             JSON payload of --data (default null). An event raised before
             the instance waits for it is kept until it does; an event with
             an --event-id the instance has seen is ignored
  terminate  end a running instance now, in state terminated
  purge      forget a finished instance: it is no longer listed, and its
             ID may be started again
  ls         list instances, newest first: ID, NAME, VERSION, STATE,
             CREATED, UPDATED ('-' for a version not chosen yet)
  history    print the entries of the instance's history, oldest first:
             SEQ, TYPE, AT, DATA

--wait takes the longest time to wait (30s, 5m); --wait 0 waits for ever.
Histories are kept as long as the engine keeps events: 24 hours by default.

Exit status 1 if there is no instance ID, if raise or terminate finds the
instance finished, if purge finds it running, or if the time of --wait
passes first or the engine is lost while waiting (the other rsvp process
that ran an embedded engine exited).

Example:
  rsvp workflow start approval --id approve-doc-1 --input '{"id": "doc-1"}'
  rsvp workflow raise approve-doc-1 ApprovalReceived --data '"Approved"'
  rsvp workflow status approve-doc-1 --wait 1m
  rsvp workflow ls --state running --output json
`

// workflowFlags are the flags each workflow action accepts, besides
// --engine.
var workflowFlags = map[string][]string{
	"start":     {"id", "version", "input", "input-file", "wait", "output"},
	"status":    {"wait", "output"},
	"raise":     {"data", "event-id"},
	"terminate": {"reason"},
	"purge":     {},
	"ls":        {"name", "state", "limit", "output"},
	"history":   {"output"},
}

// workflowArgs are the positional arguments of each workflow action.
var workflowArgs = map[string][]string{
	"start":     {"NAME"},
	"status":    {"ID"},
	"raise":     {"ID", "EVENT"},
	"terminate": {"ID"},
	"purge":     {"ID"},
	"ls":        {},
	"history":   {"ID"},
}

// workflowCmd is a parsed 'rsvp workflow' command line.
type workflowCmd struct {
	action string
	pos    []string
	flags  *flag.FlagSet
	output string

	id, name   string // the instance id (start: --id), the workflow name
	version    int
	input      []byte // start: JSON
	data       []byte // raise: JSON
	eventID    string
	reason     string
	state      workflow.State
	limit      int
	wait       bool // --wait given
	waitFor    time.Duration
	waitOption string // the --wait value, for hints
}

func runWorkflow(ctx context.Context, e *env, cmd *command, args []string) error {
	w, err := e.parseWorkflow(cmd, args)
	if err != nil {
		return err
	}
	spec, err := engineFlag(w.flags)
	if err != nil {
		return err
	}
	if w.action != "start" { // start may make the engine, as 'rsvp send' does
		if err := spec.mustExist(); err != nil {
			return err
		}
	}
	s, err := open(ctx, spec, openOptions{})
	if err != nil {
		return err
	}
	defer s.close(ctx, e.stderr)
	wf, err := workflow.New(s.client, workflow.Config{StartUnregistered: true})
	if err != nil {
		return fmt.Errorf("workflow engine on %s: %w", spec.raw, err)
	}
	defer func() { // closes the subscription of the waits
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), closeTimeout)
		defer cancel()
		if err := wf.Stop(sctx); err != nil {
			fmt.Fprintf(e.stderr, "rsvp: warning: stopping the workflow engine: %v\n", err)
		}
	}()
	switch w.action {
	case "start":
		return e.workflowStart(ctx, s, wf, w)
	case "status":
		return e.workflowStatus(ctx, s, wf, w)
	case "raise":
		err := wf.RaiseEvent(ctx, w.id, w.name, json.RawMessage(w.data), w.eventID)
		if errors.Is(err, workflow.ErrFinished) {
			return fmt.Errorf("workflow raise: instance %s %s; event %s not delivered", w.id, finishedText(ctx, wf, w.id), w.name)
		}
		if err != nil {
			return workflowErr(w, err)
		}
		fmt.Fprintf(e.stdout, "raised event %s on instance %s\n", w.name, w.id)
		return nil
	case "terminate":
		err := wf.Terminate(ctx, w.id, w.reason)
		if errors.Is(err, workflow.ErrFinished) {
			return fmt.Errorf("workflow terminate: instance %s %s", w.id, finishedText(ctx, wf, w.id))
		}
		if err != nil {
			return workflowErr(w, err)
		}
		fmt.Fprintf(e.stdout, "terminated instance %s\n", w.id)
		return nil
	case "purge":
		err := wf.Purge(ctx, w.id)
		if errors.Is(err, workflow.ErrRunning) {
			return fmt.Errorf("workflow purge: instance %s is still running: terminate it first ('rsvp workflow terminate %s')", w.id, w.id)
		}
		if err != nil {
			return workflowErr(w, err)
		}
		fmt.Fprintf(e.stdout, "purged instance %s\n", w.id)
		return nil
	case "ls":
		return e.workflowList(ctx, wf, w)
	default: // history
		return e.workflowHistory(ctx, wf, w)
	}
}

// parseWorkflow parses and checks the command line, reading the input of
// start: nothing is opened yet.
func (e *env) parseWorkflow(cmd *command, args []string) (*workflowCmd, error) {
	flags := e.newFlagSet(cmd)
	output := outputFlag(flags)
	id := flags.String("id", "", "start: the instance `id` (default: a new one); letters, digits, '-', '_' and ':', at most 64 bytes")
	version := flags.Int("version", 0, "start: the workflow `version` to run (default: the newest the running engine has)")
	input := flags.String("input", "", "start: the input, `JSON` (else --input-file, else stdin)")
	inputFile := flags.String("input-file", "", "start: read the JSON input from `path` (- for stdin)")
	wait := flags.Duration("wait", 0, "start, status: wait until the instance has finished, for at most this `duration` (0: for ever)")
	data := flags.String("data", "", "raise: the event's payload, `JSON` (default null)")
	eventID := flags.String("event-id", "", "raise: the event's `id`: an event with an id the instance has seen is ignored (default: a new one)")
	reason := flags.String("reason", "", "terminate: why, `text` shown in the instance's error")
	name := flags.String("name", "", "ls: only instances of this workflow `name`")
	state := flags.String("state", "", "ls: only instances in this `state`: running, completed, failed or terminated")
	limit := flags.Int("limit", 1000, "ls: list at most `N` instances")
	pos, err := e.parse(flags, cmd, args)
	if err != nil {
		return nil, err
	}
	if len(pos) == 0 {
		return nil, usagef("missing start, status, raise, terminate, purge, ls or history")
	}
	w := &workflowCmd{action: pos[0], pos: pos[1:], flags: flags, output: *output}
	allowed, ok := workflowFlags[w.action]
	if !ok {
		return nil, usagef("unknown workflow command %q: want start, status, raise, terminate, purge, ls or history", w.action)
	}
	if err := exactArgs(w.pos, workflowArgs[w.action]...); err != nil {
		return nil, err
	}
	var stray []string
	flags.Visit(func(f *flag.Flag) {
		if f.Name != "engine" && !slices.Contains(allowed, f.Name) {
			stray = append(stray, "--"+f.Name)
		}
	})
	if len(stray) > 0 {
		return nil, usagef("%s takes no %s", w.action, strings.Join(stray, ", "))
	}
	if err := checkOutput(w.output); err != nil {
		return nil, err
	}
	if w.wait = isSet(flags, "wait"); w.wait {
		if *wait < 0 {
			return nil, usagef("--wait %s is negative", *wait)
		}
		w.waitFor, w.waitOption = *wait, flags.Lookup("wait").Value.String()
	}
	switch w.action {
	case "start":
		w.name = w.pos[0]
		if err := backend.ValidateName("workflow name", w.name); err != nil {
			return nil, &usageError{err}
		}
		if w.id = *id; w.id != "" {
			if err := checkInstanceID(w.id); err != nil {
				return nil, err
			}
		}
		if w.version = *version; w.version < 0 {
			return nil, usagef("--version %d is negative", w.version)
		}
		if w.input, err = e.workflowInput(flags, *input, *inputFile); err != nil {
			return nil, err
		}
	case "ls":
		if w.name = *name; w.name != "" {
			if err := backend.ValidateName("workflow name", w.name); err != nil {
				return nil, &usageError{err}
			}
		}
		switch w.state = workflow.State(*state); w.state {
		case "", workflow.StateRunning, workflow.StateCompleted, workflow.StateFailed, workflow.StateTerminated:
		default:
			return nil, usagef("--state %q is not running, completed, failed or terminated", *state)
		}
		if w.limit = *limit; w.limit <= 0 {
			return nil, usagef("--limit %d: want 1 or more", w.limit)
		}
	default: // the actions on one instance
		w.id = w.pos[0]
		if err := checkInstanceID(w.id); err != nil {
			return nil, err
		}
	}
	if w.action == "raise" {
		w.name, w.eventID, w.data = w.pos[1], *eventID, []byte("null")
		if len(w.name) > 256 {
			return nil, usagef("event name %.20q... is longer than 256 bytes", w.name)
		}
		if len(w.eventID) > 256 {
			return nil, usagef("--event-id %.20q... is longer than 256 bytes", w.eventID)
		}
		if isSet(flags, "data") {
			if w.data, err = checkJSON("--data", []byte(*data)); err != nil {
				return nil, err
			}
		}
	}
	w.reason = *reason
	return w, nil
}

// checkInstanceID checks an instance id as the workflow package does.
func checkInstanceID(id string) error {
	if err := backend.ValidateName("instance id", id); err != nil {
		return &usageError{err}
	}
	if len(id) > workflow.MaxInstanceIDLen {
		return usagef("instance id %.20q... is longer than %d bytes", id, workflow.MaxInstanceIDLen)
	}
	return nil
}

// workflowInput reads the input of start: --input, --input-file, or
// stdin when it is not a terminal. No input (or only white space) is null.
func (e *env) workflowInput(flags *flag.FlagSet, input, file string) ([]byte, error) {
	var (
		b    []byte
		what = "--input"
		err  error
	)
	switch {
	case isSet(flags, "input") && isSet(flags, "input-file"):
		return nil, usagef("give the input with --input or --input-file, not both")
	case isSet(flags, "input"):
		b = []byte(input)
	case file == "-", file == "" && !isTerminal(e.stdin):
		what = "the input from stdin"
		b, err = readInput(e.stdin, "stdin")
	case file != "":
		what = "the input from " + file
		f, ferr := os.Open(file)
		if ferr != nil {
			return nil, fmt.Errorf("read the input: %w", ferr)
		}
		defer f.Close()
		b, err = readInput(f, file)
	}
	if err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return []byte("null"), nil
	}
	return checkJSON(what, b)
}

// readInput reads all of r, up to maxBody bytes.
func readInput(r io.Reader, name string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxBody+1))
	if err != nil {
		return nil, fmt.Errorf("read the input from %s: %w", name, err)
	}
	if len(b) > maxBody {
		return nil, fmt.Errorf("the input from %s is larger than the limit of %d bytes", name, maxBody)
	}
	return b, nil
}

// checkJSON returns b if it is one JSON value, else a usage error naming
// what it is.
func checkJSON(what string, b []byte) ([]byte, error) {
	var v json.RawMessage
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, usagef("%s is not JSON: %v", what, err)
	}
	return b, nil
}

// workflowErr turns an error of the workflow engine into the command's:
// a missing instance and invalid arguments in plain words.
func workflowErr(w *workflowCmd, err error) error {
	text := strings.TrimPrefix(err.Error(), "workflow: ")
	switch {
	case errors.Is(err, workflow.ErrNotFound):
		return fmt.Errorf("workflow %s: no such instance %s (histories are kept for 24 hours by default)", w.action, w.id)
	case errors.Is(err, workflow.ErrInvalid), errors.Is(err, workflow.ErrBadInput):
		return &usageError{errors.New(text)}
	}
	if w.id != "" {
		return fmt.Errorf("workflow %s %s: %s", w.action, w.id, text)
	}
	return fmt.Errorf("workflow %s: %s", w.action, text)
}

// finishedText says how instance id finished: "has already completed".
func finishedText(ctx context.Context, wf *workflow.Engine, id string) string {
	st, err := wf.Status(ctx, id)
	if err != nil {
		return "has already finished"
	}
	return "has already " + finalVerb(st.State)
}

func finalVerb(s workflow.State) string {
	if s == workflow.StateTerminated {
		return "been terminated"
	}
	return string(s)
}

// failureText says why a finished instance has no output.
func failureText(st *workflow.Status) string {
	f := st.Error
	if f == nil {
		return string(st.State)
	}
	if f.Code == workflow.CodeTerminated {
		return "was terminated: " + f.Message // the reason
	}
	return string(st.State) + ": " + failure(f.Code, f.Message)
}

func (e *env) workflowStart(ctx context.Context, s *session, wf *workflow.Engine, w *workflowCmd) error {
	st, err := wf.StartJSON(ctx, w.name, w.input, workflow.StartOptions{ID: w.id, Version: w.version})
	if err != nil {
		return workflowErr(w, err)
	}
	w.id = st.ID
	if st.Name != w.name {
		return fmt.Errorf("workflow start: instance %s exists already, of workflow %s (purge it to start the id again)", st.ID, st.Name)
	}
	if !w.wait {
		if w.output == "json" {
			return writeJSON(e.stdout, newWorkflowStatusJSON(st))
		}
		if _, err := fmt.Fprintln(e.stdout, st.ID); err != nil {
			return fmt.Errorf("instance %s is started, but printing its id failed: %w", st.ID, err)
		}
		return nil
	}
	st, err = e.workflowWait(ctx, s, wf, w)
	if err != nil {
		return err
	}
	if w.output == "json" {
		if err := writeJSON(e.stdout, newWorkflowStatusJSON(st)); err != nil {
			return err
		}
	} else if st.State == workflow.StateCompleted && len(st.Output) > 0 {
		if _, err := fmt.Fprintf(e.stdout, "%s\n", st.Output); err != nil {
			return fmt.Errorf("write the output: %w", err)
		}
	}
	if st.State != workflow.StateCompleted {
		return fmt.Errorf("workflow start: instance %s %s", st.ID, failureText(st))
	}
	return nil
}

// workflowWait waits for instance w.id to finish, for at most --wait. It
// ends when the engine of s is lost: no change can come then.
func (e *env) workflowWait(ctx context.Context, s *session, wf *workflow.Engine, w *workflowCmd) (*workflow.Status, error) {
	wctx, cancel := withWaitTimeout(ctx, w.waitFor)
	defer cancel()
	wctx, stopWatch := cancelOnLost(wctx, s.backend)
	defer stopWatch()
	st, err := wf.Await(wctx, w.id)
	rerun := fmt.Sprintf("run 'rsvp workflow status %s --wait %s'", w.id, w.waitOption)
	again := rerun + " to wait again"
	switch {
	case err == nil:
		return st, nil
	case errors.Is(context.Cause(wctx), errEngineLost) || lostWith(err, s.backend):
		return nil, fmt.Errorf("workflow %s: lost the engine %s while waiting for instance %s (the process that ran it exited?); %s once it runs again",
			w.action, s.spec.raw, w.id, rerun)
	case errors.Is(context.Cause(wctx), errWaitTimeout):
		return nil, fmt.Errorf("workflow %s: instance %s has not finished within %s (is a workflow engine running it?); %s", w.action, w.id, w.waitFor, again)
	case ctx.Err() != nil:
		return nil, fmt.Errorf("workflow %s: interrupted while waiting for instance %s; %s", w.action, w.id, again)
	default:
		return nil, workflowErr(w, err)
	}
}

func (e *env) workflowStatus(ctx context.Context, s *session, wf *workflow.Engine, w *workflowCmd) error {
	var (
		st  *workflow.Status
		err error
	)
	if w.wait {
		if st, err = e.workflowWait(ctx, s, wf, w); err != nil {
			return err
		}
	} else if st, err = wf.Status(ctx, w.id); err != nil {
		return workflowErr(w, err)
	}
	v := newWorkflowStatusJSON(st)
	if w.output == "json" {
		return writeJSON(e.stdout, v)
	}
	return v.writeTable(e.stdout)
}

func (e *env) workflowList(ctx context.Context, wf *workflow.Engine, w *workflowCmd) error {
	sts, err := wf.List(ctx, workflow.ListQuery{Name: w.name, State: w.state, Limit: w.limit})
	if err != nil {
		return workflowErr(w, err)
	}
	if w.output == "json" {
		out := make([]workflowStatusJSON, len(sts))
		for i, st := range sts {
			out[i] = newWorkflowStatusJSON(st)
		}
		return writeJSON(e.stdout, out)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tVERSION\tSTATE\tCREATED\tUPDATED")
	for _, st := range sts {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.ID, st.Name, versionText(st.Version), st.State, timeText(st.CreatedAt), timeText(st.UpdatedAt))
	}
	return tw.Flush()
}

func (e *env) workflowHistory(ctx context.Context, wf *workflow.Engine, w *workflowCmd) error {
	hs, err := wf.History(ctx, w.id)
	if err != nil {
		return workflowErr(w, err)
	}
	if w.output == "json" {
		for i := range hs {
			hs[i].At = hs[i].At.UTC()
		}
		return writeJSON(e.stdout, hs)
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTYPE\tAT\tDATA")
	for _, h := range hs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", h.Seq, h.Type, timeText(h.At), preview(compactJSON(h.Data), 300))
	}
	return tw.Flush()
}

// workflowStatusJSON is an instance as 'rsvp workflow status', 'start' and
// 'ls' print it with --output json.
type workflowStatusJSON struct {
	ID           string            `json:"id"`
	Name         string            `json:"name"`
	Version      int               `json:"version,omitempty"` // 0: not chosen yet
	State        workflow.State    `json:"state"`
	CustomStatus json.RawMessage   `json:"custom_status,omitempty"`
	Input        json.RawMessage   `json:"input,omitempty"`
	Output       json.RawMessage   `json:"output,omitempty"`
	Error        *workflow.Failure `json:"error,omitempty"`
	CreatedAt    time.Time         `json:"created_at,omitzero"`
	UpdatedAt    time.Time         `json:"updated_at,omitzero"`
}

func newWorkflowStatusJSON(st *workflow.Status) workflowStatusJSON {
	return workflowStatusJSON{ID: st.ID, Name: st.Name, Version: st.Version, State: st.State,
		CustomStatus: st.CustomStatus, Input: st.Input, Output: st.Output, Error: st.Error,
		CreatedAt: st.CreatedAt.UTC(), UpdatedAt: st.UpdatedAt.UTC()}
}

// writeTable writes v as lines of "LABEL  value".
func (v *workflowStatusJSON) writeTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	line := func(label, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", label, fmt.Sprintf(format, args...))
	}
	line("ID", "%s", v.ID)
	line("NAME", "%s", v.Name)
	line("VERSION", "%s", versionText(v.Version))
	line("STATE", "%s", v.State)
	if len(v.CustomStatus) > 0 {
		line("CUSTOM STATUS", "%s", preview(compactJSON(v.CustomStatus), 500))
	}
	line("INPUT", "%s", preview(compactJSON(v.Input), 500))
	switch {
	case v.Error != nil:
		line("ERROR", "%s", oneLine(failure(v.Error.Code, v.Error.Message), 500))
	case v.State == workflow.StateCompleted:
		line("OUTPUT", "%s", preview(compactJSON(v.Output), 2000))
	}
	line("CREATED", "%s", timeText(v.CreatedAt))
	line("UPDATED", "%s", timeText(v.UpdatedAt))
	return tw.Flush()
}

// versionText shows a version, or "-" if it is not chosen yet (an
// instance started by name only, before an engine ran it).
func versionText(v int) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

// compactJSON returns JSON on one line (b itself if it is not JSON).
func compactJSON(b []byte) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return b
	}
	return buf.Bytes()
}

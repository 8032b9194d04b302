package cli

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// workflowEngine runs an embedded engine in a new directory, served to the
// commands of the test, and a workflow engine on it that runs "greet": it
// waits for the event "go", then returns "hello " and its input. It
// returns the --engine value.
func workflowEngine(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{Listen: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		b.Close()
		t.Fatal(err)
	}
	wf, err := workflow.New(c, workflow.Config{SweepInterval: 500 * time.Millisecond})
	if err == nil {
		err = workflow.Register(wf, "greet", func(ctx workflow.Context, name string) (string, error) {
			if err := workflow.SetCustomStatus(ctx, "waiting for go"); err != nil {
				return "", err
			}
			if _, err := workflow.WaitForEvent[json.RawMessage](ctx, "go", 0); err != nil {
				return "", err
			}
			return "hello " + name, nil
		})
	}
	if err == nil {
		err = wf.Start(ctx)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if wf != nil {
			if err := wf.Stop(ctx); err != nil {
				t.Errorf("stop the workflow engine: %v", err)
			}
		}
		if err := c.Close(ctx); err != nil {
			t.Errorf("close the client: %v", err)
		}
		if err := b.Close(); err != nil {
			t.Errorf("close the engine: %v", err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return "embedded:" + dir
}

// fields returns the lines of a table, each split into its columns.
func fields(out string) [][]string {
	var rows [][]string
	for l := range strings.Lines(out) {
		rows = append(rows, strings.Fields(l))
	}
	return rows
}

// label returns the value of LABEL in a "LABEL  value" table.
func label(t *testing.T, out, name string) string {
	t.Helper()
	for l := range strings.Lines(out) {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in:\n%s", name, out)
	return ""
}

// TestWorkflow drives instances of a workflow that this process runs only
// through 'rsvp workflow', as an operator would.
func TestWorkflow(t *testing.T) {
	t.Parallel()
	engine := workflowEngine(t)
	wfRun := func(args ...string) result {
		t.Helper()
		return run(t, nil, append(append([]string{"workflow"}, args...), "--engine", engine)...)
	}

	r := wfRun("start", "greet", "--id", "greet-1", "--input", `"world"`)
	r.want(t, 0)
	if r.stdout != "greet-1\n" || r.stderr != "" {
		t.Fatalf("start: stdout %q, stderr %q", r.stdout, r.stderr)
	}
	waitUntil(t, "greet-1 waits for its event", func() bool {
		r := wfRun("status", "greet-1")
		return r.code == 0 && strings.Contains(r.stdout, "waiting for go")
	})
	r = wfRun("status", "greet-1")
	r.want(t, 0)
	for name, want := range map[string]string{"ID": "greet-1", "NAME": "greet", "VERSION": "1", "STATE": "running",
		"CUSTOM STATUS": `"waiting for go"`, "INPUT": `"world"`} {
		if got := label(t, r.stdout, name); got != want {
			t.Errorf("status: %s %q, want %q\n%s", name, got, want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "OUTPUT") || strings.Contains(r.stdout, "ERROR") {
		t.Errorf("running instance shows an output or error:\n%s", r.stdout)
	}

	r = wfRun("raise", "greet-1", "go", "--data", `{"now": true}`, "--event-id", "go-1")
	r.want(t, 0)
	if r.stdout != "raised event go on instance greet-1\n" {
		t.Fatalf("raise: %q", r.stdout)
	}
	r = wfRun("status", "greet-1", "--wait", "20s")
	r.want(t, 0)
	if label(t, r.stdout, "STATE") != "completed" || label(t, r.stdout, "OUTPUT") != `"hello world"` {
		t.Fatalf("status --wait:\n%s", r.stdout)
	}
	r = wfRun("status", "greet-1", "--output", "json")
	r.want(t, 0)
	var st workflowStatusJSON
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("%v:\n%s", err, r.stdout)
	}
	if st.ID != "greet-1" || st.Name != "greet" || st.Version != 1 || st.State != workflow.StateCompleted ||
		string(st.Output) != `"hello world"` || st.Error != nil || st.CreatedAt.IsZero() || st.UpdatedAt.Before(st.CreatedAt) {
		t.Fatalf("status --output json: %+v", st)
	}

	// A finished instance takes no event, and no termination.
	wfRun("raise", "greet-1", "go").want(t, 1, "rsvp: workflow raise: instance greet-1 has already completed; event go not delivered")
	wfRun("terminate", "greet-1").want(t, 1, "rsvp: workflow terminate: instance greet-1 has already completed")

	// Terminate a running instance, twice; waiting for it tells why it ended.
	wfRun("start", "greet", "--id", "greet-2", "--input", `"two"`).want(t, 0)
	r = wfRun("terminate", "greet-2", "--reason", "changed my mind")
	r.want(t, 0)
	if r.stdout != "terminated instance greet-2\n" {
		t.Fatalf("terminate: %q", r.stdout)
	}
	wfRun("terminate", "greet-2").want(t, 1, "rsvp: workflow terminate: instance greet-2 has already been terminated")
	r = wfRun("status", "greet-2")
	r.want(t, 0)
	if label(t, r.stdout, "STATE") != "terminated" || !strings.Contains(label(t, r.stdout, "ERROR"), "changed my mind") {
		t.Fatalf("status of a terminated instance:\n%s", r.stdout)
	}
	// Starting an id that exists starts nothing: here it reports the end.
	r = wfRun("start", "greet", "--id", "greet-2", "--wait", "20s")
	r.want(t, 1, "rsvp: workflow start: instance greet-2 was terminated: changed my mind")
	if r.stdout != "" {
		t.Fatalf("start --wait of a terminated instance printed %q", r.stdout)
	}

	// start --wait prints the output once the event comes.
	done := make(chan result, 1)
	go func() {
		done <- run(t, nil, "workflow", "start", "greet", "--id", "greet-3", "--input", `"three"`, "--wait", "20s", "--engine", engine)
	}()
	waitUntil(t, "greet-3 started", func() bool { return wfRun("status", "greet-3").code == 0 })
	wfRun("raise", "greet-3", "go").want(t, 0)
	r = <-done
	r.want(t, 0)
	if r.stdout != "\"hello three\"\n" {
		t.Fatalf("start --wait: stdout %q", r.stdout)
	}

	// A wait that runs out, and a purge of a running instance.
	r = wfRun("start", "greet", "--id", "greet-4", "--output", "json")
	r.want(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.ID != "greet-4" || st.State != workflow.StateRunning {
		t.Fatalf("start --output json: %v:\n%s", err, r.stdout)
	}
	wfRun("status", "greet-4", "--wait", "200ms").want(t, 1,
		"rsvp: workflow status: instance greet-4 has not finished within 200ms", "run 'rsvp workflow status greet-4 --wait 200ms' to wait again")
	wfRun("purge", "greet-4").want(t, 1, "rsvp: workflow purge: instance greet-4 is still running: terminate it first")

	r = wfRun("ls")
	r.want(t, 0)
	rows := fields(r.stdout)
	if len(rows) != 5 || strings.Join(rows[0], " ") != "ID NAME VERSION STATE CREATED UPDATED" {
		t.Fatalf("ls:\n%s", r.stdout)
	}
	for i, want := range [][]string{{"greet-4", "running"}, {"greet-3", "completed"}, {"greet-2", "terminated"}, {"greet-1", "completed"}} {
		if row := rows[i+1]; len(row) != 6 || row[0] != want[0] || row[1] != "greet" || row[3] != want[1] {
			t.Errorf("ls row %d: %q, want %v", i+1, row, want)
		}
	}
	r = wfRun("ls", "--state", "completed", "--name", "greet", "--limit", "1", "--output", "json")
	r.want(t, 0)
	var list []workflowStatusJSON
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil || len(list) != 1 || list[0].ID != "greet-3" {
		t.Fatalf("ls --state completed --limit 1: %v:\n%s", err, r.stdout)
	}
	r = wfRun("ls", "--name", "other")
	r.want(t, 0)
	if len(fields(r.stdout)) != 1 {
		t.Fatalf("ls --name other:\n%s", r.stdout)
	}

	r = wfRun("history", "greet-1")
	r.want(t, 0)
	rows = fields(r.stdout)
	if len(rows) < 4 || strings.Join(rows[0], " ") != "SEQ TYPE AT DATA" {
		t.Fatalf("history:\n%s", r.stdout)
	}
	var types []string
	for _, row := range rows[1:] {
		types = append(types, row[1])
	}
	if types[0] != "wf.started" || types[len(types)-1] != "wf.completed" || !strings.Contains(r.stdout, `"event_id":"go-1"`) {
		t.Fatalf("history:\n%s", r.stdout)
	}
	r = wfRun("history", "greet-1", "--output", "json")
	r.want(t, 0)
	var hist []workflow.HistoryEvent
	if err := json.Unmarshal([]byte(r.stdout), &hist); err != nil || len(hist) != len(rows)-1 || hist[0].Type != "wf.started" {
		t.Fatalf("history --output json: %v:\n%s", err, r.stdout)
	}

	r = wfRun("purge", "greet-1")
	r.want(t, 0)
	if r.stdout != "purged instance greet-1\n" {
		t.Fatalf("purge: %q", r.stdout)
	}
	wfRun("status", "greet-1").want(t, 1, "rsvp: workflow status: no such instance greet-1")
	wfRun("purge", "greet-1").want(t, 1, "rsvp: workflow purge: no such instance greet-1")
	if r := wfRun("ls"); strings.Contains(r.stdout, "greet-1") {
		t.Fatalf("ls lists the purged instance:\n%s", r.stdout)
	}
	wfRun("terminate", "greet-4").want(t, 0)
}

func TestWorkflowErrors(t *testing.T) {
	t.Parallel()
	engine := workflowEngine(t)

	for _, tc := range []struct {
		args  []string
		stdin string
		want  string
	}{
		{args: []string{}, want: "missing start, status, raise, terminate, purge, ls or history"},
		{args: []string{"frob"}, want: `unknown workflow command "frob"`},
		{args: []string{"start"}, want: "missing NAME"},
		{args: []string{"start", "greet", "extra"}, want: `unexpected argument "extra"`},
		{args: []string{"status"}, want: "missing ID"},
		{args: []string{"raise"}, want: "missing ID and EVENT"},
		{args: []string{"raise", "x"}, want: "missing EVENT"},
		{args: []string{"history"}, want: "missing ID"},
		{args: []string{"start", "greet", "--input", "{bad"}, want: "--input is not JSON: invalid character"},
		{args: []string{"start", "greet", "--input", `"a" "b"`}, want: "--input is not JSON"},
		{args: []string{"start", "greet"}, stdin: "not json", want: "the input from stdin is not JSON"},
		{args: []string{"start", "greet", "--input-file", "-"}, stdin: "[1,", want: "the input from stdin is not JSON"},
		{args: []string{"start", "greet", "--input", "1", "--input-file", "-"}, want: "give the input with --input or --input-file, not both"},
		{args: []string{"start", "greet", "--id", "bad id"}, want: "instance id"},
		{args: []string{"start", "greet", "--id", strings.Repeat("x", 65)}, want: `instance id "xxxxxxxxxxxxxxxxxxxx"... is longer than 64 bytes`},
		{args: []string{"start", "greet", "--version", "-1"}, want: "--version -1 is negative"},
		{args: []string{"start", "greet", "--wait", "-1s"}, want: "--wait -1s is negative"},
		{args: []string{"start", "greet", "--reason", "r"}, want: "start takes no --reason"},
		{args: []string{"status", "x", "--data", "1", "--limit", "3"}, want: "status takes no --data, --limit"},
		{args: []string{"raise", "x", "go", "--data", "nope"}, want: "--data is not JSON"},
		{args: []string{"purge", "x", "--output", "json"}, want: "purge takes no --output"},
		{args: []string{"ls", "--state", "paused"}, want: `--state "paused" is not running, completed, failed or terminated`},
		{args: []string{"ls", "--limit", "0"}, want: "--limit 0: want 1 or more"},
		{args: []string{"ls", "--output", "yaml"}, want: `--output "yaml" is not table or json`},
		{args: []string{"ls", "--name", "bad name"}, want: "workflow name"},
	} {
		args := append(append([]string{"workflow"}, tc.args...), "--engine", engine)
		r := run(t, strings.NewReader(tc.stdin), args...)
		if r.code != 2 || !strings.Contains(r.stderr, "rsvp workflow: "+tc.want) || !strings.Contains(r.stderr, "Run 'rsvp help workflow' for usage.") {
			t.Errorf("%q: exit %d, stderr %q; want 2 and %q", tc.args, r.code, r.stderr, tc.want)
		}
		if r.stdout != "" {
			t.Errorf("%q: stdout %q, want nothing", tc.args, r.stdout)
		}
	}
	// None of the bad starts stored an instance.
	r := run(t, nil, "workflow", "ls", "--output", "json", "--engine", engine)
	r.want(t, 0)
	if strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("ls after bad starts: %s", r.stdout)
	}

	for _, args := range [][]string{
		{"status", "nope"},
		{"status", "nope", "--wait", "5s"},
		{"raise", "nope", "go"},
		{"terminate", "nope"},
		{"purge", "nope"},
		{"history", "nope"},
	} {
		r := run(t, nil, append(append([]string{"workflow"}, args...), "--engine", engine)...)
		r.want(t, 1, "rsvp: workflow "+args[0]+": no such instance nope")
		if r.stdout != "" {
			t.Errorf("%q: stdout %q, want nothing", args, r.stdout)
		}
	}

	r = run(t, nil, "workflow", "ls", "--engine", "nats://127.0.0.1:1")
	r.want(t, 1, "rsvp: cannot open engine nats://127.0.0.1:1: ")
	missing := t.TempDir() + "/none"
	r = run(t, nil, "workflow", "status", "x", "--engine", "embedded:"+missing)
	r.want(t, 1, "rsvp: no engine at embedded:"+missing)
}

// TestWorkflowWaitLosesEngine: 'rsvp workflow status --wait' ends with a
// clear message, not the engine's raw error, when the process that runs
// the embedded engine it uses exits.
func TestWorkflowWaitLosesEngine(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	engine := "embedded:" + dir
	w := startWorker(t, engine, "other", "--exec", "cat") // runs the engine
	// No engine runs workflow "nobody-runs": the instance stays pending.
	run(t, nil, "workflow", "start", "nobody-runs", "--id", "lost-1", "--engine", engine).want(t, 0)
	r := runUntilEngineLost(t, w, dir, "SUB rsvp.evnote.", "workflow", "status", "lost-1", "--wait", "0", "--engine", engine)
	r.want(t, 1, "lost the engine", "instance lost-1", "rsvp workflow status lost-1 --wait 0")
}

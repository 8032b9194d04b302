package workflow_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
	"github.com/rsvp-go/rsvp/workflow"
)

// The kill test: a child process runs the embedded engine (on disk, fsync
// on), a workflow engine and the activities' responders, and starts
// approval and fan-out instances; it is killed with SIGKILL at a random
// moment (in an activity, between an activity and its reply, while an
// instance sleeps or waits for its event), and a new child continues on
// the same directory, a few times. Then the test runs the engine itself
// until every instance finished, and checks: each acknowledged instance
// completed with the right result (so no raised event was lost), every
// activity attempt's side effect happened at most its responder's attempt
// budget, every result and every timer is recorded once.

const (
	wfKillDirEnv   = "RSVP_WF_KILL_DIR"
	wfKillRoundEnv = "RSVP_WF_KILL_ROUND"
	wfKillStarted  = "started " // the child prints it once StartInstance returned
	wfKillReady    = "ready"
	wfKillPerRound = 10 // instances of each workflow a child starts
	wfKillBudget   = 10
)

func init() { children["wf-worker"] = wfWorker }

// wfKillWorkflows registers the workflows of the kill test.
func wfKillWorkflows(e *workflow.Engine) {
	_ = workflow.Register(e, "approvalK", func(ctx workflow.Context, doc Document) (string, error) {
		if _, err := workflow.CallActivity[string](ctx, "ReviewDocument", doc, workflow.ActivityOptions{}).Get(ctx); err != nil {
			return "", err
		}
		if err := workflow.Sleep(ctx, 150*time.Millisecond); err != nil {
			return "", err
		}
		decision, err := workflow.WaitForEvent[string](ctx, "ApprovalReceived", 0)
		if err != nil || decision != "Approved" {
			return "", fmt.Errorf("decision %q, %v", decision, err)
		}
		return workflow.CallActivity[string](ctx, "PublishDocument", doc, workflow.ActivityOptions{}).Get(ctx)
	})
	_ = workflow.Register(e, "fanK", func(ctx workflow.Context, n int) (int, error) {
		var fs []workflow.Awaitable
		var calls []workflow.Future[int]
		for i := range n {
			f := workflow.CallActivity[int](ctx, "resize", i, workflow.ActivityOptions{})
			fs, calls = append(fs, f), append(calls, f)
		}
		if err := workflow.AwaitAll(ctx, fs...); err != nil {
			return 0, err
		}
		sum := 0
		for _, f := range calls {
			v, _ := f.Get(ctx)
			sum += v
		}
		return sum, workflow.Sleep(ctx, 50*time.Millisecond)
	})
}

// wfKillResponders answers the activities, logging each side effect (with
// fsync) to dir/effects.log before replying.
func wfKillResponders(c *rsvp.Client, dir string) (stop func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "effects.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_SYNC, 0o644)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	opts := rsvp.HandleOptions{Concurrency: 8, MaxAttempts: wfKillBudget, Lease: time.Second}
	var rs []*rsvp.Responder
	for _, q := range []string{"ReviewDocument", "PublishDocument", "resize"} {
		r, err := c.Handle(q, rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
			time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond) // work, during which a kill may come
			var out any
			if q == "resize" {
				var n int
				if err := json.Unmarshal(m.Body, &n); err != nil {
					return nil, rsvp.Permanent(err)
				}
				out = n * n
			} else {
				var d Document
				if err := json.Unmarshal(m.Body, &d); err != nil {
					return nil, rsvp.Permanent(err)
				}
				out = map[string]string{"ReviewDocument": "reviewed ", "PublishDocument": "published "}[q] + d.ID
			}
			mu.Lock()
			_, err := fmt.Fprintf(f, "%s %s\n", q, m.CorrelationID)
			mu.Unlock()
			if err != nil {
				return nil, err
			}
			body, _ := json.Marshal(out)
			return &rsvp.Reply{Body: body, ContentType: "application/json"}, nil
		}), opts)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, r := range rs {
			_ = r.Stop(ctx)
		}
		_ = f.Close()
	}, nil
}

// wfRaiser raises each running approval instance's decision, over and over
// with the same event id, until stop: raises before and after the
// instance waits, and duplicates.
func wfRaiser(ctx context.Context, e *workflow.Engine) {
	for ctx.Err() == nil {
		list, _ := e.List(ctx, workflow.ListQuery{Name: "approvalK", State: workflow.StateRunning})
		for _, st := range list {
			_ = e.RaiseEvent(ctx, st.ID, "ApprovalReceived", "Approved", "decision-"+st.ID)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func wfKillEngine(c *rsvp.Client, log *slog.Logger) (*workflow.Engine, error) {
	e, err := workflow.New(c, workflow.Config{Lease: time.Second, SweepInterval: 500 * time.Millisecond, Logger: log})
	if err != nil {
		return nil, err
	}
	wfKillWorkflows(e)
	return e, nil
}

// wfWorker is the child: it runs everything and starts instances until
// it is killed.
func wfWorker() int {
	dir, round := os.Getenv(wfKillDirEnv), os.Getenv(wfKillRoundEnv)
	ctx := context.Background()
	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c, err := rsvp.New(ctx, b, rsvp.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := wfKillResponders(c, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	e, err := wfKillEngine(c, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err == nil {
		err = e.Start(ctx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go wfRaiser(ctx, e)
	fmt.Println(wfKillReady)
	for i := 0; ; i++ { // until killed
		for _, s := range []struct {
			name, id string
			in       any
		}{
			{"approvalK", fmt.Sprintf("ap-%s-%d", round, i), Document{ID: fmt.Sprintf("doc-%s-%d", round, i)}},
			{"fanK", fmt.Sprintf("fan-%s-%d", round, i), 3 + i},
		} {
			if _, err := e.StartInstance(ctx, s.name, s.in, workflow.StartOptions{ID: s.id}); err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			fmt.Println(wfKillStarted + s.id)
		}
		time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
	}
}

func TestKillWorkflows(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	dir := t.TempDir()
	var acked []string
	for round := range 3 {
		acked = append(acked, runWFKillRound(t, dir, round)...)
	}
	if len(acked) == 0 {
		t.Fatal("no instance was started before the kills")
	}
	drainWorkflows(t, dir, acked)
}

func runWFKillRound(t *testing.T, dir string, round int) (ids []string) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RSVP_TEST_CHILD=wf-worker", wfKillDirEnv+"="+dir, wfKillRoundEnv+"="+strconv.Itoa(round))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// Kill at a random moment after the engine is up, while it starts
	// instances and runs those started before.
	var killAt <-chan time.Time
	deadline := time.After(30 * time.Second)
	for alive := true; alive; {
		select {
		case line, ok := <-lines:
			if !ok {
				alive = false
				break
			}
			switch {
			case line == wfKillReady:
				killAt = time.After(time.Duration(200+rand.IntN(1000)) * time.Millisecond)
			case strings.HasPrefix(line, wfKillStarted):
				ids = append(ids, strings.TrimPrefix(line, wfKillStarted))
			default:
				t.Errorf("round %d: unexpected child output %q", round, line)
			}
		case <-killAt:
			_ = cmd.Process.Kill()
			killAt = nil
		case <-deadline:
			_ = cmd.Process.Kill()
			t.Errorf("round %d: the child was not ready in time", round)
			deadline = nil
		}
	}
	_ = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: child did not die of SIGKILL: %v\nstderr:\n%s", round, cmd.ProcessState, stderr.String())
	}
	t.Logf("round %d: killed after %d starts", round, len(ids))
	return ids
}

// drainWorkflows runs the engine the children left until every instance
// finished, and checks the outcome.
func drainWorkflows(t *testing.T, dir string, acked []string) {
	ctx := ctxT(t, 30*time.Second)
	b, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	c := must[*rsvp.Client](t)(rsvp.New(ctx, b, rsvp.Config{}))
	defer c.Close(context.Background())
	stopResponders := must[func()](t)(wfKillResponders(c, dir))
	defer stopResponders()
	e := must[*workflow.Engine](t)(wfKillEngine(c, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))))
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer e.Stop(context.Background())
	raiseCtx, stopRaising := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { wfRaiser(raiseCtx, e) })
	defer wg.Wait()
	defer stopRaising()

	all := must[[]*workflow.Status](t)(e.List(ctx, workflow.ListQuery{}))
	listed := map[string]bool{}
	for _, st := range all {
		listed[st.ID] = true
	}
	for _, id := range acked {
		if !listed[id] {
			t.Errorf("instance %s was started (acknowledged) but is not listed", id)
		}
	}
	ackedSet := map[string]bool{}
	for _, id := range acked {
		ackedSet[id] = true
	}
	for _, listed := range all {
		st, err := e.Await(ctx, listed.ID)
		if errors.Is(err, workflow.ErrNotFound) && !ackedSet[listed.ID] {
			continue // a start killed half-way, never acknowledged
		}
		if err != nil {
			h, _ := e.History(context.Background(), listed.ID)
			for _, ev := range h {
				t.Logf("%s history: %d %s %s %s", listed.ID, ev.Seq, ev.At.Format("15:04:05.000"), ev.Type, ev.Data)
			}
			t.Fatalf("%s did not finish: %v", listed.ID, err)
		}
		var want string
		if strings.HasPrefix(st.ID, "ap-") {
			want = strconv.Quote("published " + strings.Replace(st.ID, "ap-", "doc-", 1))
		} else {
			n, _ := strconv.Atoi(st.ID[strings.LastIndexByte(st.ID, '-')+1:])
			sum := 0
			for i := range 3 + n {
				sum += i * i
			}
			want = strconv.Itoa(sum)
		}
		if st.State != workflow.StateCompleted || string(st.Output) != want {
			t.Errorf("%s: %s, output %s, error %v; want completed with %s", st.ID, st.State, st.Output, st.Error, want)
		}
		checkRecordedOnce(t, ctx, e, st.ID)
	}
	stopRaising()
	wg.Wait()
	stopResponders()

	data, err := os.ReadFile(filepath.Join(dir, "effects.log"))
	if err != nil {
		t.Fatal(err)
	}
	effects := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		effects[line]++
	}
	redone := 0
	for k, n := range effects {
		if n > wfKillBudget {
			t.Errorf("side effect %q applied %d times, budget %d", k, n, wfKillBudget)
		}
		if n > 1 {
			redone++
		}
	}
	t.Logf("%d instances (%d acknowledged), %d activity attempts, %d of them redone after a kill",
		len(all), len(acked), len(effects), redone)
}

// checkRecordedOnce checks instance id's history has one result per
// activity attempt and one firing per timer.
func checkRecordedOnce(t *testing.T, ctx context.Context, e *workflow.Engine, id string) {
	t.Helper()
	h := must[[]workflow.HistoryEvent](t)(e.History(ctx, id))
	seen := map[string]int{}
	for _, ev := range h {
		if ev.Type != "wf.result" && ev.Type != "wf.timer" {
			continue
		}
		var r struct {
			Epoch, Seq, Attempt int
			Kind                string
		}
		_ = json.Unmarshal(ev.Data, &r)
		k := fmt.Sprintf("%s %d/%d/%d/%s", ev.Type, r.Epoch, r.Seq, r.Attempt, r.Kind)
		if seen[k]++; seen[k] > 1 {
			t.Errorf("%s: %s recorded %d times", id, k, seen[k])
		}
	}
}

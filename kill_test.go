package rsvp_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// The crash-durability test: a child process running the embedded engine
// (default Sync, i.e. SyncAlways) acknowledges sends, is killed with SIGKILL
// at a random moment, and is restarted on the same directory, a few times.
// Then the test opens the engine itself and checks that every request whose
// Send returned nil is processed and its one final reply retrievable by Await.

const (
	killDirEnv    = "RSVP_KILL_DIR"    // engine directory of the kill-sender child
	killRoundEnv  = "RSVP_KILL_ROUND"  // round number, the prefix of its ids
	killSeedEnv   = "RSVP_KILL_SEED"   // set to replay a failing run
	killRoundsEnv = "RSVP_KILL_ROUNDS" // set to kill more often, for a soak run
	killQueue     = "crash"
	killAckLine   = "ack "  // kill-sender prints killAckLine+id once Send returned nil
	killReady     = "ready" // kill-sender prints this once its engine is open
	killRounds    = 3       // children killed on the same directory, by default
	killMinAcks   = 50      // the child is killed after a random number of
	killMaxAcks   = 400     // acknowledged sends in [killMinAcks, killMaxAcks]
	killSenders   = 8       // concurrent senders in the child
	handledByHdr  = "Handled-By"
)

func init() {
	children["kill-sender"] = killSender
}

// killBody is the body of request id; killReplyBody(killBody(id)) is the
// only acceptable final reply body.
func killBody(id string) []byte { return []byte("payload:" + id) }

func killReplyBody(reqBody []byte) []byte { return append([]byte("done:"), reqBody...) }

// killHandler answers with a body derived from the request only, and a
// header naming the process and attempt that produced the reply: a request
// handled twice with both replies surviving would show as two replies that
// differ in that header.
func killHandler(who string) rsvp.Handler {
	return rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		return &rsvp.Reply{
			Body:        killReplyBody(m.Body),
			ContentType: "text/plain",
			Headers:     map[string]string{handledByHdr: fmt.Sprintf("%s/pid-%d/attempt-%d", who, os.Getpid(), m.Attempt)},
		}, nil
	})
}

// killHandleOptions: a short lease so that requests a killed child had
// leased come back quickly, and enough attempts that redeliveries caused by
// kills (or by a slow, race-instrumented handler) never dead-letter one.
func killHandleOptions() rsvp.HandleOptions {
	return rsvp.HandleOptions{Concurrency: 4, MaxAttempts: 1000, Lease: 2 * time.Second}
}

// killSender is the child: it opens the engine in $RSVP_KILL_DIR, answers
// requests on killQueue, and sends requests from killSenders goroutines,
// printing each id once its Send has returned nil. It runs until killed.
func killSender() int {
	dir, round := os.Getenv(killDirEnv), os.Getenv(killRoundEnv)
	if dir == "" || round == "" {
		fmt.Fprintf(os.Stderr, "kill-sender: %s and %s must be set\n", killDirEnv, killRoundEnv)
		return 2
	}
	// Last resort if the parent vanished without killing us (it also sets
	// Pdeathsig, and a closed stdout ends us with SIGPIPE).
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	be, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "kill-sender: open engine:", err)
		return 1
	}
	defer be.Close()
	c, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "kill-sender: new client:", err)
		return 1
	}
	defer c.Close(context.Background())
	if _, err := c.Handle(killQueue, killHandler("round-"+round), killHandleOptions()); err != nil {
		fmt.Fprintln(os.Stderr, "kill-sender: handle:", err)
		return 1
	}

	// os.Stdout is unbuffered: each line is one write(2) of well under
	// PIPE_BUF bytes, so it reaches the pipe whole, and before the next Send
	// it acknowledges could start. The mutex keeps the lines in order of
	// writing; they would not interleave anyway.
	var mu sync.Mutex
	writeLine := func(line string) error {
		mu.Lock()
		defer mu.Unlock()
		_, err := os.Stdout.Write([]byte(line + "\n"))
		return err
	}
	if err := writeLine(killReady); err != nil {
		return 1
	}

	var next atomic.Int64
	errc := make(chan error, killSenders)
	for range killSenders {
		go func() {
			for {
				id := fmt.Sprintf("r%s-%06d", round, next.Add(1))
				if _, err := c.Send(ctx, killQueue, &rsvp.Message{ID: id, Body: killBody(id)}); err != nil {
					errc <- fmt.Errorf("send %s: %w", id, err)
					return
				}
				if err := writeLine(killAckLine + id); err != nil {
					errc <- fmt.Errorf("report %s: %w", id, err)
					return
				}
			}
		}()
	}
	// Only an error ends the child before the kill. Exit at once, leaving the
	// other senders running: the parent reports this as a failure.
	fmt.Fprintln(os.Stderr, "kill-sender:", <-errc)
	os.Exit(1)
	return 1
}

func TestKillDurability(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills child processes; skipped with -short")
	}
	start := time.Now()
	seed := time.Now().UnixNano()
	if s := os.Getenv(killSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", killSeedEnv, s, err)
		}
	}
	t.Logf("seed %d (rerun with the same kill targets: %s=%d)", seed, killSeedEnv, seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6b696c6c))
	rounds := killRounds
	if s := os.Getenv(killRoundsEnv); s != "" {
		var err error
		if rounds, err = strconv.Atoi(s); err != nil || rounds < 1 {
			t.Fatalf("%s=%q: want a positive number", killRoundsEnv, s)
		}
	}
	dir := t.TempDir()

	var acked []string // every id whose Send returned nil, in all rounds
	seen := make(map[string]bool)
	for round := range rounds {
		target := killMinAcks + rng.IntN(killMaxAcks-killMinAcks+1)
		ids, startup := runKillRound(t, dir, round, target)
		for _, id := range ids {
			if seen[id] {
				t.Fatalf("round %d: id %s acknowledged twice", round, id)
			}
			seen[id] = true
		}
		acked = append(acked, ids...)
		t.Logf("round %d: engine open after %v, killed after %d acks; %d acknowledged in all (%d printed after the kill was decided)",
			round, startup.Round(time.Millisecond), target, len(ids), len(ids)-target)
	}
	t.Logf("%d requests acknowledged in %d rounds, %v", len(acked), rounds, time.Since(start).Round(time.Millisecond))
	drainKilled(t, dir, acked)
	t.Logf("total %v", time.Since(start).Round(time.Millisecond))
}

// runKillRound starts a kill-sender child on dir, kills it with SIGKILL once
// it has acknowledged target sends, and returns every id it acknowledged
// (those printed after target too: their Send returned before the kill) and
// how long its engine took to open.
func runKillRound(t *testing.T, dir string, round, target int) (ids []string, startup time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RSVP_TEST_CHILD=kill-sender", killDirEnv+"="+dir, killRoundEnv+"="+strconv.Itoa(round))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr bytes.Buffer // read only after Wait
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	lines := make(chan string)
	go func() {
		defer close(lines)
		r := bufio.NewReader(stdout)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				// EOF: the child is dead. A last line without its newline
				// (impossible with one write per line) would not count as
				// an acknowledgement.
				return
			}
			lines <- strings.TrimSuffix(line, "\n")
		}
	}()

	// Whatever happens, the child is dead and reaped, and the reader done,
	// when this returns.
	var killOnce sync.Once
	kill := func() { killOnce.Do(func() { _ = cmd.Process.Kill() }) } // SIGKILL
	waited := false
	defer func() {
		if !waited {
			kill()
			for range lines {
			}
			_ = cmd.Wait()
			if s := stderr.String(); s != "" {
				t.Logf("round %d child stderr:\n%s", round, s)
			}
		}
	}()

	readLine := func() (string, bool) {
		select {
		case line, ok := <-lines:
			return line, ok
		case <-ctx.Done():
			t.Fatalf("round %d: child gave no output for too long (%d acks so far, want %d): %v", round, len(ids), target, context.Cause(ctx))
			return "", false
		}
	}
	handle := func(line string) {
		switch {
		case line == killReady:
			startup = time.Since(began)
		case strings.HasPrefix(line, killAckLine):
			ids = append(ids, strings.TrimPrefix(line, killAckLine))
		default:
			t.Errorf("round %d: unexpected child output %q", round, line)
		}
	}
	for len(ids) < target {
		line, ok := readLine()
		if !ok {
			waited = true
			err := cmd.Wait()
			t.Fatalf("round %d: child exited before it was killed (%d acks, want %d): %v\nstderr:\n%s", round, len(ids), target, err, stderr.String())
		}
		handle(line)
	}
	kill()
	// Lines already written before the kill are acknowledgements too.
	for {
		line, ok := readLine()
		if !ok {
			break
		}
		handle(line)
	}
	waited = true
	err = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %d: child did not die of SIGKILL: %v\nstderr:\n%s", round, err, stderr.String())
	}
	if s := stderr.String(); s != "" {
		t.Logf("round %d child stderr:\n%s", round, s)
	}
	return ids, startup
}

// drainKilled opens the engine the children left in dir, answers what is
// left, and checks that every acknowledged request has exactly one final
// reply, the expected one.
func drainKilled(t *testing.T, dir string, acked []string) {
	// About 1k requests with the default rounds; more in a soak run.
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second+time.Duration(len(acked))*5*time.Millisecond)
	defer cancel()

	began := time.Now()
	be, err := rsvpnats.Embedded(dir, rsvpnats.Options{})
	if err != nil {
		t.Fatal("reopen the engine after the kills:", err)
	}
	defer func() {
		if err := be.Close(); err != nil {
			t.Errorf("close backend: %v", err)
		}
	}()
	c, err := rsvp.New(ctx, be, rsvp.Config{RecheckInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer ccancel()
		if err := c.Close(cctx); err != nil {
			t.Errorf("close client: %v", err)
		}
	}()
	t.Logf("drain: engine reopened in %v", time.Since(began).Round(time.Millisecond))

	// Replies the children stored before they died.
	before := make(map[string]*rsvp.Reply)
	for _, id := range acked {
		r, err := be.GetReply(ctx, id)
		if err != nil {
			if !errors.Is(err, backend.ErrNotFound) {
				t.Fatalf("drain: get reply %s before answering: %v", id, err)
			}
			continue
		}
		checkKillReply(t, "stored before the drain", id, r)
		before[id] = r
	}
	t.Logf("drain: %d of %d acknowledged requests were answered before the drain, %d left", len(before), len(acked), len(acked)-len(before))

	if _, err := c.Handle(killQueue, killHandler("drain"), killHandleOptions()); err != nil {
		t.Fatal(err)
	}

	// Await them all, a few at a time.
	type result struct {
		id     string
		r1, r2 *rsvp.Reply
		err    error
	}
	work := make(chan string)
	results := make(chan result)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				res := result{id: id}
				res.r1, res.err = c.Await(ctx, id)
				if res.err == nil {
					res.r2, res.err = c.Await(ctx, id) // answered now: must not change
				}
				results <- res
			}
		}()
	}
	go func() {
		defer close(work)
		for _, id := range acked {
			select {
			case work <- id:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()

	byHandler := make(map[string]int)
	var lost, wrong int
	for res := range results {
		if res.r1 != nil && res.err != nil {
			// A failure reply (*RemoteError): stored, but not the right one.
			if wrong++; wrong <= 10 {
				t.Errorf("request %s: Await: %v; reply %s", res.id, res.err, describeReply(res.r1))
			}
			continue
		}
		if res.err != nil {
			if lost++; lost <= 10 {
				t.Errorf("request %s: acknowledged, but Await: %v", res.id, res.err)
			}
			continue
		}
		checkKillReply(t, "first Await", res.id, res.r1)
		checkKillReply(t, "second Await", res.id, res.r2)
		if !sameReply(res.r1, res.r2) {
			t.Errorf("request %s: two Awaits returned different replies: %s and %s", res.id, describeReply(res.r1), describeReply(res.r2))
		}
		if b := before[res.id]; b != nil && !sameReply(b, res.r1) {
			t.Errorf("request %s: the reply stored before the drain, %s, was replaced by %s", res.id, describeReply(b), describeReply(res.r1))
		}
		who, _, _ := strings.Cut(res.r1.Headers[handledByHdr], "/")
		byHandler[who]++
	}
	if lost+wrong > 0 {
		t.Fatalf("of %d acknowledged requests, %d have no reply (lost) and %d a failure reply", len(acked), lost, wrong)
	}
	t.Logf("drain: all %d acknowledged requests answered in %v; replies by handler: %v",
		len(acked), time.Since(began).Round(time.Millisecond), byHandler)

	// The reply stream itself: exactly one stored reply per acknowledged
	// request (docs: rsvp.reply.<correlation id>.<inbox>).
	js, err := jetstream.New(be.Conn())
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "RSVP_REPLIES")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter("rsvp.reply.>"))
	if err != nil {
		t.Fatal(err)
	}
	perID := make(map[string]uint64)
	for subj, n := range info.State.Subjects {
		id, _, _ := strings.Cut(strings.TrimPrefix(subj, "rsvp.reply."), ".")
		perID[id] += n
	}
	for _, id := range acked {
		if n := perID[id]; n != 1 {
			t.Errorf("request %s: %d replies stored, want exactly 1", id, n)
		}
	}

	// Nothing was given up on.
	dls, err := be.DeadLetters(ctx, backend.DeadLetterQuery{Queue: killQueue, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	for _, dl := range dls {
		t.Errorf("dead letter %s: %s: %s (attempt %d)", dl.Message.ID, dl.Reason, dl.LastError, dl.Message.Attempt)
	}
}

func checkKillReply(t *testing.T, what, id string, r *rsvp.Reply) {
	t.Helper()
	want := killReplyBody(killBody(id))
	if r.CorrelationID != id || r.Status != backend.StatusSucceeded || !bytes.Equal(r.Body, want) {
		t.Errorf("request %s (%s): reply %s, want a succeeded reply %q", id, what, describeReply(r), want)
	}
}

func sameReply(a, b *rsvp.Reply) bool {
	return a.CorrelationID == b.CorrelationID && a.Status == b.Status && bytes.Equal(a.Body, b.Body) &&
		a.Headers[handledByHdr] == b.Headers[handledByHdr] && a.CreatedAt.Equal(b.CreatedAt)
}

func describeReply(r *rsvp.Reply) string {
	return fmt.Sprintf("{correlation %s, status %s, code %q, body %q, by %q, at %s}",
		r.CorrelationID, r.Status, r.ErrorCode, r.Body, r.Headers[handledByHdr], r.CreatedAt.Format(time.RFC3339Nano))
}

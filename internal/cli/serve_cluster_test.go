package cli

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/internal/natstest"
)

// serveChild runs `rsvp serve` in a child process and returns its base URL.
func serveChild(t *testing.T, args ...string) string {
	t.Helper()
	child := exec.Command(os.Args[0], append([]string{"serve", "--addr", "127.0.0.1:0"}, args...)...)
	child.Env = append(os.Environ(), childEnv+"=1")
	log := newLogBuffer()
	child.Stderr, child.Stdout = log, io.Discard
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	t.Cleanup(func() {
		_ = child.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("rsvp serve child: %v; its log:\n%s", err, log)
			}
		case <-time.After(waitTimeout):
			_ = child.Process.Kill()
			<-exited
			t.Errorf("rsvp serve child did not stop on SIGTERM; its log:\n%s", log)
		}
	})
	log.waitFor(t, "listening on http://")
	m := listeningRE.FindStringSubmatch(log.String())
	if m == nil {
		t.Fatalf("no address in the log:\n%s", log)
	}
	return m[1]
}

// TestTwoServeProcessesOneEngine: two `rsvp serve` processes on one
// external nats-server serve the same requests. A request submitted to one
// is answered by the other's demo responders, and its event stream, status
// and result are read from the other.
func TestTwoServeProcessesOneEngine(t *testing.T) {
	t.Parallel()
	url := natstest.Start(t)
	a := serveChild(t, "--engine", url)
	b := serveChild(t, "--engine", url, "--demo")

	resp, err := http.Post(a+"/v1/queues/thumbnail/requests", "application/json", strings.NewReader(`{"url":"https://example.com/x.png"}`))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("submit on a: %d %s", resp.StatusCode, body)
	}
	loc := resp.Header.Get("Location")

	events, err := http.Get(b + loc + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer events.Body.Close()
	var seen []string
	sc := bufio.NewScanner(events.Body)
	for sc.Scan() { // the stream of a request ends after its final event
		if typ, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
			seen = append(seen, typ)
		}
	}
	if want := "queued running progress succeeded"; strings.Join(seen, " ") != want {
		t.Fatalf("events on b: %v, want %s", seen, want)
	}
	result, err := http.Get(b + loc + "/result")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(result.Body)
	result.Body.Close()
	if result.StatusCode != 200 || !strings.Contains(string(body), "x.png?size=128") {
		t.Fatalf("result on b: %d %s", result.StatusCode, body)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	status, err := noFollow.Get(a + loc)
	if err != nil {
		t.Fatal(err)
	}
	status.Body.Close()
	if status.StatusCode != http.StatusSeeOther {
		t.Fatalf("status on a: %d, want 303", status.StatusCode)
	}
}

// TestServeOnPostgres: `rsvp serve --engine postgres://...` answers over
// HTTP with the demo responders, on the PostgreSQL backend.
func TestServeOnPostgres(t *testing.T) {
	url := postgresURL(t)
	t.Parallel()
	base := serveChild(t, "--engine", url, "--demo")
	req, err := http.NewRequest("POST", base+"/v1/queues/thumbnail/requests", strings.NewReader(`{"url":"https://example.com/pg.png"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Prefer", "wait=20")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "pg.png?size=128") {
		t.Fatalf("on postgres: %d %s", resp.StatusCode, body)
	}

	// The demo's approval workflow, on the same database.
	post := func(path, body string) int {
		t.Helper()
		resp, err := http.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The database outlives the test: a fresh id each run.
	id := "pg-doc-" + rsvp.NewID()
	if code := post("/v1/workflows/approval/instances?id="+id, `{"id":"`+id+`","text":"On PostgreSQL."}`); code != http.StatusAccepted {
		t.Fatalf("start: %d", code)
	}
	if code := post("/v1/instances/"+id+"/events/ApprovalReceived", `"Approved"`); code != http.StatusAccepted {
		t.Fatalf("raise: %d", code)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/v1/instances/" + id + "?wait=5s&redirect=false")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), `"state":"completed"`) {
			if !strings.Contains(string(body), "published "+id) {
				t.Fatalf("completed without the publication: %s", body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("approval on postgres did not complete: %s", body)
		}
	}

	// The queue gauges, read from the database at the scrape.
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^rsvp_queue_depth\{[^}]*messaging_destination_name="thumbnail"[^}]*\} \d+$`).Match(body) {
		t.Fatalf("no queue depth of thumbnail in /metrics on postgres:\n%s", body)
	}
}

func TestMigrate(t *testing.T) {
	t.Parallel()
	run(t, nil, "migrate", "--engine", "embedded:mem").want(t, 2, "not a PostgreSQL database")
	url := postgresURL(t)
	r := run(t, nil, "migrate", "--engine", url)
	r.want(t, 0)
	if !strings.Contains(r.stdout, "schema rsvp of ") {
		t.Fatalf("stdout %q", r.stdout)
	}
}

// TestWorkerStderrNotUTF8OnPostgres: a command that fails permanently
// with bytes on stderr that PostgreSQL cannot store as text (not UTF-8, a
// NUL) fails its request at once, with that stderr in the message. (The
// dead letter was refused for its last error, so the request was run
// again until its attempts ran out, and failed as "lease ran out".)
func TestWorkerStderrNotUTF8OnPostgres(t *testing.T) {
	failsOnceOnPostgres(t, `printf 'bad \377 byte, \000 NUL\n' >&2; exit 65`,
		"rsvp: request failed: failed: exit status 65: bad \uFFFD byte, \uFFFD NUL")
}

// TestWorkerLongStderrOnPostgres: a command that fails permanently with a
// long line of text on stderr fails its request at once, with the end of
// that line (shortened on a character boundary) as the message. (The
// reply's message was cut at a byte count, inside a character: PostgreSQL
// refused it, and the request was run again.)
func TestWorkerLongStderrOnPostgres(t *testing.T) {
	// 'x', then 700 two-byte characters: "exit status 65: x" is 17 bytes,
	// so a cut at an even byte count falls inside one.
	failsOnceOnPostgres(t, `printf 'x%s' "$(printf 'é%.0s' $(seq 700))" >&2; exit 65`,
		"rsvp: request failed: failed: exit status 65: xéé")
}

// failsOnceOnPostgres runs a worker of command on a fresh queue of the
// PostgreSQL test database, sends it a request, and wants the request to
// fail with want after one attempt, its outcome stored.
func failsOnceOnPostgres(t *testing.T, command, want string) {
	url := postgresURL(t)
	t.Parallel()
	// The database outlives the test: a fresh queue each run.
	queue := "stderr-" + rsvp.NewID()
	w := startWorker(t, url, queue, "--attempts", "2", "--backoff", "10ms", "--exec", command)
	r := run(t, nil, "request", queue, "--data", "x", "--engine", url, "--timeout", "20s")
	r.want(t, 1, want)
	w.stop(t)
	log := w.log.String()
	for _, bad := range []string{"attempt 2/", "dead-lettering failed", "storing the outcome failed"} {
		if strings.Contains(log, bad) {
			t.Fatalf("want one attempt, its outcome stored; the worker log has %q:\n%s", bad, log)
		}
	}
}

// postgresURL returns the PostgreSQL test database's URL, skipping the
// test when RSVP_TEST_POSTGRES_URL does not name one.
func postgresURL(t *testing.T) string {
	t.Helper()
	url := os.Getenv("RSVP_TEST_POSTGRES_URL")
	if url == "" {
		t.Skip("set RSVP_TEST_POSTGRES_URL (see README, Tests) to run the PostgreSQL tests")
	}
	return url
}

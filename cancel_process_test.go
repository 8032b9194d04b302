package rsvp_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/rsvp-go/rsvp"
	"github.com/rsvp-go/rsvp/backend/rsvpnats"
)

// The cancel-responder child runs a responder on the engine directory in
// $RSVP_CANCEL_DIR. Its handler prints "started ID", waits for its ctx, and
// prints the cause; the child exits after one request.
func init() { children["cancel-responder"] = cancelResponder }

const cancelDirEnv = "RSVP_CANCEL_DIR"

func cancelResponder() int {
	be, err := rsvpnats.Embedded(os.Getenv(cancelDirEnv), rsvpnats.Options{Listen: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer be.Close()
	ctx := context.Background()
	c, err := rsvp.New(ctx, be, rsvp.Config{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close(ctx)
	done := make(chan struct{})
	_, err = c.Handle("slow", rsvp.HandlerFunc(func(ctx context.Context, m *rsvp.Message) (*rsvp.Reply, error) {
		fmt.Printf("started %s\n", m.ID)
		<-ctx.Done()
		fmt.Printf("cause %v\n", context.Cause(ctx))
		close(done)
		return nil, ctx.Err()
	}), rsvp.HandleOptions{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	select {
	case <-done:
	case <-time.After(time.Minute):
		fmt.Fprintln(os.Stderr, "no request was cancelled within a minute")
		return 1
	}
	return 0
}

// TestCancelAcrossProcesses: a request handled in another process is
// cancelled from this one; the handler there sees ErrCancelled, and the
// requester here gets it.
func TestCancelAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "RSVP_TEST_CHILD=cancel-responder", cancelDirEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() }) // if the test ends early; an error once it has exited
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l := <-lines:
			return l
		case <-time.After(20 * time.Second):
			t.Fatal("the child said nothing for 20s")
			return ""
		}
	}
	if l := next(); l != "ready" {
		t.Fatalf("child: %q", l)
	}
	// This process connects to the child's engine through the directory.
	be, err := rsvpnats.Embedded(dir, rsvpnats.Options{Listen: true})
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := rsvp.New(ctx, be, rsvp.Config{RecheckInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	id := rsvp.NewID()
	answer := make(chan error, 1)
	go func() {
		_, err := c.Request(ctx, "slow", &rsvp.Message{ID: id, Track: true, Body: []byte("x")})
		answer <- err
	}()
	if l := next(); l != "started "+id {
		t.Fatalf("child: %q", l)
	}
	if r, err := c.Cancel(ctx, id); err != nil || r.Status != "cancelled" {
		t.Fatalf("Cancel: %+v, %v", r, err)
	}
	if l := next(); l != "cause "+rsvp.ErrCancelled.Error() {
		t.Fatalf("child's handler saw %q", l)
	}
	if err := <-answer; !errors.Is(err, rsvp.ErrCancelled) {
		t.Fatalf("Request: %v, want ErrCancelled", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("child: %v", err)
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGQUIT) // it prints its goroutines to our stderr and exits
		<-exited
		t.Fatal("the child did not exit within 20s of its handler's end; its goroutines are above")
	}
}

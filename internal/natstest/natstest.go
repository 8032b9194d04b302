// Package natstest starts a nats-server as a separate process for tests of
// external engines: the current one, built from the Go module the project
// depends on (the Debian nats-server on the machine is too old), or an
// older release, built from the Go module proxy, for tests of what rsvp
// does on servers that lack a feature.
package natstest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Releases of nats-server older than the one the project depends on, each
// the newest of its line that the module proxy serves, for StartVersion.
const (
	NATS29  = "2.9.25"  // refused by rsvpnats.Connect
	NATS210 = "2.10.27" // runs rsvp, without scheduled requests
	NATS211 = "2.11.17" // as 2.10, and first reply wins across inboxes
)

// builds are the nats-server binaries built by this test binary, by
// version ("" for the module the project depends on): each is built once.
var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

type build struct {
	once sync.Once
	bin  string
	err  error
}

// Start builds nats-server from the module the project depends
// on and runs it as a separate process on a free loopback port, with
// JetStream on disk. It is stopped with the test.
func Start(t *testing.T) string {
	t.Helper()
	return run(t, binary(t, ""))
}

// StartVersion is Start with nats-server release version ("2.11.17", say),
// built from its module, which the go command fetches as it fetches any
// other, once per test binary. A test that needs it fails, with the go
// command's output, if it cannot be built: it is not skipped.
func StartVersion(t *testing.T, version string) string {
	t.Helper()
	return run(t, binary(t, version))
}

// binary returns the path of nats-server of version, building it the first
// time it is asked for.
func binary(t *testing.T, version string) string {
	t.Helper()
	buildsMu.Lock()
	b := builds[version]
	if b == nil {
		b = &build{}
		builds[version] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() { b.bin, b.err = buildServer(version) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.bin
}

// buildServer builds nats-server of version (from the project's own module
// for "", else in a throwaway module that requires that version) into
// os.TempDir()/rsvp-natstest, named by its version, unless it is there
// already: a version is built once on a machine, not once per test binary
// and run. It is built under a temporary name and renamed into place, so
// that test binaries building it at once never run a partly written one.
func buildServer(version string) (string, error) {
	named := version
	if named == "" {
		named = dependedOn()
	}
	cache := filepath.Join(os.TempDir(), "rsvp-natstest")
	bin := filepath.Join(cache, "nats-server-v"+named)
	if _, err := os.Stat(bin); err == nil && named != "" {
		return bin, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(cache, "build-*")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	built := filepath.Join(dir, "nats-server")
	steps := [][]string{{"go", "build", "-o", built, "github.com/nats-io/nats-server/v2"}}
	if version != "" {
		steps = [][]string{
			{"go", "mod", "init", "natstest.invalid/server"},
			{"go", "get", "github.com/nats-io/nats-server/v2@v" + version},
			steps[0],
		}
	}
	for _, step := range steps {
		cmd := exec.Command(step[0], step[1:]...)
		if version != "" {
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), "GOWORK=off")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("build nats-server %s: %s: %v\n%s", describe(version), strings.Join(step, " "), err, out)
		}
	}
	if named == "" { // a version not known: not cached
		bin = filepath.Join(cache, filepath.Base(dir)+"-nats-server")
	}
	if err := os.Rename(built, bin); err != nil {
		return "", err
	}
	return bin, nil
}

// dependedOn returns the version of nats-server the project depends on;
// "" if the go command does not say, or if the module is replaced (its
// version does not name its code then).
func dependedOn() string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{if not .Replace}}{{.Version}}{{end}}", "github.com/nats-io/nats-server/v2").Output()
	if err != nil {
		return ""
	}
	return strings.TrimPrefix(strings.TrimSpace(string(out)), "v")
}

// describe names version in messages.
func describe(version string) string {
	if version == "" {
		return "of the project's module"
	}
	return "v" + version
}

// run starts bin on a free loopback port, with JetStream on disk in a
// directory of the test, and returns its URL once it takes connections.
func run(t *testing.T, bin string) string {
	t.Helper()
	port := FreePort(t)
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", fmt.Sprint(port), "-js", "-sd", t.TempDir())
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("nats-server output:\n%s", logs.String())
		}
	})
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	deadline := time.Now().Add(30 * time.Second)
	for {
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err == nil {
			nc.Close()
			return url
		}
		if time.Now().After(deadline) {
			t.Fatalf("nats-server on %s did not come up: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a process we do not control
	}
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

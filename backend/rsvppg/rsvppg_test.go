package rsvppg_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/rsvp-go/rsvp/backend"
	"github.com/rsvp-go/rsvp/backend/backendtest"
	"github.com/rsvp-go/rsvp/backend/rsvppg"
	"github.com/rsvp-go/rsvp/internal/pgtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// urlEnv names the variable with the URL of the PostgreSQL server the
// tests use. Unset, the tests that need a server are skipped (CI sets it);
// set but unreachable, they fail.
const urlEnv = "RSVP_TEST_POSTGRES_URL"

// serverURL returns the test server's URL. It skips t when none is given,
// and fails it when the server does not answer.
func serverURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv(urlEnv)
	if url == "" {
		t.Skipf("%s is not set: set it to a PostgreSQL server to run these tests, e.g. %s=postgres://postgres@127.0.0.1:5432/test?sslmode=disable", urlEnv, urlEnv)
	}
	if err := reach(url); err != nil {
		t.Fatalf("%s=%s: the server does not answer: %v", urlEnv, rsvppg.Redact(url), err)
	}
	return url
}

// reach reports, once per test run, whether the server at url answers;
// url is the same for the whole run.
var reach = func() func(string) error {
	var once sync.Once
	var err error
	return func(url string) error {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var conn *pgx.Conn
			if conn, err = pgx.Connect(ctx, url); err == nil {
				err = conn.Close(ctx)
			}
		})
		return err
	}
}()

// freshSchema returns the name of a schema no one uses, and drops it when
// t ends.
func freshSchema(t testing.TB, url string) string { return pgtest.Schema(t, url, "rsvp_test_") }

// open opens a backend on url with opts and closes it when t ends.
func open(t testing.TB, url string, opts rsvppg.Options) *rsvppg.Backend {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := rsvppg.Open(ctx, url, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = b.Close() })
	return b
}

// setup is what most tests need: a server, a fresh schema and a backend
// on it.
type setup struct {
	url    string
	schema string
	b      *rsvppg.Backend
	ctx    context.Context
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	url := serverURL(t)
	schema := freshSchema(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return &setup{url: url, schema: schema, b: open(t, url, rsvppg.Options{Schema: schema}), ctx: ctx}
}

func TestConformance(t *testing.T) {
	url := serverURL(t)
	schema := freshSchema(t, url)
	backendtest.Run(t, func(t *testing.T) backendtest.Opener {
		return func(t *testing.T) backend.Backend {
			b, err := rsvppg.Open(context.Background(), url, rsvppg.Options{Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}, backendtest.Features{Durable: true, Shared: true, Sessions: true, Schedules: true})
}

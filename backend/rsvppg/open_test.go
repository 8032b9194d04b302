package rsvppg_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/rsvp-go/rsvp/backend/rsvppg"
)

// withUser returns url with its user replaced by user.
func withUser(t *testing.T, url, user string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", user, cfg.Host, cfg.Port, cfg.Database)
}

// freePort returns a loopback port nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// silentServer accepts connections and never answers, like a server that
// hangs, until t ends.
func silentServer(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).Port
}

func TestOpenFailsClearly(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, url string
		want      []string // in the error text
	}{
		{"malformed", "postgres://[::1", []string{"database URL"}},
		{"unknown role", withUser(t, url, "no_such_role_rsvp"), []string{"connect to", "no_such_role_rsvp"}},
		{"unknown database", fmt.Sprintf("postgres://%s@%s:%d/no_such_db_rsvp?sslmode=disable", cfg.User, cfg.Host, cfg.Port),
			[]string{"connect to", "no_such_db_rsvp"}},
		{"server down", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", freePort(t)), []string{"connect to", "refused"}},
		{"server silent", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", silentServer(t)), []string{"connect to", "no answer in time"}},
		{"password hidden", fmt.Sprintf("postgres://someone:s3cret@127.0.0.1:%d/test?sslmode=disable", freePort(t)), []string{"someone:***@"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			b, err := rsvppg.Open(context.Background(), tc.url, rsvppg.Options{Schema: "rsvp_never_created", Timeout: 2 * time.Second})
			if err == nil {
				b.Close()
				t.Fatal("Open succeeded")
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("Open took %s to fail", took)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestOptionsValidated(t *testing.T) {
	t.Parallel()
	for _, o := range []rsvppg.Options{{Schema: "Upper"}, {Schema: "a-b"}, {Schema: strings.Repeat("s", 49)},
		{ReplyRetention: -time.Second}, {MaxConns: 1}, {MaxMessageSize: -1}} {
		if b, err := rsvppg.Open(context.Background(), "postgres://127.0.0.1:1/x", o); err == nil || !strings.Contains(err.Error(), "rsvppg:") {
			if b != nil {
				b.Close()
			}
			t.Errorf("options %+v: %v, want a validation error", o, err)
		}
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"postgres://u:pw@h/db":            "postgres://u:***@h/db",
		"postgres://u@h/db":               "postgres://u@h/db",
		"host=h password=pw user=u":       "host=h password=*** user=u",
		"host=h password='p w' user=u":    "host=h password=*** user=u",
		"postgres://h/db?password=pw&x=1": "postgres://h/db?password=***",
	} {
		if got := rsvppg.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestSchemaNewerThanCodeIsRefused(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	s.b.Close()
	exec(t, s.url, fmt.Sprintf("INSERT INTO %s.schema_version (version, name) VALUES (%d, 'from_the_future.sql')",
		pgx.Identifier{s.schema}.Sanitize(), rsvppg.SchemaVersion+1))
	for name, try := range map[string]func() error{
		"Open": func() error {
			b, err := rsvppg.Open(s.ctx, s.url, rsvppg.Options{Schema: s.schema})
			if err == nil {
				b.Close()
			}
			return err
		},
		"Migrate": func() error { return rsvppg.Migrate(s.ctx, s.url, rsvppg.Options{Schema: s.schema}) },
	} {
		err := try()
		if !errors.Is(err, rsvppg.ErrSchemaTooNew) || !strings.Contains(err.Error(), s.schema) ||
			!strings.Contains(err.Error(), fmt.Sprint(rsvppg.SchemaVersion+1)) {
			t.Errorf("%s on a newer schema: %v, want ErrSchemaTooNew naming the schema and its version", name, err)
		}
	}
}

func TestConcurrentMigrators(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	schema := freshSchema(t, url)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const n = 6
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i%2 == 0 {
				errs <- rsvppg.Migrate(ctx, url, rsvppg.Options{Schema: schema})
				return
			}
			b, err := rsvppg.Open(ctx, url, rsvppg.Options{Schema: schema})
			if err == nil {
				err = b.Close()
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent migrator: %v", err)
		}
	}
	var versions []int
	conn := connect(t, url)
	rows, err := conn.Query(ctx, "SELECT version FROM "+pgx.Identifier{schema}.Sanitize()+".schema_version ORDER BY version")
	if err != nil {
		t.Fatal(err)
	}
	if versions, err = pgx.CollectRows(rows, pgx.RowTo[int]); err != nil {
		t.Fatal(err)
	}
	if len(versions) != rsvppg.SchemaVersion || versions[len(versions)-1] != rsvppg.SchemaVersion {
		t.Fatalf("schema_version has %v, want each of 1..%d once", versions, rsvppg.SchemaVersion)
	}
}

// connect opens a plain connection to url, closed when t ends.
func connect(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// exec runs sql on a connection of its own.
func exec(t testing.TB, url, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := connect(t, url).Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestSkipMigrate: with Options.SkipMigrate, Open changes nothing: it
// refuses a missing or older schema (and leaves it so), and opens one at
// SchemaVersion.
func TestSkipMigrate(t *testing.T) {
	t.Parallel()
	url := serverURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	schema := freshSchema(t, url)
	opts := rsvppg.Options{Schema: schema, SkipMigrate: true}
	version := func() string {
		t.Helper()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var v *string
		if err := conn.QueryRow(ctx, "SELECT to_regclass($1)::text", pgx.Identifier{schema, "schema_version"}.Sanitize()).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v == nil {
			return "none"
		}
		if err := conn.QueryRow(ctx, "SELECT max(version)::text FROM "+*v).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return *v
	}
	refused := func(what, want string) {
		t.Helper()
		b, err := rsvppg.Open(ctx, url, opts)
		if err == nil {
			b.Close()
		}
		if !errors.Is(err, rsvppg.ErrSchemaNotReady) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Open with SkipMigrate on %s: %v; want ErrSchemaNotReady saying %q", what, err, want)
		}
	}

	refused("a missing schema", `the database has no rsvp schema "`+schema+`"`)
	if v := version(); v != "none" {
		t.Fatalf("after Open with SkipMigrate on a missing schema: version %s, want none", v)
	}
	if err := rsvppg.MigrateTo(ctx, url, schema, rsvppg.SchemaVersion-1); err != nil {
		t.Fatal(err)
	}
	refused("an older schema", fmt.Sprintf("is at version %d, this rsvp reads version %d", rsvppg.SchemaVersion-1, rsvppg.SchemaVersion))
	if v, want := version(), fmt.Sprint(rsvppg.SchemaVersion-1); v != want {
		t.Fatalf("after Open with SkipMigrate on an older schema: version %s, want %s", v, want)
	}
	if err := rsvppg.Migrate(ctx, url, rsvppg.Options{Schema: schema}); err != nil {
		t.Fatal(err)
	}
	b, err := rsvppg.Open(ctx, url, opts)
	if err != nil {
		t.Fatalf("Open with SkipMigrate on a schema at SchemaVersion: %v", err)
	}
	if _, err := b.Queues(ctx); err != nil {
		t.Fatal(err)
	}
	b.Close()
}

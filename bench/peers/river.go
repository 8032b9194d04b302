package peers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"
)

// riverPeer is River on PostgreSQL: the requester inserts a job, the worker
// records the reply with river.RecordOutput, and the requester learns of
// the completion through the client's event subscription and reads the
// output from the completed job.
var riverPeer = Peer{
	Name:   "river",
	Server: "PostgreSQL",
	addr: func(o Options) (string, error) {
		cfg, err := pgx.ParseConfig(o.Postgres)
		if err != nil {
			return "", err
		}
		return hostPort(fmt.Sprintf("%s:%d", cfg.Host, cfg.Port), "5432"), nil
	},
	start: startRiver,
}

const (
	// riverSchema holds River's tables for the run: created (after dropping
	// one left behind) at the start, dropped at the end.
	riverSchema = "river_bench"
)

// riverEcho is the job's arguments and its recorded output.
type riverEcho struct {
	ID   string `json:"id"`
	Body string `json:"body"`
}

func (riverEcho) Kind() string { return "rsvp_echo" }

type riverEchoWorker struct {
	river.WorkerDefaults[riverEcho]
}

func (riverEchoWorker) Work(ctx context.Context, job *river.Job[riverEcho]) error {
	return river.RecordOutput(ctx, job.Args)
}

func startRiver(ctx context.Context, o Options) (_ *instance, err error) {
	pool, err := connectPostgres(ctx, o)
	if err != nil {
		return nil, err
	}
	var closers closeStack
	closers.push(func() error { pool.Close(); return nil })
	defer func() {
		if err != nil {
			err = errors.Join(err, closers.close())
		}
	}()

	schema := pgx.Identifier{riverSchema}.Sanitize()
	if _, err := pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE"); err != nil {
		return nil, fmt.Errorf("drop schema: %w", err)
	}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA "+schema); err != nil {
		return nil, fmt.Errorf("create schema: %w", err)
	}
	closers.push(func() error {
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := pool.Exec(dctx, "DROP SCHEMA IF EXISTS "+schema+" CASCADE")
		return err
	})
	engine := "river:" + postgresDurability(ctx, pool)

	driver := riverpgxv5.New(pool)
	logger := slog.New(slog.DiscardHandler)
	migrator, err := rivermigrate.New(driver, &rivermigrate.Config{Schema: riverSchema, Logger: logger})
	if err != nil {
		return nil, err
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}

	workers := river.NewWorkers()
	river.AddWorker(workers, riverEchoWorker{})
	client, err := river.NewClient(driver, &river.Config{
		Schema:  riverSchema,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: o.Workers}},
		Workers: workers,
		Logger:  logger,
	})
	if err != nil {
		return nil, err
	}
	// Subscribe before Start so that no completion is missed. Events that
	// would overflow the channel are dropped, so it is drained at once.
	events, unsubscribe := client.SubscribeConfig(&river.SubscribeConfig{
		Kinds:    []river.EventKind{river.EventKindJobCompleted, river.EventKindJobFailed},
		ChanSize: 100_000,
	})
	if err := client.Start(ctx); err != nil {
		unsubscribe()
		return nil, fmt.Errorf("start client: %w", err)
	}
	closers.push(func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		return client.Stop(sctx)
	})
	w := newJobWaiters()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ev := range events { // closed by unsubscribe
			switch {
			case ev.Kind == river.EventKindJobCompleted:
				w.deliver(ev.Job.ID, ev.Job)
			case ev.Job.State == rivertype.JobStateDiscarded: // out of attempts
				w.deliver(ev.Job.ID, ev.Job)
			}
		}
	}()
	closers.push(func() error { unsubscribe(); wg.Wait(); return nil })

	op := func(ctx context.Context, id string) (string, error) {
		res, err := client.Insert(ctx, riverEcho{ID: id, Body: string(payload(id, o.Size))}, nil)
		if err != nil {
			return "", fmt.Errorf("insert: %w", err)
		}
		ch := w.wait(res.Job.ID)
		defer w.forget(res.Job.ID)
		var job *rivertype.JobRow
		select {
		case job = <-ch:
		case <-ctx.Done():
			return "", ctx.Err()
		}
		if job.State != rivertype.JobStateCompleted {
			return "", fmt.Errorf("job %d ended %s", job.ID, job.State)
		}
		out := job.Output()
		if out == nil {
			return "", fmt.Errorf("job %d completed without output", job.ID)
		}
		var reply riverEcho
		if err := json.Unmarshal(out, &reply); err != nil {
			return "", fmt.Errorf("job %d output: %w", job.ID, err)
		}
		return payloadID([]byte(reply.Body)), nil
	}
	return &instance{engine: engine, op: op, close: closers.close}, nil
}

// connectPostgres opens a pool on o.Postgres, sized for the requesters and
// River's own connections. With the default URL and no $RSVP_PEER_POSTGRES,
// a refused user postgres is retried as root.
func connectPostgres(ctx context.Context, o Options) (*pgxpool.Pool, error) {
	urls := []string{o.Postgres}
	if o.Postgres == DefaultPostgres && os.Getenv(EnvPostgres) == "" {
		urls = append(urls, strings.Replace(DefaultPostgres, "//postgres@", "//root@", 1))
	}
	var errs []error
	for _, url := range urls {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			return nil, fmt.Errorf("postgres URL: %w", err)
		}
		cfg.MaxConns = int32(min(o.Concurrency+o.Workers/4+8, 80))
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err == nil {
			if err = pool.Ping(ctx); err == nil {
				return pool, nil
			}
			pool.Close()
		}
		errs = append(errs, fmt.Errorf("connect as %s to %s:%d/%s: %w", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err))
	}
	return nil, errors.Join(errs...)
}

// postgresDurability names what PostgreSQL promises for a commit, from its
// settings.
func postgresDurability(ctx context.Context, pool *pgxpool.Pool) string {
	var syncCommit, fsync string
	if err := pool.QueryRow(ctx, "SELECT current_setting('synchronous_commit'), current_setting('fsync')").Scan(&syncCommit, &fsync); err != nil {
		return "unknown-durability"
	}
	if fsync != "on" {
		return "fsync=off(not durable)"
	}
	if syncCommit == "off" {
		return "synchronous_commit=off(not durable)"
	}
	return "synchronous_commit=" + syncCommit
}

// jobWaiters maps job ids to the requests waiting for them. A job can end
// before its requester, back from Insert, starts waiting: its row is then
// kept until the requester comes.
type jobWaiters struct {
	mu      sync.Mutex
	waiting map[int64]chan *rivertype.JobRow
	early   map[int64]*rivertype.JobRow
}

func newJobWaiters() *jobWaiters {
	return &jobWaiters{waiting: map[int64]chan *rivertype.JobRow{}, early: map[int64]*rivertype.JobRow{}}
}

func (w *jobWaiters) wait(id int64) <-chan *rivertype.JobRow {
	ch := make(chan *rivertype.JobRow, 1)
	w.mu.Lock()
	defer w.mu.Unlock()
	if job, ok := w.early[id]; ok {
		delete(w.early, id)
		ch <- job
		return ch
	}
	w.waiting[id] = ch
	return ch
}

func (w *jobWaiters) forget(id int64) {
	w.mu.Lock()
	delete(w.waiting, id)
	w.mu.Unlock()
}

func (w *jobWaiters) deliver(id int64, job *rivertype.JobRow) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if ch, ok := w.waiting[id]; ok {
		delete(w.waiting, id)
		ch <- job
		return
	}
	w.early[id] = job
}

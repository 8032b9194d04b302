package peers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// asynqPeer is asynq on Redis: the requester enqueues a task that keeps its
// result (Retention), the handler writes the result with its ResultWriter,
// and the requester polls Inspector.GetTaskInfo until the task is
// completed.
var asynqPeer = Peer{
	Name:   "asynq",
	Server: "Redis",
	addr:   func(o Options) (string, error) { return hostPort(o.Redis, "6379"), nil },
	start:  startAsynq,
}

const (
	asynqDB        = 9 // a database of its own, flushed at the start of a run
	asynqTaskType  = "rsvp:echo"
	asynqQueue     = "default"
	asynqRetention = 10 * time.Minute
	// asynqPoll is how often a requester asks whether its task is done.
	// 1ms gives ~3ms round trips at concurrency 4, but at concurrency 64
	// the polls (64,000/s) swamp Redis and starve the server's single
	// fetch loop (throughput falls to ~230/s); 10ms holds up under load at
	// the price of ~10ms added to every round trip. See README.md.
	asynqPoll = 10 * time.Millisecond
	// asynqTaskCheck is how long the server's fetch loop sleeps (half to
	// one and a half times this) when it finds every queue empty. asynq's
	// default, 1s, would add up to 1.5s to a request that arrives at an
	// idle server.
	asynqTaskCheck = time.Millisecond
)

func startAsynq(ctx context.Context, o Options) (*instance, error) {
	rdb := redis.NewClient(&redis.Options{
		Addr: o.Redis, DB: asynqDB,
		// Requesters polling, workers, and the server's own loops share it.
		PoolSize: 2*o.Workers + 20,
	})
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("flush redis db %d at %s: %w", asynqDB, o.Redis, err)
	}
	engine := "asynq:" + redisDurability(ctx, rdb)

	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
		Concurrency:       o.Workers,
		Queues:            map[string]int{asynqQueue: 1},
		TaskCheckInterval: asynqTaskCheck,
		Logger:            quietLogger{},
	})
	mux := asynq.NewServeMux()
	mux.HandleFunc(asynqTaskType, func(ctx context.Context, t *asynq.Task) error {
		_, err := t.ResultWriter().Write(t.Payload())
		return err
	})
	if err := srv.Start(mux); err != nil {
		rdb.Close()
		return nil, fmt.Errorf("start asynq server: %w", err)
	}
	client := asynq.NewClientFromRedisClient(rdb)
	inspector := asynq.NewInspectorFromRedisClient(rdb)

	op := func(ctx context.Context, id string) (string, error) {
		task := asynq.NewTask(asynqTaskType, payload(id, o.Size))
		if _, err := client.EnqueueContext(ctx, task, asynq.TaskID(id), asynq.Queue(asynqQueue), asynq.Retention(asynqRetention)); err != nil {
			return "", fmt.Errorf("enqueue: %w", err)
		}
		tick := time.NewTicker(asynqPoll)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			info, err := inspector.GetTaskInfo(asynqQueue, id)
			if err != nil {
				return "", fmt.Errorf("task info: %w", err)
			}
			switch info.State {
			case asynq.TaskStateCompleted:
				return payloadID(info.Result), nil
			case asynq.TaskStateArchived:
				return "", fmt.Errorf("task archived: %s", info.LastErr)
			}
		}
	}
	return &instance{engine: engine, op: op, close: func() error {
		srv.Shutdown()
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return errors.Join(rdb.FlushDB(fctx).Err(), rdb.Close())
	}}, nil
}

// redisDurability names what Redis promises for an acknowledged write, from
// its configuration: only appendonly with appendfsync always syncs before
// answering.
func redisDurability(ctx context.Context, rdb *redis.Client) string {
	cfg, err := rdb.ConfigGet(ctx, "append*").Result()
	if err != nil {
		return "unknown-durability"
	}
	switch {
	case cfg["appendonly"] != "yes":
		return "no-aof(not durable)"
	case cfg["appendfsync"] == "always":
		return "aof-fsync-always"
	default:
		return "aof-fsync-" + cfg["appendfsync"] + "(not durable)"
	}
}

// quietLogger drops asynq's log lines but its fatal ones.
type quietLogger struct{}

func (quietLogger) Debug(...any) {}
func (quietLogger) Info(...any)  {}
func (quietLogger) Warn(...any)  {}
func (quietLogger) Error(...any) {}
func (quietLogger) Fatal(args ...any) {
	fmt.Fprintln(os.Stderr, append([]any{"asynq:"}, args...)...)
	os.Exit(1)
}

var _ asynq.Logger = quietLogger{}

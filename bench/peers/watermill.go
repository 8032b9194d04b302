package peers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	"github.com/ThreeDotsLabs/watermill/components/cqrs"
	"github.com/ThreeDotsLabs/watermill/components/requestreply"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// watermillPeer is Watermill's components/requestreply over its JetStream
// pub/sub (watermill-nats/v2/pkg/jetstream) on an embedded nats-server
// that fsyncs every second, like raw-jetstream.
var watermillPeer = Peer{
	Name:   "watermill-requestreply",
	Server: "embedded nats-server",
	start:  startWatermill,
}

// wmEcho is both the command and the handler's result.
type wmEcho struct {
	ID   string `json:"id"`
	Body string `json:"body"`
}

const (
	wmCommands     = "wm_echo"    // topic = stream = subject of the commands
	wmReplies      = "wm_replies" // stream of the replies
	wmReplyPrefix  = "wm.reply."  // + operation id: a reply's topic
	wmReplyMaxAge  = time.Hour
	wmConsumerName = "echo"
)

func startWatermill(ctx context.Context, o Options) (_ *instance, err error) {
	es, err := startServer(time.Second)
	if err != nil {
		return nil, err
	}
	// Everything opened is closed in reverse on failure or on close.
	var closers closeStack
	closers.push(es.stop)
	defer func() {
		if err != nil {
			err = errors.Join(err, closers.close())
		}
	}()
	// One connection per component, as separate programs would have: a
	// watermill Publisher or Subscriber closes its connection on Close.
	conns := map[string]*nats.Conn{}
	for _, name := range []string{"setup", "command-publisher", "command-subscriber", "reply-publisher", "reply-subscriber"} {
		nc, err := es.connect("watermill-" + name)
		if err != nil {
			return nil, err
		}
		conns[name] = nc
		closers.push(func() error { nc.Close(); return nil })
	}

	// Streams, created up front: a work queue for commands with one durable
	// consumer that every handler pulls from, and a stream for replies.
	js, err := jetstream.New(conns["setup"])
	if err != nil {
		return nil, err
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: wmCommands, Subjects: []string{wmCommands}, Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
	}); err != nil {
		return nil, fmt.Errorf("create commands stream: %w", err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: wmReplies, Subjects: []string{wmReplyPrefix + ">"}, Storage: jetstream.FileStorage, MaxAge: wmReplyMaxAge,
	}); err != nil {
		return nil, fmt.Errorf("create replies stream: %w", err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, wmCommands, jetstream.ConsumerConfig{
		Durable: wmConsumerName, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second,
	}); err != nil {
		return nil, fmt.Errorf("create commands consumer: %w", err)
	}

	logger := watermill.NopLogger{}
	marshaler := cqrs.JSONMarshaler{}
	// The publisher sends to the subject named like the topic and waits for
	// the server's acknowledgement.
	cmdPub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: conns["command-publisher"], Logger: logger})
	if err != nil {
		return nil, err
	}
	replyPub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: conns["reply-publisher"], Logger: logger})
	if err != nil {
		return nil, err
	}
	cmdSub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn: conns["command-subscriber"], Logger: logger,
		ResourceInitializer: wmjs.ExistingConsumer(func(string, string) jetstream.ConsumerConfig {
			return jetstream.ConsumerConfig{Name: wmConsumerName}
		}, ""),
	})
	if err != nil {
		return nil, err
	}
	// Each request listens for its reply on a topic of its own, through an
	// ephemeral consumer created for it on the replies stream and deleted
	// when the reply came.
	replySub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
		Conn: conns["reply-subscriber"], Logger: logger, AckAsync: true,
		ResourceInitializer: replyConsumer,
	})
	if err != nil {
		return nil, err
	}
	closers.push(replySub.Close)

	backend, err := requestreply.NewPubSubBackend[wmEcho](requestreply.PubSubBackendConfig{
		Publisher: replyPub,
		SubscriberConstructor: func(requestreply.PubSubBackendSubscribeParams) (message.Subscriber, error) {
			return replySub, nil
		},
		GenerateSubscribeTopic: func(p requestreply.PubSubBackendSubscribeParams) (string, error) {
			return wmReplyPrefix + string(p.OperationID), nil
		},
		GeneratePublishTopic: func(p requestreply.PubSubBackendPublishParams) (string, error) {
			return wmReplyPrefix + string(p.OperationID), nil
		},
		Logger: logger,
	}, requestreply.BackendPubsubJSONMarshaler[wmEcho]{})
	if err != nil {
		return nil, err
	}
	bus, err := cqrs.NewCommandBusWithConfig(cmdPub, cqrs.CommandBusConfig{
		GeneratePublishTopic: func(cqrs.CommandBusGeneratePublishTopicParams) (string, error) { return wmCommands, nil },
		Marshaler:            marshaler,
		Logger:               logger,
	})
	if err != nil {
		return nil, err
	}

	// Responder: a router whose handlers each take one command at a time
	// from the subscription (the adapter waits for a message's ack before
	// handing out the next), so there are o.Workers handlers on the same
	// consumer.
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, logger)
	if err != nil {
		return nil, err
	}
	proc, err := cqrs.NewCommandProcessorWithConfig(router, cqrs.CommandProcessorConfig{
		GenerateSubscribeTopic: func(cqrs.CommandProcessorGenerateSubscribeTopicParams) (string, error) {
			return wmCommands, nil
		},
		SubscriberConstructor: func(cqrs.CommandProcessorSubscriberConstructorParams) (message.Subscriber, error) {
			return cmdSub, nil
		},
		Marshaler: marshaler,
		Logger:    logger,
	})
	if err != nil {
		return nil, err
	}
	for i := range o.Workers {
		h := requestreply.NewCommandHandlerWithResult(fmt.Sprintf("echo-%d", i), backend,
			func(ctx context.Context, cmd *wmEcho) (wmEcho, error) { return *cmd, nil })
		if err := proc.AddHandlers(h); err != nil {
			return nil, err
		}
	}
	runErr := make(chan error, 1)
	go func() { runErr <- router.Run(context.Background()) }()
	select {
	case <-router.Running():
	case err := <-runErr:
		return nil, fmt.Errorf("router: %w", err)
	}
	closers.push(func() error {
		err := router.Close() // closes cmdSub too
		return errors.Join(err, <-runErr)
	})

	op := func(ctx context.Context, id string) (string, error) {
		reply, err := requestreply.SendWithReply(ctx, bus, backend, &wmEcho{ID: id, Body: string(payload(id, o.Size))})
		if err != nil {
			return "", err
		}
		if reply.Error != nil {
			return "", reply.Error
		}
		return payloadID([]byte(reply.HandlerResult.Body)), nil
	}
	return &instance{engine: "watermill-requestreply:jetstream,fsync-every-1s", op: op, close: closers.close}, nil
}

// replyConsumer creates the consumer one request reads its reply through:
// ephemeral, on the replies stream, filtered to the request's reply topic,
// its state in memory (the reply it reads is on disk in the stream; keeping
// a throwaway consumer's state in files made the round trip ~4x slower).
// Unlike the adapter's EphemeralConsumer, it deletes the consumer with a
// fresh context (the subscription's has ended by then).
func replyConsumer(ctx context.Context, js jetstream.JetStream, topic string) (jetstream.Consumer, func(context.Context, watermill.LoggerAdapter), error) {
	cons, err := js.CreateConsumer(ctx, wmReplies, jetstream.ConsumerConfig{
		FilterSubject: topic, AckPolicy: jetstream.AckExplicitPolicy, InactiveThreshold: time.Minute, MemoryStorage: true,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reply consumer for %s: %w", topic, err)
	}
	name := cons.CachedInfo().Name
	return cons, func(context.Context, watermill.LoggerAdapter) {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, wmReplies, name) // else it goes after InactiveThreshold
	}, nil
}

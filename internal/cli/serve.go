package cli

import (
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/rsvp-go/rsvp/gateway"
	"github.com/rsvp-go/rsvp/internal/server"
)

const serveUsage = `Usage: rsvp serve [flags]

Serve the HTTP API (docs/openapi.yaml) on the engine: clients submit
requests to queues with POST /v1/queues/QUEUE/requests, get 202 Accepted
and a status URL, and poll it, long-poll it or stream its events until the
result is ready. Responders are ordinary rsvp workers on the same engine
('rsvp worker', or Go programs using the library).

API keys: --keys names a JSON file of keys, as made by 'rsvp key new':
  {"keys": [{"tenant": "acme", "sha256": "<hex SHA-256 of the key>",
             "grants": [{"queue": "*", "rights": ["send", "consume"]}]}]}
Clients send "Authorization: Bearer KEY". Rights: send (submit, and read
and cancel the tenant's own requests), consume (the worker API), admin
(read and cancel any tenant's requests; on "*", also GET /metrics); queue
"*" is every queue. /healthz and /readyz need no key. Without
keys anyone who can connect can use every queue, so rsvp serve then listens
only on a loopback address (127.0.0.1, ::1, localhost) and refuses others,
and refuses requests naming another host or sent by web pages of other sites.

TLS: --tls-cert and --tls-key serve HTTPS only, with that certificate
(read again when the files change, so a renewed one is served without a
restart); --tls-client-ca also requires client certificates signed by
those CAs (mutual TLS). Without TLS, API keys and payloads travel in
clear text: on an address other machines reach, serve with a certificate
or terminate TLS in front.

Webhooks: a request may name a Callback-URL that receives its result,
signed (Standard Webhooks) with every --webhook-secret, the first one's
signature first (for rotation). Make a secret with 'rsvp key
webhook-secret'; prefer $RSVP_WEBHOOK_SECRET (comma-separated) to the flag,
which other local users can see in the process list. Callbacks to loopback
and private addresses are refused unless --webhook-allow-private.

--demo also runs two responders in this process, on queues "thumbnail"
({"url": "https://..."} in, {"thumbnail_url": ...} out after 0.3s, with
progress halfway; no url: a permanent bad_payload failure) and "flaky"
(the first attempt of each request fails, the retry 0.5s later succeeds),
and two durable workflows: "approval" (input {"id": ..., "text": ...}: the
ReviewDocument activity, then a wait of up to 10 minutes for the event
ApprovalReceived, then PublishDocument if its payload is "Approved") and
"thumbnails" (input: a list of image URLs, one "thumbnail" request each,
all at once). It prints curl commands to try them.

Workflows: /v1/workflows/{name}/instances starts an instance and
/v1/instances/{id} steers it (status, result, events, terminate, purge).
Without --demo the server starts and steers instances of workflows that
other processes run (package workflow), and runs none itself.

Logs go to stderr; the first lines give the address ("listening on
http://127.0.0.1:8080", or https://; with --addr HOST:0, the port picked). On SIGINT or
SIGTERM the server stops accepting connections, ends long-polls and event
streams, lets other requests finish for up to --shutdown-timeout, stops the
responders and exits 0.

Example:
  rsvp serve --demo
  rsvp key new --tenant acme --queue '*' --rights send,consume   # prints KEY and its entry
  rsvp serve --addr :8080 --keys keys.json --engine embedded:/var/lib/rsvp
  rsvp serve --addr :8443 --keys keys.json --tls-cert cert.pem --tls-key key.pem
`

// serveFlags are the flags of the serve command.
type serveFlags struct {
	addr            string
	keysFile        string
	webhookSecrets  listFlag
	allowPrivate    bool
	maxBody         int
	shutdownTimeout time.Duration
	logFormat       string
	logLevel        string
	demo            bool
	tls             tlsFlags
}

func (f *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "addr", server.DefaultAddr, "`host:port` to listen on; port 0 picks a free one. Without --keys it must be a loopback address")
	fs.StringVar(&f.keysFile, "keys", "", "JSON `file` of API keys (see above and 'rsvp key new'); none: no authentication, loopback only")
	fs.Var(&f.webhookSecrets, "webhook-secret", "`whsec_...` secret that signs webhooks; repeat it or separate with commas (default $RSVP_WEBHOOK_SECRET); none: no webhooks")
	fs.BoolVar(&f.allowPrivate, "webhook-allow-private", false, "allow callback URLs on loopback, private and link-local addresses")
	fs.IntVar(&f.maxBody, "max-body", maxBody, "largest request and reply body, in `bytes`")
	fs.DurationVar(&f.shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGINT or SIGTERM, how long open requests and running handlers may take to finish (0: no wait); telemetry is then flushed within 5s")
	fs.StringVar(&f.logFormat, "log-format", "text", "log format: text or json")
	fs.StringVar(&f.logLevel, "log-level", "info", "least important log level shown: debug, info, warn or error")
	f.tls.register(fs)
	fs.BoolVar(&f.demo, "demo", false, `also run the demo responders (queues "thumbnail", "flaky") and workflows ("approval", "thumbnails")`)
}

// listFlag is a repeatable flag whose values may also be comma-separated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

// logger returns the logger the flags ask for, writing to w.
func (f *serveFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, usagef("--log-level %q is not one of debug, info, warn, error", f.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch f.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, usagef("--log-format %q is not text or json", f.logFormat)
}

func runServe(ctx context.Context, e *env, cmd *command, args []string) error {
	fs := e.newFlagSet(cmd)
	var sf serveFlags
	sf.register(fs)
	pos, err := e.parse(fs, cmd, args)
	if err != nil {
		return err
	}
	if err := exactArgs(pos); err != nil {
		return err
	}
	spec, err := engineFlag(fs)
	if err != nil {
		return err
	}
	if _, _, err := net.SplitHostPort(sf.addr); err != nil {
		return usagef("--addr %q is not HOST:PORT (such as 127.0.0.1:8080 or :8080)", sf.addr)
	}
	if sf.maxBody < 1 {
		return usagef("--max-body %d is below 1", sf.maxBody)
	}
	if sf.shutdownTimeout < 0 {
		return usagef("--shutdown-timeout must not be negative")
	}
	if !isSet(fs, "webhook-secret") {
		_ = sf.webhookSecrets.Set(os.Getenv("RSVP_WEBHOOK_SECRET"))
	}
	if err := checkWebhookSecrets(sf.webhookSecrets); err != nil {
		return err
	}
	var keys []gateway.APIKey
	if sf.keysFile != "" {
		if keys, err = loadKeys(sf.keysFile); err != nil {
			return err
		}
	}
	out := &syncWriter{w: e.stderr}
	log, err := sf.logger(out)
	if err != nil {
		return err
	}
	tlsConfig, err := sf.tls.config(log)
	if err != nil {
		return err
	}
	if err := serveError(server.CheckExposure(ctx, sf.addr, len(keys) > 0)); err != nil {
		return err // before the engine is opened (and maybe created)
	}

	b, err := openBackend(ctx, spec, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := closeBackend(b); err != nil {
			log.Warn("closing the engine", "err", err)
		}
	}()
	log.Info("engine open", "engine", spec.raw)
	cfg := server.Config{
		Backend:    b,
		EngineLost: engineLost(b),
		Addr:       sf.addr,
		TLS:        tlsConfig,
		Gateway: gateway.Config{
			Keys:        keys,
			MaxBodySize: sf.maxBody,
			Webhooks:    gateway.WebhookConfig{Secrets: sf.webhookSecrets, AllowPrivate: sf.allowPrivate},
		},
		Demo:            sf.demo,
		ShutdownTimeout: cmp.Or(sf.shutdownTimeout, -1), // 0 on the command line: no wait
		Logger:          log,
	}
	if sf.demo {
		cfg.Ready = func(baseURL string) { fmt.Fprint(e.stdout, server.DemoHelp(baseURL, len(keys) > 0)) }
	}
	if err := serveError(server.Run(ctx, cfg)); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// serveError returns err of the server as the command's error: a usage
// error for a bad configuration.
func serveError(err error) error {
	switch {
	case errors.Is(err, server.ErrUnprotected):
		return usagef("%s (--keys FILE; 'rsvp key new' makes a key)", strings.TrimPrefix(err.Error(), "server: "))
	case errors.Is(err, server.ErrInvalid):
		return usagef("%s", strings.TrimPrefix(err.Error(), "server: "))
	}
	return err
}

// keysFile is the format of the --keys file.
type keysFile struct {
	Keys []gateway.APIKey `json:"keys"`
}

// loadKeys reads and checks a keys file. Its errors are usage errors that
// name the file and the entry.
func loadKeys(path string) ([]gateway.APIKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("cannot read the keys file: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var kf keysFile
	if err := dec.Decode(&kf); err != nil {
		return nil, usagef(`keys file %s is not valid: %v (want {"keys": [{"tenant": ..., "sha256": ..., "grants": [...]}]}; 'rsvp key new' prints an entry)`, path, err)
	}
	if dec.More() {
		return nil, usagef("keys file %s is not valid: text after its JSON object", path)
	}
	if len(kf.Keys) == 0 {
		return nil, usagef(`keys file %s lists no keys: add entries printed by 'rsvp key new', or leave out --keys to serve loopback without authentication`, path)
	}
	if err := gateway.ValidateKeys(kf.Keys); err != nil {
		return nil, usagef("keys file %s: %s", path, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return kf.Keys, nil
}

// checkWebhookSecrets checks webhook secrets by the gateway's rule; its
// errors do not show them.
func checkWebhookSecrets(secrets []string) error {
	if err := (gateway.WebhookConfig{Secrets: secrets}).Validate(); err != nil {
		return usagef("%v ('rsvp key webhook-secret' makes one)", err)
	}
	return nil
}

const webhookSecretPrefix = "whsec_"

// keyPrefix starts the API keys 'rsvp key new' makes, so that secret
// scanners and people recognise them.
const keyPrefix = "rsvp_"

const keyUsage = `Usage: rsvp key new --tenant TENANT [--queue QUEUE,...] [--rights RIGHTS]
       rsvp key webhook-secret

'rsvp key new' makes a new random API key for 'rsvp serve --keys'. It
prints two lines to stdout: the key, shown only this once (give it to the
client, which sends "Authorization: Bearer KEY"), and the key's entry for
the "keys" list of the keys file, which holds the key's SHA-256, not the
key. A grant is made for each --queue ("*": every queue) with the --rights
(comma-separated: send, consume, admin).

'rsvp key webhook-secret' prints a new random webhook signing secret
(whsec_...) for 'rsvp serve --webhook-secret' and the receivers.

Example:
  rsvp key new --tenant acme --queue thumbnail,flaky --rights send
  rsvp key new --tenant acme --rights send,consume > acme.key   # line 1: the key
  {
    echo '{"keys": ['
    sed -n 2p acme.key
    echo ']}'
  } > keys.json
`

func runKey(ctx context.Context, e *env, cmd *command, args []string) error {
	if len(args) == 0 {
		return usagef("missing what to make: new or webhook-secret")
	}
	switch args[0] {
	case "new":
		return e.runKeyNew(cmd, args[1:])
	case "webhook-secret":
		pos, err := e.parse(e.keyFlagSet(cmd, nil), cmd, args[1:])
		if err != nil {
			return err
		}
		if err := exactArgs(pos); err != nil {
			return err
		}
		if _, err := fmt.Fprintln(e.stdout, webhookSecretPrefix+base64.StdEncoding.EncodeToString(randomBytes(32))); err != nil {
			return fmt.Errorf("write the secret: %w", err)
		}
		return nil
	default:
		if strings.HasPrefix(args[0], "-") {
			_, err := e.parse(e.keyFlagSet(cmd, nil), cmd, args)
			if err != nil {
				return err
			}
		}
		return usagef("unknown key command %q: want new or webhook-secret", args[0])
	}
}

// keyNewFlags are the flags of 'rsvp key new'.
type keyNewFlags struct {
	tenant string
	queues listFlag
	rights listFlag
}

// keyFlagSet returns the flag set of the key command; f, if not nil,
// receives the flags of 'key new'.
func (e *env) keyFlagSet(cmd *command, f *keyNewFlags) *flag.FlagSet {
	fs := bareFlagSet(cmd)
	if f == nil {
		f = new(keyNewFlags)
	}
	fs.StringVar(&f.tenant, "tenant", "", "(new) `tenant` the key's requests belong to (required)")
	fs.Var(&f.queues, "queue", "(new) `queues` the key may use, comma-separated or repeated; \"*\" every queue (default \"*\")")
	fs.Var(&f.rights, "rights", "(new) `rights` on those queues: send, consume, admin, comma-separated (default send)")
	return fs
}

func (e *env) runKeyNew(cmd *command, args []string) error {
	var f keyNewFlags
	pos, err := e.parse(e.keyFlagSet(cmd, &f), cmd, args)
	if err != nil {
		return err
	}
	if err := exactArgs(pos); err != nil {
		return err
	}
	if f.tenant == "" {
		return usagef("missing --tenant TENANT: whom the key's requests belong to")
	}
	if len(f.queues) == 0 {
		f.queues = listFlag{"*"}
	}
	if len(f.rights) == 0 {
		f.rights = listFlag{gateway.RightSend}
	}
	entry := gateway.APIKey{Tenant: f.tenant}
	for _, q := range f.queues {
		entry.Grants = append(entry.Grants, gateway.Grant{Queue: q, Rights: f.rights})
	}
	key := keyPrefix + base64.RawURLEncoding.EncodeToString(randomBytes(32))
	entry.SHA256 = gateway.HashKey(key)
	if err := gateway.ValidateKeys([]gateway.APIKey{entry}); err != nil {
		return &usageError{err}
	}
	line, err := json.Marshal(entry)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(e.stdout, "%s\n%s\n", key, line); err != nil {
		return fmt.Errorf("write the key: %w", err)
	}
	return nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return b
}

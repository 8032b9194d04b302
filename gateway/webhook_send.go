package gateway

// Webhook delivery following the Standard Webhooks specification
// (https://www.standardwebhooks.com): each delivery is a POST of the JSON
// result with the headers
//
//	webhook-id:        the message id, the same on every retry
//	webhook-timestamp: Unix seconds of this attempt
//	webhook-signature: "v1,<base64 HMAC-SHA256>" per secret, space-separated
//
// where the HMAC covers "{id}.{timestamp}.{body}" and is keyed with the bytes
// of a "whsec_<base64>" secret.
//
// Callback URLs come from clients, so the sender guards against server-side
// request forgery: unless WebhookConfig.AllowPrivate is set it refuses
// literal private addresses when a URL is submitted (checkURL) and, because a
// DNS name may resolve (or later re-resolve) to one, checks the address of
// every connection it opens, after resolution (the dialer's Control hook). It
// never uses an HTTP proxy from the environment (the proxy's address, not the
// target's, would be checked) and never follows redirects.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/propagation"
)

// Defaults for the zero values of WebhookConfig fields.
const (
	defaultWebhookTimeout  = 10 * time.Second
	defaultWebhookRetryFor = 24 * time.Hour
)

const (
	webhookSecretPrefix = "whsec_"
	// minWebhookSecretLen is the spec's minimum key size for HMAC-SHA256
	// secrets: 24 bytes (192 bits).
	minWebhookSecretLen = 24
	// maxWebhookResponseDrain is how much of a response body is read (and
	// thrown away) so the connection can be reused.
	maxWebhookResponseDrain = 64 << 10
	// maxWebhookResponseHeader bounds the response headers a callback
	// endpoint may send.
	maxWebhookResponseHeader = 64 << 10
	webhookUserAgent         = "rsvp-webhook/1"
)

// errForbiddenTarget is wrapped by every error that refuses a callback
// target because of its address (match it with errors.Is).
var errForbiddenTarget = errors.New("callbacks to private, loopback and link-local addresses are not allowed")

// WebhookConfig configures result delivery to callback URLs. The zero value
// works but is not Enabled: it has no secrets, so no webhooks can be sent.
type WebhookConfig struct {
	// Secrets sign deliveries, each "whsec_" followed by the standard base64
	// (with padding) of at least 24 random bytes. Every secret signs every
	// delivery and all the signatures are listed in webhook-signature, the
	// first secret's first, so keys can rotate: add the new secret first,
	// and remove the old one once receivers have switched. Required to send
	// webhooks: with none, submitting with a callback URL is refused (the
	// caller checks Enabled).
	Secrets []string
	// AllowPrivate permits callback targets in the loopback, private
	// (RFC 1918, fc00::/7), link-local, unspecified ("this network",
	// 0.0.0.0/8 and ::), shared (CGNAT, 100.64.0.0/10), multicast and
	// broadcast ranges, including those ranges embedded in IPv4-mapped
	// (::ffff:0:0/96), well-known NAT64 (64:ff9b::/96) and 6to4
	// (2002::/16, the IPv4 address in bits 16 to 48) IPv6 addresses; the
	// special-purpose IPv4 ranges 192.0.0.0/24, 192.88.99.0/24,
	// 198.18.0.0/15 and 240.0.0.0/4, the deprecated site-local fec0::/10;
	// and these, all of them: the local-use NAT64 prefix 64:ff9b:1::/48 (RFC
	// 8215; a NAT64 gateway translates its addresses to IPv4 ones,
	// private ones too, as its operator chose), Teredo (2001::/32; its
	// packets go to a client's NAT, whatever lies behind it) and the
	// deprecated IPv4-compatible addresses (::/96; an automatic tunnel
	// sends to the IPv4 address in them), and IPv4-translated ones
	// (::ffff:0:0:0/96). Default false: such targets are refused.
	AllowPrivate bool
	// Timeout bounds one delivery attempt: connecting, sending and reading
	// the response headers and (up to 64 KiB of) body. Default 10s.
	Timeout time.Duration
	// RetryFor is how long failed deliveries are retried after the result
	// is ready. Default 24h.
	RetryFor time.Duration

	// slots is how many webhook jobs a gateway runs at once; 0 means
	// defaultWebhookSlots. A test seam (export_test.go).
	slots int
}

// withDefaults returns c with its zero durations replaced by the defaults.
func (c WebhookConfig) withDefaults() WebhookConfig {
	if c.Timeout == 0 {
		c.Timeout = defaultWebhookTimeout
	}
	if c.RetryFor == 0 {
		c.RetryFor = defaultWebhookRetryFor
	}
	return c
}

// validate reports the first problem with c: a secret that does not parse,
// or a negative duration. Error texts never include secret material.
// Validate checks the secrets and durations, without showing the
// secrets in its errors.
func (c WebhookConfig) Validate() error {
	for i, s := range c.Secrets {
		if _, err := parseWebhookSecret(s); err != nil {
			return fmt.Errorf("webhook Secrets[%d]: %w", i, err)
		}
	}
	if c.Timeout < 0 {
		return fmt.Errorf("webhook Timeout must not be negative, got %v", c.Timeout)
	}
	if c.RetryFor < 0 {
		return fmt.Errorf("webhook RetryFor must not be negative, got %v", c.RetryFor)
	}
	return nil
}

// Enabled reports whether webhooks can be sent: at least one secret is set.
func (c WebhookConfig) Enabled() bool { return len(c.Secrets) > 0 }

// parseWebhookSecret decodes a "whsec_<base64>" secret into its key bytes.
func parseWebhookSecret(s string) ([]byte, error) {
	enc, ok := strings.CutPrefix(s, webhookSecretPrefix)
	if !ok {
		return nil, fmt.Errorf("a secret must start with %q", webhookSecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("the part after %q is not valid standard base64", webhookSecretPrefix)
	}
	if len(key) < minWebhookSecretLen {
		return nil, fmt.Errorf("a secret must hold at least %d bytes, this one holds %d", minWebhookSecretLen, len(key))
	}
	return key, nil
}

// webhookSender posts signed deliveries. It is safe for concurrent use.
type webhookSender struct {
	cfg       WebhookConfig // with defaults
	keys      [][]byte      // decoded Secrets, in order
	transport *http.Transport
	client    *http.Client
	now       func() time.Time // the clock for webhook-timestamp
}

// newWebhookSender checks cfg and builds a sender for it. A config with no
// secrets is accepted (checkURL works), but send refuses to deliver
// unsigned.
func newWebhookSender(cfg WebhookConfig) (*webhookSender, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	keys := make([][]byte, len(cfg.Secrets))
	for i, s := range cfg.Secrets {
		keys[i], _ = parseWebhookSecret(s) // validated above
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}
	if !cfg.AllowPrivate {
		dialer.Control = dialGuard
	}
	transport := &http.Transport{
		Proxy:                  nil, // never: the guard would check the proxy, not the target
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    4,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    cfg.Timeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: maxWebhookResponseHeader,
	}
	client := &http.Client{
		Transport: transport,
		// A redirect is a failed delivery (spec: update the URL instead);
		// following one could also lead to a forbidden target.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &webhookSender{cfg: cfg, keys: keys, transport: transport, client: client, now: time.Now}, nil
}

// close closes the sender's idle connections.
func (s *webhookSender) close() { s.transport.CloseIdleConnections() }

// checkURL validates a callback URL when it is submitted: absolute http or
// https, with a host and no user info, and, unless AllowPrivate, a host that
// is not a literal address in a forbidden range. DNS names are not resolved
// here: send checks the address of each connection instead. Errors are
// sentences fit for a 400 problem detail; they do not repeat the URL.
func (s *webhookSender) checkURL(raw string) error {
	if raw == "" {
		return errors.New("callback URL is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the URL, which may hold credentials
		}
		return fmt.Errorf("callback URL is not a valid URL: %v", err)
	}
	if u.Scheme == "" {
		return errors.New("callback URL must be absolute, starting with https:// or http://")
	}
	if u.Scheme != "http" && u.Scheme != "https" { // url.Parse lowercases the scheme
		return fmt.Errorf("callback URL must use https or http, not %q", u.Scheme)
	}
	if u.User != nil {
		return errors.New("callback URL must not contain user info (user:password@)")
	}
	host := u.Hostname()
	if host == "" {
		return errors.New("callback URL has no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("callback URL port %q is not between 1 and 65535", p)
		}
	}
	if s.cfg.AllowPrivate {
		return nil
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		if reason := forbiddenAddr(ip); reason != "" {
			return fmt.Errorf("callback URL host %s is %s address: %w", host, reason, errForbiddenTarget)
		}
	}
	return nil
}

// send delivers body (Content-Type application/json) to callbackURL, signed, with
// msgID as webhook-id and the current time as webhook-timestamp. It returns
// the response's HTTP status (0 if there was none) and an error for a
// refused URL or target, a transport error or timeout, or a status outside
// 2xx. Redirects are not followed: a 3xx is a failure. The error text
// includes the status.
func (s *webhookSender) send(ctx context.Context, callbackURL, msgID string, body []byte) (status int, err error) {
	if len(s.keys) == 0 {
		return 0, errors.New("webhook: no signing secrets configured")
	}
	if err := checkMsgID(msgID); err != nil {
		return 0, err
	}
	if err := s.checkURL(callbackURL); err != nil {
		return 0, fmt.Errorf("webhook: %w", err)
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(parent, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, callbackURL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("webhook: %w", err)
	}
	ts := s.now().Unix()
	sigs := make([]string, len(s.keys))
	for i, key := range s.keys {
		sigs[i] = sign(key, msgID, ts, body)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", webhookUserAgent)
	req.Header.Set("webhook-id", msgID)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("webhook-signature", strings.Join(sigs, " "))
	// The trace context of ctx (the delivery's span), unsigned as the
	// other transport headers are, for the receiver to go on with the trace.
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(req.Header))

	resp, err := s.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without "Post <url>:", the URL may hold tokens
		}
		if parent.Err() == nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return 0, fmt.Errorf("webhook: no response within %v: %w", s.cfg.Timeout, err)
		}
		return 0, fmt.Errorf("webhook: POST failed: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxWebhookResponseDrain))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode <= 299:
		return resp.StatusCode, nil
	case resp.StatusCode >= 300 && resp.StatusCode <= 399:
		return resp.StatusCode, fmt.Errorf("webhook: callback answered %s; redirects are not followed", resp.Status)
	default:
		return resp.StatusCode, fmt.Errorf("webhook: callback answered %s", resp.Status)
	}
}

// webhookFailure is what a tenant reads of a failed delivery attempt (the
// attempts in its request's status, and in later payloads), from send's
// status and error: the kind of failure, in a few words, and never an
// address, a host name or the URL. Those would show a queue's default
// webhook, which is the operator's (its URL may hold a token), and, for
// any callback, where its host name resolved from the gateway (with a name
// of its choice a tenant could read the operator's DNS, one name at a
// time). A submitter knows its own URL: the kind of failure is what it
// needs to fix it. The gateway's log keeps send's whole error.
func webhookFailure(status int, err error, timeout time.Duration) string {
	const failed = "webhook delivery failed: "
	var (
		dnsErr   *net.DNSError
		certErr  *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalid  x509.CertificateInvalidError
		recErr   tls.RecordHeaderError
		alertErr tls.AlertError
	)
	switch {
	case err == nil:
		return ""
	case status >= 300 && status <= 399:
		// The status text, not the callback's reason phrase: that is the
		// callback's words, and the callback may be the operator's.
		return fmt.Sprintf(failed+"the callback answered %d %s; redirects are not followed", status, http.StatusText(status))
	case status != 0:
		return fmt.Sprintf(failed+"the callback answered %d %s", status, http.StatusText(status))
	case errors.Is(err, errForbiddenTarget):
		return "webhook delivery refused: the callback's host is, or resolves to, a private, loopback or link-local address (or another range callbacks may not reach)"
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return failed + "the callback's host name was not found"
	case errors.As(err, &dnsErr):
		return failed + "the callback's host name could not be resolved"
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return fmt.Sprintf(failed+"no response within %v", timeout)
	case errors.Is(err, context.Canceled):
		return failed + "interrupted (the gateway stopped); it will be retried"
	case errors.Is(err, syscall.ECONNREFUSED):
		return failed + "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return failed + "connection reset"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return failed + "the callback's host is unreachable"
	case errors.As(err, &unknown):
		return failed + "the callback's TLS certificate is signed by an unknown authority"
	case errors.As(err, &hostErr):
		return failed + "the callback's TLS certificate is not valid for its host"
	case errors.As(err, &invalid) && invalid.Reason == x509.Expired:
		return failed + "the callback's TLS certificate has expired or is not yet valid"
	case errors.As(err, &certErr), errors.As(err, &invalid):
		return failed + "the callback's TLS certificate was not accepted"
	case errors.As(err, &recErr), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"): // net/http's words for a RecordHeaderError of "HTTP/"
		return failed + "the callback did not answer in TLS (an https:// URL for an http:// one?)"
	case errors.As(err, &alertErr):
		return failed + "the TLS handshake with the callback failed"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return failed + "the connection closed before a response"
	}
	return failed + "see the gateway's log"
}

// isTimeout reports whether err is a network timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkMsgID refuses ids that could make the signed content ambiguous (the
// spec forbids "." in them) or that are not a plain header token.
func checkMsgID(id string) error {
	if id == "" {
		return errors.New("webhook: empty message id")
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f || c == '.' {
			return fmt.Errorf("webhook: message id %q has a character other than printable ASCII without '.'", id)
		}
	}
	return nil
}

// sign returns the Standard Webhooks v1 signature of a delivery:
// "v1," + base64(HMAC-SHA256(secret, "{msgID}.{ts}.{body}")).
func sign(secret []byte, msgID string, ts int64, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	buf := make([]byte, 0, len(msgID)+22)
	buf = append(buf, msgID...)
	buf = append(buf, '.')
	buf = strconv.AppendInt(buf, ts, 10)
	buf = append(buf, '.')
	mac.Write(buf)
	mac.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// dialGuard is the dialer's Control hook when private targets are not
// allowed: it runs after DNS resolution, for every connection attempt, with
// the address actually being dialed, so a name that resolves (or is rebound)
// to a forbidden address is refused before connecting.
func dialGuard(network, address string, _ syscall.RawConn) error {
	return checkDialAddress(address)
}

// checkDialAddress refuses an "ip:port" in a forbidden range. An address
// that does not parse is refused too.
func checkDialAddress(address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("refusing to connect to %q, not an IP address and port: %w", address, errForbiddenTarget)
	}
	if reason := forbiddenAddr(ap.Addr()); reason != "" {
		return fmt.Errorf("refusing to connect to %s, %s address: %w", ap.Addr(), reason, errForbiddenTarget)
	}
	return nil
}

var (
	forbiddenV4 = []struct {
		prefix netip.Prefix
		reason string
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), `an unspecified ("this network")`},
		{netip.MustParsePrefix("10.0.0.0/8"), "a private"},
		{netip.MustParsePrefix("100.64.0.0/10"), "a shared (carrier-grade NAT)"},
		{netip.MustParsePrefix("127.0.0.0/8"), "a loopback"},
		{netip.MustParsePrefix("169.254.0.0/16"), "a link-local"},
		{netip.MustParsePrefix("172.16.0.0/12"), "a private"},
		{netip.MustParsePrefix("192.168.0.0/16"), "a private"},
		{netip.MustParsePrefix("224.0.0.0/4"), "a multicast"},
		{netip.MustParsePrefix("255.255.255.255/32"), "the broadcast"},
		// Special-purpose ranges (RFC 6890) that networks use inside and
		// no callback lives on. After the broadcast, which keeps its
		// reason.
		{netip.MustParsePrefix("192.0.0.0/24"), "an IETF protocol assignments"},
		{netip.MustParsePrefix("192.88.99.0/24"), "a deprecated 6to4 relay anycast"},
		{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking"},
		{netip.MustParsePrefix("240.0.0.0/4"), "a reserved"},
	}
	forbiddenV6 = []struct {
		prefix netip.Prefix
		reason string
	}{
		{netip.MustParsePrefix("::/128"), "an unspecified"},
		{netip.MustParsePrefix("::1/128"), "a loopback"},
		// Deprecated (RFC 4291, section 2.5.5.1) and used by no host, but
		// an automatic tunnel (Linux's sit0) still sends to the IPv4
		// address in the last 32 bits: ::127.0.0.1 is 127.0.0.1. After
		// the two above, which keep their reasons.
		{netip.MustParsePrefix("::/96"), "a deprecated IPv4-compatible (::/96)"},
		// SIIT's IPv4-translated addresses (RFC 2765): a translator maps
		// them to the IPv4 address in their last 32 bits, which networks
		// choose.
		{netip.MustParsePrefix("::ffff:0:0:0/96"), "an IPv4-translated (::ffff:0:0:0/96)"},
		{netip.MustParsePrefix("fc00::/7"), "a private (unique local)"},
		{netip.MustParsePrefix("fec0::/10"), "a deprecated site-local"},
		{netip.MustParsePrefix("fe80::/10"), "a link-local"},
		{netip.MustParsePrefix("ff00::/8"), "a multicast"},
		// Where its IPv4 address sits, and so which one it is, depends on
		// the length of the prefix the local NAT64 uses within the /48
		// (RFC 6052), which the sender cannot know.
		{netip.MustParsePrefix("64:ff9b:1::/48"), "a local-use NAT64 (RFC 8215)"},
		// A Teredo address holds its server's IPv4 address and, inverted,
		// the client's public (NAT) address and port: a relay sends the
		// packets to that NAT, and what lies behind it no address tells.
		// No callback server lives on one.
		{netip.MustParsePrefix("2001::/32"), "a Teredo (RFC 4380)"},
	}
	nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")
	// A 6to4 address (RFC 3056) holds in bits 16 to 48 the IPv4 address
	// of the site's router, which a 6to4 relay sends the packets to.
	sixToFourPrefix = netip.MustParsePrefix("2002::/16")
)

// forbiddenAddr returns why ip may not be a callback target ("a loopback",
// ...) or "" if it may. IPv4 addresses embedded in IPv4-mapped, well-known
// NAT64 (64:ff9b::/96) and 6to4 (2002::/16) IPv6 addresses are judged as
// IPv4; the local-use NAT64 prefix (64:ff9b:1::/48), Teredo (2001::/32)
// and the deprecated IPv4-compatible addresses (::/96) are refused whole.
func forbiddenAddr(ip netip.Addr) string {
	ip = ip.WithZone("").Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64Prefix.Contains(ip):
			ip = netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
		case sixToFourPrefix.Contains(ip):
			ip = netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
		}
	}
	if ip.Is4() {
		for _, f := range forbiddenV4 {
			if f.prefix.Contains(ip) {
				return f.reason
			}
		}
		return ""
	}
	for _, f := range forbiddenV6 {
		if f.prefix.Contains(ip) {
			return f.reason
		}
	}
	return ""
}

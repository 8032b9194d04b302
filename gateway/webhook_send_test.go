package gateway

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// verifyStandardWebhook checks a delivery the way a receiver written from
// the Standard Webhooks spec would, sharing no code with the sender: decode
// each "whsec_" secret, require the three headers, require webhook-timestamp
// within 5 minutes of now, compute HMAC-SHA256 over "{id}.{timestamp}.{body}"
// and compare it in constant time with every "v1," entry of the
// space-separated webhook-signature. It returns the indexes of the secrets
// that have a matching signature, and an error if none has.
func verifyStandardWebhook(secrets []string, h http.Header, body []byte, now time.Time) ([]int, error) {
	id := h.Get("webhook-id")
	tsText := h.Get("webhook-timestamp")
	sigHeader := h.Get("webhook-signature")
	if id == "" || tsText == "" || sigHeader == "" {
		return nil, errors.New("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	ts, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("webhook-timestamp %q is not an integer", tsText)
	}
	const tolerance = 5 * 60
	if d := now.Unix() - ts; d > tolerance || d < -tolerance {
		return nil, fmt.Errorf("webhook-timestamp %d is %d s away from now", ts, d)
	}
	var given [][]byte
	for _, entry := range strings.Split(sigHeader, " ") {
		version, b64, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			continue
		}
		given = append(given, raw)
	}
	var matched []int
	for i, secret := range secrets {
		key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
		if err != nil {
			return nil, fmt.Errorf("secret %d: %v", i, err)
		}
		mac := hmac.New(sha256.New, key)
		mac.Write([]byte(id + "." + tsText + "."))
		mac.Write(body)
		want := mac.Sum(nil)
		for _, g := range given {
			if subtle.ConstantTimeCompare(g, want) == 1 {
				matched = append(matched, i)
				break
			}
		}
	}
	if len(matched) == 0 {
		return nil, errors.New("no signature matches")
	}
	return matched, nil
}

// newTestSecret returns a fresh "whsec_" secret of 32 random bytes.
func newTestSecret(t *testing.T) string {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	return "whsec_" + base64.StdEncoding.EncodeToString(key)
}

func newTestSender(t *testing.T, cfg WebhookConfig) *webhookSender {
	t.Helper()
	s, err := newWebhookSender(cfg)
	if err != nil {
		t.Fatalf("newWebhookSender: %v", err)
	}
	t.Cleanup(s.close)
	return s
}

type delivery struct {
	method string
	header http.Header
	body   []byte
}

// newReceiver starts a server that records each request on the returned
// channel and answers status.
func newReceiver(t *testing.T, status int) (*httptest.Server, <-chan delivery) {
	t.Helper()
	got := make(chan delivery, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("receiver: reading body: %v", err)
		}
		got <- delivery{method: r.Method, header: r.Header.Clone(), body: body}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func TestWebhookSignKnownAnswer(t *testing.T) {
	// The test vector of the Standard Webhooks reference libraries.
	key, err := parseWebhookSecret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	if err != nil {
		t.Fatal(err)
	}
	got := sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("sign = %q, want %q", got, want)
	}
}

func TestWebhookSendSignedWithRotation(t *testing.T) {
	newSecret, oldSecret := newTestSecret(t), newTestSecret(t)
	s := newTestSender(t, WebhookConfig{Secrets: []string{newSecret, oldSecret}, AllowPrivate: true})
	srv, got := newReceiver(t, http.StatusNoContent)

	body := []byte(`{"id":"req_1","status":"done","result":{"x":1}}`)
	status, err := s.send(context.Background(), srv.URL+"/hook?t=1", "msg_abc123", body)
	if err != nil || status != http.StatusNoContent {
		t.Fatalf("send = %d, %v; want 204, nil", status, err)
	}
	d := <-got
	if d.method != http.MethodPost {
		t.Errorf("method %s, want POST", d.method)
	}
	if ct := d.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if id := d.header.Get("webhook-id"); id != "msg_abc123" {
		t.Errorf("webhook-id %q, want msg_abc123", id)
	}
	if string(d.body) != string(body) {
		t.Errorf("body %q, want %q", d.body, body)
	}
	if n := len(strings.Split(d.header.Get("webhook-signature"), " ")); n != 2 {
		t.Errorf("webhook-signature has %d entries, want 2: %q", n, d.header.Get("webhook-signature"))
	}

	now := time.Now()
	matched, err := verifyStandardWebhook([]string{newSecret, oldSecret}, d.header, d.body, now)
	if err != nil || len(matched) != 2 {
		t.Fatalf("verify with both secrets: matched %v, %v; want both", matched, err)
	}
	// Receivers on either side of the rotation accept the delivery.
	for _, secret := range []string{newSecret, oldSecret} {
		if _, err := verifyStandardWebhook([]string{secret}, d.header, d.body, now); err != nil {
			t.Errorf("verify with one secret: %v", err)
		}
	}
	// The first secret's signature comes first.
	first, _, _ := strings.Cut(d.header.Get("webhook-signature"), " ")
	h1 := d.header.Clone()
	h1.Set("webhook-signature", first)
	if m, err := verifyStandardWebhook([]string{newSecret, oldSecret}, h1, d.body, now); err != nil || len(m) != 1 || m[0] != 0 {
		t.Errorf("first signature matched %v, %v; want secret 0 only", m, err)
	}

	// The verifier is not a rubber stamp.
	if _, err := verifyStandardWebhook([]string{newTestSecret(t)}, d.header, d.body, now); err == nil {
		t.Error("a foreign secret verified")
	}
	if _, err := verifyStandardWebhook([]string{newSecret}, d.header, []byte(`{"id":"req_2"}`), now); err == nil {
		t.Error("a tampered body verified")
	}
	h2 := d.header.Clone()
	h2.Set("webhook-id", "msg_other")
	if _, err := verifyStandardWebhook([]string{newSecret}, h2, d.body, now); err == nil {
		t.Error("a changed webhook-id verified")
	}
	if _, err := verifyStandardWebhook([]string{newSecret}, d.header, d.body, now.Add(6*time.Minute)); err == nil {
		t.Error("a stale timestamp verified")
	}

	// A retry carries the same webhook-id.
	if _, err := s.send(context.Background(), srv.URL+"/hook?t=1", "msg_abc123", body); err != nil {
		t.Fatal(err)
	}
	if d2 := <-got; d2.header.Get("webhook-id") != "msg_abc123" {
		t.Errorf("retry webhook-id %q", d2.header.Get("webhook-id"))
	}
}

func TestWebhookSendHTTPS(t *testing.T) {
	secret := newTestSecret(t)
	s := newTestSender(t, WebhookConfig{Secrets: []string{secret}, AllowPrivate: true})
	got := make(chan delivery, 1)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- delivery{method: r.Method, header: r.Header.Clone(), body: body}
	}))
	t.Cleanup(srv.Close)
	s.transport.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()

	status, err := s.send(context.Background(), srv.URL, "msg_tls", []byte(`{}`))
	if err != nil || status != http.StatusOK {
		t.Fatalf("send = %d, %v; want 200, nil", status, err)
	}
	d := <-got
	if _, err := verifyStandardWebhook([]string{secret}, d.header, d.body, time.Now()); err != nil {
		t.Fatal(err)
	}
}

func TestWebhookSendRedirectNotFollowed(t *testing.T) {
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			s := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}, AllowPrivate: true})
			var targetHits atomic.Int32
			target := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { targetHits.Add(1) }))
			t.Cleanup(target.Close)
			var redirectHits atomic.Int32
			redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				redirectHits.Add(1)
				http.Redirect(w, r, target.URL+"/elsewhere", code)
			}))
			t.Cleanup(redirector.Close)

			status, err := s.send(context.Background(), redirector.URL, "msg_r", []byte(`{}`))
			if status != code {
				t.Errorf("status %d, want %d", status, code)
			}
			if err == nil || !strings.Contains(err.Error(), strconv.Itoa(code)) || !strings.Contains(err.Error(), "redirect") {
				t.Errorf("err = %v, want a failure naming %d and redirects", err, code)
			}
			if n := redirectHits.Load(); n != 1 {
				t.Errorf("redirecting server hit %d times, want 1", n)
			}
			if n := targetHits.Load(); n != 0 {
				t.Errorf("redirect followed: target hit %d times", n)
			}
		})
	}
}

func TestWebhookSendErrorStatus(t *testing.T) {
	s := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}, AllowPrivate: true})
	for _, code := range []int{http.StatusInternalServerError, http.StatusNotFound, http.StatusGone} {
		srv, got := newReceiver(t, code)
		status, err := s.send(context.Background(), srv.URL, "msg_e", []byte(`{}`))
		if status != code {
			t.Errorf("status %d, want %d", status, code)
		}
		if err == nil || !strings.Contains(err.Error(), strconv.Itoa(code)) {
			t.Errorf("err = %v, want an error naming %d", err, code)
		}
		<-got
	}
}

func TestWebhookSendTimeout(t *testing.T) {
	s := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}, AllowPrivate: true, Timeout: 50 * time.Millisecond})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(srv.Close)                                                     // runs second: waits for the handler
	t.Cleanup(func() { close(release) })                                     // runs first: frees the handler
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // a backstop, not the timeout under test
	defer cancel()

	start := time.Now()
	status, err := s.send(ctx, srv.URL, "msg_t", []byte(`{}`))
	elapsed := time.Since(start)
	if status != 0 {
		t.Errorf("status %d, want 0", status)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no response within 50ms") {
		t.Errorf("err = %v, want a 50ms timeout", err)
	}
	if ctx.Err() != nil || elapsed > 5*time.Second {
		t.Errorf("took %v; the per-attempt timeout was not enforced", elapsed)
	}
}

func TestWebhookCheckURLPrivateLiterals(t *testing.T) {
	deny := newTestSender(t, WebhookConfig{})
	allow := newTestSender(t, WebhookConfig{AllowPrivate: true})
	for _, tc := range []struct{ url, reason string }{
		{"http://127.0.0.1/hook", "loopback"},
		{"http://127.1.2.3:8080/hook", "loopback"},
		{"https://[::1]/hook", "loopback"},
		{"http://169.254.169.254/latest/meta-data/", "link-local"},
		{"http://10.0.0.1/hook", "private"},
		{"http://172.16.5.4/hook", "private"},
		{"http://192.168.1.1/hook", "private"},
		{"http://100.64.0.1/hook", "carrier-grade NAT"},
		{"http://0.0.0.0/hook", "unspecified"},
		{"http://[::]/hook", "unspecified"},
		{"http://[fd00::1]/hook", "unique local"},
		{"http://[fe80::1%25eth0]/hook", "link-local"},
		{"http://[::ffff:127.0.0.1]/hook", "loopback"},
		{"http://[::ffff:a9fe:a9fe]/hook", "link-local"},
		{"http://[64:ff9b::a00:1]/hook", "private"},
		// The local-use NAT64 prefix (RFC 8215): where the IPv4 address
		// sits, and which one, is the local NAT64's choice, so all of it
		// is refused, with a public-looking IPv4 in the last 32 bits too.
		{"http://[64:ff9b:1::a00:1]/hook", "local-use NAT64"},
		{"http://[64:ff9b:1:ffff::5db8:d822]:8443/hook", "local-use NAT64"},
		// 6to4 (2002::/16) is judged by the IPv4 address in its bits
		// 16-48, which a 6to4 relay sends the packets to.
		{"http://[2002:a00:1::1]/hook", "private"},
		{"http://[2002:7f00:1::]/hook", "loopback"},
		{"http://[2002:a9fe:a9fe:1::80]/hook", "link-local"},
		// Teredo (2001::/32) is refused whole: its packets go to the
		// client's NAT, whatever is behind it (RFC 4380's example address).
		{"http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/hook", "Teredo"},
		{"http://[2001::5db8:d822]/hook", "Teredo"},
		// The deprecated IPv4-compatible addresses (::/96) are refused
		// whole, with a public IPv4 address too.
		{"http://[::a00:1]/hook", "IPv4-compatible"},
		{"http://[::127.0.0.1]:8080/hook", "IPv4-compatible"},
		{"http://[::5db8:d822]/hook", "IPv4-compatible"},
		// Special-purpose IPv4 ranges no callback lives on, which networks
		// use inside (RFC 6890): IETF assignments, benchmarking, the
		// deprecated 6to4 relay anycast, and the reserved 240/4.
		{"http://192.0.0.170/hook", "IETF protocol assignments"},
		{"http://198.18.0.1/hook", "benchmarking"},
		{"http://198.19.255.254/hook", "benchmarking"},
		{"http://192.88.99.1/hook", "6to4 relay"},
		{"http://240.0.0.1/hook", "reserved"},
		{"http://[::ffff:198.18.0.1]/hook", "benchmarking"},
		// The deprecated site-local IPv6 range, and SIIT's IPv4-translated
		// addresses, refused whole.
		{"http://[fec0::1]/hook", "site-local"},
		{"http://[::ffff:0:a00:1]/hook", "IPv4-translated"},
		{"http://[::ffff:0:5db8:d822]/hook", "IPv4-translated"},
	} {
		err := deny.checkURL(tc.url)
		if !errors.Is(err, errForbiddenTarget) || !strings.Contains(err.Error(), tc.reason) || !strings.HasPrefix(err.Error(), "callback URL host ") {
			t.Errorf("checkURL(%q) = %v, want a refusal naming %q", tc.url, err, tc.reason)
		}
		if err := allow.checkURL(tc.url); err != nil {
			t.Errorf("AllowPrivate: checkURL(%q) = %v", tc.url, err)
		}
	}
	for _, ok := range []string{
		"https://example.com/hook",
		"http://localhost:8080/hook", // names are checked when connecting
		"https://93.184.216.34/hook",
		"https://[2606:4700:4700::1111]:8443/hook?x=1#f",
		"HTTPS://Example.COM/hook",
		"https://[2002:5db8:d822::1]/hook", // 6to4 of a public address
	} {
		if err := deny.checkURL(ok); err != nil {
			t.Errorf("checkURL(%q) = %v, want nil", ok, err)
		}
	}
	// send applies the same check before dialing.
	srv, got := newReceiver(t, http.StatusOK)
	s := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}})
	status, err := s.send(context.Background(), srv.URL, "msg_l", []byte(`{}`))
	if status != 0 || !errors.Is(err, errForbiddenTarget) {
		t.Errorf("send to %s = %d, %v; want a refusal", srv.URL, status, err)
	}
	select {
	case <-got:
		t.Error("the refused target received the delivery")
	default:
	}
}

func TestWebhookSendDialGuard(t *testing.T) {
	srv, got := newReceiver(t, http.StatusOK)
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	byName := "http://localhost:" + port + "/hook" // a DNS name that resolves to loopback

	deny := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}})
	if err := deny.checkURL(byName); err != nil {
		t.Fatalf("checkURL(%q) = %v; names pass at submit time", byName, err)
	}
	status, err := deny.send(context.Background(), byName, "msg_d", []byte(`{}`))
	if status != 0 || !errors.Is(err, errForbiddenTarget) || !strings.Contains(err.Error(), "refusing to connect to") || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("send to %s = %d, %v; want a refused connection to a loopback address", byName, status, err)
	}
	t.Logf("refusal reads: %v", err)
	select {
	case <-got:
		t.Fatal("the refused target received the delivery")
	default:
	}

	allow := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}, AllowPrivate: true})
	status, err = allow.send(context.Background(), byName, "msg_d", []byte(`{}`))
	if status != http.StatusOK || err != nil {
		t.Fatalf("AllowPrivate: send to %s = %d, %v; want 200, nil", byName, status, err)
	}
	<-got
}

func TestWebhookCheckDialAddress(t *testing.T) {
	for _, addr := range []string{
		"127.0.0.1:80", "[::1]:443", "10.1.2.3:80", "172.31.255.255:80", "192.168.0.1:80",
		"169.254.169.254:80", "100.127.255.254:80", "0.0.0.0:80", "[::]:80", "[fc00::1]:80",
		"[fe80::1%lo]:80", "[::ffff:10.0.0.1]:80", "[64:ff9b::7f00:1]:80", "224.0.0.1:80",
		"255.255.255.255:80", "[ff02::1]:80", "not-an-address",
		"[64:ff9b:1::a00:1]:80", "[64:ff9b:1:a00:1::]:80", "[64:ff9b:1::5db8:d822]:443",
		"[2002:a00:1::1]:80", "[2002:7f00:1::1]:443", "[2002:a9fe:a9fe::]:80", "[2002:6440:1::1]:80",
		"[2001:0:4136:e378:8000:63bf:3fff:fdd2]:80", "[2001::1]:443",
		"[::a00:1]:80", "[::127.0.0.1]:80", "[::5db8:d822]:443",
	} {
		if err := checkDialAddress(addr); !errors.Is(err, errForbiddenTarget) {
			t.Errorf("checkDialAddress(%q) = %v, want a refusal", addr, err)
		}
	}
	// The dialer's Control hook is checkDialAddress: a name that resolves
	// to a local-use NAT64 address is refused before connecting.
	for _, tc := range []struct{ addr, reason string }{
		{"[64:ff9b:1::a00:1]:443", "local-use NAT64"},
		{"[2002:a00:1::1]:443", "private"},
		{"[2001:0:4136:e378:8000:63bf:3fff:fdd2]:443", "Teredo"},
		{"[::7f00:1]:443", "IPv4-compatible"},
	} {
		if err := dialGuard("tcp6", tc.addr, nil); !errors.Is(err, errForbiddenTarget) || !strings.Contains(err.Error(), tc.reason) {
			t.Errorf("dialGuard(%q) = %v, want a refusal naming %q", tc.addr, err, tc.reason)
		}
	}
	for _, addr := range []string{
		"93.184.216.34:443", "[2606:4700:4700::1111]:443", "172.32.0.1:80", "100.128.0.1:80",
		"192.169.0.1:80", "[64:ff9b::5db8:d822]:443", "[64:ff9b:2::a00:1]:80", "[64:ff9a:1::a00:1]:80",
		"[2002:5db8:d822::1]:443", "[2003:a00:1::1]:80", "[2001:1:4136:e378::1]:80", "[2001:4860:4860::8888]:443",
		"[::1:0:a00:1]:80",
	} {
		if err := checkDialAddress(addr); err != nil {
			t.Errorf("checkDialAddress(%q) = %v, want nil", addr, err)
		}
	}
}

func TestWebhookCheckURLBad(t *testing.T) {
	s := newTestSender(t, WebhookConfig{AllowPrivate: true})
	for _, tc := range []struct{ url, want string }{
		{"", "empty"},
		{"ftp://example.com/hook", `not "ftp"`},
		{"file:///etc/passwd", `not "file"`},
		{"/relative/hook", "absolute"},
		{"example.com/hook", "absolute"},
		{"//example.com/hook", "absolute"},
		{"https://user:s3cr3tpw@example.com/hook", "user info"},
		{"https://user@example.com/hook", "user info"},
		{"https:///hook", "no host"},
		{"http:example.com", "no host"},
		{"https://example.com:0/hook", "port"},
		{"https://example.com:70000/hook", "port"},
		{"https://exa mple.com/hook", "not a valid URL"},
		{"https://example.com:port/hook", "not a valid URL"},
	} {
		err := s.checkURL(tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("checkURL(%q) = %v, want an error containing %q", tc.url, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "s3cr3tpw") {
			t.Errorf("checkURL(%q) error repeats the credentials: %v", tc.url, err)
		}
	}
}

func TestWebhookConfigValidate(t *testing.T) {
	good := newTestSecret(t)
	short := "whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 16))
	for _, tc := range []struct {
		name string
		cfg  WebhookConfig
		want string
	}{
		{"empty secret", WebhookConfig{Secrets: []string{""}}, "Secrets[0]"},
		{"prefix only", WebhookConfig{Secrets: []string{"whsec_"}}, "at least 24 bytes"},
		{"no prefix", WebhookConfig{Secrets: []string{good, strings.TrimPrefix(good, "whsec_")}}, `Secrets[1]: a secret must start with "whsec_"`},
		{"not base64", WebhookConfig{Secrets: []string{"whsec_!!not*base64!!"}}, "not valid standard base64"},
		{"too short", WebhookConfig{Secrets: []string{short}}, "at least 24 bytes, this one holds 16"},
		{"negative timeout", WebhookConfig{Secrets: []string{good}, Timeout: -time.Second}, "Timeout must not be negative"},
		{"negative retry", WebhookConfig{RetryFor: -time.Hour}, "RetryFor must not be negative"},
	} {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: validate = %v, want an error containing %q", tc.name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), strings.TrimPrefix(good, "whsec_")) || strings.Contains(err.Error(), "not*base64") {
			t.Errorf("%s: error text leaks the secret: %v", tc.name, err)
		}
		if _, err := newWebhookSender(tc.cfg); err == nil {
			t.Errorf("%s: newWebhookSender accepted the config", tc.name)
		}
	}
	if err := (WebhookConfig{Secrets: []string{good, newTestSecret(t)}, Timeout: time.Second, RetryFor: time.Hour}).Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestWebhookConfigDefaults(t *testing.T) {
	var zero WebhookConfig
	if err := zero.Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	if zero.Enabled() {
		t.Error("zero config is Enabled")
	}
	d := zero.withDefaults()
	if d.Timeout != 10*time.Second || d.RetryFor != 24*time.Hour || d.AllowPrivate {
		t.Errorf("defaults = %+v", d)
	}
	set := WebhookConfig{Secrets: []string{newTestSecret(t)}, Timeout: time.Second, RetryFor: time.Minute}.withDefaults()
	if !set.Enabled() || set.Timeout != time.Second || set.RetryFor != time.Minute {
		t.Errorf("withDefaults changed set fields: %+v", set)
	}
	s := newTestSender(t, WebhookConfig{})
	if s.transport.Proxy != nil {
		t.Error("the transport uses a proxy; the dial guard would check the proxy's address")
	}
}

func TestWebhookSendRefusals(t *testing.T) {
	srv, got := newReceiver(t, http.StatusOK)
	unsigned := newTestSender(t, WebhookConfig{AllowPrivate: true})
	if _, err := unsigned.send(context.Background(), srv.URL, "msg_u", []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "no signing secrets") {
		t.Errorf("send without secrets = %v, want a refusal", err)
	}
	s := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}, AllowPrivate: true})
	for _, id := range []string{"", "msg.1", "msg 1", "msg\n1"} {
		if _, err := s.send(context.Background(), srv.URL, id, []byte(`{}`)); err == nil || !strings.Contains(err.Error(), "message id") {
			t.Errorf("send with id %q = %v, want a refusal", id, err)
		}
	}
	if _, err := s.send(context.Background(), "ftp://"+strings.TrimPrefix(srv.URL, "http://"), "msg_f", []byte(`{}`)); err == nil {
		t.Error("send to an ftp URL succeeded")
	}
	select {
	case <-got:
		t.Error("a refused send reached the server")
	default:
	}
	// A cancelled caller context is not reported as the attempt timing out.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.send(ctx, srv.URL, "msg_c", []byte(`{}`)); !errors.Is(err, context.Canceled) || strings.Contains(err.Error(), "no response within") {
		t.Errorf("send with a cancelled context = %v", err)
	}
}

// TestWebhookFailureWords: the words a tenant reads of a failed delivery
// (webhookFailure) name the kind of failure of real sends, and never the
// address dialed, the port, the URL or the callback's own reason phrase.
func TestWebhookFailureWords(t *testing.T) {
	t.Parallel()
	s := newTestSender(t, WebhookConfig{Secrets: []string{newTestSecret(t)}, AllowPrivate: true, Timeout: 200 * time.Millisecond})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	tlsSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	tlsSrv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake the sender breaks off
	tlsSrv.StartTLS()                                   // with a certificate the sender does not trust
	t.Cleanup(tlsSrv.Close)
	plain, _ := newReceiver(t, http.StatusOK)
	// A callback whose reason phrase tells of its insides.
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rawDone := make(chan struct{})
	go func() {
		defer close(rawDone)
		for {
			c, err := raw.Accept()
			if err != nil {
				return
			}
			_, _ = http.ReadRequest(bufio.NewReader(c))
			_, _ = io.WriteString(c, "HTTP/1.1 502 upstream 10.9.8.7:5432 down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			c.Close()
		}
	}()
	t.Cleanup(func() { raw.Close(); <-rawDone })
	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(slow.Close)
	t.Cleanup(func() { close(release) })

	for _, tc := range []struct{ name, url, want string }{
		{"refused", "http://" + closed + "/hook?token=t0k3n", "connection refused"},
		{"untrusted certificate", tlsSrv.URL + "/hook?token=t0k3n", "unknown authority"},
		{"https to a plain HTTP server", "https://" + strings.TrimPrefix(plain.URL, "http://") + "/hook?token=t0k3n", "did not answer in TLS"},
		{"reason phrase", "http://" + raw.Addr().String() + "/hook?token=t0k3n", "answered 502 Bad Gateway"},
		{"timeout", slow.URL + "/hook?token=t0k3n", "no response within 200ms"},
	} {
		status, err := s.send(context.Background(), tc.url, "msg_w", []byte(`{}`))
		if err == nil {
			t.Errorf("%s: send succeeded", tc.name)
			continue
		}
		got := webhookFailure(status, err, s.cfg.Timeout)
		if !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q (of %v), want it to say %q", tc.name, got, err, tc.want)
		}
		for _, leak := range []string{"127.0.0.1", "10.9.8.7", "t0k3n", "/hook", "dial"} {
			if strings.Contains(got, leak) {
				t.Errorf("%s: %q shows %q", tc.name, got, leak)
			}
		}
	}
	if got := webhookFailure(0, nil, time.Second); got != "" {
		t.Errorf("webhookFailure of no error = %q, want empty", got)
	}
}

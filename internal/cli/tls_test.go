package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a certificate authority for TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rsvp test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue makes a certificate named cn for 127.0.0.1, for a server or a
// client, and returns it and its key in PEM.
func (ca *testCA) issue(t *testing.T, cn string, serial int64, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t *testing.T, path string, data []byte) string {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// serverFiles issues a server certificate named cn and writes it and its
// key to files in dir, returning their paths.
func (ca *testCA) serverFiles(t *testing.T, dir, cn string) (cert, key string) {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, cn, 2, x509.ExtKeyUsageServerAuth)
	return writeFile(t, filepath.Join(dir, "cert.pem"), certPEM), writeFile(t, filepath.Join(dir, "key.pem"), keyPEM)
}

// clientCert issues a client certificate named cn.
func (ca *testCA) clientCert(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	certPEM, keyPEM := ca.issue(t, cn, 4, x509.ExtKeyUsageClientAuth)
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// httpsClient trusts ca and presents cert, if any.
func httpsClient(ca *testCA, cert *tls.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Timeout: waitTimeout, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

// servedCN returns the common name of the certificate the server at url
// presents.
func servedCN(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	resp, err := c.Get(url + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /healthz: %s", resp.Status)
	}
	return resp.TLS.PeerCertificates[0].Subject.CommonName
}

// With --tls-cert and --tls-key, serve speaks HTTPS only, and serves a
// renewed certificate as soon as its files change.
func TestServeTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t)
	certFile, keyFile := ca.serverFiles(t, dir, "first")
	s := startServe(t, "--engine", "embedded:mem", "--tls-cert", certFile, "--tls-key", keyFile)
	if !strings.HasPrefix(s.url, "https://") {
		t.Fatalf("serve listens on %s, want https://", s.url)
	}
	c := httpsClient(ca, nil)
	if cn := servedCN(t, c, s.url); cn != "first" {
		t.Fatalf("served certificate %q, want first", cn)
	}
	// Plain HTTP gets no service.
	resp, err := http.Get("http://" + strings.TrimPrefix(s.url, "https://") + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("plain HTTP was served")
		}
	}

	// Renewed: the next connection gets the new certificate.
	certPEM, keyPEM := ca.issue(t, "renewed", 3, x509.ExtKeyUsageServerAuth)
	writeFile(t, keyFile, keyPEM)
	writeFile(t, certFile, certPEM)
	waitUntil(t, "the renewed certificate served", func() bool { return servedCN(t, c, s.url) == "renewed" })

	// A broken renewal: the last good certificate is still served.
	writeFile(t, certFile, []byte("not a certificate"))
	if cn := servedCN(t, c, s.url); cn != "renewed" {
		t.Fatalf("after a broken renewal, served %q, want the last good one", cn)
	}
	s.stderr.waitFor(t, "the changed TLS certificate does not load")
}

// With --tls-client-ca, a client needs a certificate signed by that CA.
func TestServeMutualTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t)
	cert, key := ca.serverFiles(t, dir, "server")
	s := startServe(t, "--engine", "embedded:mem", "--tls-cert", cert, "--tls-key", key,
		"--tls-client-ca", writeFile(t, filepath.Join(dir, "ca.pem"), ca.pem))
	if _, err := httpsClient(ca, nil).Get(s.url + "/healthz"); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	stranger := newTestCA(t).clientCert(t, "stranger")
	if _, err := httpsClient(ca, &stranger).Get(s.url + "/healthz"); err == nil {
		t.Fatal("a client with a certificate of another CA was served")
	}
	client := ca.clientCert(t, "client")
	if cn := servedCN(t, httpsClient(ca, &client), s.url); cn != "server" {
		t.Fatalf("served %q", cn)
	}
}

func TestServeTLSUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t)
	cert, key := ca.serverFiles(t, dir, "server")
	garbage := writeFile(t, filepath.Join(dir, "garbage.pem"), []byte("not PEM"))
	for name, tc := range map[string]struct {
		args []string
		want []string
	}{
		"cert without key":  {[]string{"--tls-cert", cert}, []string{"--tls-cert and --tls-key go together"}},
		"key without cert":  {[]string{"--tls-key", key}, []string{"--tls-cert and --tls-key go together"}},
		"client CA only":    {[]string{"--tls-client-ca", cert}, []string{"--tls-cert and --tls-key go together"}},
		"missing cert":      {[]string{"--tls-cert", filepath.Join(dir, "none.pem"), "--tls-key", key}, []string{"cannot load the TLS certificate", "none.pem"}},
		"bad cert":          {[]string{"--tls-cert", garbage, "--tls-key", key}, []string{"cannot load the TLS certificate"}},
		"key of another":    {[]string{"--tls-cert", cert, "--tls-key", writeFile(t, filepath.Join(dir, "other.pem"), func() []byte { _, k := ca.issue(t, "x", 9, x509.ExtKeyUsageServerAuth); return k }())}, []string{"cannot load the TLS certificate", "private key does not match"}},
		"missing client CA": {[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", filepath.Join(dir, "none.pem")}, []string{"cannot read the client CA file"}},
		"client CA not PEM": {[]string{"--tls-cert", cert, "--tls-key", key, "--tls-client-ca", garbage}, []string{"holds no PEM certificate"}},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := run(t, nil, append([]string{"serve", "--engine", "embedded:mem", "--addr", "127.0.0.1:0"}, tc.args...)...)
			r.want(t, exitUsage, append(tc.want, "Run 'rsvp help serve' for usage.")...)
		})
	}
}

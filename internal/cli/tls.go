package cli

import (
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// tlsFlags are serve's TLS flags.
type tlsFlags struct {
	cert, key, clientCA string
}

func (f *tlsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.cert, "tls-cert", "", "PEM `file` of the server's certificate chain: serve HTTPS only (with --tls-key); read again when it changes")
	fs.StringVar(&f.key, "tls-key", "", "PEM `file` of the certificate's private key")
	fs.StringVar(&f.clientCA, "tls-client-ca", "", "PEM `file` of the CA certificates that sign client certificates: require one (mutual TLS)")
}

// config returns the TLS configuration the flags ask for, nil for none,
// or a usage error naming the file that is wrong.
func (f *tlsFlags) config(log *slog.Logger) (*tls.Config, error) {
	switch {
	case f.cert == "" && f.key == "" && f.clientCA == "":
		return nil, nil
	case f.cert == "" || f.key == "":
		return nil, usagef("--tls-cert and --tls-key go together")
	}
	files := &certFiles{cert: f.cert, key: f.key, log: log}
	if err := files.load(); err != nil {
		return nil, usagef("cannot load the TLS certificate: %v", err)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: files.get}
	if f.clientCA != "" {
		pem, err := os.ReadFile(f.clientCA)
		if err != nil {
			return nil, usagef("cannot read the client CA file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, usagef("client CA file %s holds no PEM certificate", f.clientCA)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// certFiles serves a certificate and key from files, read again when
// either changes (a renewed certificate is served without a restart). A
// changed pair that does not load is logged, once per error, and the last
// good one is served meanwhile.
type certFiles struct {
	cert, key string
	log       *slog.Logger

	mu      sync.Mutex
	stamp   string // sizes and modification times of the files when last read
	loaded  *tls.Certificate
	lastErr string // the last error logged
}

// load reads the pair if the files changed since the last read.
func (c *certFiles) load() error {
	stamp, err := c.stampNow()
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if stamp == c.stamp {
		return nil
	}
	c.stamp = stamp
	cert, err := tls.LoadX509KeyPair(c.cert, c.key)
	if err != nil {
		return err
	}
	c.loaded = &cert
	return nil
}

func (c *certFiles) stampNow() (string, error) {
	var stamp string
	for _, name := range []string{c.cert, c.key} {
		fi, err := os.Stat(name)
		if err != nil {
			return "", err
		}
		stamp += fmt.Sprintf("%d@%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return stamp, nil
}

func (c *certFiles) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	err := c.load()
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil && err.Error() != c.lastErr {
		c.log.Warn("the changed TLS certificate does not load; serving the one before", "cert", c.cert, "key", c.key, "err", err)
	}
	if err != nil {
		c.lastErr = err.Error()
	}
	return c.loaded, nil
}

package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// LimitHTTP measures a bare net/http round trip on loopback: a POST of
// LimitMessageSize bytes to a handler on 127.0.0.1 in this process that
// reads the body and answers 202 Accepted with the id header it got, from a
// client that keeps its connections alive (one per operation in flight).
// It is the ceiling for an HTTP gateway's enqueue. Default labels:
// limit:http on loopback.
func LimitHTTP(ctx context.Context, cfg Config) (res Result, err error) {
	srv, err := startAcceptServer()
	if err != nil {
		return Result{}, err
	}
	defer func() { err = errors.Join(err, srv.close()) }()
	tr := &http.Transport{MaxIdleConnsPerHost: inFlight(cfg), DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := "http://" + srv.ln.Addr().String() + "/requests"
	return Run(ctx, named(cfg, "limit:http", "loopback"), func(ctx context.Context, id string) (string, error) {
		return post(ctx, client, url, id)
	})
}

// post sends the payload of id and returns the id the answer carries.
func post(ctx context.Context, client *http.Client, url, id string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(limitPayload(id)))
	if err != nil {
		return "", err
	}
	req.Header.Set(idHeader, id)
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil { // so the connection is reused
		return "", fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusAccepted {
		return "", fmt.Errorf("status %s, want 202", resp.Status)
	}
	return resp.Header.Get(idHeader), nil
}

// acceptServer answers every request 202 Accepted.
type acceptServer struct {
	ln  net.Listener
	srv *http.Server
	wg  sync.WaitGroup
}

func startAcceptServer() (*acceptServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: http server: %w", err)
	}
	s := &acceptServer{ln: ln, srv: &http.Server{Handler: http.HandlerFunc(accept), ReadHeaderTimeout: rawTimeout}}
	s.wg.Go(func() { _ = s.srv.Serve(ln) }) // returns ErrServerClosed on close
	return s, nil
}

// accept reads the request body and answers 202 with the request's id.
func accept(w http.ResponseWriter, r *http.Request) {
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set(idHeader, r.Header.Get(idHeader))
	w.WriteHeader(http.StatusAccepted)
}

// close shuts the server down, waiting a little for answers under way.
func (s *acceptServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if err != nil {
		err = errors.Join(err, s.srv.Close())
	}
	s.wg.Wait()
	if err != nil {
		return fmt.Errorf("bench: http server: %w", err)
	}
	return nil
}

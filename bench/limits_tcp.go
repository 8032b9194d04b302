package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// LimitTCPEcho measures a loopback TCP round trip: a LimitMessageSize
// message written to an echo server on 127.0.0.1 in this process and read
// back whole. Each operation in flight has a connection of its own (in a
// closed loop, one per worker), kept open across operations. Default
// labels: limit:tcp-echo on loopback.
func LimitTCPEcho(ctx context.Context, cfg Config) (Result, error) {
	srv, err := startEchoServer()
	if err != nil {
		return Result{}, err
	}
	defer srv.close()
	pool := &connPool{addr: srv.addr(), max: inFlight(cfg)}
	defer pool.close()
	return Run(ctx, named(cfg, "limit:tcp-echo", "loopback"), func(ctx context.Context, id string) (string, error) {
		c, err := pool.get(ctx)
		if err != nil {
			return "", err
		}
		got, err := c.roundTrip(ctx, id)
		pool.put(c, err == nil)
		return got, err
	})
}

// echoServer writes back whatever its connections send.
type echoServer struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startEchoServer() (*echoServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("bench: echo server: %w", err)
	}
	s := &echoServer{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

func (s *echoServer) addr() string { return s.ln.Addr().String() }

func (s *echoServer) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return // closed
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go s.echo(c)
	}
}

func (s *echoServer) echo(c net.Conn) {
	defer s.wg.Done()
	_, _ = io.Copy(c, c) // until the client or close hangs up
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// close stops accepting, hangs up every connection and waits for their
// goroutines.
func (s *echoServer) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// echoConn is a client connection with its read buffer.
type echoConn struct {
	net.Conn
	buf []byte
}

// roundTrip sends the payload of id and returns the id of what comes back.
// ctx's deadline and its end interrupt it.
func (c *echoConn) roundTrip(ctx context.Context, id string) (string, error) {
	deadline, _ := ctx.Deadline() // zero: none
	if err := c.SetDeadline(deadline); err != nil {
		return "", err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	p := limitPayload(id)
	if _, err := c.Write(p); err != nil {
		return "", ctxErr(ctx, fmt.Errorf("write: %w", err))
	}
	if _, err := io.ReadFull(c, c.buf[:len(p)]); err != nil {
		return "", ctxErr(ctx, fmt.Errorf("read: %w", err))
	}
	return payloadID(c.buf[:len(p)]), nil
}

// ctxErr returns ctx's error, wrapped with err, when ctx's end caused err,
// so that Run tells a timeout from a failure.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
	}
	return err
}

// connPool keeps idle client connections to addr, up to max, and dials
// new ones when none is idle.
type connPool struct {
	addr string
	max  int
	mu   sync.Mutex
	idle []*echoConn
	all  map[*echoConn]struct{}
}

func (p *connPool) get(ctx context.Context) (*echoConn, error) {
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", p.addr, err)
	}
	c := &echoConn{Conn: nc, buf: make([]byte, 2*LimitMessageSize)}
	p.mu.Lock()
	if p.all == nil {
		p.all = map[*echoConn]struct{}{}
	}
	p.all[c] = struct{}{}
	p.mu.Unlock()
	return c, nil
}

// put returns c to the pool, or closes it when it failed (its stream may
// be out of step) or the pool is full.
func (p *connPool) put(c *echoConn, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ok && len(p.idle) < p.max {
		p.idle = append(p.idle, c)
		return
	}
	delete(p.all, c)
	c.Close()
}

func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.all {
		c.Close()
	}
	p.all, p.idle = nil, nil
}

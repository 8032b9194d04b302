// Package tcpproxy forwards TCP connections for tests that interfere with
// a connection between a client and its server: a Proxy holds every byte
// while it is frozen (a network partition: the connections stay open and
// the senders' writes succeed), and a Watcher may cut a connection upon
// what it carries.
package tcpproxy

import (
	"net"
	"sync"
	"testing"
)

// Watcher sees each chunk one connection carries, before it is passed on,
// and reports whether to cut the connection instead. toServer tells the
// direction. The two directions are watched from two goroutines. A Watcher
// may block: that direction of the connection waits (it must return by
// the end of the test).
type Watcher func(toServer bool, chunk []byte) (cut bool)

// Proxy forwards the connections made to Addr to its target.
type Proxy struct {
	ln       net.Listener
	target   string
	watch    func() Watcher
	accepted chan struct{} // closed when accept returns
	wg       sync.WaitGroup

	mu     sync.Mutex
	thawed chan struct{} // closed while not frozen
	conns  []net.Conn
}

// Start listens on a free loopback port and forwards each connection to
// target, until the test ends. watch, if not nil, makes the Watcher of
// each new connection.
func Start(t *testing.T, target string, watch func() Watcher) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, watch: watch, accepted: make(chan struct{}), thawed: make(chan struct{})}
	close(p.thawed)
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		<-p.accepted
		p.Thaw()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// Addr is the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze holds every byte from now on, until Thaw.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
		p.thawed = make(chan struct{})
	default: // frozen already
	}
}

// Thaw passes on what was held, and what comes.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.thawed:
	default:
		close(p.thawed)
	}
}

func (p *Proxy) accept() {
	defer close(p.accepted)
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		w := Watcher(func(bool, []byte) bool { return false })
		if p.watch != nil {
			w = p.watch()
		}
		p.wg.Go(func() { p.pipe(s, c, func(b []byte) bool { return w(true, b) }) })
		p.wg.Go(func() { p.pipe(c, s, func(b []byte) bool { return w(false, b) }) })
	}
}

// pipe copies src to dst, holding what it read while the proxy is frozen,
// and closes both when cut says so, or when either ends.
func (p *Proxy) pipe(dst, src net.Conn, cut func([]byte) bool) {
	defer func() {
		_ = dst.Close()
		_ = src.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if cut(buf[:n]) {
				return
			}
			p.mu.Lock()
			thawed := p.thawed
			p.mu.Unlock()
			<-thawed
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

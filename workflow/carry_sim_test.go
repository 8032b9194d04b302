package workflow

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// sim is an instance's history written by executions that read prefixes of
// it (stale views, as concurrent engines have), without a backend.
type sim struct {
	t      *testing.T
	es     []entry
	def    *definition
	old    bool     // write continued records in the older format (consumed)
	timers []record // timers set and not fired
}

func (s *sim) add(kind string, r record) {
	s.es = append(s.es, entry{seq: uint64(len(s.es) + 1), kind: kind, at: time.Unix(int64(len(s.es)), 0), rec: r})
}

func (s *sim) raise(name, id string, data int) {
	b, _ := json.Marshal(data)
	s.add(recEvent, record{Run: "r", Event: name, EventID: id, Data: b})
}

// exec runs the current epoch as an engine that read the first n entries.
func (s *sim) exec(n int) {
	v := fold("x", s.es[:n])
	if v == nil || v.state.Final() {
		return
	}
	ex := newExecution(v, s.def)
	ex.replay(v.epochEntries())
	if ex.nondet != nil {
		s.t.Fatalf("nondeterministic: %v", ex.nondet)
	}
	for _, ef := range ex.effects {
		if ef.kind == "timer" {
			s.timers = append(s.timers, record{Run: v.run, Epoch: v.epoch, Seq: ef.seq, Attempt: ef.attempt, Kind: ef.timer})
		}
	}
	if !ex.finished {
		if len(ex.newCmds) > 0 {
			s.add(recStep, record{Run: v.run, Epoch: v.epoch, Cmds: ex.newCmds, Upto: v.lastSeq})
		}
		return
	}
	kind, r := ex.outcome()
	if kind == recContinued {
		if s.old {
			r.Consumed = ex.consumed
		} else {
			r.Upto, r.Pending = v.lastSeq, v.pending(ex)
		}
	}
	s.add(kind, r)
}

func simDefs(total int) []*definition {
	check := func(n, got int) error {
		if got != n {
			return fmt.Errorf("expected event %d, got event %d", n, got)
		}
		return nil
	}
	end := func(ctx Context, n int) ([]byte, error) {
		if n == total {
			return json.Marshal(n - 1)
		}
		return nil, ContinueAsNew(ctx, n)
	}
	return []*definition{
		simDef(total),
		// drain what is buffered, on odd epochs skip
		{name: "w", version: 1, run: func(ctx Context, input []byte) ([]byte, error) {
			var in [2]int
			_ = json.Unmarshal(input, &in)
			n, epoch := in[0], in[1]
			if epoch%2 == 1 {
				return nil, ContinueAsNew(ctx, [2]int{n, epoch + 1})
			}
			for n < total {
				f := EventFuture[int](ctx, "x", 0)
				if !f.Ready() {
					if epoch%4 == 0 {
						break // ends with a wait that consumed nothing
					}
					got, _ := f.Get(ctx)
					if err := check(n, got); err != nil {
						return nil, err
					}
					n++
					break
				}
				got, _ := f.Get(ctx)
				if err := check(n, got); err != nil {
					return nil, err
				}
				n++
			}
			if n == total {
				return json.Marshal(n - 1)
			}
			return nil, ContinueAsNew(ctx, [2]int{n, epoch + 1})
		}},
		// two per epoch
		{name: "w", version: 1, run: func(ctx Context, input []byte) ([]byte, error) {
			var n int
			_ = json.Unmarshal(input, &n)
			for range 2 {
				if n == total {
					break
				}
				got, err := WaitForEvent[int](ctx, "x", 0)
				if err != nil {
					return nil, err
				}
				if err := check(n, got); err != nil {
					return nil, err
				}
				n++
			}
			return end(ctx, n)
		}},
		// x or y, whichever first; an x consumed is checked
		{name: "w", version: 1, run: func(ctx Context, input []byte) ([]byte, error) {
			var n int
			_ = json.Unmarshal(input, &n)
			fx := EventFuture[int](ctx, "x", 0)
			fy := EventFuture[int](ctx, "y", 0)
			AwaitAny(ctx, fx, fy)
			if fx.Ready() {
				got, _ := fx.Get(ctx)
				if err := check(n, got); err != nil {
					return nil, err
				}
				n++
			}
			return end(ctx, n)
		}},
		// with a timeout: none consumed then
		{name: "w", version: 1, run: func(ctx Context, input []byte) ([]byte, error) {
			var n int
			_ = json.Unmarshal(input, &n)
			got, err := WaitForEvent[int](ctx, "x", time.Minute)
			if err == nil {
				if err := check(n, got); err != nil {
					return nil, err
				}
				n++
			} else if err != ErrEventTimeout {
				return nil, err
			}
			return end(ctx, n)
		}},
		// a timer first, then x with a timeout, and a y
		{name: "w", version: 1, run: func(ctx Context, input []byte) ([]byte, error) {
			var n int
			_ = json.Unmarshal(input, &n)
			ft := NewTimer(ctx, time.Second)
			fx := EventFuture[int](ctx, "x", time.Minute)
			if AwaitAny(ctx, ft, fx) == 0 {
				_, _ = WaitForEvent[int](ctx, "y", time.Minute)
			}
			if got, err := fx.Get(ctx); err == nil {
				if err := check(n, got); err != nil {
					return nil, err
				}
				n++
			}
			return end(ctx, n)
		}},
	}
}

func simDef(total int) *definition {
	return &definition{name: "w", version: 1, run: func(ctx Context, input []byte) ([]byte, error) {
		var n int
		_ = json.Unmarshal(input, &n)
		got, err := WaitForEvent[int](ctx, "x", 0)
		if err != nil {
			return nil, err
		}
		if got != n {
			return nil, fmt.Errorf("epoch %d got event %d", n, got)
		}
		if n == total-1 {
			return json.Marshal(n)
		}
		return nil, ContinueAsNew(ctx, n+1)
	}}
}

// TestSimCarry writes random histories (raises, repeated event ids, events
// nobody waits for, timers in any order, executions reading stale
// prefixes, continued records in the older and the current format) and
// wants each workflow variant to receive every event exactly once, in
// order, across ContinueAsNew.
func TestSimCarry(t *testing.T) {
	for seed := range uint64(300) { // 20,000 seeds passed once; 300 keep the package quick
		rnd := rand.New(rand.NewPCG(seed, 1))
		const total = 8
		defs := simDefs(total)
		s := &sim{t: t, def: defs[int(seed/2)%len(defs)], old: seed%2 == 0}
		in := "0"
		if int(seed/2)%len(defs) == 1 {
			in = "[0,0]"
		}
		s.add(recStarted, record{Run: "r", Name: "w", Version: 1, Input: []byte(in)})
		raised := 0
		var trace []string
		for steps := 0; steps < 400; steps++ {
			v := fold("x", s.es)
			if v.state.Final() {
				break
			}
			switch k := rnd.IntN(10); {
			case k < 3 && raised < total:
				s.raise("x", fmt.Sprint("e", raised), raised)
				trace = append(trace, fmt.Sprint("raise ", raised))
				raised++
			case k < 4 && raised > 0:
				i := rnd.IntN(raised)
				s.raise("x", fmt.Sprint("e", i), i) // a repeat: ignored
				trace = append(trace, fmt.Sprint("repeat ", i))
			case k < 5:
				s.raise("y", fmt.Sprint("y", steps), -1)
				trace = append(trace, "raise y")
			case k < 6 && len(s.timers) > 0:
				i := rnd.IntN(len(s.timers))
				s.add(recTimer, s.timers[i])
				s.timers = append(s.timers[:i], s.timers[i+1:]...)
				trace = append(trace, "timer")
			case k < 7:
				if rnd.IntN(3) == 0 {
					s.old = false // older engines first, then newer ones only
				}
				// a stale view: anywhere from the epoch's start on
				lo := v.entries[v.epochAt].seq
				if rnd.IntN(4) == 0 {
					lo = 1
				}
				n := int(lo) + rnd.IntN(len(s.es)-int(lo)+1)
				trace = append(trace, fmt.Sprint("exec stale ", n, " old ", s.old))
				s.exec(n)
			default:
				trace = append(trace, fmt.Sprint("exec ", len(s.es), " old ", s.old))
				s.exec(len(s.es))
			}
		}
		for range 200 {
			if raised < total {
				s.raise("x", fmt.Sprint("e", raised), raised)
				raised++
			}
			s.exec(len(s.es))
			for _, r := range s.timers {
				s.add(recTimer, r)
			}
			s.timers = nil
			s.exec(len(s.es))
		}
		v := fold("x", s.es)
		if v.state != StateCompleted || string(v.output) != fmt.Sprint(total-1) {
			for _, e := range s.es {
				b, _ := json.Marshal(e.rec)
				t.Logf("%d %s %s", e.seq, e.kind, b)
			}
			t.Fatalf("seed %d: state %s output %s error %v\ntrace %v", seed, v.state, v.output, v.err, trace)
		}
	}
}

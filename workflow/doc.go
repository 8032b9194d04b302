// Package workflow runs durable workflows on rsvp: Go functions that call
// activities, sleep and wait for external events, and survive the kill of
// any process at any point.
//
// A workflow is a function func(ctx workflow.Context, input I) (O, error),
// registered on an Engine by name and version. Its durable calls are
// CallActivity (a request to an ordinary rsvp responder on a queue),
// CallWorkflow (a sub-workflow), NewTimer and Sleep (durable timers),
// WaitForEvent (an external event raised by instance id with RaiseEvent),
// and ContinueAsNew. Futures (Future.Get, AwaitAll, AwaitAny) give
// fan-out and fan-in.
//
// # How it survives
//
// Each instance has a history in the backend's event log: it started with
// this input, these calls were made, this reply came back, this timer
// fired, this event was raised. To move an instance on, an engine replays
// the function from the top against its history: calls whose outcome is
// recorded return it at once, in the order it was recorded, and the
// function runs until it waits for something not yet recorded. The new
// calls are then made (requests sent, timers scheduled as delayed tasks
// on the engine's queue) and recorded. A process killed at any point
// leaves a history that another engine continues from; requests and
// timers carry deterministic ids, so one redone after a crash is stored
// once.
//
// So a workflow function must be deterministic: given the same history it
// must make the same calls in the same order. It must not read the clock
// (use Context.Now), random numbers, or anything else that can differ on
// replay, and it must not block on anything but this package's calls.
// Replay detects a changed sequence of calls (another call where one was
// recorded, or a return before the recorded calls were all made) and
// fails the instance with code "nondeterministic" rather than go on
// wrongly; change a workflow by registering a new version
// (RegisterVersion). A panic fails the instance with the message and
// stack; the engine goes on.
//
// Replay leaves the function where it waits by unwinding its goroutine
// (runtime.Goexit), so its deferred functions also run then, on every
// replay, not only when it returns. During such an unwind a durable call
// in them that would be recorded or wait (CallActivity, Sleep, the Get of
// a future not ready, ...) ends the goroutine at once, SetCustomStatus
// does nothing, a recover cannot stop the unwind, and a panic is ignored:
// a deferred cleanup's calls are made only when the function returns (or
// panics).
//
// External events raised before the workflow waits are kept in its
// history, in order, until a WaitForEvent consumes them; an event id makes
// raising idempotent; a wait that timed out consumes nothing.
//
// # Engines
//
// Engines on one backend share the work: Start makes an engine run
// instances (it consumes the task queue, "rsvp-workflows" by default, and
// listens for the replies of activities); its management methods
// (StartInstance, Status, Await, RaiseEvent, Terminate, Purge, List,
// History) work with or without Start.
//
// Histories are kept as long as the backend keeps events (its reply
// retention, 24 hours by default): a workflow that runs longer needs a
// longer retention.
package workflow

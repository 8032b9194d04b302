package workflow

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// State is an instance's lifecycle state.
type State string

// The states of an instance. Running includes waiting; the others are
// final.
const (
	StateRunning    State = "running"
	StateCompleted  State = "completed"
	StateFailed     State = "failed"
	StateTerminated State = "terminated"

	statePurged State = "purged" // internal: the instance is forgotten
)

// Final reports whether s is a final state.
func (s State) Final() bool {
	return s == StateCompleted || s == StateFailed || s == StateTerminated || s == statePurged
}

// Error codes of a Failure, besides those activities reply with.
const (
	CodeFailed           = "failed"           // the workflow function returned an error
	CodePanic            = "panic"            // the workflow function panicked
	CodeNonDeterministic = "nondeterministic" // replay found other calls than the history
	CodeUnknownWorkflow  = "unknown_workflow" // no such workflow name and version is registered
	CodeBadInput         = "bad_input"        // the input did not decode
	CodeTimeout          = "timeout"          // an activity attempt got no reply in time
	CodeTerminated       = "terminated"       // Terminate ended the instance
	CodeTooLarge         = "too_large"        // an output, input or custom status is over the backend's size limit
	CodeUnsupported      = "unsupported"      // a timer on an engine that cannot schedule (NATS before 2.12)
)

// Errors returned by the Engine's methods.
var (
	ErrNotFound         = errors.New("workflow: no such instance")
	ErrFinished         = errors.New("workflow: instance already finished")
	ErrRunning          = errors.New("workflow: instance is still running")
	ErrUnknownWorkflow  = errors.New("workflow: unknown workflow")
	ErrBadInput         = errors.New("workflow: bad input")
	ErrInvalid          = errors.New("workflow: invalid argument")
	ErrIDInUse          = errors.New("workflow: instance id in use by another workflow")
	ErrNonDeterministic = errors.New("workflow: non-deterministic workflow")
)

// Failure describes why an instance failed (Status.Error) or why an
// activity call failed (ActivityError).
type Failure struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	// Stack is the workflow goroutine's stack, when Code is "panic".
	Stack string `json:"stack,omitempty"`
}

func (f *Failure) Error() string { return f.Code + ": " + f.Message }

// Is makes a failure with the code of one of this package's sentinel
// errors match it (errors.Is): the error Result returns for an instance
// failed as nondeterministic is ErrNonDeterministic, as the failure's text
// says; unknown_workflow is ErrUnknownWorkflow and bad_input ErrBadInput.
// The failure is stored as its code and text, so the sentinel it wrapped
// when it happened is lost.
func (f *Failure) Is(target error) bool {
	switch target {
	case ErrNonDeterministic:
		return f.Code == CodeNonDeterministic
	case ErrUnknownWorkflow:
		return f.Code == CodeUnknownWorkflow
	case ErrBadInput:
		return f.Code == CodeBadInput
	}
	return false
}

// ActivityError is the error of a failed activity call or sub-workflow.
type ActivityError struct {
	Target string // queue or workflow name
	Failure
	Attempts int
}

func (e *ActivityError) Error() string {
	return fmt.Sprintf("workflow: %s failed after %d attempt(s): %s: %s", e.Target, e.Attempts, e.Code, e.Message)
}

// Status is an instance's state as its history tells it.
type Status struct {
	ID           string          `json:"id"`
	Name         string          `json:"name"`
	Version      int             `json:"version"`
	State        State           `json:"state"`
	Input        json.RawMessage `json:"input,omitempty"`
	CustomStatus json.RawMessage `json:"custom_status,omitempty"`
	Output       json.RawMessage `json:"output,omitempty"`
	Error        *Failure        `json:"error,omitempty"`
	CreatedAt    time.Time       `json:"created_at"`
	UpdatedAt    time.Time       `json:"updated_at"`
	// Position is the history position of the last change: it grows with
	// every change (see WaitChange).
	Position uint64 `json:"position"`
}

// HistoryEvent is one entry of an instance's history, for display.
type HistoryEvent struct {
	Seq  uint64          `json:"seq"`
	Type string          `json:"type"` // wf.started, wf.step, wf.result, ...
	At   time.Time       `json:"at"`
	Data json.RawMessage `json:"data"`
}

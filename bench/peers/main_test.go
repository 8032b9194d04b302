package peers

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run if a peer leaves a goroutine behind once it is
// closed.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

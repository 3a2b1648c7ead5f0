// Package leaktest checks that a test's goroutines end with it.
package leaktest

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// wait is how long goroutines may take to end after a test's cleanups:
// memberlist does not wait, on shutdown, for a probe already under way,
// which lasts up to a probe timeout (about 0.5 s at the default
// frequency).
const wait = 3 * time.Second

// Check fails t if a goroutine started during the test is still running
// once the test's cleanups have run and up to 3 s more have passed. Call it
// first in the test: cleanups run last-in first-out, so the check runs
// after every Close registered later.
func Check(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		deadline := time.Now().Add(wait)
		for {
			err := goleak.Find(opt)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Error(err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

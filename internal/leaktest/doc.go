// Package leaktest checks that a test's goroutines end with it.
package leaktest

import (
	"testing"

	"go.uber.org/goleak"
)

// Check fails t if a goroutine started during the test is still running
// when the test's cleanups have run. Call it first in the test: cleanups
// run last-in first-out, so the check runs after every Close registered
// later.
func Check(t *testing.T) {
	t.Helper()
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

package web

import (
	"testing"
	"time"
)

// A warning goes through at most once a second, and the next one that
// does says how many were held back.
func TestEverySecond(t *testing.T) {
	var e everySecond
	if ok, n := e.allow(); !ok || n != 0 {
		t.Fatalf("first: %v %d, want true 0", ok, n)
	}
	for range 3 {
		if ok, _ := e.allow(); ok {
			t.Fatal("a second warning within the second went through")
		}
	}
	e.last.Add(-int64(time.Second))
	if ok, n := e.allow(); !ok || n != 3 {
		t.Errorf("a second later: %v %d, want true 3", ok, n)
	}
}

package web

import (
	"reflect"
	"testing"
	"time"
)

// The Store keeps what Get read of a value without a copy of its own only
// when the handler cannot change it in place.
func TestImmutable(t *testing.T) {
	type point struct{ X, Y int }
	type cart struct{ Items []string }
	type stamped struct {
		At   time.Time
		Name string
	}
	for _, c := range []struct {
		v    any
		want bool
	}{
		{1, true}, {"s", true}, {3.5, true}, {true, true}, {time.Now(), true},
		{point{1, 2}, true}, {[2]point{}, true}, {stamped{}, true},
		{[]string{"a"}, false}, {map[string]int{}, false}, {&point{}, false},
		{cart{}, false}, {[1][]int{}, false}, {struct{ V any }{}, false},
	} {
		if got := immutable(reflect.TypeOf(c.v)); got != c.want {
			t.Errorf("immutable(%T) = %v, want %v", c.v, got, c.want)
		}
	}
}

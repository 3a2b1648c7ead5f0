package manager

import (
	"maps"
	"sync"
	"sync/atomic"
)

// wireNames holds one shared copy of each name that replicas read over and
// over: routes and attribute names. A change names its route twice and
// each of its attributes once, and a replica reads every change of the
// cluster, so without it each would be a fresh string per change per
// replica. Reads take no lock: the table is replaced, never changed.
var wireNames nameTable

// maxWireNames bounds the table: names past it are copied as before, so a
// peer that sends endless distinct names costs no memory that lasts.
const maxWireNames = 4096

// maxWireName is the longest name kept in the table.
const maxWireName = 128

type nameTable struct {
	m  atomic.Pointer[map[string]string]
	mu sync.Mutex // serializes replacements
}

// get returns b as a string, shared if the table holds it or has room.
func (t *nameTable) get(b []byte) string {
	if m := t.m.Load(); m != nil {
		if s, ok := (*m)[string(b)]; ok {
			return s
		}
	}
	if len(b) > maxWireName {
		return string(b)
	}
	return t.add(string(b))
}

func (t *nameTable) add(s string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	next := map[string]string{}
	if old := t.m.Load(); old != nil {
		if have, ok := (*old)[s]; ok {
			return have
		}
		if len(*old) >= maxWireNames {
			return s
		}
		next = maps.Clone(*old)
	}
	next[s] = s
	t.m.Store(&next)
	return s
}

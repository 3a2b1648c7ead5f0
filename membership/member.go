package membership

import (
	"sync"
	"time"
)

// State is a member's liveness as this node sees it.
type State int

// memberlist keeps suspicion to itself, so a suspected member reads as
// alive until it is declared dead.
const (
	StateAlive State = iota // a member, answering probes or not yet declared failed
	StateDead               // failed: silent for about DropTime
	StateLeft               // left gracefully
)

func (s State) String() string {
	switch s {
	case StateAlive:
		return "alive"
	case StateDead:
		return "dead"
	case StateLeft:
		return "left"
	}
	return "unknown"
}

// MarshalText implements encoding.TextMarshaler, so states read as words in
// JSON.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Member is one node of the cluster as this node sees it.
type Member struct {
	Name  string // memberlist name; equals Meta.Route
	Addr  string // gossip address, host:port
	Meta  Meta
	State State
	Since time.Time // when State last changed, by this node's clock
}

// EventType says what happened to a member.
type EventType int

const (
	EventJoin   EventType = iota // a member joined, or rejoined after failing or leaving
	EventLeave                   // a member left gracefully
	EventFail                    // a member was declared failed
	EventUpdate                  // a member's metadata or address changed
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	case EventUpdate:
		return "update"
	}
	return "unknown"
}

// Event is a change of membership, delivered by a Subscription.
type Event struct {
	Type   EventType
	Member Member
}

// Subscription delivers membership events in the order they happened. Its
// queue is unbounded, so publishing never blocks memberlist; membership
// changes are rare enough that this costs little, but a subscriber should
// keep reading C until it calls Close. C is closed after Close, or when the
// Node stops; events not yet delivered then are dropped rather than
// waited on, so that a subscriber that stopped reading never holds up the
// node's Close, and a closed node's view of the cluster is over anyway.
type Subscription struct {
	// C delivers the events.
	C <-chan Event

	c      chan Event
	node   *Node
	mu     sync.Mutex
	queue  []Event
	wake   chan struct{} // capacity 1: something was queued
	done   chan struct{} // closed by Close
	closed bool
}

func newSubscription(n *Node, initial []Event) *Subscription {
	c := make(chan Event)
	s := &Subscription{C: c, c: c, node: n, queue: initial, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if len(initial) > 0 {
		s.wake <- struct{}{}
	}
	return s
}

// push queues ev without blocking.
func (s *Subscription) push(ev Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pump delivers queued events to C. It runs in its own goroutine, owned by
// the Node, and returns when the subscription or the node is closed.
func (s *Subscription) pump(stop <-chan struct{}) {
	defer close(s.c)
	for {
		select {
		case <-s.wake:
		case <-s.done:
			return
		case <-stop:
			return
		}
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, ev := range batch {
			select {
			case s.c <- ev:
			case <-s.done:
				return
			case <-stop:
				return
			}
		}
	}
}

// Close stops the subscription and closes C. It is safe to call more than
// once and from any goroutine.
func (s *Subscription) Close() {
	s.node.unsubscribe(s)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
}

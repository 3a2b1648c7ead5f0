package membership

import "time"

// MarkLeaving sets the leaving flag in n's metadata, as Leave does first,
// without leaving: a node that is stopping, for the tests of
// membership_test.
func MarkLeaving(n *Node, timeout time.Duration) error {
	return n.setMeta(func(m *Meta) { m.Leaving = true }, timeout)
}

package web

import (
	"testing"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/replication"
)

// TestTypeNames checks the type label of the channel traffic metrics: the
// names docs/operations.md lists, and the number of a type it does not.
func TestTypeNames(t *testing.T) {
	for typ, want := range map[replication.MsgType]string{
		manager.MsgType: "session",
		HubMsgType:      "hub",
		1:               "hello",
		2:               "ack",
		3:               "reply",
		4:               "noop",
		40:              "40",
	} {
		if got := typeName(typ); got != want {
			t.Errorf("typeName(%d) = %q, want %q", typ, got, want)
		}
	}
}

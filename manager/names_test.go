package manager

import (
	"fmt"
	"testing"
)

func TestNameTableSharesAndStaysBounded(t *testing.T) {
	var tab nameTable
	a := tab.get([]byte("node1"))
	b := tab.get([]byte("node1"))
	if a != "node1" || b != "node1" {
		t.Fatalf("got %q, %q", a, b)
	}
	if n := testing.AllocsPerRun(100, func() { _ = tab.get([]byte("node1")) }); n != 0 {
		t.Errorf("a name the table holds costs %v allocations, want 0", n)
	}
	for i := range maxWireNames + 10 {
		name := fmt.Sprintf("attr-%d", i)
		if got := tab.get([]byte(name)); got != name {
			t.Fatalf("get(%q) = %q", name, got)
		}
	}
	if n := len(*tab.m.Load()); n != maxWireNames {
		t.Errorf("table holds %d names, want the bound %d", n, maxWireNames)
	}
	long := make([]byte, maxWireName+1)
	for i := range long {
		long[i] = 'x'
	}
	if got := tab.get(long); got != string(long) {
		t.Error("a long name did not read back")
	}
}

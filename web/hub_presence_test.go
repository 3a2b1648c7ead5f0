package web

import (
	"fmt"
	"testing"
)

// A snapshot of many users travels as several messages; the receiver
// replaces the sender's counts only once the last is in, so that a
// refresh reports no user gone and back, and a user the sender no longer
// holds goes offline once.
func TestPresenceSnapshotInManyMessages(t *testing.T) {
	h := &Hub{
		route:    "a",
		cfg:      HubConfig{OnPresence: func(string, bool) {}},
		presence: map[string]map[string]int{},
		down:     map[string]bool{},
		hubs:     map[string]bool{},
		keeping:  map[string]map[string]bool{},
	}
	users := make([]presenceEntry, 3*presenceChunk)
	for i := range users {
		users[i] = presenceEntry{fmt.Sprintf("user-%05d-%s", i, "with-a-longer-name-to-fill-the-bytes"), 1}
	}
	// apply feeds h a snapshot of entries from b and returns the
	// OnPresence notes it made, checking that the last message made them
	// all but those of users coming online.
	apply := func(entries []presenceEntry) []presenceNote {
		t.Helper()
		msgs := presenceMsgs(entries, true)
		if len(msgs) < 4 {
			t.Fatalf("%d entries in %d messages, want at least 4", len(entries), len(msgs))
		}
		for i, b := range msgs {
			if len(b) > presenceChunkBytes+1024 {
				t.Errorf("message %d is %d bytes, want about %d at most", i, len(b), presenceChunkBytes)
			}
			m, err := decodeHubMsg(b)
			if err != nil {
				t.Fatal(err)
			}
			if m.Reset != (i == 0) || m.More != (i < len(msgs)-1) {
				t.Fatalf("message %d of %d: reset %v, more %v", i, len(msgs), m.Reset, m.More)
			}
			h.applyPresence("b", m.Reset, m.More, m.Entries)
			if i < len(msgs)-1 {
				for _, n := range h.notes {
					if !n.online {
						t.Fatalf("message %d of %d reported %s offline before the snapshot's end", i, len(msgs), n.user)
					}
				}
			}
		}
		notes := h.notes
		h.notes = nil
		return notes
	}
	if notes := apply(users); len(notes) != len(users) {
		t.Fatalf("first snapshot: %d notes, want %d users online", len(notes), len(users))
	}
	if notes := apply(users); len(notes) != 0 {
		t.Fatalf("the same snapshot again: %d notes (first %+v), want none", len(notes), notes[0])
	}
	// The sender lost its last user, and the receiver hears so once.
	last := users[len(users)-1].User
	notes := apply(users[:len(users)-1])
	if len(notes) != 1 || notes[0] != (presenceNote{last, false}) {
		t.Fatalf("snapshot without %s: notes %+v, want it offline once", last, notes)
	}
	if len(h.keeping) != 0 {
		t.Errorf("keeping %d snapshots after their last messages", len(h.keeping))
	}
}

// An update between snapshots changes the counts it carries and nothing
// else.
func TestPresenceUpdateOutsideSnapshot(t *testing.T) {
	msgs := presenceMsgs([]presenceEntry{{"zoe", 2}}, false)
	if len(msgs) != 1 {
		t.Fatalf("one update in %d messages", len(msgs))
	}
	m, err := decodeHubMsg(msgs[0])
	if err != nil || m.Reset || m.More {
		t.Fatalf("update decodes to %+v, %v; want neither flag", m, err)
	}
	if msgs := presenceMsgs(nil, false); len(msgs) != 0 {
		t.Errorf("no entries: %d update messages, want none", len(msgs))
	}
	if msgs := presenceMsgs(nil, true); len(msgs) != 1 {
		t.Errorf("empty snapshot in %d messages, want one", len(msgs))
	}
}

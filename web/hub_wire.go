package web

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The hub's messages between nodes travel as replication messages of type
// HubMsgType. Each body is
//
//	version:1 byte (1) | kind:1 byte | fields of the kind
//
// with unsigned integers as uvarints and strings and byte strings as a
// uvarint length and the bytes:
//
//	kindOp        req, op (1 byte), name, payload
//	kindCount     req, n
//	kindPresence  flags (1 byte), entries, then entries × (user, sockets)
//	kindAskPresence  (nothing)
//
// A presence message's flags are presenceReset, set on the first message
// of a snapshot of the sender's whole presence, and presenceMore, set on
// every message of a snapshot but its last. A snapshot replaces what the
// receiver holds for the sender once its last message is in; a message
// with neither flag outside a snapshot updates the counts it carries.
//
// The whole body must be consumed: trailing bytes are an error.
const hubWireVersion = 1

// Flags of a kindPresence message.
const (
	presenceReset byte = 1 << iota
	presenceMore
)

// Message kinds.
const (
	kindOp          byte = 1 // deliver to, or close, local sockets; answered by a kindCount
	kindCount       byte = 2 // how many sockets a kindOp reached on its receiver
	kindPresence    byte = 3 // the sender's socket counts per user
	kindAskPresence byte = 4 // please send me all your presence
)

// Operations of a kindOp message, and of local deliveries.
const (
	opUser      byte = 1 // deliver payload to the sockets of user name
	opSession   byte = 2 // deliver payload to the sockets bound to HTTP session name
	opTopic     byte = 3 // deliver payload to the sockets subscribed to topic name
	opCloseUser byte = 4 // close the sockets of user name, payload is the reason
)

// Limits on decoded fields: a peer cannot make the decoder allocate more
// than the body it sent.
const (
	maxNameLen = 4096 // users, topics and session ids
)

// errHubWire is the cause of every decoding error.
var errHubWire = errors.New("web: malformed hub message")

// hubMsg is one decoded hub message. Byte fields alias the decoded body.
type hubMsg struct {
	Kind    byte
	Req     uint64
	Op      byte
	Name    string
	Payload []byte
	N       uint64
	Reset   bool // the first message of a presence snapshot
	More    bool // a message of a presence snapshot that more follow
	Entries []presenceEntry
}

// presenceEntry is one user's number of sockets on the sending node; 0
// means none any more.
type presenceEntry struct {
	User    string
	Sockets uint64
}

// appendHubMsg appends the encoding of m to dst.
func appendHubMsg(dst []byte, m *hubMsg) []byte {
	dst = append(dst, hubWireVersion, m.Kind)
	switch m.Kind {
	case kindOp:
		dst = binary.AppendUvarint(dst, m.Req)
		dst = append(dst, m.Op)
		dst = appendWireString(dst, m.Name)
		dst = binary.AppendUvarint(dst, uint64(len(m.Payload)))
		dst = append(dst, m.Payload...)
	case kindCount:
		dst = binary.AppendUvarint(dst, m.Req)
		dst = binary.AppendUvarint(dst, m.N)
	case kindPresence:
		var flags byte
		if m.Reset {
			flags |= presenceReset
		}
		if m.More {
			flags |= presenceMore
		}
		dst = append(dst, flags)
		dst = binary.AppendUvarint(dst, uint64(len(m.Entries)))
		for _, e := range m.Entries {
			dst = appendWireString(dst, e.User)
			dst = binary.AppendUvarint(dst, e.Sockets)
		}
	}
	return dst
}

func appendWireString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// decodeHubMsg decodes a hub message. It never panics and allocates no
// more than in proportion to len(b).
func decodeHubMsg(b []byte) (hubMsg, error) {
	r := wireReader{b: b}
	var m hubMsg
	if v := r.byte(); v != hubWireVersion {
		if r.err != nil {
			return hubMsg{}, r.err
		}
		return hubMsg{}, fmt.Errorf("%w: version %d", errHubWire, v)
	}
	m.Kind = r.byte()
	switch m.Kind {
	case kindOp:
		m.Req = r.uvarint()
		m.Op = r.byte()
		m.Name = string(r.bytes(maxNameLen))
		m.Payload = r.bytes(len(b))
		if r.err == nil && (m.Op < opUser || m.Op > opCloseUser) {
			return hubMsg{}, fmt.Errorf("%w: op %d", errHubWire, m.Op)
		}
		if r.err == nil && m.Name == "" {
			return hubMsg{}, fmt.Errorf("%w: empty name", errHubWire)
		}
	case kindCount:
		m.Req = r.uvarint()
		m.N = r.uvarint()
	case kindPresence:
		flags := r.byte()
		if flags&^(presenceReset|presenceMore) != 0 {
			r.fail("presence flags")
		}
		m.Reset, m.More = flags&presenceReset != 0, flags&presenceMore != 0
		n := r.uvarint()
		// Each entry takes at least 2 bytes: bound n before allocating.
		if r.err == nil && n > uint64(r.remaining()/2) {
			r.fail("entry count")
		}
		if r.err == nil && n > 0 {
			m.Entries = make([]presenceEntry, 0, n)
		}
		for i := uint64(0); i < n && r.err == nil; i++ {
			user := r.bytes(maxNameLen)
			sockets := r.uvarint()
			if r.err == nil && len(user) == 0 {
				r.fail("empty user")
			}
			m.Entries = append(m.Entries, presenceEntry{User: string(user), Sockets: sockets})
		}
	case kindAskPresence:
	default:
		if r.err == nil {
			return hubMsg{}, fmt.Errorf("%w: kind %d", errHubWire, m.Kind)
		}
	}
	if r.err == nil && r.remaining() > 0 {
		r.fail("trailing bytes")
	}
	if r.err != nil {
		return hubMsg{}, r.err
	}
	return m, nil
}

// wireReader reads the hub encoding; the first error sticks.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) remaining() int { return len(r.b) }

func (r *wireReader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s", errHubWire, what)
	}
}

func (r *wireReader) byte() byte {
	if r.err != nil {
		return 0
	}
	if len(r.b) == 0 {
		r.err = fmt.Errorf("%w: %w", errHubWire, io.ErrUnexpectedEOF)
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *wireReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail("integer")
		return 0
	}
	r.b = r.b[n:]
	return v
}

// bytes reads a length-prefixed byte string of at most max bytes, aliasing
// the input.
func (r *wireReader) bytes(max int) []byte {
	n := r.uvarint()
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)) || n > uint64(max) {
		r.fail("length")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// Client control messages: a text message that is exactly a JSON object
// with one member, "subscribe" or "unsubscribe", whose value is a
// non-empty string of at most maxTopicLen bytes. Anything else is an
// application message.
const maxTopicLen = 256

// control is a decoded client control message.
type control struct {
	Subscribe bool // false: unsubscribe
	Topic     string
}

// parseControl reports whether b is a control message, and which.
func parseControl(b []byte) (control, bool) {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) < len(`{"subscribe":""}`)-1 || b[0] != '{' || !bytes.Contains(b, []byte(`subscribe"`)) {
		return control{}, false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return control{}, false
	}
	key, err := dec.Token()
	if err != nil {
		return control{}, false
	}
	var c control
	switch key {
	case "subscribe":
		c.Subscribe = true
	case "unsubscribe":
	default:
		return control{}, false
	}
	val, err := dec.Token()
	topic, ok := val.(string)
	if err != nil || !ok || topic == "" || len(topic) > maxTopicLen {
		return control{}, false
	}
	if t, err := dec.Token(); err != nil || t != json.Delim('}') {
		return control{}, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return control{}, false
	}
	c.Topic = topic
	return c, true
}

// controlReply is the hub's answer to a control message: {"subscribed":
// topic}, {"unsubscribed": topic}, or {"error": why, "topic": topic}.
func controlReply(c control, err error) []byte {
	var v any
	switch {
	case err != nil:
		v = struct {
			Error string `json:"error"`
			Topic string `json:"topic"`
		}{err.Error(), c.Topic}
	case c.Subscribe:
		v = struct {
			Subscribed string `json:"subscribed"`
		}{c.Topic}
	default:
		v = struct {
			Unsubscribed string `json:"unsubscribed"`
		}{c.Topic}
	}
	b, _ := json.Marshal(v) // strings only: cannot fail
	return b
}

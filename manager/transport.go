package manager

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/cohort-cluster/cohort/replication"
)

// SendMode says how long a replicating manager waits when it sends a
// change: not at all (Async), until every peer's receiver has read it
// (Ack), or until every peer has applied it (Sync). It is the replication
// channel's mode.
type SendMode = replication.SendMode

// The send modes.
const (
	Async = replication.Async
	Ack   = replication.Ack
	Sync  = replication.Sync
)

// Transport carries a replicating manager's messages to its peers, in
// order per sender and receiver. The replication channel provides it; tests
// use an in-memory one. Implementations must be safe for concurrent use.
//
// The manager receives its peers' messages through its Receive method,
// which the transport calls, for each sender, one message at a time in
// send order.
type Transport interface {
	// Send delivers msg to the peers named in to, or to every peer when to
	// is nil (an empty, non-nil to sends to no one), and returns when mode
	// is satisfied or ctx is done. The error names the peers that failed.
	Send(ctx context.Context, to []string, msg []byte, mode SendMode) error
	// Peers returns the routes of the current peers.
	Peers() []string
}

// kind is the first byte of every manager message.
type kind byte

const (
	kindChange         kind = iota + 1 // Change
	kindTouch                          // []touch: batched access times
	kindExpire                         // expiry: id and the access it expired after
	kindInvalidate                     // idMsg
	kindRename                         // rename
	kindFullRequest                    // idMsg: send me this session whole
	kindFull                           // Full
	kindSyncRequest                    // send me every session (state transfer)
	kindSyncChunk                      // []Full
	kindSyncDone                       // syncDone
	kindFetch                          // idMsg: Backup, do you hold this session?
	kindFetchReply                     // fetchReply
	kindTakeover                       // idMsg: the sender is now the session's primary
	kindDrop                           // idMsg: you are no longer a holder of this session
	kindPrincipalQuery                 // principalQuery: Backup, which sessions of this principal do you hold?
	kindPrincipalReply                 // principalReply
	kindHandoff                        // []Full: you are now these sessions' primary (the sender leaves)
)

// numKinds bounds the kinds counted one by one; unknown ones share slot 0.
const numKinds = 18

func kindIndex(b byte) int {
	if int(b) >= numKinds {
		return 0
	}
	return int(b)
}

var kindNames = [numKinds]string{"unknown", "change", "touch", "expire", "invalidate", "rename", "full_request", "full",
	"sync_request", "sync_chunk", "sync_done", "fetch", "fetch_reply", "takeover", "drop", "principal_query", "principal_reply", "handoff"}

func (k kind) String() string { return kindNames[kindIndex(byte(k))] }

type fetchReply struct {
	ID    string `msgpack:"i"`
	Found bool   `msgpack:"f"`
	Full  Full   `msgpack:"s"`
}

type principalQuery struct {
	Q         uint64 `msgpack:"q"`
	Principal string `msgpack:"p"`
}

type principalReply struct {
	Q     uint64 `msgpack:"q"`
	Fulls []Full `msgpack:"f,omitempty"`
}

type touch struct {
	ID     string `msgpack:"i"`
	Access int64  `msgpack:"a"` // Unix ms
}

type idMsg struct {
	ID     string `msgpack:"i"`
	Access int64  `msgpack:"a,omitempty"`
	Serve  bool   `msgpack:"s,omitempty"` // takeover: the sender serves the session's requests
	Term   uint64 `msgpack:"e,omitempty"` // takeover: the claim's term (Session.claim)
}

type rename struct {
	Old string `msgpack:"o"`
	New string `msgpack:"n"`
}

type syncDone struct {
	Count int `msgpack:"c"`
	// NotReady says the sender has no state transfer to give: it has not
	// got its own sessions yet.
	NotReady bool `msgpack:"r,omitempty"`
}

// encodeMsg frames a manager message: its kind, then its msgpack body,
// written straight after the kind byte.
func encodeMsg(k kind, body any) ([]byte, error) {
	return frameMsg(k, func(enc *msgpack.Encoder) error { return enc.Encode(body) })
}

// encodeChange is encodeMsg of a change, which every write sends, written
// in one allocation by appendChange.
func encodeChange(c *Change) []byte {
	return appendChange(append(make([]byte, 0, 1+c.sizeHint()), byte(kindChange)), c)
}

func frameMsg(k kind, encode func(*msgpack.Encoder) error) ([]byte, error) {
	b, err := encodeExact(false, encode, byte(k))
	if err != nil {
		return nil, fmt.Errorf("manager: encode message %d: %w", k, err)
	}
	return b, nil
}

// scratch holds the buffers values are encoded into before encodeExact
// copies them out.
var scratch = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxScratch is the largest buffer kept for the next encoding.
const maxScratch = 64 << 10

// encodeExact encodes with encode, after the bytes of prefix, into a
// pooled buffer, and returns a copy of exactly the bytes written:
// one allocation, whatever the size, and no room left over in what a
// session keeps. sortKeys sorts map keys, so that equal values encode
// equally.
func encodeExact(sortKeys bool, encode func(*msgpack.Encoder) error, prefix ...byte) ([]byte, error) {
	buf := scratch.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= maxScratch {
			scratch.Put(buf)
		}
	}()
	buf.Reset()
	buf.Write(prefix)
	enc := msgpack.GetEncoder()
	defer msgpack.PutEncoder(enc)
	enc.Reset(buf)
	enc.SetSortMapKeys(sortKeys)
	if err := encode(enc); err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}

// ErrMalformed wraps errors decoding a peer's message.
var ErrMalformed = errors.New("manager: malformed message")

func decodeBody(b []byte, v any) error {
	return malformed(mpguard.Unmarshal(b, v))
}

// malformed wraps a decoding error, if any, in ErrMalformed.
func malformed(err error) error {
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

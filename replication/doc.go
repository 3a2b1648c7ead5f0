// Package replication moves session changes between nodes over persistent
// TCP connections.
//
// # Overview
//
// A [Channel] keeps one outbound connection to each peer ([Channel.AddPeer]),
// used for its own sends, and accepts the peers' connections for theirs.
// Messages are typed ([MsgType]); higher layers register a [Handler] per
// type with [Channel.Handle], so this package imports none of them.
//
// Wire format: every frame is a 4-byte big-endian length and a payload; the
// payload is a msgpack [Envelope] {version, type, sender route, domain,
// sequence, mode, body}, sealed with AES-GCM when a cluster key is set. The
// full format, handshake included, is in docs/wire-format.md.
//
// # Semantics
//
// [Channel.Send] has three modes ([SendMode]): Async returns once the frame
// is queued; Ack once the peer's receiver has read it; Sync once the peer's
// handler has returned, its error included. Every wait is bounded by the
// context or Config.SendTimeout; [Channel.SendWithin] takes the bound as an
// argument, which costs a request path less than a context with a timeout
// of its own. A peer that lets a wait's timeout pass unanswered (a hung
// process, a stopped VM) is stalled (a caller's context deadline shorter
// than Config.SendTimeout does not count): until it answers again, sends
// still queue its frames but fail it at once with [ErrPeerStalled] rather
// than each wait the whole bound for it. Frames from one sender to one receiver are
// handled in send order, whatever their modes. [Stream] sends long
// sequences with a window of unacknowledged frames.
//
// Security: with Config.Key, both ends prove they hold the key in the
// handshake (HMAC over both sides' random nonces) and derive fresh AES-GCM
// keys per connection and direction; the nonce is the frame counter, so it
// is never reused, and a replayed, reordered or forged frame fails to open
// and drops the connection. The dialling side proves it with a no-op frame
// sent at once; an accepted connection whose hello, or first frame after
// it, does not come within Config.DialTimeout is dropped, so a stranger
// holds none open, while a peer with nothing to send stays connected.
// Mutual TLS would need a certificate authority that a shared cluster key
// does not: the key is what operators already manage for gossip.
//
// # Concurrency
//
// A Channel is safe for concurrent use. Each peer has one writer goroutine
// draining a bounded queue (frames queued together go out in one write;
// woken by a send, the writer first yields once, so that the other
// requests already runnable queue theirs) and one goroutine reading its
// answers; each inbound connection has one
// goroutine that reads frames, calls handlers and writes acks and replies.
// Handlers of one sender run one at a time; a slow handler delays only that
// sender's frames.
//
// # Failure handling
//
// A full queue fails Send for that peer at once with [ErrQueueFull], never
// blocking the others, and marks the peer as needing a resync
// ([Channel.OnResync]); so does a connection lost with frames in flight.
// Connections are re-established with capped, jittered backoff. An
// oversized, garbled, truncated or unauthenticated frame, or one of another
// domain or protocol version, drops its connection, is counted by reason
// ([Stats]) and logged at most once a second per reason; so is a sender's
// connection whose acks and replies cannot be written (it stopped reading
// them for Config.WriteTimeout, or reset the connection). The channel
// keeps serving everyone else.
//
// # Usage
//
//	ch, err := replication.New(cfg)
//	...
//	ch.Handle(replication.FirstUserType, func(from string, body []byte) error {
//		return apply(body)
//	})
//	ch.AddPeer("node2", "10.0.0.2:8946")
//	err = ch.Send(ctx, nil, replication.FirstUserType, delta, replication.Ack)
package replication

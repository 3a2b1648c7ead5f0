package replication

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/vmihailenco/msgpack/v5"
)

// ProtocolVersion is the envelope version this build speaks.
const ProtocolVersion uint8 = 1

// MsgType names a kind of message. Types below FirstUserType are the
// channel's own; higher layers register theirs with Channel.Handle.
type MsgType uint16

// Reserved message types.
const (
	typeHello MsgType = 1 // handshake, both directions
	typeAck   MsgType = 2 // receiver read frame Seq
	typeReply MsgType = 3 // receiver applied frame Seq; Body holds an error text, if any
	typeNoop  MsgType = 4 // read and acknowledged, never dispatched (Flush)
	// FirstUserType is the lowest type higher layers may register.
	FirstUserType MsgType = 16
)

// Envelope is one message on the wire, msgpack-encoded as an array.
type Envelope struct {
	_msgpack struct{} `msgpack:",as_array"`
	Version  uint8    // ProtocolVersion
	Type     MsgType  // message type
	From     string   // sender's route
	Domain   string   // sender's cluster domain
	Seq      uint64   // per-connection sequence number of the frame
	Mode     SendMode // what the sender waits for
	Body     []byte
}

// Errors of frame and envelope decoding. Each closes the connection that
// carried the input and is counted by reason.
var (
	ErrFrameTooLarge = errors.New("replication: frame larger than the maximum size")
	ErrMalformed     = errors.New("replication: malformed frame")
	ErrAuth          = errors.New("replication: frame failed authentication")
	ErrVersion       = errors.New("replication: unknown protocol version")
	ErrDomain        = errors.New("replication: frame of another domain")
)

// frameHeader is the length prefix: 4 bytes, big-endian, the payload's size.
const frameHeader = 4

// readFrame reads one length-prefixed frame into buf, growing it if
// needed, and returns the payload. The length is checked against limit
// before anything is allocated, and a buffer too small for it grows as
// the bytes arrive: a length claimed by a sender that then sends nothing
// costs no more memory than what it did send.
func readFrame(r io.Reader, buf []byte, limit int) ([]byte, error) {
	// The header is read into buf, when it has room: a local array
	// would escape to the heap through r, once per frame.
	h := buf[:0]
	if cap(h) < frameHeader {
		h = make([]byte, 0, frameHeader)
	}
	h = h[:frameHeader]
	if _, err := io.ReadFull(r, h); err != nil {
		if err == io.ErrUnexpectedEOF {
			err = fmt.Errorf("%w: truncated frame header", ErrMalformed)
		}
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(h))
	if n > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrFrameTooLarge, n, limit)
	}
	if n == 0 {
		return nil, fmt.Errorf("%w: empty frame", ErrMalformed)
	}
	if cap(buf) >= n {
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, truncated(err)
		}
		return buf, nil
	}
	buf = buf[:0]
	for len(buf) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, min(n, max(2*cap(buf), growFrom))-len(buf))
		}
		m, err := io.ReadAtLeast(r, buf[len(buf):min(n, cap(buf))], 1)
		buf = buf[:len(buf)+m]
		if err != nil {
			return nil, truncated(err)
		}
	}
	return buf, nil
}

// growFrom is the first size of a buffer that grows as a frame arrives.
const growFrom = 64 << 10

// truncated is the error of a frame whose bytes stopped coming: the
// sender ended the connection in the middle of it (malformed input), or
// the read failed (a deadline passed, the connection was reset or
// closed), which says nothing about the input and is not counted as bad.
func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated frame: %w", ErrMalformed, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("replication: frame cut short: %w", err)
}

// appendFrame appends the length prefix and payload to dst.
func appendFrame(dst, payload []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload)))
	return append(dst, payload...)
}

// EncodeEnvelope encodes e as a msgpack array.
func EncodeEnvelope(e *Envelope) ([]byte, error) {
	return appendEnvelope(nil, e), nil
}

// DecodeEnvelope decodes an envelope. Its strings and body are copied out
// of b, so b may be reused. (The channel itself decodes frames without
// copying and hands handlers a body that lives only during the call.)
func DecodeEnvelope(b []byte) (Envelope, error) {
	v, err := parseEnvelope(b)
	if err != nil {
		return Envelope{}, err
	}
	e := Envelope{Version: v.Version, Type: v.Type, From: string(v.From), Domain: string(v.Domain), Seq: v.Seq, Mode: v.Mode}
	if v.Body != nil {
		e.Body = append([]byte{}, v.Body...)
	}
	return e, nil
}

// hello opens a connection in each direction of the handshake.
type hello struct {
	_msgpack struct{} `msgpack:",as_array"`
	Version  uint8
	Domain   string
	Route    string
	Nonce    []byte // 32 random bytes
	MAC      []byte // server only, with a key: HMAC over both hellos
}

const nonceSize = 32

// sealer encrypts or opens one direction of a connection with AES-GCM.
// The nonce is the frame counter of that direction, so it is never reused
// under a key, and a replayed, dropped or reordered frame fails to open.
// Keys are fresh for every connection (derived from both sides' random
// nonces), so a frame recorded on one connection means nothing on another.
type sealer struct {
	aead cipher.AEAD
	n    uint64
}

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

func (s *sealer) nonce() []byte {
	var n [12]byte
	binary.BigEndian.PutUint64(n[4:], s.n)
	s.n++
	return n[:]
}

// seal appends the sealed plaintext to dst.
func (s *sealer) seal(dst, plaintext []byte) []byte {
	return s.aead.Seal(dst, s.nonce(), plaintext, nil)
}

// open decrypts ciphertext in place.
func (s *sealer) open(ciphertext []byte) ([]byte, error) {
	p, err := s.aead.Open(ciphertext[:0], s.nonce(), ciphertext, nil)
	if err != nil {
		return nil, ErrAuth
	}
	return p, nil
}

// connKeys derives the two directions' keys of one connection from the
// cluster key and both hellos' nonces (HKDF-SHA256).
func connKeys(clusterKey, clientNonce, serverNonce []byte) (c2s, s2c []byte, err error) {
	salt := append(append([]byte{}, clientNonce...), serverNonce...)
	c2s, err = hkdf.Key(sha256.New, clusterKey, salt, "cohort replication v1 client to server", 32)
	if err == nil {
		s2c, err = hkdf.Key(sha256.New, clusterKey, salt, "cohort replication v1 server to client", 32)
	}
	return c2s, s2c, err
}

// helloMAC authenticates the server's hello: it proves the server holds the
// cluster key and binds both nonces, routes and the domain.
func helloMAC(clusterKey []byte, client, server *hello) []byte {
	k, _ := hkdf.Key(sha256.New, clusterKey, nil, "cohort replication v1 hello", 32)
	m := hmac.New(sha256.New, k)
	for _, b := range [][]byte{client.Nonce, server.Nonce, []byte(client.Domain), []byte(client.Route), []byte(server.Route)} {
		var l [4]byte
		binary.BigEndian.PutUint32(l[:], uint32(len(b)))
		m.Write(l[:])
		m.Write(b)
	}
	return m.Sum(nil)
}

func encodeHello(h *hello) ([]byte, error) { return msgpack.Marshal(h) }

// decodeHello decodes a handshake message.
func decodeHello(b []byte) (hello, error) {
	var h hello
	if err := mpguard.Unmarshal(b, &h); err != nil {
		return hello{}, fmt.Errorf("%w: hello: %v", ErrMalformed, err)
	}
	if h.Version != ProtocolVersion {
		return hello{}, fmt.Errorf("%w: %d", ErrVersion, h.Version)
	}
	if len(h.Nonce) != nonceSize || h.Route == "" {
		return hello{}, fmt.Errorf("%w: hello without nonce or route", ErrMalformed)
	}
	return h, nil
}

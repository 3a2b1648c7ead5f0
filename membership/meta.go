package membership

import (
	"errors"
	"fmt"
	"time"

	"github.com/cohort-cluster/cohort/internal/mpguard"
	"github.com/hashicorp/memberlist"
	"github.com/vmihailenco/msgpack/v5"
)

// ProtocolVersion is the version of Cohort's own protocol (metadata,
// beacons, replication) that this build speaks. MinProtocolVersion is the
// oldest one it still pairs with.
const (
	ProtocolVersion    uint8 = 1
	MinProtocolVersion uint8 = 1
)

// Meta is what a node advertises about itself to every other node, carried
// in memberlist's node metadata (at most 512 bytes, msgpack-encoded).
type Meta struct {
	Route           string    `msgpack:"r"` // route name; equals the member's name
	ReplicationAddr string    `msgpack:"a"` // replication channel host:port, may be empty
	Domain          string    `msgpack:"d"` // cluster domain
	Manager         string    `msgpack:"m"` // session manager kind, may be empty
	HTTPAddr        string    `msgpack:"h"` // app and admin HTTP host:port, may be empty
	Protocol        uint8     `msgpack:"p"` // Cohort protocol version
	Started         time.Time `msgpack:"t"` // when the node started
	// Leaving is set by Node.Leave just before the node leaves, so peers
	// can tell a graceful departure from a failure (memberlist's leave
	// callback does not say which it was) and stop routing work to it.
	Leaving bool `msgpack:"l,omitempty"`
}

// wireMeta is Meta's encoding: the start time as Unix milliseconds, which is
// compact and has no time-zone or format choices for peers to disagree on.
type wireMeta struct {
	Route           string `msgpack:"r"`
	ReplicationAddr string `msgpack:"a"`
	Domain          string `msgpack:"d"`
	Manager         string `msgpack:"m"`
	HTTPAddr        string `msgpack:"h,omitempty"`
	Protocol        uint8  `msgpack:"p"`
	Started         int64  `msgpack:"t"`
	Leaving         bool   `msgpack:"l,omitempty"`
}

// ErrMetaTooLarge is returned when metadata does not fit memberlist's
// limit, or would not with the leaving flag that Leave sets.
var ErrMetaTooLarge = fmt.Errorf("membership: metadata larger than %d bytes", memberlist.MetaMaxSize)

// encodeMeta encodes m. It refuses metadata that would not fit with the
// leaving flag set too, so that Leave, which sets it, never finds it too
// large: peers would report the node failed instead of left.
func encodeMeta(m Meta) ([]byte, error) {
	if !m.Leaving {
		leaving := m
		leaving.Leaving = true
		if _, err := encodeMeta(leaving); err != nil {
			return nil, err
		}
	}
	b, err := msgpack.Marshal(wireMeta{
		Route:           m.Route,
		ReplicationAddr: m.ReplicationAddr,
		Domain:          m.Domain,
		Manager:         m.Manager,
		HTTPAddr:        m.HTTPAddr,
		Protocol:        m.Protocol,
		Started:         m.Started.UnixMilli(),
		Leaving:         m.Leaving,
	})
	if err != nil {
		return nil, fmt.Errorf("membership: encode metadata: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, ErrMetaTooLarge
	}
	return b, nil
}

// DecodeMeta decodes a peer's metadata. It accepts at most
// memberlist.MetaMaxSize bytes and reports malformed input as an error.
func DecodeMeta(b []byte) (Meta, error) {
	if len(b) > memberlist.MetaMaxSize {
		return Meta{}, ErrMetaTooLarge
	}
	if len(b) == 0 {
		return Meta{}, errors.New("membership: empty metadata")
	}
	var w wireMeta
	if err := mpguard.Unmarshal(b, &w); err != nil {
		return Meta{}, fmt.Errorf("membership: decode metadata: %w", err)
	}
	return Meta{
		Route:           w.Route,
		ReplicationAddr: w.ReplicationAddr,
		Domain:          w.Domain,
		Manager:         w.Manager,
		HTTPAddr:        w.HTTPAddr,
		Protocol:        w.Protocol,
		Started:         time.UnixMilli(w.Started),
		Leaving:         w.Leaving,
	}, nil
}

// meta is the metadata this configuration advertises.
func (c *Config) meta(started time.Time) Meta {
	return Meta{
		Route:           c.Route,
		ReplicationAddr: c.ReplicationAddr,
		Domain:          c.Domain,
		Manager:         c.Manager,
		HTTPAddr:        c.HTTPAddr,
		Protocol:        ProtocolVersion,
		Started:         started,
	}
}

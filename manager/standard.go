package manager

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// Standard keeps sessions on this node only, as Tomcat's StandardManager
// does. With Config.File set, Close saves every session to the file and
// the next start loads them back, dropping the expired ones: sessions
// survive a restart of the node, not its loss.
type Standard struct {
	cfg    Config
	h      *host
	st     *store
	stop   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool
	once   sync.Once
	// life orders Close against the calls that change which sessions
	// exist and under which ids: they hold it shared, and fail with
	// ErrClosed once Close has set closed under it, so the file Close
	// saves has every such change reported done.
	life  sync.RWMutex
	stats deltaCounters // the session counters only: nothing is replicated
}

var _ Listenable = (*Standard)(nil)

// NewStandard validates cfg, loads the sessions saved in cfg.File, if any,
// and starts the expiry sweep. A file that cannot be read or decoded is
// logged, renamed to <file>.corrupt-<time>, and start-up goes on without
// it.
func NewStandard(cfg Config) (*Standard, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	h := cfg.host()
	m := &Standard{cfg: cfg, h: h, st: newStore(h, cfg.IDGracePeriod), stop: make(chan struct{})}
	if cfg.File != "" {
		m.load()
		m.stats.noteActive(m.st.count())
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		sweepLoop(m.stop, cfg.SweepInterval, m.sweep)
	}()
	return m, nil
}

// sweepLoop calls sweep every interval until stop is closed.
func sweepLoop(stop <-chan struct{}, interval time.Duration, sweep func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			sweep()
		}
	}
}

func (m *Standard) sweep() {
	start := time.Now()
	defer func() { m.stats.sweepNanos.Add(int64(time.Since(start))) }()
	for _, s := range m.st.expired(m.h.now()) {
		m.stats.expired.Add(1)
		m.destroyed(s, Expired)
	}
}

func (m *Standard) destroyed(s *Session, why Reason) {
	m.stats.noteLife(m.h.now().Sub(s.Created()))
	m.h.fire(func(l Listener) {
		if l.Destroyed != nil {
			l.Destroyed(s, why)
		}
	})
}

// Create starts a new session.
func (m *Standard) Create(ctx context.Context) (*Session, error) {
	m.life.RLock()
	if m.closed.Load() {
		m.life.RUnlock()
		return nil, ErrClosed
	}
	if m.cfg.MaxSessions > 0 && m.st.count() >= m.cfg.MaxSessions {
		m.life.RUnlock()
		m.stats.rejected.Add(1)
		return nil, ErrTooManySessions
	}
	s := m.st.newSession(m.cfg.Route, m.cfg.MaxInactive)
	m.life.RUnlock()
	m.stats.created.Add(1)
	m.stats.noteActive(m.st.count())
	m.h.fire(func(l Listener) {
		if l.Created != nil {
			l.Created(s)
		}
	})
	return s, nil
}

// Find returns the session of id and records an access. An expired session
// is destroyed on the spot rather than returned.
func (m *Standard) Find(ctx context.Context, id string) (*Session, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	s := m.st.get(id)
	if s == nil {
		if m.st.buried(id) {
			return nil, ErrRecentlyInvalidated
		}
		return nil, ErrNotFound
	}
	now := m.h.now()
	if s.expiredAt(now) {
		if r := m.st.remove(s.ID()); r != nil {
			m.stats.expired.Add(1)
			m.destroyed(r, Expired)
		}
		return nil, ErrNotFound
	}
	s.touchAt(now)
	return s, nil
}

// Invalidate destroys the session of id. After Close it fails with
// ErrClosed: the session is in the saved file.
func (m *Standard) Invalidate(ctx context.Context, id string) error {
	m.life.RLock()
	if m.closed.Load() {
		m.life.RUnlock()
		return ErrClosed
	}
	var r *Session
	if s := m.st.get(id); s != nil {
		r = m.st.bury(s.ID())
	}
	m.life.RUnlock()
	if r == nil {
		return ErrNotFound
	}
	m.stats.invalidated.Add(1)
	m.destroyed(r, Invalidated)
	return nil
}

// ChangeID gives s a new id (see Manager.ChangeID). After Close it fails
// with ErrClosed: the session is saved under its id.
func (m *Standard) ChangeID(ctx context.Context, s *Session, base string) (string, error) {
	if base == "" {
		base = newID()
	}
	newID := JoinID(base, m.cfg.Route)
	m.life.RLock()
	if m.closed.Load() {
		m.life.RUnlock()
		return "", ErrClosed
	}
	oldID, ok := m.st.rename(s, newID)
	m.life.RUnlock()
	if !ok {
		return "", ErrNotFound
	}
	if oldID != newID {
		m.h.fire(func(l Listener) {
			if l.IDChanged != nil {
				l.IDChanged(s, oldID)
			}
		})
	}
	return newID, nil
}

// Commit ends a request's use of s. Nothing is replicated; the pending
// changes are dropped.
func (m *Standard) Commit(ctx context.Context, s *Session) error {
	s.commit()
	return nil
}

// FindByPrincipal returns the sessions logged in as principal.
func (m *Standard) FindByPrincipal(ctx context.Context, principal string) ([]*Session, error) {
	return m.st.byPrincipal(principal), nil
}

// Range calls f for each session until f returns false.
func (m *Standard) Range(f func(*Session) bool) {
	for _, s := range m.st.all() {
		if !f(s) {
			return
		}
	}
}

// Count returns the number of sessions.
func (m *Standard) Count() int { return m.st.count() }

// primaries returns how many of the sessions this node is the primary of.
func (m *Standard) primaries() int { return int(m.h.primaries.Load()) }

// Stats returns the session counters: created, rejected, expired and
// invalidated sessions, the most held at once, the life of destroyed
// sessions and the time spent sweeping. The replication counters stay
// zero.
func (m *Standard) Stats() Stats {
	c := &m.stats
	st := Stats{
		Sessions: m.st.count(), Created: c.created.Load(), Expired: c.expired.Load(), Invalidated: c.invalidated.Load(),
		MaxActive: c.maxActive.Load(), Rejected: c.rejected.Load(), AliveMax: time.Duration(c.aliveMax.Load()),
		SweepTime: time.Duration(c.sweepNanos.Load()),
	}
	if n := c.aliveCount.Load(); n > 0 {
		st.AliveAvg = time.Duration(c.aliveSum.Load() / n)
	}
	return st
}

// AddListener registers session callbacks.
func (m *Standard) AddListener(l Listener) { m.h.addListener(l) }

// Listen registers session callbacks, as AddListener does, and returns
// the function that removes them (see [Listenable]).
func (m *Standard) Listen(l Listener) (remove func()) { return m.h.addListener(l) }

// Close stops the sweep and, with Config.File set, saves every session. It
// waits for the Create, Invalidate and ChangeID calls under way, and those
// that come later fail with ErrClosed. It is idempotent; later calls
// return nil.
func (m *Standard) Close(ctx context.Context) error {
	var err error
	m.once.Do(func() {
		m.life.Lock()
		m.closed.Store(true)
		m.life.Unlock()
		close(m.stop)
		m.wg.Wait()
		if m.cfg.File != "" {
			err = m.save()
		}
	})
	return err
}

// File format: the magic line, a msgpack array of Full records, and the
// CRC-32 (IEEE) of the array, big-endian.
const fileMagic = "COHORT-SESSIONS 1\n"

// save writes every session to a temporary file beside cfg.File, syncs it
// and renames it over cfg.File, so a crash leaves the old file or the new
// one, never half of one.
func (m *Standard) save() error {
	sessions := m.st.all()
	var body bytes.Buffer
	enc := msgpack.NewEncoder(&body)
	if err := enc.EncodeArrayLen(len(sessions)); err != nil {
		return err
	}
	for _, s := range sessions {
		if err := enc.Encode(s.full()); err != nil {
			return fmt.Errorf("manager: save session: %w", err)
		}
	}
	dir := filepath.Dir(m.cfg.File)
	tmp, err := os.CreateTemp(dir, filepath.Base(m.cfg.File)+".tmp-*")
	if err != nil {
		return fmt.Errorf("manager: save sessions: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	w := bufio.NewWriter(tmp)
	_, _ = w.WriteString(fileMagic)
	_, _ = w.Write(body.Bytes())
	_ = binary.Write(w, binary.BigEndian, crc32.ChecksumIEEE(body.Bytes()))
	err = errors.Join(w.Flush(), tmp.Sync(), tmp.Close())
	if err == nil {
		err = os.Rename(tmp.Name(), m.cfg.File)
	}
	if err != nil {
		return fmt.Errorf("manager: save sessions to %s: %w", m.cfg.File, err)
	}
	if d, derr := os.Open(dir); derr == nil { // make the rename durable
		_ = d.Sync()
		_ = d.Close()
	}
	m.h.log.Info("sessions saved", "file", m.cfg.File, "sessions", len(sessions))
	return nil
}

// load reads cfg.File. Problems are logged, never returned: a node must
// start even when its saved sessions are lost.
func (m *Standard) load() {
	b, err := os.ReadFile(m.cfg.File)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var fulls []Full
	if err == nil {
		fulls, err = decodeFile(b)
	}
	if err != nil {
		aside := fmt.Sprintf("%s.corrupt-%s", m.cfg.File, m.h.now().UTC().Format("20060102T150405.000000000"))
		if rerr := os.Rename(m.cfg.File, aside); rerr != nil {
			m.h.log.Error("saved sessions unreadable; starting without them, and the file could not be moved aside", "file", m.cfg.File, "err", err, "move_err", rerr)
		} else {
			m.h.log.Error("saved sessions unreadable; starting without them", "file", m.cfg.File, "err", err, "moved_to", aside)
		}
		return
	}
	now := m.h.now()
	loaded, expired := 0, 0
	for _, f := range fulls {
		s := m.h.fromFull(f)
		if s.expiredAt(now) {
			expired++
			continue
		}
		m.st.put(s)
		loaded++
	}
	m.h.log.Info("sessions loaded", "file", m.cfg.File, "sessions", loaded, "expired", expired)
	// The sessions live in memory now: a stale file must not come back
	// after a crash, with the sessions logged out since.
	if err := os.Remove(m.cfg.File); err != nil {
		m.h.log.Error("saved sessions loaded but their file could not be removed: after a crash, the next start would bring back these sessions as they are now", "file", m.cfg.File, "err", err)
	}
}

func decodeFile(b []byte) ([]Full, error) {
	rest, ok := bytes.CutPrefix(b, []byte(fileMagic))
	if !ok {
		return nil, errors.New("not a session file (bad header)")
	}
	if len(rest) < 4 {
		return nil, io.ErrUnexpectedEOF
	}
	body, sum := rest[:len(rest)-4], binary.BigEndian.Uint32(rest[len(rest)-4:])
	if crc32.ChecksumIEEE(body) != sum {
		return nil, errors.New("checksum mismatch")
	}
	return decodeFulls(body)
}

// Route returns this node's route, the suffix of the ids it issues.
func (m *Standard) Route() string { return m.cfg.Route }

// CheckAttributes returns the error [Session.SetCopies] would return for
// a new session holding values, or nil, without creating a session: a
// caller checks the values first, so that a session it would have to
// throw away never counts toward Config.MaxSessions.
func (m *Standard) CheckAttributes(values map[string]any) error { return m.h.checkNew(values) }

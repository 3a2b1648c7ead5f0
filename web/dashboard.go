package web

import (
	"context"
	"embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
)

//go:embed dashboard
var dashboardFiles embed.FS

// Dashboard is the live page of a node at /cluster/: members and their
// state, sessions per node, replication rate and ack latency, and recent
// events (joins, failures, rebinds, state transfers, conflicts). The page
// is plain HTML, CSS and JavaScript embedded in the binary, fed once a
// second over a WebSocket at /cluster/ws.
type Dashboard struct {
	c      *manager.Cluster
	ss     *Sessions
	log    *slog.Logger
	client *http.Client
	up     websocket.Upgrader
	sub    *membership.Subscription
	stop   chan struct{}
	kick   chan struct{} // a new page wants a snapshot now
	wg     sync.WaitGroup
	once   sync.Once
	bmu    sync.Mutex // one broadcast at a time; guards prev

	mu      sync.Mutex
	events  []dashEvent // the most recent last
	clients map[chan []byte]struct{}
	prev    dashCounters
}

// dashEvent is one line of the page's event list.
type dashEvent struct {
	Time string `json:"time"`
	Type string `json:"type"`
	Text string `json:"text"`
}

// dashCounters are the counters whose changes become events and rates.
type dashCounters struct {
	at                                   time.Time
	replicated, received                 int64
	rebinds, transfers, failures, confls int64
	latency                              replication.Histogram
}

const dashEvents = 50

// NewDashboard starts the dashboard of a node. ss may be nil. Close stops
// it.
func NewDashboard(c *manager.Cluster, ss *Sessions, logger *slog.Logger) *Dashboard {
	if logger == nil {
		logger = slog.Default()
	}
	d := &Dashboard{
		c: c, ss: ss, log: logger.With("component", "dashboard"),
		client:  &http.Client{Timeout: 500 * time.Millisecond},
		stop:    make(chan struct{}),
		kick:    make(chan struct{}, 1),
		clients: make(map[chan []byte]struct{}),
		sub:     c.Membership().Subscribe(),
	}
	d.prev = d.counters()
	// A node starts its dashboard once it is ready, after the state
	// transfer that made it so: the first broadcast shows that transfer,
	// or its failures, among the events.
	d.prev.transfers, d.prev.failures = 0, 0
	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		for ev := range d.sub.C {
			d.event(ev.Type.String(), fmt.Sprintf("%s %s (%s)", ev.Member.Name, eventVerb(ev.Type), ev.Member.Addr))
		}
	}()
	go func() {
		defer d.wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-d.stop:
				return
			case <-t.C:
				d.broadcast()
			case <-d.kick:
				d.broadcast()
			}
		}
	}()
	return d
}

func eventVerb(t membership.EventType) string {
	switch t {
	case membership.EventJoin:
		return "joined"
	case membership.EventLeave:
		return "left"
	case membership.EventFail:
		return "failed"
	}
	return "updated"
}

// Close stops the feed and closes the pages' sockets.
func (d *Dashboard) Close() {
	d.once.Do(func() {
		close(d.stop)
		d.sub.Close()
		d.wg.Wait()
	})
}

// ServeHTTP serves the page at /cluster/ and its feed at /cluster/ws.
func (d *Dashboard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/cluster/ws" {
		d.serveFeed(w, r)
		return
	}
	http.ServeFileFS(w, r, dashboardFiles, "dashboard/index.html")
}

func (d *Dashboard) event(typ, text string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.events = append(d.events, dashEvent{Time: time.Now().Format("15:04:05"), Type: typ, Text: text})
	if len(d.events) > dashEvents {
		d.events = d.events[len(d.events)-dashEvents:]
	}
}

func (d *Dashboard) counters() dashCounters {
	st := d.c.Stats()
	dc := dashCounters{at: time.Now(), replicated: st.Replicated, received: st.Received,
		transfers: st.Transfers, failures: st.TransferFailures, confls: st.Conflicts}
	if d.ss != nil {
		dc.rebinds = d.ss.Stats().Rebinds
	}
	if ch := d.c.Channel(); ch != nil {
		dc.latency = ch.Stats().Latency
	}
	return dc
}

// snapshot is what the page receives each second.
type snapshot struct {
	Route    string         `json:"route"`
	Manager  string         `json:"manager"`
	Ready    bool           `json:"ready"`
	Members  []dashMember   `json:"members"`
	Rate     float64        `json:"rate"`     // changes sent and received per second
	AckP50ms float64        `json:"ack_p50"`  // over the last second
	AckP99ms float64        `json:"ack_p99"`  // over the last second
	Events   []dashEvent    `json:"events"`   // most recent first
	Sessions map[string]int `json:"sessions"` // per node: sessions held
}

type dashMember struct {
	Route   string `json:"route"`
	Address string `json:"address"`
	State   string `json:"state"`
	Local   bool   `json:"local,omitempty"`
}

// broadcast builds a snapshot, records events from counter changes, and
// sends it to every page.
func (d *Dashboard) broadcast() {
	d.bmu.Lock()
	defer d.bmu.Unlock()
	d.mu.Lock()
	n := len(d.clients)
	d.mu.Unlock()
	cur := d.counters()
	prev := d.prev
	d.prev = cur
	if v := cur.rebinds - prev.rebinds; v > 0 {
		d.event("rebind", fmt.Sprintf("%d session(s) rebound to this node", v))
	}
	if cur.transfers > prev.transfers {
		d.event("transfer", fmt.Sprintf("state transfer done in %s", d.c.Stats().LastTransfer.Round(time.Millisecond)))
	}
	if cur.failures > prev.failures {
		d.event("transfer", "state transfer failed")
	}
	if v := cur.confls - prev.confls; v > 0 {
		d.event("conflict", fmt.Sprintf("%d concurrent change(s) discarded", v))
	}
	if n == 0 {
		return
	}
	self := d.c.Membership().Route()
	s := snapshot{Route: self, Manager: d.c.Kind(), Ready: d.c.Ready(), Sessions: make(map[string]int)}
	if secs := cur.at.Sub(prev.at).Seconds(); secs > 0 {
		s.Rate = float64(cur.replicated-prev.replicated+cur.received-prev.received) / secs
	}
	if len(cur.latency.Counts) == len(prev.latency.Counts) && cur.latency.Count > prev.latency.Count {
		diff := replication.Histogram{Count: cur.latency.Count - prev.latency.Count, Counts: make([]int64, len(cur.latency.Counts))}
		for i := range diff.Counts {
			diff.Counts[i] = cur.latency.Counts[i] - prev.latency.Counts[i]
		}
		s.AckP50ms = float64(diff.Quantile(0.5)) / float64(time.Millisecond)
		s.AckP99ms = float64(diff.Quantile(0.99)) / float64(time.Millisecond)
	}
	total, _, _ := d.c.SessionCounts()
	s.Sessions[self] = total
	var wg sync.WaitGroup
	var smu sync.Mutex
	for _, m := range d.c.Membership().Members() {
		s.Members = append(s.Members, dashMember{Route: m.Name, Address: m.Addr, State: m.State.String(), Local: m.Name == self})
		if m.Name == self || m.State != membership.StateAlive || m.Meta.HTTPAddr == "" {
			continue
		}
		wg.Go(func() {
			if n, ok := d.peerSessions(m.Meta.HTTPAddr); ok {
				smu.Lock()
				s.Sessions[m.Name] = n
				smu.Unlock()
			}
		})
	}
	wg.Wait()
	d.mu.Lock()
	for i := len(d.events) - 1; i >= 0; i-- {
		s.Events = append(s.Events, d.events[i])
	}
	d.mu.Unlock()
	b, err := json.Marshal(s)
	if err != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for c := range d.clients {
		select {
		case c <- b:
		default: // a page that does not keep up misses a second
		}
	}
}

// peerSessions asks a peer's status for the sessions it holds.
func (d *Dashboard) peerSessions(addr string) (int, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/cluster/status", nil)
	if err != nil {
		return 0, false
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	var st struct {
		Sessions struct {
			Total int `json:"total"`
		} `json:"sessions"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return 0, false
	}
	return st.Sessions.Total, true
}

// serveFeed upgrades to a WebSocket and sends snapshots until the page
// goes away or the dashboard closes.
func (d *Dashboard) serveFeed(w http.ResponseWriter, r *http.Request) {
	conn, err := d.up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	feed := make(chan []byte, 2)
	d.mu.Lock()
	d.clients[feed] = struct{}{}
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.clients, feed)
		d.mu.Unlock()
		conn.Close()
	}()
	gone := make(chan struct{})
	go func() { // the page sends nothing; reading notices it close
		defer close(gone)
		for {
			if _, _, err := conn.NextReader(); err != nil {
				return
			}
		}
	}()
	select { // the first snapshot without waiting a second
	case d.kick <- struct{}{}:
	default:
	}
	for {
		select {
		case b := <-feed:
			_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
				return
			}
		case <-gone:
			return
		case <-d.stop:
			_ = conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "node stopping"), time.Now().Add(time.Second))
			conn.Close()
			<-gone
			return
		}
	}
}

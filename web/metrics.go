package web

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/membership"
	"github.com/cohort-cluster/cohort/replication"
)

// Metrics exports a node's state in the Prometheus format. It reads the
// cluster's counters when scraped, so the request path pays nothing for
// it. The names, and the Tomcat DeltaManager JMX attributes they stand
// for, are listed in docs/operations.md.
type Metrics struct {
	c        *manager.Cluster
	ss       *Sessions
	hub      *Hub
	registry *prometheus.Registry
}

// NewMetrics returns the metrics of a node: its cluster and, if not nil,
// its session middleware. Process and Go runtime metrics are included.
// Register more collectors (the WebSocket hub's) with Register.
func NewMetrics(c *manager.Cluster, ss *Sessions) *Metrics {
	m := &Metrics{c: c, ss: ss, registry: prometheus.NewRegistry()}
	m.registry.MustRegister(m, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// WithHub adds the WebSocket hub's figures to the metrics.
func (m *Metrics) WithHub(h *Hub) *Metrics {
	m.hub = h
	return m
}

// Register adds a collector to the node's metrics.
func (m *Metrics) Register(c prometheus.Collector) error { return m.registry.Register(c) }

// Handler serves the metrics, for GET /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{})
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("cohort_"+name, help, labels, nil)
}

var (
	mMembers          = desc("members", "Members of the cluster as this node sees them, by state.", "state")
	mReady            = desc("ready", "1 when the node has its sessions and is not shutting down.")
	mJoinErrors       = desc("membership_join_errors_total", "Join attempts that failed: to seeds, to nodes found by their beacons, to failed members.")
	mSessions         = desc("sessions", "Sessions held by this node, by role: primary (served here) or backup.", "role")
	mSessionsMax      = desc("sessions_max", "Most sessions held at once (Tomcat maxActive).")
	mCreated          = desc("sessions_created_total", "Sessions created on this node (Tomcat sessionCounter).")
	mRejected         = desc("sessions_rejected_total", "Sessions refused because the node holds MaxSessions (Tomcat rejectedSessions).")
	mExpired          = desc("sessions_expired_total", "Sessions that expired while held here (Tomcat expiredSessions).")
	mInvalidated      = desc("sessions_invalidated_total", "Sessions invalidated while held here.")
	mAliveMax         = desc("session_alive_max_seconds", "Longest life of a destroyed session (Tomcat sessionMaxAliveTime).")
	mAliveAvg         = desc("session_alive_average_seconds", "Average life of destroyed sessions (Tomcat sessionAverageAliveTime).")
	mSweep            = desc("session_sweep_seconds_total", "Time spent sweeping expired sessions (Tomcat processingTime).")
	mSessionBytes     = desc("session_size_bytes", "Encoded size of the sessions held, from a sample of at most 1000 at each scrape.")
	mChanges          = desc("replication_changes_total", "Session changes committed and sent to peers.")
	mMessagesSent     = desc("replication_messages_sent_total", "Manager messages sent, by kind (Tomcat counterSend_EVT_*).", "kind")
	mMessagesRecv     = desc("replication_messages_received_total", "Manager messages received, by kind (Tomcat counterReceive_EVT_*).", "kind")
	mConflicts        = desc("replication_conflicts_total", "Concurrent changes discarded by revision order.")
	mResyncs          = desc("replication_resyncs_total", "Full copies requested after a version gap.")
	mFullsSent        = desc("replication_full_copies_sent_total", "Full session copies sent on request.")
	mSendErrors       = desc("replication_send_errors_total", "Sends that failed for at least one peer.")
	mMalformed        = desc("replication_malformed_total", "Undecodable manager messages received.")
	mTransfers        = desc("state_transfers_total", "Completed state transfers into this node.")
	mTransferFailures = desc("state_transfer_failures_total", "State transfers that failed or timed out (Tomcat counterNoStateTransfered).")
	mTransferSeconds  = desc("state_transfer_duration_seconds", "Duration of the last completed state transfer.")
	mBackupCopies     = desc("backup_copies", "Backup copies each session gets now: -backups, or fewer while the cluster has fewer peers (Backup manager).")
	mUnderReplicated  = desc("under_replicated_sessions", "Sessions waiting for a copy to reach a new backup (Backup manager).")
	mFramesSent       = desc("replication_frames_sent_total", "Frames sent on the replication channel, by peer.", "peer")
	mBytesSent        = desc("replication_bytes_sent_total", "Bytes sent on the replication channel, by peer.", "peer")
	mFramesRecv       = desc("replication_frames_received_total", "Frames received on the replication channel, by peer.", "peer")
	mBytesRecv        = desc("replication_bytes_received_total", "Bytes received on the replication channel, by peer.", "peer")
	mTypeFrames       = desc("replication_type_frames_total", "Frames by message type and direction.", "type", "direction")
	mTypeBytes        = desc("replication_type_bytes_total", "Bytes by message type and direction.", "type", "direction")
	mQueueDepth       = desc("replication_queue_depth", "Frames queued for a peer.", "peer")
	mQueueFull        = desc("replication_queue_full_total", "Sends refused because a peer's queue was full.", "peer")
	mPeerErrors       = desc("replication_peer_errors_total", "Failed dials and lost connections, by peer.", "peer")
	mConnected        = desc("replication_peer_connected", "1 when the connection to the peer is up.", "peer")
	mStalled          = desc("replication_peer_stalled", "1 when the peer let a send time out and has not answered since: sends do not wait for it.", "peer")
	mStalls           = desc("replication_peer_stalls_total", "Times the peer became stalled.", "peer")
	mNeedsResync      = desc("replication_peer_needs_resync", "1 when the peer may have missed frames and waits for a resync.", "peer")
	mDropped          = desc("replication_connections_dropped_total", "Replication connections dropped for bad input, by reason.", "reason")
	mAckLatency       = desc("replication_ack_latency_seconds", "Round trips of ack and sync sends.")
	mRebinds          = desc("route_rebinds_total", "Session ids rebound to this node's route after a failover.")
	mUnavailable      = desc("session_unavailable_total", "Requests answered 503 because their session could not be looked up.")
	mCommitErrors     = desc("commit_errors_total", "Commits not confirmed by every peer.")
	mWSSockets        = desc("websocket_connections", "Open WebSockets on this node.")
	mWSUsers          = desc("websocket_users_online", "Users with a WebSocket, by where: this node or anywhere in the cluster.", "where")
	mWSDelivered      = desc("websocket_messages_delivered_total", "Messages queued to WebSockets of this node.")
	mWSClosed         = desc("websocket_closed_total", "WebSockets closed by the server, by reason.", "reason")
	mWSBadPeer        = desc("websocket_bad_peer_messages_total", "Hub messages from peers that did not decode.")
)

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(m, ch) }

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	c := m.c
	states := map[membership.State]int{membership.StateAlive: 0, membership.StateDead: 0, membership.StateLeft: 0}
	for _, mem := range c.Membership().Members() {
		states[mem.State]++
	}
	for s, n := range states {
		gauge(mMembers, float64(n), s.String())
	}
	ready := 0.0
	if c.Ready() {
		ready = 1
	}
	gauge(mReady, ready)
	counter(mJoinErrors, c.Membership().Stats().JoinErrors)
	_, primary, backup := c.SessionCounts()
	gauge(mSessions, float64(primary), "primary")
	gauge(mSessions, float64(backup), "backup")

	st := c.Stats()
	gauge(mSessionsMax, float64(st.MaxActive))
	counter(mCreated, st.Created)
	counter(mRejected, st.Rejected)
	counter(mExpired, st.Expired)
	counter(mInvalidated, st.Invalidated)
	gauge(mAliveMax, st.AliveMax.Seconds())
	gauge(mAliveAvg, st.AliveAvg.Seconds())
	ch <- prometheus.MustNewConstMetric(mSweep, prometheus.CounterValue, st.SweepTime.Seconds())
	m.collectSizes(ch)
	counter(mChanges, st.Replicated)
	for k, v := range st.Sent {
		counter(mMessagesSent, v, k)
	}
	for k, v := range st.ReceivedByKind {
		counter(mMessagesRecv, v, k)
	}
	counter(mConflicts, st.Conflicts)
	counter(mResyncs, st.Resyncs)
	counter(mFullsSent, st.FullsSent)
	counter(mSendErrors, st.SendErrors)
	counter(mMalformed, st.Malformed)
	counter(mTransfers, st.Transfers)
	counter(mTransferFailures, st.TransferFailures)
	gauge(mTransferSeconds, st.LastTransfer.Seconds())
	gauge(mUnderReplicated, float64(st.UnderReplicated))
	if c.Kind() == manager.KindBackup {
		gauge(mBackupCopies, float64(st.BackupCopies))
	}

	if ch2 := c.Channel(); ch2 != nil {
		cs := ch2.Stats()
		for _, p := range cs.Peers {
			counter(mFramesSent, p.FramesSent, p.Route)
			counter(mBytesSent, p.BytesSent, p.Route)
			counter(mFramesRecv, p.FramesReceived, p.Route)
			counter(mBytesRecv, p.BytesReceived, p.Route)
			gauge(mQueueDepth, float64(p.QueueDepth), p.Route)
			counter(mQueueFull, p.QueueFull, p.Route)
			counter(mPeerErrors, p.Errors, p.Route)
			gauge(mConnected, b2f(p.Connected), p.Route)
			gauge(mStalled, b2f(p.Stalled), p.Route)
			counter(mStalls, p.Stalls, p.Route)
			gauge(mNeedsResync, b2f(p.NeedsResync), p.Route)
		}
		for t, ts := range cs.ByType {
			name := typeName(t)
			counter(mTypeFrames, ts.FramesSent, name, "sent")
			counter(mTypeFrames, ts.FramesReceived, name, "received")
			counter(mTypeBytes, ts.BytesSent, name, "sent")
			counter(mTypeBytes, ts.BytesReceived, name, "received")
		}
		for reason, n := range cs.Dropped {
			counter(mDropped, n, reason)
		}
		buckets := make(map[float64]uint64, len(replication.LatencyBuckets))
		var acc uint64
		for i, le := range replication.LatencyBuckets {
			acc += uint64(cs.Latency.Counts[i])
			buckets[le.Seconds()] = acc
		}
		ch <- prometheus.MustNewConstHistogram(mAckLatency, uint64(cs.Latency.Count), cs.Latency.Sum.Seconds(), buckets)
	}
	if m.hub != nil {
		hs := m.hub.Stats()
		gauge(mWSSockets, float64(hs.Sockets))
		gauge(mWSUsers, float64(hs.LocalUsers), "node")
		gauge(mWSUsers, float64(hs.OnlineUsers), "cluster")
		counter(mWSDelivered, hs.Delivered)
		counter(mWSClosed, hs.SlowConsumers, "slow_consumer")
		counter(mWSClosed, hs.IdleClosed, "idle")
		counter(mWSClosed, hs.SessionClosed, "session_destroyed")
		counter(mWSBadPeer, hs.BadPeerMessage)
	}
	if m.ss != nil {
		ws := m.ss.Stats()
		counter(mRebinds, ws.Rebinds)
		counter(mUnavailable, ws.Unavailable)
		counter(mCommitErrors, ws.CommitErrors)
	}
}

// sizeBuckets are the upper bounds of the session size histogram.
var sizeBuckets = []float64{256, 1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20}

// collectSizes reports the encoded size of up to 1000 sessions.
func (m *Metrics) collectSizes(ch chan<- prometheus.Metric) {
	counts := make([]uint64, len(sizeBuckets))
	var n uint64
	var sum float64
	m.c.Manager().Range(func(s *manager.Session) bool {
		size := float64(s.Size())
		for i, le := range sizeBuckets {
			if size <= le {
				counts[i]++
			}
		}
		n++
		sum += size
		return n < 1000
	})
	buckets := make(map[float64]uint64, len(sizeBuckets))
	for i, le := range sizeBuckets {
		buckets[le] = counts[i]
	}
	ch <- prometheus.MustNewConstHistogram(mSessionBytes, n, sum, buckets)
}

func typeName(t replication.MsgType) string {
	switch t {
	case manager.MsgType:
		return "session"
	case HubMsgType:
		return "hub"
	case 1, 2, 3, 4:
		return [...]string{"", "hello", "ack", "reply", "noop"}[t]
	}
	return strconv.Itoa(int(t))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

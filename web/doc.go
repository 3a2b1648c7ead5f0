// Package web is Cohort's HTTP side: the session middleware with its route
// binder, a gorilla/sessions Store, the cluster WebSocket hub, and a node's
// Prometheus metrics and live dashboard.
//
// # Overview
//
// [Sessions.Middleware] finds the request's session in a
// [github.com/cohort-cluster/cohort/manager] manager, from the session
// cookie (default JSESSIONID) or a ;jsessionid= path parameter, which
// mod_proxy_balancer's stickysession also reads. Handlers reach it with
// [Get], which creates a session on first use, or [Existing]. The session
// is committed, which is what replicates it, just before the response's
// first byte, so that a response the client sees reflects a committed
// change; changes made after the response started are committed when the
// handler returns. Paths matching Config.Skip (static resources) bypass
// the middleware. Wrap the whole router (the standard mux, chi's or
// gorilla/mux's) rather than registering the middleware with the router's
// own Use: those routers match a route before their middleware runs, so a
// path that still carries ;jsessionid= would match none.
//
// [Store] implements gorilla/sessions' Store over the same managers, for
// applications written against gorilla/sessions; wrap their handlers in
// [Store.Middleware], so that a request that only reads a session which
// came from another node still gets the rebound cookie (see Semantics).
// It hands handlers copies
// of the values, so a value changed in place is seen as changed by Save.
// Save stores all of the Values or, when one cannot be stored, none. A
// commit that some peer did not confirm keeps the change and is counted
// and logged, as through the middleware; Save does not fail for it.
// [Store.Stats] counts the Store's rebinds, failed lookups and
// unconfirmed commits.
//
// [Metrics] exports a node's figures in the Prometheus format, read from
// the counters at scrape time; [Dashboard] serves the live page at
// /cluster/. Both are listed in docs/operations.md.
//
// # Semantics
//
// Session ids are <base>.<route>. When a request carries an id whose route
// is another node's (the balancer failed the user over), the route binder
// renames the session <base>.<this route> and the response sets the new
// cookie (Tomcat's JvmRouteBinderValve); [OriginalID] gives the id the
// request arrived with. Two parallel requests rebinding one session end
// with the same id: the base is kept, so either id finds the session.
// The Store rebinds only where the new cookie reaches the client: in
// Save, and, behind [Store.Middleware], in Get. Without the middleware a
// request that only reads leaves the id as it was: rebound without a
// cookie, it would be rebound back by the old node, to which the balancer
// keeps sending the user, on every request.
// [RenewID] gives a session a fresh id after a login, against session
// fixation: the old id stops working at once (unless the manager's
// IDGracePeriod says otherwise), and a request that arrives with it is
// never handed the new one. New cookies are HttpOnly, SameSite=Lax, Path=/, and
// Secure when Config.Secure is set.
//
// # WebSocket hub
//
// A socket lives on one node; messages to it can come from any node. A
// [Hub] (one per node, [NewHub]) upgrades GET requests with
// [Hub.Handler], which must run behind the middleware: each socket belongs
// to a user (named by the handler's callback) and is bound to the HTTP
// session of its handshake, created if need be (the 101 response then sets
// the cookie). [Hub.SendToUser], [Hub.SendToSession] and [Hub.Publish]
// reach sockets on every node and return how many they reached;
// [Hub.PushHandler] and [Hub.PublishHandler] serve POST /push/{user} and
// POST /publish/{topic} with {"reached": N}. [Hub.CloseUser] closes a
// user's sockets everywhere, [Conn.Close] one socket.
//
// Client protocol: the text message {"subscribe":"T"} subscribes the
// socket to topic T and is answered {"subscribed":"T"};
// {"unsubscribe":"T"} is answered {"unsubscribed":"T"}; a refused one
// (too many topics, HubConfig.MaxTopics) is answered {"error":"...",
// "topic":"T"}. Only an object with exactly that one member and a string
// of 1 to 256 bytes is a control message; every other message goes to
// HubConfig.OnMessage.
//
// Delivery between nodes: the hub's messages are replication messages of
// type [HubMsgType] (a compact binary format, see hub_wire.go). A call
// delivers to this node's sockets, then sends the operation, in Async
// mode, to the nodes concerned: for a user, the nodes that presence says
// hold its sockets; for a topic, a session or CloseUser, every peer. Each
// receiver delivers to its sockets and answers with a count message
// carrying the request's id; the caller adds the counts up. So a remote
// call costs one message each way. A peer whose queueing fails, or whose
// connection drops while the caller waits (checked every 50ms), is not
// waited for and is named in the error; HubConfig.DeliverTimeout bounds
// the wait. A user with sockets on several nodes gets the message once on
// each socket.
//
// Presence: each node keeps user -> node -> socket count for the whole
// cluster. A node sends its changed counts to every peer as they change
// (absolute counts, batched, in order), its whole presence to each member
// that joins (and asks for theirs), and again to everyone every
// HubConfig.PresenceRefresh. Such a snapshot, in messages of about 64
// KiB at most, replaces the sender's counts once its last message is in,
// so a refresh reports no user gone and back. When membership reports a
// node failed or left, or shows it with another start time (it restarted
// before it could be declared failed), its sockets are forgotten at once;
// a restarted node is left out of cluster-wide operations until its new
// hub speaks. [Hub.Online],
// [Hub.OnlineUsers] and [Hub.Presence] read it; HubConfig.OnPresence
// hears a user come online or go offline cluster-wide. Presence is
// eventually consistent: a socket opened a moment ago on another node may
// not be reached by SendToUser yet.
//
// Sessions: a message received on a socket records an access to its
// session and commits it, at most once per HubConfig.TouchInterval, so an
// active socket keeps its session alive. When the session is destroyed
// on any node (invalidated or expired, heard through the manager's
// listener, which needs NotifyOnReplication, the default), its sockets
// close with 1008. Close codes: 1000 idle timeout (HubConfig.IdleTimeout:
// no message either way), 1001 hub closing, 1008 session destroyed or
// CloseUser, 1009 client message over HubConfig.MaxMessageSize, 1013 slow
// consumer: a socket whose send buffer (HubConfig.SendBuffer) is full is
// cut off and never delays delivery to the others. A handshake is
// checked as gorilla/websocket's Upgrader checks it (method, version, key,
// and Origin: same origin by default, HubConfig.CheckOrigin) before its
// session is made: a refused handshake creates none.
//
// # Concurrency
//
// Sessions and Store are safe for concurrent use. The session of one
// request may be shared with the user's other requests in flight; its
// methods lock it briefly.
//
// A Hub and its Conns are safe for concurrent use. Each socket has one
// reader goroutine (the handler's, which calls OnConnect, OnMessage and
// OnDisconnect) and one writer goroutine, the only one that writes to
// it, with a write deadline and pings; sends only queue, and never block.
// The hub's run goroutine sends presence and calls OnPresence. Replication
// handlers only queue to sockets. Lock order: the presence lock, then the
// socket tables' lock, then a session's. Callbacks run with no lock held.
//
// # Usage
//
//	sessions, err := web.New(m, cfg)
//	...
//	mux.HandleFunc("GET /counter", func(w http.ResponseWriter, r *http.Request) {
//		s, _ := web.Get(r)
//		n, _ := s.GetInt("count")
//		_ = s.Set("count", n+1)
//	})
//	http.ListenAndServe(addr, sessions.Middleware(mux))
//
// With a hub, on a node started with manager.StartCluster:
//
//	hub, err := web.NewHub(cluster, web.DefaultHubConfig())
//	...
//	mux.Handle("GET /ws", hub.Handler(func(r *http.Request) string { return r.URL.Query().Get("user") }))
//	mux.Handle("POST /push/{user}", hub.PushHandler())
//	n, err := hub.SendToUser(ctx, "alice", []byte("hello")) // from any node
package web

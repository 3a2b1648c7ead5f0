// Package web is Cohort's HTTP side: the session middleware with its route
// binder, and a gorilla/sessions Store.
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
// the middleware.
//
// [Store] implements gorilla/sessions' Store over the same managers, for
// applications written against gorilla/sessions.
//
// # Semantics
//
// Session ids are <base>.<route>. When a request carries an id whose route
// is another node's (the balancer failed the user over), the route binder
// renames the session <base>.<this route> and the response sets the new
// cookie (Tomcat's JvmRouteBinderValve); [OriginalID] gives the id the
// request arrived with. Two parallel requests rebinding one session end
// with the same id, and the old id keeps resolving for the manager's grace
// period. [RenewID] gives a session a fresh id after a login, against
// session fixation. New cookies are HttpOnly, SameSite=Lax, Path=/, and
// Secure when Config.Secure is set.
//
// # Concurrency
//
// Sessions and Store are safe for concurrent use. The session of one
// request may be shared with the user's other requests in flight; its
// methods lock it briefly.
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
package web

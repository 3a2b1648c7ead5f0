package main

import (
	"errors"
	"net/http"

	"github.com/cohort-cluster/cohort/examples/internal/shop"
	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
)

// Cart is the cart kept in the session (examples/internal/shop, shared
// with the cart example).
type Cart = shop.Cart

// stdShop serves the pages. It keeps nothing between requests: the cart
// is in the session, so any node can serve any request. Values read from
// a session are treated as read-only: they are the session's own copy on
// this node, and a change made in place would not be replicated until
// Session.Set or Session.MarkDirty.
type stdShop struct {
	route string
}

// newShop returns the shop's handler. It must run behind
// Sessions.Middleware, which gives each request its session and commits
// the session's changes before the response starts.
func newShop(route string) http.Handler {
	s := &stdShop{route: route}
	return shop.Routes(s.list, s.view, s.add, s.checkout)
}

// sessionCart returns the request's cart and orders placed, both empty for a
// visitor without a session: reading never creates one.
func sessionCart(r *http.Request) (Cart, int64) {
	session := web.Existing(r)
	if session == nil {
		return Cart{}, 0
	}
	c, _ := manager.Attr[Cart](session, "cart")
	orders, _ := session.GetInt("orders")
	return c, orders
}

// list shows the catalogue.
func (s *stdShop) list(w http.ResponseWriter, r *http.Request) {
	c, _ := sessionCart(r)
	shop.ProductsPage(s.route, c).Render(w)
}

// add puts one of the form's product in the cart, starting a session on
// the first add.
func (s *stdShop) add(w http.ResponseWriter, r *http.Request) {
	session, err := web.Get(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	c, _ := manager.Attr[Cart](session, "cart")
	if err := session.Set("cart", c.With(r.FormValue("product"))); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/cart", http.StatusSeeOther)
}

// view shows the cart.
func (s *stdShop) view(w http.ResponseWriter, r *http.Request) {
	c, orders := sessionCart(r)
	shop.CartPage(s.route, c, orders).Render(w)
}

// checkout places the order: the cart is emptied and the order counted.
func (s *stdShop) checkout(w http.ResponseWriter, r *http.Request) {
	if c, orders := sessionCart(r); len(c.Lines) > 0 {
		session := web.Existing(r)
		if err := errors.Join(session.Remove("cart"), session.Set("orders", orders+1)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	http.Redirect(w, r, "/cart", http.StatusSeeOther)
}

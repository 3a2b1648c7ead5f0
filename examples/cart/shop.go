package main

import (
	"net/http"

	"github.com/cohort-cluster/cohort/examples/internal/shop"
	"github.com/gorilla/sessions"
)

// Cart is the cart kept in the session (examples/internal/shop, shared
// with the stdlib example).
type Cart = shop.Cart

// cartShop serves the pages. It keeps nothing between requests: the cart
// is in the session, so any node can serve any request. Save replicates
// only the values that differ from what the session holds; the handlers
// store a new Cart (Cart.With) rather than change one in place, which the
// Store would see too, because values that do not change under a handler
// are easier to follow.
type cartShop struct {
	store sessions.Store
	route string
}

// newShop returns the shop's handler. The handlers use store as any
// gorilla/sessions application does, so it may be web.NewStore's store
// (sessions replicated in a cluster) or sessions.NewCookieStore's.
func newShop(store sessions.Store, route string) http.Handler {
	s := &cartShop{store: store, route: route}
	return shop.Routes(s.list, s.view, s.add, s.checkout)
}

// session returns the request's session, or answers 500 and nil.
func (s *cartShop) session(w http.ResponseWriter, r *http.Request) *sessions.Session {
	session, err := s.store.Get(r, "cart")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return nil
	}
	return session
}

// list shows the catalogue.
func (s *cartShop) list(w http.ResponseWriter, r *http.Request) {
	if session := s.session(w, r); session != nil {
		cart, _ := session.Values["cart"].(Cart)
		shop.ProductsPage(s.route, cart).Render(w)
	}
}

// add puts one of the form's product in the cart.
func (s *cartShop) add(w http.ResponseWriter, r *http.Request) {
	session := s.session(w, r)
	if session == nil {
		return
	}
	cart, _ := session.Values["cart"].(Cart)
	session.Values["cart"] = cart.With(r.FormValue("product"))
	if err := session.Save(r, w); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/cart", http.StatusSeeOther)
}

// view shows the cart.
func (s *cartShop) view(w http.ResponseWriter, r *http.Request) {
	if session := s.session(w, r); session != nil {
		cart, _ := session.Values["cart"].(Cart)
		orders, _ := session.Values["orders"].(int)
		shop.CartPage(s.route, cart, int64(orders)).Render(w)
	}
}

// checkout places the order: the cart is emptied and the order counted.
func (s *cartShop) checkout(w http.ResponseWriter, r *http.Request) {
	session := s.session(w, r)
	if session == nil {
		return
	}
	if cart, _ := session.Values["cart"].(Cart); len(cart.Lines) > 0 {
		orders, _ := session.Values["orders"].(int)
		session.Values["orders"] = orders + 1
		delete(session.Values, "cart")
		if err := session.Save(r, w); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	http.Redirect(w, r, "/cart", http.StatusSeeOther)
}

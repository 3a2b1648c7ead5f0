package main

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"slices"

	"github.com/cohort-cluster/cohort/manager"
	"github.com/cohort-cluster/cohort/web"
)

// Product is one item of the catalogue.
type Product struct {
	ID    string
	Name  string
	Price int // in cents
}

// products returns the catalogue, in display order.
func products() []Product {
	return []Product{
		{ID: "beans", Name: "Espresso beans, 1 kg", Price: 2450},
		{ID: "grinder", Name: "Burr grinder", Price: 8900},
		{ID: "kettle", Name: "Gooseneck kettle", Price: 4500},
		{ID: "filters", Name: "Paper filters, 100", Price: 650},
	}
}

// Cart is a shopper's cart: the products picked and how many of each, in
// the order they were first added. The session holds it as a value under
// "cart"; main.go registers the type with the cluster, so it reads back as
// a Cart on every node.
type Cart struct {
	Lines []Line
}

// Line is one product in a Cart.
type Line struct {
	Product string // Product.ID
	Qty     int
}

// With returns the cart with one more of product, leaving c unchanged.
// Values read from a session are treated as read-only: they are the
// session's own copy on this node, and a change made in place would not
// be replicated until Session.Set or Session.MarkDirty.
func (c Cart) With(product string) Cart {
	lines := slices.Clone(c.Lines)
	for i := range lines {
		if lines[i].Product == product {
			lines[i].Qty++
			return Cart{Lines: lines}
		}
	}
	return Cart{Lines: append(lines, Line{Product: product, Qty: 1})}
}

// Items returns how many items the cart holds.
func (c Cart) Items() int {
	n := 0
	for _, l := range c.Lines {
		n += l.Qty
	}
	return n
}

//go:embed shop.html
var shopHTML string

// shop serves the pages. It keeps nothing between requests: the cart is in
// the session, so any node can serve any request.
type shop struct {
	route    string
	products []Product
	page     *template.Template
}

// newShop returns the shop's handler. It must run behind
// Sessions.Middleware, which gives each request its session and commits
// the session's changes before the response starts.
func newShop(route string) http.Handler {
	s := &shop{route: route, products: products(),
		page: template.Must(template.New("shop").Funcs(template.FuncMap{"money": money}).Parse(shopHTML))}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.list)
	mux.HandleFunc("GET /cart", s.view)
	mux.HandleFunc("POST /cart", s.add)
	mux.HandleFunc("POST /checkout", s.checkout)
	return http.NewCrossOriginProtection().Handler(mux)
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
func (s *shop) list(w http.ResponseWriter, r *http.Request) {
	c, _ := sessionCart(r)
	s.render(w, pageData{Page: "products", Route: s.route, Items: c.Items(), Products: s.products})
}

// add puts one of the form's product in the cart, starting a session on
// the first add.
func (s *shop) add(w http.ResponseWriter, r *http.Request) {
	id := r.FormValue("product")
	if !slices.ContainsFunc(s.products, func(p Product) bool { return p.ID == id }) {
		http.Error(w, "no such product", http.StatusBadRequest)
		return
	}
	session, err := web.Get(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	c, _ := manager.Attr[Cart](session, "cart")
	if err := session.Set("cart", c.With(id)); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	http.Redirect(w, r, "/cart", http.StatusSeeOther)
}

// view shows the cart.
func (s *shop) view(w http.ResponseWriter, r *http.Request) {
	c, orders := sessionCart(r)
	d := pageData{Page: "cart", Route: s.route, Items: c.Items(), Orders: orders}
	for _, l := range c.Lines {
		if i := slices.IndexFunc(s.products, func(p Product) bool { return p.ID == l.Product }); i >= 0 {
			p := s.products[i]
			d.Lines = append(d.Lines, cartLine{Product: p, Qty: l.Qty, Subtotal: l.Qty * p.Price})
			d.Total += l.Qty * p.Price
		}
	}
	s.render(w, d)
}

// checkout places the order: the cart is emptied and the order counted.
func (s *shop) checkout(w http.ResponseWriter, r *http.Request) {
	if c, orders := sessionCart(r); len(c.Lines) > 0 {
		session := web.Existing(r)
		if err := errors.Join(session.Remove("cart"), session.Set("orders", orders+1)); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	http.Redirect(w, r, "/cart", http.StatusSeeOther)
}

// pageData is what shop.html shows.
type pageData struct {
	Page     string // "products" or "cart"
	Route    string // the node that served the page
	Items    int    // items in the cart
	Products []Product
	Lines    []cartLine
	Total    int
	Orders   int64
}

type cartLine struct {
	Product
	Qty      int
	Subtotal int
}

func (s *shop) render(w http.ResponseWriter, d pageData) {
	var buf bytes.Buffer
	if err := s.page.Execute(&buf, d); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = buf.WriteTo(w)
}

// money formats cents as euros.
func money(cents int) string { return fmt.Sprintf("€%d.%02d", cents/100, cents%100) }

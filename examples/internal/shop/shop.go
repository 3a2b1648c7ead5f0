package shop

import (
	"bytes"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"slices"
)

// Product is one item of the catalogue.
type Product struct {
	ID    string
	Name  string
	Price int // in cents
}

// catalogue is the products, in display order.
var catalogue = []Product{
	{ID: "beans", Name: "Espresso beans, 1 kg", Price: 2450},
	{ID: "grinder", Name: "Burr grinder", Price: 8900},
	{ID: "kettle", Name: "Gooseneck kettle", Price: 4500},
	{ID: "filters", Name: "Paper filters, 100", Price: 650},
}

// Sells reports whether id is a product of the catalogue.
func Sells(id string) bool {
	return slices.ContainsFunc(catalogue, func(p Product) bool { return p.ID == id })
}

// Cart is a shopper's cart: the products picked and how many of each, in
// the order they were first added. The session holds it as a value under
// "cart"; each example registers the type with the cluster as "shop.Cart",
// so it reads back as a Cart on every node.
type Cart struct {
	Lines []Line
}

// Line is one product in a Cart.
type Line struct {
	Product string // Product.ID
	Qty     int
}

// With returns the cart with one more of product, leaving c unchanged: a
// value read from a session is the session's own copy on this node, and a
// change made to it in place would not be replicated.
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
var pageHTML string

var pageTemplate = template.Must(template.New("shop").Funcs(template.FuncMap{"money": money}).Parse(pageHTML))

// Page is what shop.html shows.
type Page struct {
	Page     string // "products" or "cart"
	Route    string // the node that served the page
	Items    int    // items in the cart
	Products []Product
	Lines    []CartLine
	Total    int
	Orders   int64
}

// CartLine is one line of the cart page.
type CartLine struct {
	Product
	Qty      int
	Subtotal int
}

// ProductsPage is the catalogue, served by route, beside a cart of c.
func ProductsPage(route string, c Cart) Page {
	return Page{Page: "products", Route: route, Items: c.Items(), Products: catalogue}
}

// CartPage shows cart c and the orders placed, served by route.
func CartPage(route string, c Cart, orders int64) Page {
	p := Page{Page: "cart", Route: route, Items: c.Items(), Orders: orders}
	for _, l := range c.Lines {
		if i := slices.IndexFunc(catalogue, func(pr Product) bool { return pr.ID == l.Product }); i >= 0 {
			pr := catalogue[i]
			p.Lines = append(p.Lines, CartLine{Product: pr, Qty: l.Qty, Subtotal: l.Qty * pr.Price})
			p.Total += l.Qty * pr.Price
		}
	}
	return p
}

// Render writes the page as HTML, or a 500 if it cannot.
func (p Page) Render(w http.ResponseWriter) {
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, p); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = buf.WriteTo(w)
}

// Routes returns the shop's handler over the four pages: GET / (list),
// GET /cart (view), POST /cart (add, the form's product), POST /checkout.
// A product that is not sold is refused before add runs.
func Routes(list, view, add, checkout http.HandlerFunc) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", list)
	mux.HandleFunc("GET /cart", view)
	mux.HandleFunc("POST /cart", func(w http.ResponseWriter, r *http.Request) {
		if !Sells(r.FormValue("product")) {
			http.Error(w, "no such product", http.StatusBadRequest)
			return
		}
		add(w, r)
	})
	mux.HandleFunc("POST /checkout", checkout)
	return http.NewCrossOriginProtection().Handler(mux)
}

// money formats cents as euros.
func money(cents int) string { return fmt.Sprintf("€%d.%02d", cents/100, cents%100) }

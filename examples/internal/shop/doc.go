// Package shop is what the cart and stdlib examples share and what is not
// about sessions: the catalogue, the cart value kept in the session, and
// the page. Each example's own shop.go is its handlers, which differ only
// in how they reach the session.
package shop

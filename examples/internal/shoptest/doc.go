// Package shoptest holds the end-to-end tests the cart and stdlib
// examples share: three real nodes on 127.0.0.1, a shopper failed over
// from one to the next by copying the session cookie, as a balancer would.
package shoptest

package web

// HubPeers returns the peers h sends cluster-wide operations to: those
// whose hub has spoken since they joined.
func HubPeers(h *Hub) []string { return h.hubPeers() }

// AbortBeforeWrite makes the writers of h's sockets abort their socket, as
// a slow consumer's overflow does (1013), when they are about to write a
// message (a ping when ping): before they check whether the socket is
// closing when checked is false, after it when true.
func AbortBeforeWrite(h *Hub, ping, checked bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.writeHook = func(c *Conn, p, ch bool) {
		if p == ping && ch == checked {
			c.closeWith(CloseTryAgain, "slow consumer", true)
		}
	}
}

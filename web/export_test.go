package web

// HubPeers returns the peers h sends cluster-wide operations to: those
// whose hub has spoken since they joined.
func HubPeers(h *Hub) []string { return h.hubPeers() }

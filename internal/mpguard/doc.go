// Package mpguard checks msgpack input from the network before it is
// decoded.
//
// msgpack (github.com/vmihailenco/msgpack/v5, through v5.4.1) allocates a
// slice for as many elements as an array header claims, before reading
// any of them: five bytes (0xdd 0xff 0xff 0xff 0xff) decoded into a slice
// ask for billions of elements and the process dies out of memory, which
// no recover catches. Its decoder also recurses once per level of nesting,
// so a frame of nested one-element arrays can exhaust the stack.
//
// Check walks one msgpack value without decoding it and refuses a
// container that claims more elements than bytes remain (every element
// takes at least one byte), a length that runs past the end, and nesting
// deeper than MaxDepth. A value that passes decodes into at most one
// element per input byte. Unmarshal is Check, then msgpack.Unmarshal.
//
// One case escapes Check: where msgpack expects a typed map (a Go map, not
// an interface), it skips an extension's header and reads the bytes after
// it as the map's header, so an extension that Check walked as opaque data
// can claim entries. msgpack caps such a map at a million entries (about
// 100 MB for a map of strings to bytes) and fails at the first entry
// missing. Cohort's own messages carry one typed map, a session's
// attributes, and their decoder refuses an extension there; an
// application's attribute type with a map field decodes through msgpack
// and keeps this bounded exposure to its peers.
package mpguard

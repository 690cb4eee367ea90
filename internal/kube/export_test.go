package kube

// SetFullCache makes Watch keep whole Node objects, as upstream does, so
// the benchmark can set our informer beside upstream's.
func SetFullCache(s *Source, full bool) { s.fullCache = full }

package lease

import (
	"hash/maphash"
	"log/slog"
	"sync"
)

// BadEntries reports each bad entry under <prefix>/subnets/ once: every
// listing and every watcher of a store meets the same garbage, and the
// operator needs one warning naming the key, not one per re-list. A key
// is reported again when its value changes. The zero value is ready to
// use and safe for concurrent use.
type BadEntries struct {
	mu   sync.Mutex
	seen map[string]uint64 // key → hash of the value last reported
}

// maxBadEntries bounds the memory; past it the record starts over (and
// each bad key is reported once more).
const maxBadEntries = 4096

var badSeed = maphash.MakeSeed()

// Warn logs msg for key unless the same key with the same value was
// already reported.
func (b *BadEntries) Warn(log *slog.Logger, msg, key string, value []byte, err any) {
	h := maphash.Bytes(badSeed, value)
	b.mu.Lock()
	if b.seen == nil || len(b.seen) >= maxBadEntries {
		b.seen = map[string]uint64{}
	}
	old, ok := b.seen[key]
	b.seen[key] = h
	b.mu.Unlock()
	if ok && old == h {
		return
	}
	log.Warn(msg, "key", key, "err", err)
}

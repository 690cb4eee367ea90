package daemon

import (
	"runtime/debug"
	"runtime/metrics"
)

// Why: a full sync, or a repair that dumps the kernel's tables, at tens of
// thousands of peers allocates more than all that stays live (listings,
// netlink messages, the wanted state in full). The heap then grows to
// twice what is live and the runtime keeps those pages for minutes (at
// 65,000 vxlan peers: 480 MB resident for 230 MB live). After such bulk
// work one collection that hands the free pages back keeps the resident
// memory near what the daemon holds; it costs a mark of the live heap, a
// fraction of the work just done, and never happens on the per-event path
// (which allocates kilobytes).

// bulkAlloc is how much a piece of work must allocate to count as bulk.
const bulkAlloc = 32 << 20

var allocSample = []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}

// allocated is the total the heap has allocated so far.
func allocated() uint64 {
	metrics.Read(allocSample)
	if allocSample[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return allocSample[0].Value.Uint64()
}

// bulkPeers is from how many peers a piece of bulk work runs with the
// collector's target lowered to bulkGCPercent: at that size what the work
// allocates would otherwise grow the heap to twice what is live before a
// collection, and those pages stay resident until the work is done. Small
// clusters keep the runtime's default throughout.
const (
	bulkPeers     = 10000
	bulkGCPercent = 50
)

// bulk runs work, over peers peers, and, if it allocated bulkAlloc or
// more, returns the heap's free memory to the kernel.
func bulk(peers int, work func()) {
	before := allocated()
	if peers >= bulkPeers {
		old := debug.SetGCPercent(bulkGCPercent)
		defer debug.SetGCPercent(old)
	}
	work()
	if allocated()-before >= bulkAlloc {
		debug.FreeOSMemory()
	}
}

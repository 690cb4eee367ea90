package udp

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

func TestChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 2000)
	for i := range buf {
		buf[i] = byte(r.Uint32())
	}
	for n := 0; n <= 300; n++ {
		for off := range 9 {
			b := buf[off : off+n]
			if got, want := checksum(b), refChecksum(b); got != want {
				t.Fatalf("len %d offset %d: checksum %#04x, reference %#04x", n, off, got, want)
			}
		}
	}
	big := make([]byte, 65535)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	for range 200 {
		n := r.IntN(len(big) + 1)
		if got, want := checksum(big[:n]), refChecksum(big[:n]); got != want {
			t.Fatalf("len %d: checksum %#04x, reference %#04x", n, got, want)
		}
	}
	// All ones: every add carries, in both chains.
	for _, n := range []int{1501, 65535} {
		ff := make([]byte, n)
		for i := range ff {
			ff[i] = 0xff
		}
		if got, want := checksum(ff), refChecksum(ff); got != want {
			t.Fatalf("%d bytes of 0xff: checksum %#04x, reference %#04x", n, got, want)
		}
	}
}

func TestChecksumPiecesAtEvenOffsets(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	b := make([]byte, 1501)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	for cut := 0; cut <= len(b); cut += 2 {
		got := ^fold(sum(b[cut:], sum(b[:cut], 0)))
		if want := refChecksum(b); got != want {
			t.Fatalf("cut at %d: %#04x, want %#04x", cut, got, want)
		}
	}
}

func BenchmarkChecksum(b *testing.B) {
	for _, n := range []int{64, 1500, 65535} {
		buf := make([]byte, n)
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				checksum(buf)
			}
		})
	}
}

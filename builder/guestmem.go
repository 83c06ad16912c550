package builder

import (
	"context"
	"errors"
	"fmt"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// mapChunk is how many guest frames are mapped at once while copying.
const mapChunk = 1024

// guestMem writes into a domain's memory through foreign mappings.
type guestMem struct {
	ops Ops
	d   xenctrl.Domid
}

// write copies data to guest physical address addr and zeroes the rest of
// [addr, addr+size). Callers have checked the range lies in populated RAM.
func (g guestMem) write(ctx context.Context, addr uint64, data []byte, size uint64) error {
	if uint64(len(data)) > size {
		return fmt.Errorf("%d bytes of data for a %d-byte region", len(data), size)
	}
	if addr+size < addr {
		return fmt.Errorf("region [%#x, +%#x) overflows", addr, size)
	}
	first := addr >> pageShift
	last := (addr + size + pageSize - 1) >> pageShift
	for pfn := first; pfn < last; pfn += mapChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(uint64(mapChunk), last-pfn)
		gfns := make([]uint64, n)
		for i := range gfns {
			gfns[i] = pfn + uint64(i)
		}
		mem, unmap, err := g.ops.MapGuest(ctx, g.d, gfns)
		if err != nil {
			return err
		}
		// The slice of [addr, addr+size) inside this window.
		winStart := pfn << pageShift
		winEnd := winStart + n*pageSize
		lo, hi := max(addr, winStart), min(addr+size, winEnd)
		dst := mem[lo-winStart : hi-winStart]
		off := lo - addr
		c := 0
		if off < uint64(len(data)) {
			c = copy(dst, data[off:])
		}
		clear(dst[c:])
		if err := unmap(); err != nil {
			return err
		}
	}
	return nil
}

// populateFailed describes a populate that failed. Host memory running out
// (ENOMEM) is a ResourceExhausted the caller can act on; any other failure
// (a cancelled build, a hypervisor error) keeps its own meaning.
func populateFailed(err error, format string, args ...any) error {
	what := fmt.Sprintf(format, args...)
	if errors.Is(err, syscall.ENOMEM) {
		return domain.Errorf(domain.CodeResourceExhausted, "%s: %v", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

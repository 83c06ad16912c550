package kernel

import (
	"fmt"
	"runtime/debug"
)

// ReadGuard protects a goroutine that reads an Image from OpenFile: the
// image aliases a read-only mapping of the kernel file, and if another
// process truncates that file, reading the lost pages raises SIGBUS, which
// would kill the whole daemon. Use it as
//
//	func build(...) (err error) {
//		defer kernel.ReadGuard()(&err)
//		...
//	}
//
// While the guard is up, memory faults in the calling goroutine panic
// instead (debug.SetPanicOnFault); the deferred call turns such a panic
// into an error and restores the goroutine's previous setting. Other
// panics propagate unchanged.
func ReadGuard() func(errp *error) {
	old := debug.SetPanicOnFault(true)
	return func(errp *error) {
		debug.SetPanicOnFault(old)
		r := recover()
		if r == nil {
			return
		}
		if f, ok := r.(interface{ Addr() uintptr }); ok {
			*errp = fmt.Errorf("kernel: the kernel or initrd file changed while it was being loaded (truncated?): fault at %#x", f.Addr())
			return
		}
		panic(r)
	}
}

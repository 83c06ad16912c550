package main

import (
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/internal/bytesize"
)

// parseSize parses a size flag's value (see bytesize.Parse); the error
// names the flag.
func parseSize(flag, s string) (uint64, error) {
	n, err := bytesize.Parse(s)
	if err != nil {
		return 0, fmt.Errorf("--%s: %w", flag, err)
	}
	return n, nil
}

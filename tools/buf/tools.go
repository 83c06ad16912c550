//go:build tools

// Package buf pins the buf CLI (lint, breaking-change check, generate) in a
// module of its own so its many dependencies stay out of the daemon's go.mod.
package buf

import _ "github.com/bufbuild/buf/cmd/buf"

package main

import (
	"strings"
	"testing"
)

func TestParseSizeNamesTheFlag(t *testing.T) {
	if n, err := parseSize("memory", "256M"); err != nil || n != 256<<20 {
		t.Fatalf("parseSize(256M) = %d, %v", n, err)
	}
	if _, err := parseSize("memory", "12Q"); err == nil || !strings.HasPrefix(err.Error(), "--memory: ") {
		t.Fatalf("parseSize(12Q) error %v does not name the flag", err)
	}
}

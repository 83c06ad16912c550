package service

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
)

// Paging of ListVMs and ListTasks (AIP-158).
//
// A page holds at most page_size records (0: DefaultPageSize; capped at
// MaxPageSize) and ends before its records would pass MaxPageBytes encoded,
// so that no answer reaches gRPC's default 4 MiB receive limit
// (grpc.defaultClientMaxReceiveMessageSize). A count alone cannot promise
// that: the largest VM the validation limits of domain/validate.go allow
// encodes to about 1.4 MiB (worstVMBytes, computed below), so a count-only
// bound would be 2 VMs a page (4 MiB / 1.4 MiB), while a typical VM encodes
// to a few hundred bytes. Hence both bounds, and a page always holds at least one record,
// which fits since worstVMBytes < MaxPageBytes < 4 MiB.
//
// The worst VM, field by field (protobuf wire sizes: tag + length + bytes;
// fields 17 and 18 have two-byte tags):
//
//	platform       256 entries x (1+3 + key 1+2+256 + value 1+2+2048)  =   592,128
//	               (an upper bound: validation now allows known keys only)
//	xenstore_data  the same (keys are paths of at most 256 bytes)      =   592,128
//	disks          64 x (2+3 + device 1+1+6 + path 1+2+4096 + 2 + 2)   =   263,360
//	nics           64 x (2+1 + mac 1+1+17 + bridge 1+1+15 + mtu 1+3)   =     2,752
//	kernel, ramdisk 2 x (1+2+4096); cmdline 1+2+2048                   =    10,249
//	uuid, name, type, memory x3, vcpus x2, actions x3                  =  at most 160
//	spec total at most 1,460,777; in the VM with its envelope (1+3), id
//	(38), power, domid, generation, two timestamps and a problem text
//	(reconciliation's, a sentence of under 200 bytes)         under worstVMBytes
//
// TestWorstVMFitsAPage builds that VM and checks the arithmetic.
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
	// MaxPageBytes bounds the encoded records of one page; the envelope
	// (revision, next_page_token, a few bytes of framing per record) adds
	// under 8 KiB.
	MaxPageBytes = 3 << 20
	worstVMBytes = 1_462_000
)

// pageSize validates a request's page_size.
func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalidField("page_size", "must not be negative, got "+strconv.Itoa(int(n)))
	case n == 0:
		return DefaultPageSize, nil
	case n > MaxPageSize:
		return MaxPageSize, nil
	}
	return int(n), nil
}

// takePage converts the first records of rest into a page of at most size
// records and MaxPageBytes (see page), and reports whether records are
// left after it.
func takePage[T any, P proto.Message](rest []T, size int, conv func(T) P) ([]P, bool) {
	out := make([]P, 0, min(size, len(rest)))
	for _, r := range rest[:min(size, len(rest))] {
		out = append(out, conv(r))
	}
	n := page(out, size)
	return out[:n], n < len(rest)
}

// page returns how many of the records make the next page: at most limit,
// and no more than MaxPageBytes encoded unless a single record is.
func page[T proto.Message](records []T, limit int) int {
	n, bytes := 0, 0
	for _, r := range records {
		if n == limit {
			break
		}
		bytes += proto.Size(r)
		if n > 0 && bytes > MaxPageBytes {
			break
		}
		n++
	}
	return n
}

// Page tokens are opaque to clients: URL-safe base64 of "kind|key|filter",
// where key is the last record of the page (a VM id; a task's creation time
// and id: neither holds a '|') and filter is the request's (ListTasks'
// vm_id), so that a token is not replayed against another list.
const (
	tokenVMs   = "vms"
	tokenTasks = "tasks"
)

func encodeToken(kind, filter string, key ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join(append(append([]string{kind}, key...), filter), "|")))
}

// decodeToken returns the key parts of a token of kind issued for filter.
func decodeToken(tok, kind, filter string, parts int) ([]string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return nil, invalidField("page_token", "not a page token of this API (use next_page_token as it was returned)")
	}
	f := strings.SplitN(string(b), "|", 2+parts)
	if len(f) != 2+parts || f[0] != kind {
		return nil, invalidField("page_token", "not a page token of this list (use next_page_token as it was returned)")
	}
	if got := f[len(f)-1]; got != filter {
		return nil, invalidField("page_token", "was issued for another filter (vm_id "+quoteField(got)+"); ask with the same filter as the first page")
	}
	return f[1 : 1+parts], nil
}

func quoteField(s string) string {
	if s == "" {
		return "empty"
	}
	return strconv.Quote(s)
}

// taskTokenKey is a task's position in ListTasks' order.
func taskTokenKey(created time.Time, id string) []string {
	return []string{created.UTC().Format(time.RFC3339Nano), id}
}

func parseTaskTokenKey(key []string) (time.Time, string, error) {
	t, err := time.Parse(time.RFC3339Nano, key[0])
	if err != nil || key[1] == "" {
		return time.Time{}, "", invalidField("page_token", "not a page token of this list (use next_page_token as it was returned)")
	}
	return t, key[1], nil
}

package main

import (
	"fmt"
	"strings"
	"testing"
)

func TestPagesFollowsTokensToTheEnd(t *testing.T) {
	var asked []string
	err := pages(func(token string) (string, error) {
		asked = append(asked, token)
		if len(asked) == 3 {
			return "", nil
		}
		return fmt.Sprintf("p%d", len(asked)), nil
	})
	if err != nil || strings.Join(asked, ",") != ",p1,p2" {
		t.Errorf("asked %q, %v; want the first page, then p1 and p2", asked, err)
	}
}

func TestPagesRefusesARepeatedToken(t *testing.T) {
	n := 0
	err := pages(func(string) (string, error) {
		if n++; n > 10 {
			t.Fatal("pages kept asking for the same page")
		}
		return "same", nil
	})
	if err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a daemon repeating its token: %v", err)
	}
}

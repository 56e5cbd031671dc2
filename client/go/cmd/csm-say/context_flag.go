package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/csm-serve/csm-serve/client/go/csm"
	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// contextFlag collects repeated -context SPEAKER:WAV:TEXT values, oldest turn first.
type contextFlag struct {
	segments []*csmv1.Segment
}

func (f *contextFlag) String() string { return "" }

// Set parses SPEAKER:WAV:TEXT. WAV may be empty for a text-only turn; TEXT may hold colons.
func (f *contextFlag) Set(value string) error {
	parts := strings.SplitN(value, ":", 3)
	if len(parts) != 3 {
		return fmt.Errorf("want SPEAKER:WAV:TEXT (WAV may be empty), got %q", value)
	}
	speaker, err := strconv.ParseUint(parts[0], 10, 32)
	if err != nil {
		return fmt.Errorf("speaker %q is not a non-negative integer", parts[0])
	}
	if parts[2] == "" {
		return fmt.Errorf("context turn %q has no text", value)
	}
	if parts[1] == "" {
		f.segments = append(f.segments, &csmv1.Segment{Speaker: uint32(speaker), Text: parts[2]})
		return nil
	}
	seg, err := csm.SegmentFromWAV(uint32(speaker), parts[2], parts[1])
	if err != nil {
		return err
	}
	f.segments = append(f.segments, seg)
	return nil
}

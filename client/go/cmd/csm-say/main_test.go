package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/csm-serve/csm-serve/client/go/csm"
	"github.com/csm-serve/csm-serve/client/go/internal/livetest"
)

func TestContextFlag(t *testing.T) {
	var f contextFlag
	for _, v := range []string{"1::Hi there", "0::time: 10:30"} {
		if err := f.Set(v); err != nil {
			t.Fatalf("Set(%q): %v", v, err)
		}
	}
	if len(f.segments) != 2 || f.segments[0].GetSpeaker() != 1 || f.segments[1].GetText() != "time: 10:30" ||
		f.segments[0].GetAudio() != nil {
		t.Fatalf("segments %v", f.segments)
	}
	for _, bad := range []string{"hello", "x::hi", "-1::hi", "0::", "0:missing.wav:hi"} {
		if err := f.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted it", bad)
		}
	}
}

func TestReadText(t *testing.T) {
	if got, _ := readText([]string{"Hello", "world"}, nil); got != "Hello world" {
		t.Fatalf("args: %q", got)
	}
	if got, _ := readText([]string{"-"}, strings.NewReader("  from stdin\n")); got != "from stdin" {
		t.Fatalf("stdin: %q", got)
	}
	if _, err := readText(nil, nil); err == nil {
		t.Fatal("no text was accepted")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"-speaker", "x", "hi"}, {"-context", "nope", "hi"}, {"-speaker", "4294967296", "hi"}} {
		var stderr bytes.Buffer
		if err := run(context.Background(), args, strings.NewReader(""), &stderr); !errors.Is(err, errUsage) {
			t.Errorf("%q: error %v, want a usage error", args, err)
		}
		if !strings.Contains(stderr.String(), "usage: csm-say") && !strings.Contains(stderr.String(), "out of range") {
			t.Errorf("%q: stderr %q has no usage line", args, stderr.String())
		}
	}
}

func TestSayAgainstLiveServer(t *testing.T) {
	addr := livetest.Addr(t)
	dir := t.TempDir()
	ctxWAV := filepath.Join(dir, "turn.wav")
	// 0.25 s of a quiet square wave as the earlier turn's audio.
	pcm := make([]byte, 2*6000)
	for i := 0; i < len(pcm); i += 2 {
		if (i/2/60)%2 == 0 {
			pcm[i] = 0xe8 // 1000
			pcm[i+1] = 0x03
		}
	}
	if err := os.WriteFile(ctxWAV, append(csm.WAVHeader(24000, uint32(len(pcm))), pcm...), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "say.wav")
	var stderr bytes.Buffer
	err := run(context.Background(), []string{
		"-server", addr, "-o", out, "-speaker", "1", "-seed", "7", "-max-audio-ms", "480",
		"-sample-rate", "22050", "-context", "0:" + ctxWAV + ":How are you?", "-context", "1::Fine, thanks.",
		"And you?",
	}, nil, &stderr)
	if err != nil {
		t.Fatalf("csm-say: %s\n%s", csm.Describe(err), stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	info, err := csm.ParseWAV(b)
	if err != nil || info.SampleRate != 22050 || info.Channels != 1 || info.DataOffset+info.DataBytes != len(b) {
		t.Fatalf("output WAV %+v (%v), %d bytes", info, err, len(b))
	}
	if !strings.Contains(stderr.String(), out+": ") {
		t.Fatalf("no summary line on stderr: %q", stderr.String())
	}
}

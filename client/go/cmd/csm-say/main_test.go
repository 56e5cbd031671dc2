package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
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

func TestFlagsAfterText(t *testing.T) {
	for _, tc := range []struct {
		args []string
		text string
		out  string
		ms   uint
	}{
		{[]string{"-o", "a.wav", "Hello", "there."}, "Hello there.", "a.wav", 0},
		{[]string{"Hello", "there.", "-o", "b.wav", "-max-audio-ms", "900"}, "Hello there.", "b.wav", 900},
		{[]string{"Hello", "-o", "c.wav", "there.", "--max-audio-ms=5"}, "Hello there.", "c.wav", 5},
		{[]string{"-o", "d.wav", "--", "-5 degrees", "-o", "x"}, "-5 degrees -o x", "d.wav", 0},
		{[]string{"Hello", "--", "-o", "x"}, "Hello -o x", "out.wav", 0},
		{[]string{"-", "-o", "e.wav"}, "-", "e.wav", 0},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		out := fs.String("o", "out.wav", "")
		ms := fs.Uint("max-audio-ms", 0, "")
		words, err := parseInterleaved(fs, tc.args)
		if err != nil || strings.Join(words, " ") != tc.text || *out != tc.out || *ms != tc.ms {
			t.Errorf("%q: text %q, -o %q, -max-audio-ms %d, err %v; want %q, %q, %d",
				tc.args, words, *out, *ms, err, tc.text, tc.out, tc.ms)
		}
	}
	// An unknown flag after the text is an error, never ignored.
	var stderr bytes.Buffer
	err := run(context.Background(), []string{"Hello", "-output", "x.wav"}, nil, io.Discard, &stderr)
	if !errors.Is(err, errUsage) || !strings.Contains(stderr.String(), "flag provided but not defined: -output") {
		t.Fatalf("unknown flag after the text: %v, stderr %q", err, stderr.String())
	}
}

func TestVersion(t *testing.T) {
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"-version"}, nil, &stdout, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stdout.String(), "csm-say (Go) ") {
		t.Fatalf("-version printed %q", stdout.String())
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{{}, {"-speaker", "x", "hi"}, {"-context", "nope", "hi"}, {"-speaker", "4294967296", "hi"}} {
		var stderr bytes.Buffer
		if err := run(context.Background(), args, strings.NewReader(""), io.Discard, &stderr); !errors.Is(err, errUsage) {
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
	// Flags after the text are honoured too (-o, -max-audio-ms, -sample-rate).
	err := run(context.Background(), []string{
		"-server", addr, "-speaker", "1", "-seed", "7",
		"-context", "0:" + ctxWAV + ":How are you?", "-context", "1::Fine, thanks.",
		"And", "you?", "-o", out, "-max-audio-ms", "480", "-sample-rate", "22050",
	}, nil, io.Discard, &stderr)
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
	if ms := info.DataBytes / 2 * 1000 / 22050; ms > 480 {
		t.Fatalf("%d ms of audio: -max-audio-ms 480 after the text was ignored", ms)
	}
	if !strings.Contains(stderr.String(), out+": ") {
		t.Fatalf("no summary line on stderr: %q", stderr.String())
	}
}

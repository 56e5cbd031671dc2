package csm

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

func TestRequestProtoLeavesDefaultsUnset(t *testing.T) {
	got := Request{Text: "hi", Speaker: 3}.Proto()
	want := &csmv1.SynthesizeRequest{Text: "hi", Speaker: 3}
	if !proto.Equal(got, want) {
		t.Fatalf("Proto() = %v, want %v", got, want)
	}
}

func TestRequestProtoSetsEveryField(t *testing.T) {
	seg := &csmv1.Segment{Speaker: 1, Text: "before"}
	got := Request{
		Text:        "hi",
		Speaker:     2,
		Context:     []*csmv1.Segment{seg},
		Temperature: proto.Float32(0),
		Seed:        proto.Uint64(7),
		MaxAudioMs:  1600,
		SampleRate:  16000,
		RequestID:   "r-1",
	}.Proto()
	want := &csmv1.SynthesizeRequest{
		Text:       "hi",
		Speaker:    2,
		Context:    []*csmv1.Segment{{Speaker: 1, Text: "before"}},
		Sampling:   &csmv1.Sampling{Temperature: proto.Float32(0), Seed: proto.Uint64(7)},
		MaxAudioMs: 1600,
		Output:     &csmv1.OutputFormat{SampleRate: 16000},
		RequestId:  "r-1",
	}
	if !proto.Equal(got, want) {
		t.Fatalf("Proto() = %v, want %v", got, want)
	}
	// A temperature of 0 (greedy) must reach the wire, not read as "unset".
	if got.GetSampling().Temperature == nil || got.GetSampling().TopK != nil {
		t.Fatalf("sampling presence wrong: %v", got.GetSampling())
	}
}

// writeWAV writes a 16-bit PCM WAV of the given channel count with n silent frames.
func writeWAV(t *testing.T, channels uint16, n int) string {
	t.Helper()
	data := make([]byte, n*int(channels)*2)
	h := WAVHeader(24000, uint32(len(data)))
	binary.LittleEndian.PutUint16(h[22:24], channels)
	binary.LittleEndian.PutUint32(h[28:32], 24000*2*uint32(channels))
	binary.LittleEndian.PutUint16(h[32:34], 2*channels)
	path := filepath.Join(t.TempDir(), "ctx.wav")
	if err := os.WriteFile(path, append(h, data...), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSegmentFromWAV(t *testing.T) {
	path := writeWAV(t, 1, 2400)
	seg, err := SegmentFromWAV(1, "earlier turn", path)
	if err != nil {
		t.Fatal(err)
	}
	file, _ := os.ReadFile(path)
	want := &csmv1.Segment{Speaker: 1, Text: "earlier turn", Audio: &csmv1.AudioInput{
		Data: file, Encoding: csmv1.AudioEncoding_AUDIO_ENCODING_WAV}}
	if !proto.Equal(seg, want) {
		t.Fatalf("segment = speaker %d text %q encoding %v, %d bytes", seg.Speaker, seg.Text,
			seg.GetAudio().GetEncoding(), len(seg.GetAudio().GetData()))
	}
}

func TestSegmentFromWAVRejectsBadFiles(t *testing.T) {
	notWAV := filepath.Join(t.TempDir(), "notes.txt")
	os.WriteFile(notWAV, []byte("hello"), 0o644)
	for name, c := range map[string]struct{ path, msg string }{
		"stereo":  {writeWAV(t, 2, 100), "mono only"},
		"empty":   {writeWAV(t, 1, 0), "no samples"},
		"not wav": {notWAV, "not a RIFF/WAVE file"},
		"missing": {filepath.Join(t.TempDir(), "absent.wav"), "no such file"},
	} {
		_, err := SegmentFromWAV(0, "x", c.path)
		if err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want one mentioning %q", name, err, c.msg)
		}
	}
}

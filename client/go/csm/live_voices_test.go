package csm_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csm-serve/csm-serve/client/go/csm"
	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// sineWAV is one second of a 16-bit mono tone at 16 kHz (the server resamples it).
func sineWAV() []byte {
	const rate, n = 16000, 16000
	b := csm.WAVHeader(rate, 2*n)
	for i := 0; i < n; i++ {
		b = binary.LittleEndian.AppendUint16(b, uint16(int16(8000*math.Sin(float64(i)/7))))
	}
	return b
}

func TestLiveVoiceLifecycle(t *testing.T) {
	c, ctx := dialLive(t)
	name := fmt.Sprintf("go-live-%d", time.Now().UnixNano())
	seg := &csmv1.Segment{Speaker: 1, Text: "This is how I sound.",
		Audio: &csmv1.AudioInput{Data: sineWAV(), Encoding: csmv1.AudioEncoding_AUDIO_ENCODING_WAV}}
	created, err := c.CreateVoice(ctx, name, []*csmv1.Segment{seg}, "made by the Go live test")
	if err != nil {
		t.Fatal(csm.Describe(err))
	}
	defer c.DeleteVoice(ctx, name, true)
	if got := created.GetSegments()[0].GetAudioFrames(); got != 13 {
		t.Errorf("1 s of audio gave %d frames, want 13", got)
	}
	if _, err := c.CreateVoice(ctx, name, []*csmv1.Segment{seg}, ""); status.Code(err) != codes.AlreadyExists {
		t.Errorf("creating %s again: %v, want AlreadyExists", name, err)
	}
	got, err := c.GetVoice(ctx, name)
	if err != nil || got.GetContentHash() != created.GetContentHash() {
		t.Fatalf("GetVoice = %v, %v", got, err)
	}
	voices, err := c.ListVoices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	listed := false
	for _, v := range voices {
		listed = listed || v.GetName() == name
	}
	if !listed {
		t.Errorf("ListVoices does not list %s", name)
	}

	req := csm.Request{Text: "Spoken in a stored voice.", Voice: name, MaxAudioMs: liveMaxMs}
	res, err := c.Synthesize(ctx, req.Proto(), func(*csmv1.AudioChunk) error { return nil })
	if err != nil || res.GetFrames() == 0 {
		t.Fatalf("Synthesize with voice %s: %v, %v", name, res, csm.Describe(err))
	}

	if deleted, err := c.DeleteVoice(ctx, name, false); !deleted || err != nil {
		t.Fatalf("DeleteVoice = %v, %v", deleted, err)
	}
	_, err = c.Synthesize(ctx, req.Proto(), func(*csmv1.AudioChunk) error { return nil })
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Synthesize with a deleted voice: %v, want NotFound", err)
	}
}

func TestLiveConverseIsNotServedYet(t *testing.T) {
	c, ctx := dialLive(t)
	conv, err := c.Converse(ctx, &csmv1.ConversationConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer conv.Close()
	if err := conv.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := conv.Recv(); err == io.EOF || status.Code(err) != codes.Unimplemented {
		t.Fatalf("Converse: %v, want Unimplemented until the server runs conversations", err)
	}
}

package csm_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strings"
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

// TestLiveConverse holds a conversation with a stored voice: a user turn with audio, a turn
// sent whole, a turn whose text streams in, and a malformed turn that fails alone.
func TestLiveConverse(t *testing.T) {
	c, ctx := dialLive(t)
	name := fmt.Sprintf("go-converse-%d", time.Now().UnixNano())
	seg := &csmv1.Segment{Speaker: 0, Text: "This is how I sound.", Audio: &csmv1.AudioInput{Data: sineWAV()}}
	voice, err := c.CreateVoice(ctx, name, []*csmv1.Segment{seg}, "")
	if err != nil {
		t.Fatal(csm.Describe(err))
	}
	defer c.DeleteVoice(ctx, name, true)
	seed := uint64(3)
	conv, err := c.Converse(ctx, &csmv1.ConversationConfig{Voice: name, Sampling: &csmv1.Sampling{Seed: &seed},
		MaxAudioMs: liveMaxMs})
	if err != nil {
		t.Fatal(err)
	}
	defer conv.Close()
	go func() {
		conv.AddContext("", &csmv1.Segment{Speaker: 1, Text: "How are you?", Audio: &csmv1.AudioInput{Data: sineWAV()}})
		conv.Speak(&csmv1.SpeakTurn{Text: "Fine, thanks."})
		bad := uint32(99)
		conv.Speak(&csmv1.SpeakTurn{TurnId: "bad", Text: "Who?", Speaker: &bad})
		conv.Speak(&csmv1.SpeakTurn{TurnId: "streamed", MoreText: true})
		conv.SendText("It has been a long day. ", false, false)
		conv.SendText("But a good one", false, true)
		conv.CloseSend()
	}()
	var kinds []string
	results := map[string]*csmv1.SynthesisResult{}
	var turnErr error
	for {
		msg, err := conv.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", csm.Describe(err))
		}
		switch {
		case msg.GetStarted() != nil:
			if got := msg.GetStarted().GetContextFrames(); got != voice.GetPromptFrames() {
				t.Errorf("started with %d context frames, want the voice's %d", got, voice.GetPromptFrames())
			}
			kinds = append(kinds, "started")
		case msg.GetAudio() != nil:
			if k := msg.GetTurnId() + " audio"; kinds[len(kinds)-1] != k {
				kinds = append(kinds, k)
			}
		case msg.GetResult() != nil:
			results[msg.GetTurnId()] = msg.GetResult()
			kinds = append(kinds, msg.GetTurnId()+" result")
		case msg.GetContext() != nil:
			kinds = append(kinds, msg.GetTurnId()+" context")
		case msg.GetError() != nil:
			turnErr = csm.TurnError(msg)
			kinds = append(kinds, msg.GetTurnId()+" error")
		}
	}
	want := "started,turn-1 context,turn-2 audio,turn-2 result,turn-2 context,bad error," +
		"streamed audio,streamed result,streamed context"
	if got := strings.Join(kinds, ","); got != want {
		t.Fatalf("messages:\n got %s\nwant %s", got, want)
	}
	if status.Code(turnErr) != codes.InvalidArgument {
		t.Errorf("the malformed turn: %v, want InvalidArgument", turnErr)
	}
	for id, res := range results {
		if res.GetFrames() == 0 || res.GetRequestId() != id {
			t.Errorf("turn %s: %v", id, res)
		}
	}
}

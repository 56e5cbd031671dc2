package csm_test

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/csm-serve/csm-serve/client/go/csm"
	"github.com/csm-serve/csm-serve/client/go/csmv1"
	"github.com/csm-serve/csm-serve/client/go/internal/livetest"
)

// These tests talk to a real csm-serve at $CSM_SERVER (plaintext), e.g. the tiny preset:
// random weights, so the audio is noise but every part of the pipeline runs.

const (
	modelRate    = 24000
	frameSamples = 1920 // samples of one 80 ms frame at 24 kHz
	liveMaxMs    = 640  // eight frames keep the tests short
)

func msOf(samples uint64) float64 { return float64(samples) * 1000 / modelRate }

func near(a, b float64) bool { return math.Abs(a-b) < 1e-6 }

func dialLive(t *testing.T) (*csm.Client, context.Context) {
	t.Helper()
	c, err := csm.Dial(livetest.Addr(t), csm.Options{Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c, ctx
}

func liveRequest(rate uint32) *csmv1.SynthesizeRequest {
	return csm.Request{
		Text:       "Hello from the Go client.",
		Seed:       proto.Uint64(1234),
		MaxAudioMs: liveMaxMs,
		SampleRate: rate,
		RequestID:  "go-live-test",
	}.Proto()
}

func TestLiveModelInfo(t *testing.T) {
	c, ctx := dialLive(t)
	info, err := c.ModelInfo(ctx)
	if err != nil {
		t.Fatal(csm.Describe(err))
	}
	if info.GetSampleRate() != modelRate || info.GetFrameSamples() != frameSamples {
		t.Fatalf("model info says %d Hz, %d samples a frame; CSM is %d Hz, %d", info.GetSampleRate(),
			info.GetFrameSamples(), modelRate, frameSamples)
	}
	t.Logf("server: preset %q, %s/%s, %d slots", info.GetPreset(), info.GetDevice(), info.GetDtype(), info.GetMaxSlots())
}

func TestLiveStreamChunks(t *testing.T) {
	c, ctx := dialLive(t)
	var chunks []*csmv1.AudioChunk
	res, err := c.Synthesize(ctx, liveRequest(modelRate), func(chunk *csmv1.AudioChunk) error {
		chunks = append(chunks, chunk)
		return nil
	})
	if err != nil {
		t.Fatal(csm.Describe(err))
	}
	var samples uint64
	for i, chunk := range chunks {
		if chunk.GetSequence() != uint64(i) {
			t.Fatalf("chunk %d has sequence %d", i, chunk.GetSequence())
		}
		if chunk.GetStartSample() != samples {
			t.Fatalf("chunk %d starts at sample %d, want %d (the end of the previous chunk)", i, chunk.GetStartSample(), samples)
		}
		if len(chunk.GetData()) != 2*int(chunk.GetNumSamples()) {
			t.Fatalf("chunk %d: %d bytes for %d PCM_S16LE samples", i, len(chunk.GetData()), chunk.GetNumSamples())
		}
		if !near(chunk.GetStartMs(), msOf(chunk.GetStartSample())) || !near(chunk.GetDurationMs(), msOf(uint64(chunk.GetNumSamples()))) {
			t.Fatalf("chunk %d: start_ms %.3f, duration_ms %.3f disagree with its samples", i, chunk.GetStartMs(), chunk.GetDurationMs())
		}
		samples += uint64(chunk.GetNumSamples())
	}

	if res.GetRequestId() != "go-live-test" {
		t.Errorf("result request_id %q, want the one sent", res.GetRequestId())
	}
	switch res.GetFinishReason() {
	case csmv1.FinishReason_FINISH_REASON_EOS, csmv1.FinishReason_FINISH_REASON_LENGTH:
	default:
		t.Errorf("finish_reason %v, want EOS or LENGTH", res.GetFinishReason())
	}
	if res.GetSampleRate() != modelRate || res.GetAudioSamples() != samples {
		t.Errorf("result: %d samples at %d Hz; the chunks carried %d at %d Hz", res.GetAudioSamples(),
			res.GetSampleRate(), samples, modelRate)
	}
	if res.GetAudioSamples() != uint64(res.GetFrames())*frameSamples {
		t.Errorf("result: %d samples for %d frames, want %d a frame", res.GetAudioSamples(), res.GetFrames(), frameSamples)
	}
	if res.GetAudioMs() > liveMaxMs || !near(res.GetAudioMs(), msOf(samples)) {
		t.Errorf("result: audio_ms %.1f for %d samples, max_audio_ms %d", res.GetAudioMs(), samples, liveMaxMs)
	}
	if res.GetFinishReason() == csmv1.FinishReason_FINISH_REASON_LENGTH && res.GetFrames() == 0 {
		t.Error("result: finished by LENGTH without a frame")
	}
	if res.GetTotalMs() < res.GetTimeToFirstAudioMs() || res.GetPromptFrames() == 0 {
		t.Errorf("result timings or prompt look wrong: %v", res)
	}
}

func TestLiveWAVFile(t *testing.T) {
	c, ctx := dialLive(t)
	path := filepath.Join(t.TempDir(), "live.wav")
	res, err := c.SynthesizeWAV(ctx, liveRequest(16000), path)
	if err != nil {
		t.Fatal(csm.Describe(err))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	info, err := csm.ParseWAV(b)
	if err != nil {
		t.Fatal(err)
	}
	want := csm.WAVInfo{Format: 1, Channels: 1, SampleRate: 16000, BitsPerSample: 16,
		DataOffset: 44, DataBytes: 2 * int(res.GetAudioSamples())}
	if info != want || len(b) != 44+want.DataBytes {
		t.Fatalf("WAV %+v, %d bytes; want %+v, %d bytes", info, len(b), want, 44+want.DataBytes)
	}
	if res.GetSampleRate() != 16000 {
		t.Fatalf("result sample_rate %d, asked for 16000", res.GetSampleRate())
	}
}

func TestLiveEmptyTextIsInvalidArgument(t *testing.T) {
	c, ctx := dialLive(t)
	calls := 0
	_, err := c.Synthesize(ctx, csm.Request{Text: ""}.Proto(), func(*csmv1.AudioChunk) error {
		calls++
		return nil
	})
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || calls != 0 {
		t.Fatalf("empty text: %s after %d chunks, want InvalidArgument before any audio", csm.Describe(err), calls)
	}
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == "text" {
					return
				}
			}
		}
	}
	t.Fatalf("empty text: %s; want a google.rpc.BadRequest violation on field \"text\"", csm.Describe(err))
}

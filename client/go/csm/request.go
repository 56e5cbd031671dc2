package csm

import "github.com/csm-serve/csm-serve/client/go/csmv1"

// Request is a SynthesizeRequest with plain Go fields. Nil pointers and zero values leave
// the server's defaults in place (see protos/csm/v1/speech.proto).
type Request struct {
	// Text to speak; must not be empty.
	Text string
	// Speaker id of the generated turn.
	Speaker uint32
	// Voice names a voice stored on the server (Client.CreateVoice); its segments come
	// before Context. Empty: no voice.
	Voice string
	// Earlier turns, oldest first (see SegmentFromWAV).
	Context []*csmv1.Segment
	// Sampling: temperature in [0, 5] (0 is greedy), top-k in [1, 2051], and the seed of
	// this request's sampling noise.
	Temperature *float32
	TopK        *uint32
	Seed        *uint64
	// MaxAudioMs bounds the generated audio. 0: the server's default.
	MaxAudioMs uint32
	// Encoding and SampleRate of the output. Zero: PCM_S16LE at 24000 Hz.
	Encoding   csmv1.AudioEncoding
	SampleRate uint32
	// RequestID is echoed in the result and the server's logs. Empty: the server picks one.
	RequestID string
}

// Proto builds the wire request. Sampling and Output are left unset when every field they
// hold is unset.
func (r Request) Proto() *csmv1.SynthesizeRequest {
	req := &csmv1.SynthesizeRequest{
		Text:       r.Text,
		Speaker:    r.Speaker,
		Voice:      r.Voice,
		Context:    r.Context,
		MaxAudioMs: r.MaxAudioMs,
		RequestId:  r.RequestID,
	}
	if r.Temperature != nil || r.TopK != nil || r.Seed != nil {
		req.Sampling = &csmv1.Sampling{Temperature: r.Temperature, TopK: r.TopK, Seed: r.Seed}
	}
	if r.Encoding != csmv1.AudioEncoding_AUDIO_ENCODING_UNSPECIFIED || r.SampleRate != 0 {
		req.Output = &csmv1.OutputFormat{Encoding: r.Encoding, SampleRate: r.SampleRate}
	}
	return req
}

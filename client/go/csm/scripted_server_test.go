package csm

import (
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// scriptedSpeech is a loopback csm.v1 server that replays fixed messages, to drive the
// client through streams the real server should never send (gaps, missing results).
type scriptedSpeech struct {
	csmv1.UnimplementedSpeechServer
	replies []*csmv1.SynthesizeResponse
	err     error // ends the stream after the replies

	mu   sync.Mutex
	auth []string // authorization metadata of each call
}

func (s *scriptedSpeech) record(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.auth = append(s.auth, md.Get("authorization")...)
}

func (s *scriptedSpeech) seenAuth() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.auth...)
}

func (s *scriptedSpeech) Synthesize(_ *csmv1.SynthesizeRequest, stream grpc.ServerStreamingServer[csmv1.SynthesizeResponse]) error {
	s.record(stream.Context())
	for _, r := range s.replies {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	return s.err
}

func (s *scriptedSpeech) GetModelInfo(ctx context.Context, _ *csmv1.GetModelInfoRequest) (*csmv1.ModelInfo, error) {
	s.record(ctx)
	return &csmv1.ModelInfo{Preset: "scripted"}, nil
}

// serve starts srv on 127.0.0.1 and returns its address; the server stops with the test.
func serve(t *testing.T, srv csmv1.SpeechServer, opts ...grpc.ServerOption) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer(opts...)
	csmv1.RegisterSpeechServer(g, srv)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func dialPlaintext(t *testing.T, addr string) *Client {
	t.Helper()
	c, err := Dial(addr, Options{Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func audio(seq uint64, pcm []byte) *csmv1.SynthesizeResponse {
	return &csmv1.SynthesizeResponse{Kind: &csmv1.SynthesizeResponse_Audio{Audio: &csmv1.AudioChunk{
		Sequence: seq, Data: pcm, NumSamples: uint32(len(pcm) / 2)}}}
}

func result(samples uint64, rate uint32) *csmv1.SynthesizeResponse {
	return &csmv1.SynthesizeResponse{Kind: &csmv1.SynthesizeResponse_Result{Result: &csmv1.SynthesisResult{
		FinishReason: csmv1.FinishReason_FINISH_REASON_EOS, AudioSamples: samples, SampleRate: rate}}}
}

package csm

import (
	"context"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// scriptedVoices keeps voices in memory and lists them one per page, to drive the client
// through several pages.
type scriptedVoices struct {
	csmv1.UnimplementedVoicesServer
	mu     sync.Mutex
	voices map[string]*csmv1.Voice
}

func (s *scriptedVoices) CreateVoice(_ context.Context, req *csmv1.CreateVoiceRequest) (*csmv1.Voice, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.voices[req.GetName()]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "voice %q exists already", req.GetName())
	}
	v := &csmv1.Voice{Name: req.GetName(), Description: req.GetDescription()}
	for _, seg := range req.GetSegments() {
		v.Segments = append(v.Segments, &csmv1.VoiceSegment{Speaker: seg.GetSpeaker(), Text: seg.GetText()})
	}
	s.voices[v.Name] = v
	return v, nil
}

func (s *scriptedVoices) GetVoice(_ context.Context, req *csmv1.GetVoiceRequest) (*csmv1.Voice, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.voices[req.GetName()]; ok {
		return v, nil
	}
	return nil, status.Errorf(codes.NotFound, "there is no voice %q", req.GetName())
}

func (s *scriptedVoices) ListVoices(_ context.Context, req *csmv1.ListVoicesRequest) (*csmv1.ListVoicesResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var names []string
	for name := range s.voices {
		if name > req.GetPageToken() {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	res := &csmv1.ListVoicesResponse{TotalVoices: uint32(len(s.voices))}
	if len(names) > 0 {
		res.Voices = []*csmv1.Voice{s.voices[names[0]]}
	}
	if len(names) > 1 {
		res.NextPageToken = names[0]
	}
	return res, nil
}

func (s *scriptedVoices) DeleteVoice(_ context.Context, req *csmv1.DeleteVoiceRequest) (*csmv1.DeleteVoiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.voices[req.GetName()]; !ok {
		if req.GetAllowMissing() {
			return &csmv1.DeleteVoiceResponse{}, nil
		}
		return nil, status.Errorf(codes.NotFound, "there is no voice %q", req.GetName())
	}
	delete(s.voices, req.GetName())
	return &csmv1.DeleteVoiceResponse{Deleted: true}, nil
}

// serveVoices starts a loopback server with both services; it stops with the test.
func serveVoices(t *testing.T, speech csmv1.SpeechServer, voices csmv1.VoicesServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	csmv1.RegisterSpeechServer(g, speech)
	csmv1.RegisterVoicesServer(g, voices)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return lis.Addr().String()
}

func TestVoiceCalls(t *testing.T) {
	srv := &scriptedVoices{voices: map[string]*csmv1.Voice{}}
	c := dialPlaintext(t, serveVoices(t, &scriptedSpeech{}, srv))
	ctx := context.Background()
	seg := &csmv1.Segment{Speaker: 1, Text: "How I sound.", Audio: &csmv1.AudioInput{Data: []byte("RIFF")}}
	for _, name := range []string{"narrator", "alto", "bass"} {
		if _, err := c.CreateVoice(ctx, name, []*csmv1.Segment{seg}, "studio take"); err != nil {
			t.Fatal(Describe(err))
		}
	}
	_, err := c.CreateVoice(ctx, "alto", []*csmv1.Segment{seg}, "")
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(Describe(err), "exists already") {
		t.Fatalf("second create: %v, want AlreadyExists", err)
	}
	v, err := c.GetVoice(ctx, "narrator")
	if err != nil || v.GetDescription() != "studio take" || v.GetSegments()[0].GetText() != "How I sound." {
		t.Fatalf("GetVoice = %v, %v", v, err)
	}
	voices, err := c.ListVoices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range voices {
		names = append(names, v.GetName())
	}
	if strings.Join(names, ",") != "alto,bass,narrator" {
		t.Fatalf("ListVoices read %v over its pages, want alto,bass,narrator", names)
	}
	if deleted, err := c.DeleteVoice(ctx, "bass", false); !deleted || err != nil {
		t.Fatalf("DeleteVoice = %v, %v", deleted, err)
	}
	if deleted, err := c.DeleteVoice(ctx, "bass", true); deleted || err != nil {
		t.Fatalf("DeleteVoice of a missing voice with allowMissing = %v, %v; want false, nil", deleted, err)
	}
	if _, err := c.DeleteVoice(ctx, "bass", false); status.Code(err) != codes.NotFound {
		t.Fatalf("DeleteVoice of a missing voice = %v, want NotFound", err)
	}
}

func TestRequestCarriesTheVoice(t *testing.T) {
	if got := (Request{Text: "hi", Voice: "narrator"}).Proto().GetVoice(); got != "narrator" {
		t.Fatalf("SynthesizeRequest.voice = %q", got)
	}
}

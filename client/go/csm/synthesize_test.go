package csm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

func TestBearerTokenIsSent(t *testing.T) {
	srv := &scriptedSpeech{}
	c, err := Dial(serve(t, srv), Options{Plaintext: true, Token: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ModelInfo(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := srv.seenAuth(); len(got) != 1 || got[0] != "Bearer s3cret" {
		t.Fatalf("server saw authorization %q, want [\"Bearer s3cret\"]", got)
	}
}

func TestSynthesizeToDeliversChunksInOrder(t *testing.T) {
	srv := &scriptedSpeech{replies: []*csmv1.SynthesizeResponse{
		audio(0, []byte{1, 0}), audio(1, []byte{2, 0, 3, 0}), result(3, 24000)}}
	c := dialPlaintext(t, serve(t, srv))

	chunks := make(chan *csmv1.AudioChunk)
	var res *csmv1.SynthesisResult
	var err error
	done := make(chan struct{})
	go func() {
		res, err = c.SynthesizeTo(context.Background(), Request{Text: "hi"}.Proto(), chunks)
		close(done)
	}()
	var seqs []uint64
	for chunk := range chunks {
		seqs = append(seqs, chunk.GetSequence())
	}
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 2 || seqs[0] != 0 || seqs[1] != 1 || res.GetAudioSamples() != 3 {
		t.Fatalf("chunks %v, result %v", seqs, res)
	}
}

func TestSynthesizeRejectsBrokenStreams(t *testing.T) {
	for name, replies := range map[string][]*csmv1.SynthesizeResponse{
		"gap":          {audio(0, nil), audio(2, nil), result(0, 24000)},
		"no result":    {audio(0, nil)},
		"after result": {result(0, 24000), audio(0, nil)},
		"empty":        {{}},
	} {
		c := dialPlaintext(t, serve(t, &scriptedSpeech{replies: replies}))
		_, err := c.Synthesize(context.Background(), Request{Text: "hi"}.Proto(),
			func(*csmv1.AudioChunk) error { return nil })
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: error %v, want ErrProtocol", name, err)
		}
	}
}

func TestSynthesizeReturnsCallbackError(t *testing.T) {
	srv := &scriptedSpeech{replies: []*csmv1.SynthesizeResponse{audio(0, nil), audio(1, nil), result(0, 24000)}}
	c := dialPlaintext(t, serve(t, srv))
	stop := errors.New("player closed")
	calls := 0
	_, err := c.Synthesize(context.Background(), Request{Text: "hi"}.Proto(), func(*csmv1.AudioChunk) error {
		calls++
		return stop
	})
	if err != stop || calls != 1 {
		t.Fatalf("error %v after %d calls, want %v after 1", err, calls, stop)
	}
}

func TestSynthesizeWAVWritesExactFile(t *testing.T) {
	srv := &scriptedSpeech{replies: []*csmv1.SynthesizeResponse{
		audio(0, []byte{1, 0, 2, 0}), audio(1, []byte{3, 0}), result(3, 16000)}}
	c := dialPlaintext(t, serve(t, srv))
	path := filepath.Join(t.TempDir(), "say.wav")
	if _, err := c.SynthesizeWAV(context.Background(), Request{Text: "hi", SampleRate: 16000}.Proto(), path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := append(WAVHeader(16000, 6), 1, 0, 2, 0, 3, 0)
	if string(b) != string(want) {
		t.Fatalf("file % x\nwant % x", b, want)
	}
}

func TestSynthesizeWAVLeavesNoFileOnError(t *testing.T) {
	dir := t.TempDir()
	for name, srv := range map[string]*scriptedSpeech{
		"server error":   {replies: []*csmv1.SynthesizeResponse{audio(0, []byte{1, 0})}, err: status.Error(codes.Unavailable, "draining")},
		"sample count":   {replies: []*csmv1.SynthesizeResponse{audio(0, []byte{1, 0}), result(5, 24000)}},
		"rate":           {replies: []*csmv1.SynthesizeResponse{result(0, 16000)}},
		"bytes vs count": {replies: []*csmv1.SynthesizeResponse{{Kind: &csmv1.SynthesizeResponse_Audio{Audio: &csmv1.AudioChunk{Data: []byte{1, 0}, NumSamples: 2}}}}},
	} {
		c := dialPlaintext(t, serve(t, srv))
		_, err := c.SynthesizeWAV(context.Background(), Request{Text: "hi"}.Proto(), filepath.Join(dir, "out.wav"))
		if srv.err != nil && status.Code(err) != codes.Unavailable || srv.err == nil && !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: error %v", name, err)
		}
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("failed calls left %d files behind, first %s", len(left), left[0].Name())
	}
}

func TestDescribeNamesFieldViolations(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, "invalid request").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "text", Description: "must not be empty"}}})
	if err != nil {
		t.Fatal(err)
	}
	c := dialPlaintext(t, serve(t, &scriptedSpeech{err: st.Err()}))
	_, err = c.Synthesize(context.Background(), Request{}.Proto(), func(*csmv1.AudioChunk) error { return nil })
	got := Describe(err)
	if want := "InvalidArgument: invalid request; text: must not be empty"; got != want {
		t.Fatalf("Describe = %q, want %q", got, want)
	}
	if Describe(errors.New("plain")) != "plain" || !strings.Contains(Describe(ErrProtocol), "contract") {
		t.Fatal("Describe mangles errors that carry no status")
	}
}

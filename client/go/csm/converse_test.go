package csm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// scriptedConverse answers every turn at once: a context update, or one audio chunk, a
// result and a context update; a speak turn without text fails as the real server's would.
type scriptedConverse struct {
	csmv1.UnimplementedSpeechServer
	mu       sync.Mutex
	received []*csmv1.ConverseRequest
}

func (s *scriptedConverse) Converse(stream grpc.BidiStreamingServer[csmv1.ConverseRequest, csmv1.ConverseResponse]) error {
	openTurn := ""
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.received = append(s.received, req)
		s.mu.Unlock()
		var replies []*csmv1.ConverseResponse
		switch k := req.GetKind().(type) {
		case *csmv1.ConverseRequest_Config:
			replies = append(replies, &csmv1.ConverseResponse{Kind: &csmv1.ConverseResponse_Started{
				Started: &csmv1.ConversationStarted{ConversationId: k.Config.GetConversationId()}}})
		case *csmv1.ConverseRequest_Context:
			replies = append(replies, contextUpdate(k.Context.GetTurnId()))
		case *csmv1.ConverseRequest_Speak:
			switch {
			case k.Speak.GetMoreText():
				openTurn = k.Speak.GetTurnId()
			case k.Speak.GetText() == "":
				st, _ := status.New(codes.InvalidArgument, "invalid request").WithDetails(&errdetails.BadRequest{
					FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "text", Description: "must not be empty"}}})
				replies = append(replies, &csmv1.ConverseResponse{TurnId: k.Speak.GetTurnId(),
					Kind: &csmv1.ConverseResponse_Error{Error: st.Proto()}})
			default:
				replies = spokenTurn(k.Speak.GetTurnId())
			}
		case *csmv1.ConverseRequest_Text:
			if k.Text.GetEndOfTurn() {
				replies = spokenTurn(openTurn)
			}
		}
		for _, r := range replies {
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

func contextUpdate(turnID string) *csmv1.ConverseResponse {
	return &csmv1.ConverseResponse{TurnId: turnID, Kind: &csmv1.ConverseResponse_Context{Context: &csmv1.ContextUpdate{}}}
}

func spokenTurn(turnID string) []*csmv1.ConverseResponse {
	return []*csmv1.ConverseResponse{
		{TurnId: turnID, Kind: &csmv1.ConverseResponse_Audio{Audio: &csmv1.AudioChunk{Data: []byte{0, 0}, NumSamples: 1}}},
		{TurnId: turnID, Kind: &csmv1.ConverseResponse_Result{Result: &csmv1.SynthesisResult{RequestId: turnID}}},
		contextUpdate(turnID),
	}
}

func TestConversationSendsTurnsAndReadsAnswers(t *testing.T) {
	srv := &scriptedConverse{}
	c := dialPlaintext(t, serve(t, srv))
	conv, err := c.Converse(context.Background(), &csmv1.ConversationConfig{Voice: "narrator", ConversationId: "c-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conv.Close()
	steps := []func() (string, error){
		func() (string, error) {
			return conv.AddContext("", &csmv1.Segment{Speaker: 1, Text: "How are you?"})
		},
		func() (string, error) { return conv.Speak(&csmv1.SpeakTurn{Text: "Well."}) },
		func() (string, error) {
			return conv.Speak(&csmv1.SpeakTurn{TurnId: "reply", MoreText: true, Speaker: proto.Uint32(0)})
		},
		func() (string, error) { return "", conv.SendText("Fine, thanks. ", true, false) },
		func() (string, error) { return "", conv.SendText("And you?", false, true) },
		func() (string, error) { return conv.Speak(&csmv1.SpeakTurn{}) },
		func() (string, error) { return "", conv.Interrupt(proto.Uint32(400)) },
	}
	var ids []string
	for _, step := range steps {
		id, err := step()
		if err != nil {
			t.Fatal(err)
		}
		if id != "" {
			ids = append(ids, id)
		}
	}
	if err := conv.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(ids, ",") != "turn-1,turn-2,reply,turn-4" {
		t.Fatalf("turn ids %v", ids)
	}

	var got []string
	var turnErr error
	for {
		msg, err := conv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		kind := strings.TrimPrefix(fmt.Sprintf("%T", msg.GetKind()), "*csmv1.ConverseResponse_")
		got = append(got, msg.GetTurnId()+":"+kind)
		if e := TurnError(msg); e != nil {
			turnErr = e
		}
	}
	want := ":Started turn-1:Context turn-2:Audio turn-2:Result turn-2:Context reply:Audio reply:Result reply:Context turn-4:Error"
	if strings.Join(got, " ") != want {
		t.Fatalf("messages\n%s\nwant\n%s", strings.Join(got, " "), want)
	}
	if status.Code(turnErr) != codes.InvalidArgument || Describe(turnErr) != "InvalidArgument: invalid request; text: must not be empty" {
		t.Fatalf("turn error %v", Describe(turnErr))
	}

	srv.mu.Lock()
	defer srv.mu.Unlock()
	if n := len(srv.received); n != 8 {
		t.Fatalf("server received %d messages, want 8", n)
	}
	if cfg := srv.received[0].GetConfig(); cfg.GetVoice() != "narrator" || cfg.GetConversationId() != "c-1" {
		t.Fatalf("config %v", cfg)
	}
	if in := srv.received[7].GetInterrupt(); in.GetHeardMs() != 400 {
		t.Fatalf("interrupt %v", in)
	}
}

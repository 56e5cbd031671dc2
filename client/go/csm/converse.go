package csm

import (
	"context"
	"fmt"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// Conversation is one Converse call: a conversation whose context stays on the server
// between turns (for voice agents). Send turns from one goroutine or several (sends are
// serialized) and read the server's messages with Recv from another:
//
//	conv, err := c.Converse(ctx, &csmv1.ConversationConfig{Voice: "narrator"})
//	go func() {
//		conv.AddContext("", &csmv1.Segment{Speaker: 1, Text: "How are you?", Audio: userAudio})
//		turn, _ := conv.Speak(&csmv1.SpeakTurn{Text: "", MoreText: true})
//		for piece := range llmReply { conv.SendText(piece, false, false) }
//		conv.SendText("", false, true)
//		conv.CloseSend()
//	}()
//	for {
//		msg, err := conv.Recv() // io.EOF once the server has answered every turn
//		...
//	}
//
// Turns are numbered "turn-1", "turn-2", ... in the order they are sent, as the server
// numbers them, unless the caller names them. A failed turn arrives as a message with Error
// (see TurnError); errors that end the whole conversation come from Recv.
type Conversation struct {
	stream grpc.BidiStreamingClient[csmv1.ConverseRequest, csmv1.ConverseResponse]
	cancel context.CancelFunc

	mu    sync.Mutex // grpc-go streams allow one sender at a time
	turns int
}

// Converse opens a conversation and sends its config. Close (or cancelling ctx) ends it at
// once; CloseSend ends it once the server has answered every turn sent.
func (c *Client) Converse(ctx context.Context, cfg *csmv1.ConversationConfig, opts ...grpc.CallOption) (*Conversation, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.speech.Converse(ctx, opts...)
	if err != nil {
		cancel()
		return nil, err
	}
	conv := &Conversation{stream: stream, cancel: cancel}
	if err := conv.send(&csmv1.ConverseRequest{Kind: &csmv1.ConverseRequest_Config{Config: cfg}}); err != nil {
		cancel()
		return nil, err
	}
	return conv, nil
}

// AddContext appends a turn (what was said; audio optional) to the context without
// generating audio, and returns its id (turnID, or the server's numbering when empty).
func (cv *Conversation) AddContext(turnID string, segment *csmv1.Segment) (string, error) {
	cv.mu.Lock()
	defer cv.mu.Unlock()
	id := cv.nextID(turnID)
	return id, cv.stream.Send(&csmv1.ConverseRequest{Kind: &csmv1.ConverseRequest_Context{
		Context: &csmv1.ContextTurn{TurnId: id, Segment: segment}}})
}

// Speak sends a turn to generate and returns its id; an empty turn.TurnId is filled in.
// With turn.MoreText the rest of its text follows through SendText.
func (cv *Conversation) Speak(turn *csmv1.SpeakTurn) (string, error) {
	cv.mu.Lock()
	defer cv.mu.Unlock()
	turn.TurnId = cv.nextID(turn.GetTurnId())
	return turn.TurnId, cv.stream.Send(&csmv1.ConverseRequest{Kind: &csmv1.ConverseRequest_Speak{Speak: turn}})
}

// SendText sends the next piece of the open speak turn's text: flush generates what has
// arrived so far, endOfTurn closes the turn's text.
func (cv *Conversation) SendText(text string, flush, endOfTurn bool) error {
	return cv.send(&csmv1.ConverseRequest{Kind: &csmv1.ConverseRequest_Text{
		Text: &csmv1.TextInput{Text: text, Flush: flush, EndOfTurn: endOfTurn}}})
}

// Interrupt stops the speak turn being generated (barge-in) and drops speak turns not yet
// started. heardMs, when not nil, is how much of the turn the listener heard: the context
// keeps that much of it.
func (cv *Conversation) Interrupt(heardMs *uint32) error {
	return cv.send(&csmv1.ConverseRequest{Kind: &csmv1.ConverseRequest_Interrupt{
		Interrupt: &csmv1.Interrupt{HeardMs: heardMs}}})
}

// CloseSend says no more turns follow: the server finishes those sent, then ends the call.
func (cv *Conversation) CloseSend() error {
	cv.mu.Lock()
	defer cv.mu.Unlock()
	return cv.stream.CloseSend()
}

// Recv returns the server's next message, io.EOF after the last one.
func (cv *Conversation) Recv() (*csmv1.ConverseResponse, error) { return cv.stream.Recv() }

// Close ends the conversation at once; the server frees its slot.
func (cv *Conversation) Close() { cv.cancel() }

func (cv *Conversation) send(req *csmv1.ConverseRequest) error {
	cv.mu.Lock()
	defer cv.mu.Unlock()
	return cv.stream.Send(req)
}

func (cv *Conversation) nextID(turnID string) string {
	cv.turns++
	if turnID != "" {
		return turnID
	}
	return fmt.Sprintf("turn-%d", cv.turns)
}

// TurnError is the error of a message that reports a failed turn (its Error field) as a gRPC
// status error, for Describe and status.Code; nil for every other message.
func TurnError(msg *csmv1.ConverseResponse) error {
	if msg.GetError() == nil {
		return nil
	}
	return status.ErrorProto(msg.GetError())
}

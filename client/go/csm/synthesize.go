package csm

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// ErrProtocol marks a stream that broke the csm.v1 contract: chunk sequences 0, 1, 2, ...
// without gaps, then exactly one result, then the end of the stream.
var ErrProtocol = errors.New("csm: the server broke the csm.v1 stream contract")

// Synthesize streams one utterance, calling onChunk with each audio chunk in order, and
// returns the final result. An error from onChunk cancels the call and is returned as it is.
// Errors from the server are gRPC status errors (see Describe).
func (c *Client) Synthesize(ctx context.Context, req *csmv1.SynthesizeRequest,
	onChunk func(*csmv1.AudioChunk) error, opts ...grpc.CallOption) (*csmv1.SynthesisResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.speech.Synthesize(ctx, req, opts...)
	if err != nil {
		return nil, err
	}
	var result *csmv1.SynthesisResult
	var next uint64
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if result == nil {
				return nil, fmt.Errorf("%w: the stream ended after %d chunks without a result", ErrProtocol, next)
			}
			return result, nil
		}
		if err != nil {
			return nil, err
		}
		if result != nil {
			return nil, fmt.Errorf("%w: a message followed the result", ErrProtocol)
		}
		switch kind := msg.GetKind().(type) {
		case *csmv1.SynthesizeResponse_Audio:
			if got := kind.Audio.GetSequence(); got != next {
				return nil, fmt.Errorf("%w: chunk sequence %d where %d was due", ErrProtocol, got, next)
			}
			next++
			if err := onChunk(kind.Audio); err != nil {
				return nil, err
			}
		case *csmv1.SynthesizeResponse_Result:
			result = kind.Result
		default:
			return nil, fmt.Errorf("%w: a message with neither audio nor result", ErrProtocol)
		}
	}
}

// SynthesizeTo is Synthesize sending each chunk on chunks; it closes chunks when it returns.
// Run it in its own goroutine and range over chunks:
//
//	chunks := make(chan *csmv1.AudioChunk, 8)
//	go func() { res, err = c.SynthesizeTo(ctx, req, chunks); close(done) }()
//	for chunk := range chunks { play(chunk.Data) }
//	<-done
func (c *Client) SynthesizeTo(ctx context.Context, req *csmv1.SynthesizeRequest,
	chunks chan<- *csmv1.AudioChunk, opts ...grpc.CallOption) (*csmv1.SynthesisResult, error) {
	defer close(chunks)
	return c.Synthesize(ctx, req, func(chunk *csmv1.AudioChunk) error {
		select {
		case chunks <- chunk:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}, opts...)
}

package csm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// DefaultSampleRate is the model's own rate, used when a request leaves the rate at 0.
const DefaultSampleRate = 24000

// SynthesizeWAV streams one utterance into a WAV file at path and returns the result.
//
// It asks for AUDIO_ENCODING_PCM_S16LE at the request's sample rate (0: 24000 Hz), whatever
// encoding req names, and writes the WAV header itself, with exact sizes, once the stream
// has ended. The audio goes to a temporary file beside path that is renamed to path only
// when the stream succeeds, so a failed call leaves no partial file. req is not modified.
func (c *Client) SynthesizeWAV(ctx context.Context, req *csmv1.SynthesizeRequest, path string,
	opts ...grpc.CallOption) (*csmv1.SynthesisResult, error) {
	req = proto.Clone(req).(*csmv1.SynthesizeRequest)
	rate := req.GetOutput().GetSampleRate()
	if rate == 0 {
		rate = DefaultSampleRate
	}
	req.Output = &csmv1.OutputFormat{Encoding: csmv1.AudioEncoding_AUDIO_ENCODING_PCM_S16LE, SampleRate: rate}

	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.part")
	if err != nil {
		return nil, fmt.Errorf("csm: create WAV file: %w", err)
	}
	result, err := c.streamWAV(ctx, req, rate, f, opts)
	if closeErr := f.Close(); err == nil && closeErr != nil {
		err = fmt.Errorf("csm: close WAV file: %w", closeErr)
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return nil, err
	}
	return result, nil
}

func (c *Client) streamWAV(ctx context.Context, req *csmv1.SynthesizeRequest, rate uint32,
	f *os.File, opts []grpc.CallOption) (*csmv1.SynthesisResult, error) {
	w, err := NewWAVWriter(f, rate)
	if err != nil {
		return nil, err
	}
	result, err := c.Synthesize(ctx, req, func(chunk *csmv1.AudioChunk) error {
		if want := 2 * int(chunk.GetNumSamples()); len(chunk.GetData()) != want {
			return fmt.Errorf("%w: chunk %d carries %d bytes for %d PCM samples", ErrProtocol,
				chunk.GetSequence(), len(chunk.GetData()), chunk.GetNumSamples())
		}
		_, err := w.Write(chunk.GetData())
		return err
	}, opts...)
	if err != nil {
		return nil, err
	}
	if result.GetSampleRate() != rate {
		return nil, fmt.Errorf("%w: asked for %d Hz, the result says %d Hz", ErrProtocol, rate, result.GetSampleRate())
	}
	if result.GetAudioSamples() != w.Samples() {
		return nil, fmt.Errorf("%w: received %d samples, the result counts %d", ErrProtocol, w.Samples(), result.GetAudioSamples())
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return result, nil
}

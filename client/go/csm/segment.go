package csm

import (
	"fmt"
	"os"

	"github.com/csm-serve/csm-serve/client/go/csmv1"
)

// SegmentFromWAV builds a context segment (an earlier turn: who spoke, what they said and
// how it sounded) from a mono WAV file. The file is sent as it is; the server resamples it
// to 24 kHz.
func SegmentFromWAV(speaker uint32, text, path string) (*csmv1.Segment, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("csm: context audio: %w", err)
	}
	info, err := ParseWAV(data)
	if err != nil {
		return nil, fmt.Errorf("csm: context audio %s: %w", path, err)
	}
	if info.Channels != 1 {
		return nil, fmt.Errorf("csm: context audio %s has %d channels; the server takes mono only (downmix it first, e.g. `sox in.wav -c 1 out.wav`)", path, info.Channels)
	}
	if info.DataBytes == 0 {
		return nil, fmt.Errorf("csm: context audio %s holds no samples", path)
	}
	return &csmv1.Segment{
		Speaker: speaker,
		Text:    text,
		Audio:   &csmv1.AudioInput{Data: data, Encoding: csmv1.AudioEncoding_AUDIO_ENCODING_WAV},
	}, nil
}

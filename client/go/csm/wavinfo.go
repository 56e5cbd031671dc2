package csm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	wavFormatPCM        = 1
	wavFormatFloat      = 3
	wavFormatExtensible = 0xFFFE
	// A streamed WAV (csm.v1 AUDIO_ENCODING_WAV output) carries this size until it ends.
	wavUnknownSize = 0xFFFFFFFF
)

// WAVInfo describes a WAV file's format and where its samples lie.
type WAVInfo struct {
	// Format is the WAVE format code: 1 for integer PCM, 3 for IEEE float (the sub-format
	// of WAVE_FORMAT_EXTENSIBLE files is reported here too).
	Format        uint16
	Channels      uint16
	SampleRate    uint32
	BitsPerSample uint16
	// DataOffset and DataBytes locate the samples in the file.
	DataOffset int
	DataBytes  int
}

// Samples is the number of samples per channel.
func (i WAVInfo) Samples() int {
	frame := int(i.Channels) * int(i.BitsPerSample) / 8
	if frame == 0 {
		return 0
	}
	return i.DataBytes / frame
}

// ParseWAV reads the header of a RIFF/WAVE file held in b. A data size of 0xFFFFFFFF (a
// streamed WAV) or one running past the end of b is cut to the bytes present.
func ParseWAV(b []byte) (WAVInfo, error) {
	var info WAVInfo
	if len(b) < 12 || string(b[0:4]) != "RIFF" || string(b[8:12]) != "WAVE" {
		return info, errors.New("not a RIFF/WAVE file")
	}
	haveFmt := false
	for pos := 12; pos+8 <= len(b); {
		id := string(b[pos : pos+4])
		size := int(binary.LittleEndian.Uint32(b[pos+4 : pos+8]))
		body := pos + 8
		switch id {
		case "fmt ":
			if size < 16 || body+size > len(b) {
				return info, fmt.Errorf("fmt chunk of %d bytes is too short or cut off", size)
			}
			f := b[body : body+size]
			info.Format = binary.LittleEndian.Uint16(f[0:2])
			info.Channels = binary.LittleEndian.Uint16(f[2:4])
			info.SampleRate = binary.LittleEndian.Uint32(f[4:8])
			info.BitsPerSample = binary.LittleEndian.Uint16(f[14:16])
			if info.Format == wavFormatExtensible && size >= 26 {
				info.Format = binary.LittleEndian.Uint16(f[24:26]) // first bytes of the sub-format GUID
			}
			haveFmt = true
		case "data":
			if !haveFmt {
				return info, errors.New("data chunk comes before the fmt chunk")
			}
			if uint32(size) == wavUnknownSize || body+size > len(b) {
				size = len(b) - body
			}
			info.DataOffset, info.DataBytes = body, size
			return info, nil
		}
		pos = body + size + size%2 // chunks are padded to an even length
	}
	if !haveFmt {
		return info, errors.New("no fmt chunk")
	}
	return info, errors.New("no data chunk")
}

package csm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	wavHeaderBytes = 44
	// The RIFF size field counts everything after itself: 36 header bytes plus the data.
	maxWAVDataBytes = 0xFFFFFFFF - (wavHeaderBytes - 8)
)

// WAVHeader returns the 44-byte RIFF/WAVE header of 16-bit mono PCM at sampleRate Hz
// followed by dataBytes bytes of samples.
func WAVHeader(sampleRate, dataBytes uint32) []byte {
	const channels, bitsPerSample = 1, 16
	const blockAlign = channels * bitsPerSample / 8
	h := make([]byte, 0, wavHeaderBytes)
	h = append(h, "RIFF"...)
	h = binary.LittleEndian.AppendUint32(h, wavHeaderBytes-8+dataBytes)
	h = append(h, "WAVEfmt "...)
	h = binary.LittleEndian.AppendUint32(h, 16) // fmt chunk size
	h = binary.LittleEndian.AppendUint16(h, wavFormatPCM)
	h = binary.LittleEndian.AppendUint16(h, channels)
	h = binary.LittleEndian.AppendUint32(h, sampleRate)
	h = binary.LittleEndian.AppendUint32(h, sampleRate*blockAlign) // bytes per second
	h = binary.LittleEndian.AppendUint16(h, blockAlign)
	h = binary.LittleEndian.AppendUint16(h, bitsPerSample)
	h = append(h, "data"...)
	h = binary.LittleEndian.AppendUint32(h, dataBytes)
	return h
}

// WAVWriter writes 16-bit little-endian mono PCM (AUDIO_ENCODING_PCM_S16LE) as a WAV file:
// a header first, then the samples as they arrive; Close writes the exact sizes into the
// header. It does not close the underlying writer.
type WAVWriter struct {
	ws         io.WriteSeeker
	sampleRate uint32
	dataBytes  uint64
	closed     bool
}

// NewWAVWriter writes a header with zero sizes at the current position of ws, which must be
// its start.
func NewWAVWriter(ws io.WriteSeeker, sampleRate uint32) (*WAVWriter, error) {
	if sampleRate == 0 {
		return nil, errors.New("csm: WAV sample rate must be positive")
	}
	if _, err := ws.Write(WAVHeader(sampleRate, 0)); err != nil {
		return nil, fmt.Errorf("csm: write WAV header: %w", err)
	}
	return &WAVWriter{ws: ws, sampleRate: sampleRate}, nil
}

// Write appends PCM bytes. Chunks may split a sample; the total must be whole samples by Close.
func (w *WAVWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("csm: write to a closed WAVWriter")
	}
	if w.dataBytes+uint64(len(p)) > maxWAVDataBytes {
		return 0, fmt.Errorf("csm: audio exceeds the 4 GiB a WAV file can hold (%d bytes so far)", w.dataBytes)
	}
	n, err := w.ws.Write(p)
	w.dataBytes += uint64(n)
	return n, err
}

// Samples is the number of whole samples written so far.
func (w *WAVWriter) Samples() uint64 { return w.dataBytes / 2 }

// Close writes the RIFF and data sizes into the header and leaves ws positioned at its end.
func (w *WAVWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if w.dataBytes%2 != 0 {
		return fmt.Errorf("csm: %d bytes of 16-bit PCM is not a whole number of samples", w.dataBytes)
	}
	header := WAVHeader(w.sampleRate, uint32(w.dataBytes))
	if _, err := w.ws.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("csm: seek to WAV header: %w", err)
	}
	if _, err := w.ws.Write(header); err != nil {
		return fmt.Errorf("csm: rewrite WAV header: %w", err)
	}
	if _, err := w.ws.Seek(0, io.SeekEnd); err != nil {
		return fmt.Errorf("csm: seek to WAV end: %w", err)
	}
	return nil
}

package csm

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWAVHeaderBytes(t *testing.T) {
	got := WAVHeader(16000, 8)
	want := []byte{
		'R', 'I', 'F', 'F', 44, 0, 0, 0, // 36 + 8 data bytes
		'W', 'A', 'V', 'E', 'f', 'm', 't', ' ',
		16, 0, 0, 0, // fmt chunk size
		1, 0, 1, 0, // PCM, mono
		0x80, 0x3e, 0, 0, // 16000 Hz
		0x00, 0x7d, 0, 0, // 32000 bytes per second
		2, 0, 16, 0, // block align, bits per sample
		'd', 'a', 't', 'a', 8, 0, 0, 0,
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("header\n got % x\nwant % x", got, want)
	}
}

func TestWAVWriterPatchesSizes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.wav")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := NewWAVWriter(f, 24000)
	if err != nil {
		t.Fatal(err)
	}
	pcm := []byte{1, 0, 2, 0, 0xff, 0x7f, 0x00, 0x80} // samples 1, 2, 32767, -32768
	// Chunks may split a sample; only the total must be whole.
	for _, part := range [][]byte{pcm[:3], pcm[3:5], pcm[5:]} {
		if _, err := w.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	if w.Samples() != 4 {
		t.Fatalf("Samples() = %d, want 4", w.Samples())
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if pos, err := f.Seek(0, io.SeekCurrent); err != nil || pos != int64(44+len(pcm)) {
		t.Fatalf("after Close the file is at %d (%v), want its end %d", pos, err, 44+len(pcm))
	}
	f.Close()

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 44+len(pcm) {
		t.Fatalf("file is %d bytes, want %d", len(b), 44+len(pcm))
	}
	if riff := binary.LittleEndian.Uint32(b[4:8]); riff != uint32(len(b)-8) {
		t.Errorf("RIFF size %d, want %d", riff, len(b)-8)
	}
	info, err := ParseWAV(b)
	if err != nil {
		t.Fatal(err)
	}
	want := WAVInfo{Format: 1, Channels: 1, SampleRate: 24000, BitsPerSample: 16, DataOffset: 44, DataBytes: 8}
	if info != want {
		t.Fatalf("ParseWAV = %+v, want %+v", info, want)
	}
	if !bytes.Equal(b[info.DataOffset:], pcm) {
		t.Fatalf("samples % x, want % x", b[info.DataOffset:], pcm)
	}
}

func TestWAVWriterRejectsHalfSample(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "odd.wav"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := NewWAVWriter(f, 24000)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close accepted 3 bytes of 16-bit PCM")
	}
}

func TestParseWAVStreamedSizesAndExtraChunks(t *testing.T) {
	// A streamed WAV (unknown sizes) behind a LIST chunk of odd length, which is padded.
	var b []byte
	b = append(b, "RIFF\xff\xff\xff\xffWAVE"...)
	b = append(b, WAVHeader(48000, 0)[12:36]...) // the fmt chunk
	b = append(b, "LIST\x03\x00\x00\x00abc\x00"...)
	b = append(b, "data\xff\xff\xff\xff"...)
	b = append(b, 9, 0, 8, 0, 7, 0)
	info, err := ParseWAV(b)
	if err != nil {
		t.Fatal(err)
	}
	if info.SampleRate != 48000 || info.DataBytes != 6 || info.Samples() != 3 || info.DataOffset != len(b)-6 {
		t.Fatalf("ParseWAV = %+v", info)
	}
}

func TestParseWAVRejectsOtherFiles(t *testing.T) {
	for name, b := range map[string][]byte{
		"empty":   nil,
		"ogg":     []byte("OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00"),
		"no data": append([]byte("RIFF\x24\x00\x00\x00WAVE"), WAVHeader(8000, 0)[12:36]...),
		"no fmt":  []byte("RIFF\x0c\x00\x00\x00WAVEdata\x00\x00\x00\x00"),
	} {
		if _, err := ParseWAV(b); err == nil {
			t.Errorf("%s: ParseWAV accepted it", name)
		}
	}
}

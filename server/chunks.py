"""AudioChunk messages of one stream: numbered 0, 1, 2, ... with contiguous sample positions.
Shared by Synthesize and Converse. Torch-free."""

from __future__ import annotations

from csm_wire import speech_pb2 as pb


class Chunker:
    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate
        self.sequence = 0
        self.emitted_samples = 0  # samples covered by chunks already sent
        self.held_samples = 0  # samples handed to the encoder whose bytes have not come out yet

    def add(self, data: bytes, num_samples: int) -> pb.AudioChunk | None:
        """The chunk for `data`, the encoder's bytes for `num_samples` more samples (None while
        the encoder holds them back)."""
        self.held_samples += num_samples
        if not data:
            return None
        ms_per_sample = 1000.0 / self.sample_rate
        chunk = pb.AudioChunk(
            sequence=self.sequence,
            data=data,
            start_sample=self.emitted_samples,
            num_samples=self.held_samples,
            start_ms=self.emitted_samples * ms_per_sample,
            duration_ms=self.held_samples * ms_per_sample,
        )
        self.sequence += 1
        self.emitted_samples += self.held_samples
        self.held_samples = 0
        return chunk

    @property
    def total_samples(self) -> int:
        return self.emitted_samples + self.held_samples

"""CSM's fixed numbers, named once."""

SAMPLE_RATE = 24_000  # Mimi's sample rate (Hz)
FRAME_SAMPLES = 1920  # samples per Mimi frame
FRAME_MS = 80  # one frame = 80 ms of audio (12.5 Hz)
FRAME_RATE_HZ = SAMPLE_RATE / FRAME_SAMPLES

NUM_CODEBOOKS = 32  # Mimi codebooks per frame
AUDIO_VOCAB_SIZE = 2051  # 2048 codes + special ids
MIMI_CODEBOOK_SIZE = 2048  # Mimi decodes codes 0..2047; CSM's 3 extra ids are clamped before decoding
TEXT_COLUMN = 32  # column of the text token in a backbone frame
FRAME_WIDTH = NUM_CODEBOOKS + 1  # 32 audio columns + 1 text column

BEGIN_OF_TEXT = 128000
END_OF_TEXT = 128001
TEXT_VOCAB_SIZE = 128256

DEFAULT_TEMPERATURE = 0.9
DEFAULT_TOP_K = 50
MAX_TEMPERATURE = 5.0  # accepted temperatures: [0, MAX_TEMPERATURE]; 0 is greedy
# accepted top-k: [1, AUDIO_VOCAB_SIZE]; 1 is greedy

# Public watermark key of CSM-1B (published with the model; deployments should set their own).
CSM_PUBLIC_WATERMARK_KEY = (212, 211, 146, 56, 201)

# Weight quantization of the backbone and depth decoder (csm_core/quantize.py)
QUANTIZE_MODES = ("none", "int8-weight", "float8")

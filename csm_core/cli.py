"""csm-codes: generate one utterance's Mimi codes through the reference path and write JSON.

    csm-codes --model tiny --text "Hello" --out codes.json
    csm-codes --model sesame/csm-1b --prompt-frames prompt.safetensors --max-frames 50 --out codes.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_TORCH_COMPILE", "1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-codes", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="preset (csm-1b, bench, tiny), checkpoint dir or hub id")
    p.add_argument("--out", required=True, help="output JSON file ('-' for stdout)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text of the turn to generate")
    src.add_argument("--prompt-frames", help="safetensors file with tokens int64 [seq,33] and mask bool [seq,33]")
    p.add_argument("--speaker", type=int, default=0)
    p.add_argument("--context", nargs=3, action="append", default=[], metavar=("SPEAKER", "TEXT", "WAV"),
                   help="an earlier turn: speaker id, transcript, mono audio file ('-' for none); repeatable")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json, dir or hub id (default: offline for presets, the Llama-3.2 tokenizer otherwise)")
    p.add_argument("--mimi-weights", default=None, help="Mimi weights for context audio (default: random for presets, the hub's otherwise)")
    p.add_argument("--max-frames", type=int, default=125, help="frames of 80 ms to generate at most")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from safetensors.torch import load_file

    from csm_core.checkpoint import load_model
    from csm_core.companions import CompanionError, companions_for, loading
    from csm_core.framing import Prompt, build_prompt
    from csm_core.generate import generate
    from csm_core.sampling import SamplingParams
    from csm_core.text import load_tokenizer

    try:
        sampling = SamplingParams(args.temperature, args.top_k)
        lm = load_model(args.model, args.device, args.dtype)
        if args.prompt_frames:
            t = load_file(args.prompt_frames)
            if "tokens" not in t or "mask" not in t:
                raise ValueError(f"{args.prompt_frames} must hold 'tokens' and 'mask'")
            prompt = Prompt(t["tokens"].long(), t["mask"].bool())
            if prompt.tokens.dim() != 2 or prompt.tokens.shape[1] != 33 or prompt.mask.shape != prompt.tokens.shape:
                raise ValueError(f"tokens and mask must be [seq, 33], got {list(prompt.tokens.shape)} "
                                 f"and {list(prompt.mask.shape)}")
        else:
            parts = companions_for(args.model, tokenizer=args.tokenizer, mimi=args.mimi_weights)
            with loading("tokenizer", parts.tokenizer, "--tokenizer"):
                tok = load_tokenizer(parts.tokenizer)
            segments = [_segment(int(s), text, wav, parts.mimi, args.device) for s, text, wav in args.context]
            prompt = build_prompt(tok, segments, args.speaker, args.text)
        model = lm.model
        model.setup_caches(1)
        model.set_exact(model.audio_head.device.type == "cpu")
        res = generate(model, prompt, max_frames=args.max_frames, sampling=sampling, seed=args.seed)
    except (ValueError, FileNotFoundError, CompanionError) as e:
        print(f"csm-codes: error: {e}", file=sys.stderr)
        return 2
    out = {"model": args.model, "seed": args.seed, "prompt_frames": res.prompt_frames,
           "finish_reason": res.finish_reason, "frames": res.frames.tolist()}
    text = json.dumps(out)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
    return 0


def _segment(speaker, text, wav, mimi_source, device):
    from csm_core.framing import Segment

    if wav == "-":
        return Segment(speaker, text, None)
    import torch

    from csm_core.audio_io import decode_audio, resample
    from csm_core.companions import loading
    from csm_core.constants import SAMPLE_RATE
    from csm_core.mimi import MimiCodec

    audio, rate = decode_audio(Path(wav).read_bytes(), "auto", None)
    with loading("Mimi weights", mimi_source, "--mimi-weights"):
        codec = MimiCodec.load(mimi_source, device)
    return Segment(speaker, text, codec.encode([resample(torch.from_numpy(audio), rate, SAMPLE_RATE)])[0])


if __name__ == "__main__":
    sys.exit(main())

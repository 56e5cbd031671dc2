"""csm-bench-voices: what stored voices, the prefix cache and conversations save, measured as a
client sees it over a loopback gRPC server (one request at a time, watermark off).

    csm-bench-voices --preset bench --json docs/bench/voices-bench.json
    csm-bench-voices --preset csm-1b --scenarios voice --requests 2 --json docs/bench/voices-csm-1b.json

Scenarios:
  inline        TTFA of a request with a 20 s context recording sent inline (today's path: decoded,
                Mimi-encoded and prefilled every time; prefix cache off)
  voice         the same prompt as a stored voice: first use of each voice (cold prefix cache), then
                again (warm); with the KV bytes each cached voice takes, computed and measured
  conversation  8 speak turns with a ~5 s user turn before each, in one Converse call: TTFA per turn;
                against the same history (user turns and the agent's earlier audio) sent as inline
                context on a Synthesize for every turn (prefix cache off)
  streaming     a reply streamed in LLM-paced tokens: time from the first sentence's last character,
                and from the token that completes it, to the sentence's first audio

Engines: one with the prefix cache off (inline, the conversation's inline baseline) and one with
it on (everything else), run one after the other on the same voices directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np

from csm_bench.loopback import Converse, Loopback, Timed, audio_input, pcm16_input, synthesize
from csm_bench.measure import percentiles
from csm_bench.requests import synthetic_audio
from csm_core.constants import FRAME_MS
from csm_wire import speech_pb2 as pb
from csm_wire import voices_pb2 as vpb
from server.engine.config import EngineConfig
from server.engine.engine import Engine
from server.heap import tune_heap

SCENARIOS = ("inline", "voice", "conversation", "streaming")
VOICE_TEXT = ("Well, let me tell you how this started. I was walking home one evening, the streets still wet from "
              "the rain, and I noticed a small shop I had never seen before. The window was full of old clocks, "
              "each one showing a different time, and I stood there for a long while wondering who had set them.")
USER_TEXTS = ("Can you tell me more about that shop?", "What did the owner say?", "Did you buy anything?",
              "Why do you think the clocks were wrong?", "Have you been back since?", "Would you take me there?",
              "What time would be best?", "Alright, see you then.")
REPLY_TEXTS = ("It sold clocks, and only clocks, from floor to ceiling.", "He said every clock keeps its own time.",
               "I bought a small brass one with a cracked face.", "Maybe they were right, each in its own way.",
               "Once, but the shop had closed for the season.", "Of course, I would love to show you.",
               "Early evening, when the lamps come on.", "See you then, and bring an umbrella.")
STREAMED_REPLY = ("Sure, I can help you with that. The shop opens at nine, and the owner is usually there "
                  "by ten. Bring the clock with you and he will take a look.")
TOKEN_GAP_S = 0.03  # an LLM streaming about 33 tokens per second
REPLY_MS = 1_600  # each agent turn: at most 1.6 s of audio (random weights rarely stop earlier)
SHORT_MS = 3 * FRAME_MS  # TTFA-only requests stop after three frames


def ensure_voices(server: Loopback, n: int, seconds: float) -> list[str]:
    names = []
    for i in range(n):
        name = f"bench-voice-{i}"
        try:
            server.voices.GetVoice(vpb.GetVoiceRequest(name=name), timeout=60)
        except grpc.RpcError:
            # "Take i." first: voices share no prompt chunk, so a first use is a cold one
            segment = pb.Segment(speaker=0, text=f"Take {i}. {VOICE_TEXT}",
                                 audio=audio_input(synthetic_audio(seconds, 100 + i)))
            server.voices.CreateVoice(vpb.CreateVoiceRequest(name=name, segments=[segment]), timeout=600)
        names.append(name)
    return names


def request(text: str, seed: int, max_ms: int, voice: str = "", context=()) -> pb.SynthesizeRequest:
    return pb.SynthesizeRequest(text=text, voice=voice, context=list(context), max_audio_ms=max_ms,
                                sampling=pb.Sampling(seed=seed), output=pb.OutputFormat())


def ttfa_summary(runs: list[Timed]) -> dict:
    return {"requests": len(runs), "ttfa_ms": percentiles([r.ttfa_s for r in runs], with_max=True),
            "server_ttfa_ms": percentiles([r.result.time_to_first_audio_ms / 1000 for r in runs]),
            "prompt_frames": runs[0].result.prompt_frames}


# -- scenarios -----------------------------------------------------------------------------
def run_inline(server: Loopback, n: int, seconds: float) -> dict:
    runs = [synthesize(server, request(REPLY_TEXTS[i % 8], 1000 + i, SHORT_MS, context=[pb.Segment(
        speaker=0, text=f"Take {i}. {VOICE_TEXT}", audio=audio_input(synthetic_audio(seconds, i)))]))
            for i in range(n)]
    return ttfa_summary(runs)


def run_voice(server: Loopback, names: list[str]) -> dict:
    engine = server.engine
    cold, cached_bytes = [], []
    for i, name in enumerate(names):
        before = engine.stats().prefix_cache.bytes_used
        cold.append(synthesize(server, request(REPLY_TEXTS[i % 8], 1000 + i, SHORT_MS, voice=name)))
        cached_bytes.append(engine.stats().prefix_cache.bytes_used - before)
    warm = [synthesize(server, request(REPLY_TEXTS[i % 8], 1000 + i, SHORT_MS, voice=name))
            for i, name in enumerate(names)]
    return {"cold": ttfa_summary(cold), "warm": ttfa_summary(warm), "memory": memory(server, names[0], cached_bytes),
            "prefix_cache": _stats(engine)}


def memory(server: Loopback, voice: str, cached_bytes: list[int]) -> dict:
    """KV bytes of a cached voice: computed from the model's shape, measured as what the prefix
    cache grew by at the voice's first use (whole chunks of its prompt)."""
    info = server.engine.info()
    blocks = server.engine.parts.runner.kv_blocks
    v = server.voices.GetVoice(vpb.GetVoiceRequest(name=voice), timeout=60)
    per_position = blocks.block_bytes // blocks.block_positions
    return {"model": info.preset, "dtype": info.dtype, "bytes_per_position": per_position,
            "voice_prompt_positions": v.prompt_frames, "computed_bytes": v.prompt_frames * per_position,
            "computed_bf16_bytes": v.prompt_frames * per_position * 2 // blocks.blocks.element_size(),
            "block_positions": blocks.block_positions,
            "measured_bytes_per_first_use": sorted(set(cached_bytes))}


def user_turn(k: int, seconds: float) -> pb.Segment:
    return pb.Segment(speaker=1, text=USER_TEXTS[k], audio=audio_input(synthetic_audio(seconds, 200 + k)))


def run_conversation(server: Loopback, voice: str, turns: int, user_s: float) -> dict:
    conv = Converse(server, pb.ConversationConfig(voice=voice, speaker=0, max_audio_ms=REPLY_MS))
    out = []
    for k in range(turns):
        conv.send(context=pb.ContextTurn(turn_id=f"user-{k}", segment=user_turn(k, user_s)))
        conv.until(f"user-{k}", "context")
        t0 = conv.send(speak=pb.SpeakTurn(turn_id=f"agent-{k}", text=REPLY_TEXTS[k], sampling=pb.Sampling(seed=k)))
        conv.until(f"agent-{k}", "audio")
        ttfa = time.perf_counter() - t0
        result, _ = conv.until(f"agent-{k}", "result")
        update, _ = conv.until(f"agent-{k}", "context")
        out.append({"turn": k + 1, "ttfa_ms": round(ttfa * 1000, 1),
                    "server_ttfa_ms": round(result.result.time_to_first_audio_ms, 1),
                    "prompt_frames": result.result.prompt_frames, "frames": result.result.frames,
                    "context_frames": update.context.context_frames,
                    "dropped": list(update.context.dropped_turn_ids)})
    conv.close()
    return {"turns": out, "turn8_over_turn1": round(out[-1]["ttfa_ms"] / out[0]["ttfa_ms"], 2)}


def run_conversation_inline(server: Loopback, voice: str, turns: int, user_s: float) -> dict:
    history, out = [], []
    for k in range(turns):
        history.append(user_turn(k, user_s))
        timed = synthesize(server, request(REPLY_TEXTS[k], k, REPLY_MS, voice=voice, context=history))
        history.append(pb.Segment(speaker=0, text=REPLY_TEXTS[k], audio=pcm16_input(timed.audio)))
        out.append({"turn": k + 1, "ttfa_ms": round(timed.ttfa_s * 1000, 1),
                    "prompt_frames": timed.result.prompt_frames, "context_segments": len(history) - 1})
    return {"turns": out, "turn8_over_turn1": round(out[-1]["ttfa_ms"] / out[0]["ttfa_ms"], 2)}


def run_streaming(server: Loopback, voice: str, turns: int) -> dict:
    """Each turn: the reply's words sent TOKEN_GAP_S apart; the first sentence ends at its period
    and is complete once the next token (with its leading space) arrives."""
    conv = Converse(server, pb.ConversationConfig(voice=voice, speaker=0, max_audio_ms=REPLY_MS))
    words = STREAMED_REPLY.split(" ")
    first_end = next(i for i, w in enumerate(words) if w.endswith("."))
    out = []
    for k in range(turns):
        turn_id = f"streamed-{k}"
        sent: dict[str, float] = {}

        def llm() -> None:
            conv.send(speak=pb.SpeakTurn(turn_id=turn_id, more_text=True, sampling=pb.Sampling(seed=k)))
            for i, word in enumerate(words):
                last = i == len(words) - 1
                t = conv.send(text=pb.TextInput(text=(" " if i else "") + word, end_of_turn=last))
                if i == first_end:
                    sent["period"] = t
                elif i == first_end + 1:
                    sent["complete"] = t
                time.sleep(TOKEN_GAP_S)

        sender = threading.Thread(target=llm)
        sender.start()
        conv.until(turn_id, "audio")
        t_audio = time.perf_counter()
        conv.until(turn_id, "context")
        sender.join()
        out.append({"from_last_character_ms": round((t_audio - sent["period"]) * 1000, 1),
                    "from_completing_token_ms": round((t_audio - sent["complete"]) * 1000, 1),
                    "reply_text_s": round(len(words) * TOKEN_GAP_S, 2)})
    conv.close()
    med = {key: float(np.median([t[key] for t in out])) for key in ("from_last_character_ms",
                                                                     "from_completing_token_ms")}
    return {"token_gap_ms": TOKEN_GAP_S * 1000, "turns": out, "median": med}


def _stats(engine: Engine) -> dict:
    s = engine.stats().prefix_cache
    return {"hits": s.hits, "misses": s.misses, "hit_positions": s.hit_positions, "bytes_used": s.bytes_used,
            "capacity_bytes": s.capacity_bytes, "evictions": s.evictions}


# -- main ----------------------------------------------------------------------------------
def _scenarios(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    if not names or any(s not in SCENARIOS for s in names):
        raise argparse.ArgumentTypeError(f"scenarios are {', '.join(SCENARIOS)}, comma-separated; got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-bench-voices", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="bench", help="bench, csm-1b or tiny (random weights)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--scenarios", type=_scenarios, default=list(SCENARIOS))
    p.add_argument("--requests", type=int, default=16, help="requests per TTFA figure (inline, cold, warm)")
    p.add_argument("--voice-s", type=float, default=20.0, help="seconds of the voice prompt's recording")
    p.add_argument("--user-s", type=float, default=5.0, help="seconds of each user turn's recording")
    p.add_argument("--turns", type=int, default=8, help="speak turns of the conversation")
    p.add_argument("--streamed-turns", type=int, default=5)
    p.add_argument("--max-slots", type=int, default=8)
    p.add_argument("--prefix-cache-mb", type=int, default=512)
    p.add_argument("--json", metavar="PATH", help="write the results here")
    return p


def engine_config(args, prefix_cache_mb: int) -> EngineConfig:
    return EngineConfig(model=args.preset, device=args.device, dtype=args.dtype, max_slots=args.max_slots,
                        watermark=False, prefix_cache_mb=prefix_cache_mb, conversation_idle_s=0)


def main(argv: list[str] | None = None) -> int:
    tune_heap()  # the allocator csm-serve runs with (server/heap.py)
    args = build_parser().parse_args(argv)
    chosen = set(args.scenarios)
    out: dict = {"meta": meta(args)}
    with tempfile.TemporaryDirectory(prefix="csm-bench-voices-") as voices_dir:
        if chosen & {"inline", "conversation"}:
            off = Loopback(engine_config(args, 0), voices_dir)
            try:
                names = ensure_voices(off, args.requests if "voice" in chosen else 1, args.voice_s)
                if "inline" in chosen:
                    out["inline"] = run_inline(off, args.requests, args.voice_s)
                    progress("inline", out["inline"]["ttfa_ms"])
                if "conversation" in chosen:
                    out["conversation_inline"] = run_conversation_inline(off, names[0], args.turns, args.user_s)
                    progress("conversation as inline history", out["conversation_inline"]["turn8_over_turn1"])
            finally:
                off.close()
        on = Loopback(engine_config(args, args.prefix_cache_mb), voices_dir)
        try:
            names = ensure_voices(on, args.requests if "voice" in chosen else 1, args.voice_s)
            if "voice" in chosen:
                out["voice"] = run_voice(on, names)
                progress("voice cold", out["voice"]["cold"]["ttfa_ms"])
                progress("voice warm", out["voice"]["warm"]["ttfa_ms"])
            if "conversation" in chosen:
                out["conversation"] = run_conversation(on, names[0], args.turns, args.user_s)
                progress("conversation", out["conversation"]["turn8_over_turn1"])
            if "streaming" in chosen:
                out["streaming"] = run_streaming(on, names[0], args.streamed_turns)
                progress("streaming", out["streaming"]["median"])
        finally:
            on.close()
    out["ratios"] = ratios(out)
    out["meta"]["load_average_after"] = os.getloadavg()
    text = json.dumps(out, indent=2)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(json.dumps(out["ratios"], indent=2))
    return 0


def ratios(out: dict) -> dict:
    r = {}
    if "voice" in out:
        cold, warm = out["voice"]["cold"]["ttfa_ms"]["p50"], out["voice"]["warm"]["ttfa_ms"]["p50"]
        r["voice_cold_over_warm_p50"] = round(cold / warm, 1)
        if "inline" in out:
            r["inline_over_warm_p50"] = round(out["inline"]["ttfa_ms"]["p50"] / warm, 1)
            r["inline_over_cold_p50"] = round(out["inline"]["ttfa_ms"]["p50"] / cold, 1)
    if "conversation" in out:
        r["conversation_turn8_over_turn1"] = out["conversation"]["turn8_over_turn1"]
    if "conversation_inline" in out:
        r["inline_history_turn8_over_turn1"] = out["conversation_inline"]["turn8_over_turn1"]
        if "conversation" in out:
            r["inline_history_over_conversation_turn8"] = round(
                out["conversation_inline"]["turns"][-1]["ttfa_ms"] / out["conversation"]["turns"][-1]["ttfa_ms"], 1)
    return r


def meta(args) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"preset": args.preset, "device": args.device, "dtype": args.dtype, "watermark": False,
            "commit": commit, "cpu_count": os.cpu_count(), "load_average_before": os.getloadavg(),
            "voice_s": args.voice_s, "user_s": args.user_s, "requests": args.requests,
            "note": "one run on a CPU shared with other work: compare the ratios of this run, not absolute times "
                    "across runs"}


def progress(what: str, value) -> None:
    print(f"{what}: {value}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

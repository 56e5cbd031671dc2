"""csm-converse: a conversation (csm.v1 Converse) fed from standard input or a file; the replies
are written as WAV (one file, or one per turn) and/or played as they arrive.

    printf 'Hello there.\\nHow are you today?\\n' | csm-converse -o replies.wav
    csm-converse dialogue.txt --per-turn replies/ --voice narrator   (replies/turn-1.wav, ...)
    my-llm | csm-converse --stream --play                            (one turn, spoken as it comes)

Line mode (the default): each non-empty line is a turn the server speaks, sent as soon as it is
read; a line starting with '>' is what the other side said (a context turn of --user-speaker,
text only), so that the replies follow the conversation. --stream: the whole input is one
turn whose text streams in as it is read (an LLM's output); the server speaks it sentence by
sentence, the first before the rest has arrived.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import IO

import grpc

from csm_client.connection_args import add_connection_args, connection_from_args
from csm_client.version import add_version_flag
from csm_client.conversation import Conversation
from csm_client.errors import explain, explain_status
from csm_client.speech_client import SpeechClient
from csm_wire import speech_pb2 as pb
from csm_wire import wav

SAMPLE_RATE = 24_000  # the model's rate: replies come as 16-bit PCM at this rate
USER_PREFIX = ">"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-converse", description=__doc__.split("\n\n")[0].strip(),
                                epilog=__doc__.split("\n\n", 2)[2].strip(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", default="-", help="text file to read ('-', the default: standard input)")
    p.add_argument("-o", "--output", help="write every reply, one after another, into this file (WAV, or raw with --format pcm)")
    p.add_argument("--per-turn", metavar="DIR", help="write each reply to DIR/<turn id>.wav (.pcm with --format pcm)")
    p.add_argument("--format", choices=("wav", "pcm"), default="wav",
                   help="file format: wav (16-bit) or pcm (raw s16le, 24 kHz mono); default wav")
    p.add_argument("--play", action="store_true", help="play the replies as they arrive (needs the play extra: pip install 'csm-client[play]')")
    p.add_argument("--stream", action="store_true",
                   help="the whole input is one turn, its text sent as it is read (default: one turn per line)")
    p.add_argument("--voice", default="", metavar="NAME", help="a voice stored on the server (csm-voice create)")
    p.add_argument("--speaker", type=int, default=0, help="speaker id of the replies (default 0)")
    p.add_argument("--user-speaker", type=int, default=1, help="speaker id of '>' lines (default 1)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-audio-ms", type=int, default=0,
                   help="upper bound on the audio of each piece of a turn (0: the server's default)")
    add_connection_args(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error (errors still are)")
    add_version_flag(p)
    return p


class Replies:
    """Where the audio goes: one file for all turns, a file per turn, a player; any of them."""

    def __init__(self, args: argparse.Namespace):
        self._fmt = args.format
        self._one = open(args.output, "wb") if args.output else None
        self._one_bytes = 0
        if self._one is not None and self._fmt == "wav":
            self._one.write(wav.header(SAMPLE_RATE, None))
        self._dir = Path(args.per_turn) if args.per_turn else None
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
        self._turn_files: dict[str, tuple[IO[bytes], list[int]]] = {}
        self._player = None
        if args.play:
            from csm_client.player import Player

            self._player = Player(SAMPLE_RATE)  # RuntimeError names what is missing
        self.written: list[str] = []

    def audio(self, turn_id: str, data: bytes) -> None:
        if self._one is not None:
            self._one.write(data)
            self._one_bytes += len(data)
        if self._dir is not None:
            out, size = self._turn_file(turn_id)
            out.write(data)
            size[0] += len(data)
        if self._player is not None:
            import numpy as np

            self._player.play(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0)

    def _turn_file(self, turn_id: str):
        if turn_id not in self._turn_files:
            path = self._dir / f"{_safe(turn_id)}.{self._fmt}"
            out = open(path, "wb")
            if self._fmt == "wav":
                out.write(wav.header(SAMPLE_RATE, None))
            self._turn_files[turn_id] = (out, [0])
            self.written.append(str(path))
        return self._turn_files[turn_id]

    def end_turn(self, turn_id: str) -> None:
        if turn_id in self._turn_files:
            out, size = self._turn_files.pop(turn_id)
            self._close(out, size[0])

    def close(self) -> None:
        for out, size in self._turn_files.values():
            self._close(out, size[0])
        self._turn_files.clear()
        if self._one is not None:
            self._close(self._one, self._one_bytes)
            self.written.insert(0, self._one.name)
            self._one = None
        if self._player is not None:
            self._player.close()

    def _close(self, out: IO[bytes], data_bytes: int) -> None:
        if self._fmt == "wav":  # the real sizes, now that they are known
            out.seek(0)
            out.write(wav.header(SAMPLE_RATE, data_bytes))
        out.close()


def _safe(turn_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in turn_id) or "turn"


def feed(conv: Conversation, source: IO[str], args: argparse.Namespace, failed: list[BaseException]) -> None:
    """Sends the input as it is read (in its own thread, so replies play while it is read)."""
    options = {"max_audio_ms": args.max_audio_ms}
    try:
        if args.stream:
            conv.speak("", more_text=True, **options)
            for line in source:
                conv.send_text(line)
            conv.send_text("", end_of_turn=True)
        else:
            for line in source:
                text = line.strip()
                if text.startswith(USER_PREFIX):
                    conv.add_context(text[len(USER_PREFIX):].strip(), speaker=args.user_speaker)
                elif text:
                    conv.speak(text, **options)
    except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
        failed.append(exc)
        conv.cancel()
    finally:
        conv.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.output or args.per_turn or args.play):
        parser.error("say where the replies go: -o FILE, --per-turn DIR and/or --play")
    if args.input != "-" and not Path(args.input).is_file():
        parser.error(f"input file {args.input!r} does not exist")
    connection = connection_from_args(args, parser)
    try:
        replies = Replies(args)
    except RuntimeError as exc:
        parser.error(str(exc))
    source = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")
    start = time.monotonic()
    turns, failures, code = 0, 0, 0
    feed_failed: list[BaseException] = []
    with SpeechClient(connection=connection) as client:
        conv = client.converse(voice=args.voice, speaker=args.speaker, encoding="pcm", temperature=args.temperature,
                               top_k=args.top_k, seed=args.seed, max_audio_ms=args.max_audio_ms,
                               timeout=args.timeout)
        feeder = threading.Thread(target=feed, args=(conv, source, args, feed_failed), daemon=True)
        feeder.start()
        try:
            for message in conv:
                kind = message.WhichOneof("kind")
                if kind == "audio":
                    replies.audio(message.turn_id, message.audio.data)
                elif kind == "result":
                    turns += 1
                    replies.end_turn(message.turn_id)
                    _progress(args, f"{message.turn_id}: {message.result.audio_ms / 1000:.2f} s of audio, "
                                    f"ended by {_reason(message.result)}")
                elif kind == "error":
                    failures += 1
                    print(f"csm-converse: {message.turn_id} failed: {explain_status(message.error)}", file=sys.stderr)
        except grpc.RpcError as error:
            if not feed_failed:
                print(f"csm-converse: {explain(error)}", file=sys.stderr)
            code = 1
        except KeyboardInterrupt:
            conv.cancel()
            print("csm-converse: interrupted; the conversation was cancelled", file=sys.stderr)
            code = 130
        finally:
            replies.close()
            if source is not sys.stdin:
                source.close()
    if feed_failed:
        print(f"csm-converse: reading {args.input!r} failed: {feed_failed[0]}", file=sys.stderr)
        code = 1
    if code == 0 and failures:
        code = 1
    if replies.written:
        _progress(args, f"wrote {', '.join(replies.written)}: {turns} turns in {time.monotonic() - start:.2f} s")
    return code


def _progress(args: argparse.Namespace, line: str) -> None:
    if not args.quiet:
        print(line, file=sys.stderr)


def _reason(result: pb.SynthesisResult) -> str:
    return pb.FinishReason.Name(result.finish_reason).removeprefix("FINISH_REASON_").lower()


if __name__ == "__main__":
    sys.exit(main())

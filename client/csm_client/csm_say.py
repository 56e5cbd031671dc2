"""csm-say: speak a line through a csm-serve, streaming the audio into a file as it arrives.

    csm-say "Hello there." -o hello.wav
    csm-say "And you are?" -o reply.opus --speaker 1 \\
        --context hello.wav --context-text "Hello there." --context-speaker 0
    csm-say "Hello in a stored voice." --voice narrator -o hello.wav      (csm-voice create)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import grpc

from csm_wire import wav
from csm_client.connection import DEFAULT_TARGET, Connection
from csm_client.errors import explain
from csm_wire import speech_pb2 as pb
from csm_client.request import ContextTurn
from csm_client.speech_client import SpeechClient
from csm_client.version import add_version_flag

FORMATS = ("wav", "pcm", "opus")
EXTENSIONS = {".wav": "wav", ".pcm": "pcm", ".raw": "pcm", ".opus": "opus", ".ogg": "opus"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-say", description="Synthesize speech with a csm-serve (csm.v1).")
    p.add_argument("text", help="what to say ('-' reads it from standard input)")
    p.add_argument("-o", "--output", default=None,
                   help="output file ('-' for standard output); default out.wav / out.pcm / out.opus")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="wav (16-bit), pcm (raw s16le) or opus (Ogg/Opus); default from the -o extension, else wav")
    p.add_argument("--sample-rate", type=int, default=0, help="output rate in Hz (0: the model's 24000)")
    p.add_argument("--speaker", type=int, default=0, help="speaker id of the generated turn")
    p.add_argument("--voice", default="", metavar="NAME",
                   help="a voice stored on the server (csm-voice create); its segments come before any --context")
    p.add_argument("--context", action="append", default=[], metavar="FILE",
                   help="audio of an earlier turn (WAV/FLAC/Ogg); repeat for several turns, oldest first")
    p.add_argument("--context-text", action="append", default=[], metavar="TEXT",
                   help="transcript of each --context, in the same order")
    p.add_argument("--context-speaker", action="append", type=int, default=[], metavar="N",
                   help="speaker of each --context, in the same order (default 0)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-audio-ms", type=int, default=0, help="upper bound on the audio length (0: server default)")
    p.add_argument("--server", default=os.environ.get("CSM_SERVER", DEFAULT_TARGET),
                   help=f"host:port [env CSM_SERVER; default {DEFAULT_TARGET}]")
    p.add_argument("--token", default=os.environ.get("CSM_TOKEN"), help="bearer token [env CSM_TOKEN]")
    p.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    p.add_argument("--ca-cert", help="PEM of the CA that signed the server's certificate (implies --tls)")
    p.add_argument("--client-cert", help="PEM client certificate for mTLS (with --client-key)")
    p.add_argument("--client-key", help="PEM client key for mTLS")
    p.add_argument("--timeout", type=float, default=None, help="deadline of the whole call in seconds")
    p.add_argument("--play", action="store_true", help="play the audio while it arrives")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress or summary on standard error (errors are always printed)")
    add_version_flag(p)
    return p


def context_turns(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[ContextTurn]:
    files, texts, speakers = args.context, args.context_text, args.context_speaker
    if len(texts) != len(files):
        parser.error(f"give one --context-text per --context ({len(files)} files, {len(texts)} texts)")
    if speakers and len(speakers) != len(files):
        parser.error(f"give one --context-speaker per --context, or none ({len(files)} files, {len(speakers)} speakers)")
    speakers = speakers or [0] * len(files)
    for path in files:
        if not Path(path).is_file():
            parser.error(f"context audio {path!r} does not exist")
    return [ContextTurn.from_file(f, t, s) for f, t, s in zip(files, texts, speakers)]


class Progress:
    """One status line on standard error, rewritten in place on a terminal."""

    def __init__(self, quiet: bool):
        self._quiet = quiet
        self._tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.first_audio_s: float | None = None
        self.audio_s = 0.0

    def chunk(self, end_ms: float) -> None:
        if self.first_audio_s is None:
            self.first_audio_s = time.monotonic() - self.start
        self.audio_s = end_ms / 1000.0
        if self._tty and not self._quiet:
            print(f"\r{self.audio_s:6.2f} s of audio received; first audio after {self.first_audio_s:.2f} s",
                  end="", file=sys.stderr, flush=True)

    def done(self, message: str) -> None:
        if not self._quiet:
            print(("\r" if self._tty else "") + message, file=sys.stderr)

    def fail(self, message: str) -> None:
        """An error: printed even with --quiet."""
        print(("\r" if self._tty and not self._quiet else "") + message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    text = sys.stdin.read().strip() if args.text == "-" else args.text
    fmt = args.format or EXTENSIONS.get(Path(args.output or "").suffix.lower(), "wav")
    output = args.output or f"out.{fmt}"
    context = context_turns(args, parser)
    try:
        connection = Connection(target=args.server, token=args.token, tls=args.tls, ca_cert=args.ca_cert,
                                client_cert=args.client_cert, client_key=args.client_key)
    except ValueError as exc:
        parser.error(str(exc))

    player = decoder = None
    if args.play:
        from csm_client.player import ChunkDecoder, Player

        rate = args.sample_rate or 24_000
        try:
            player, decoder = Player(rate), ChunkDecoder(fmt, rate)
        except RuntimeError as exc:
            parser.error(str(exc))

    progress = Progress(args.quiet)
    to_stdout = output == "-"
    with SpeechClient(connection=connection) as client, \
            (nullcontext(sys.stdout.buffer) if to_stdout else open(output, "wb")) as out:
        stream = client.stream(
            text, speaker=args.speaker, voice=args.voice, context=context, encoding=fmt,
            sample_rate=args.sample_rate, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
            max_audio_ms=args.max_audio_ms, timeout=args.timeout)
        warn_if_random_weights(client)  # while the server starts on the stream
        first_bytes = b""
        written = 0
        try:
            for chunk in stream:
                out.write(chunk.data)
                out.flush()
                if len(first_bytes) < wav.HEADER_BYTES:
                    first_bytes += chunk.data[: wav.HEADER_BYTES - len(first_bytes)]
                written += len(chunk.data)
                progress.chunk(chunk.start_ms + chunk.duration_ms)
                if player is not None:
                    player.play(decoder.decode(chunk.data))
        except (grpc.RpcError, KeyboardInterrupt) as error:
            if isinstance(error, KeyboardInterrupt):
                stream.cancel()
                failure, code = "interrupted; the request was cancelled", 130
            else:
                failure, code = explain(error), 1
        else:
            failure, code = None, 0
            if fmt == "wav" and not to_stdout and written >= wav.HEADER_BYTES:
                out.seek(0)
                out.write(wav.exact_header(first_bytes, written - wav.HEADER_BYTES))
        finally:
            if player is not None:
                player.close()
    if failure is not None:
        if not to_stdout:
            Path(output).unlink(missing_ok=True)  # no half-written file that looks like a result
        progress.fail(f"csm-say: {failure}")
        return code

    result = stream.result
    first = f"{progress.first_audio_s:.2f} s" if progress.first_audio_s is not None else "never"
    progress.done(
        f"wrote {'standard output' if to_stdout else output}: {result.audio_ms / 1000:.2f} s of audio, "
        f"{result.frames} frames, ended by {_reason(result)}; first audio after {first}, "
        f"total {time.monotonic() - progress.start:.2f} s")
    return 0


def warn_if_random_weights(client: SpeechClient) -> None:
    """One line on standard error when the server's model has random weights (its audio is noise)."""
    try:
        info = client.model_info(timeout=10)
    except grpc.RpcError:
        return  # the stream reports what is wrong with the server
    if info.random_weights:
        print(f"csm-say: the server's model {info.model_source!r} has random weights: "
              "its audio is noise, not speech", file=sys.stderr)


def _reason(result: pb.SynthesisResult) -> str:
    return pb.FinishReason.Name(result.finish_reason).removeprefix("FINISH_REASON_").lower()


if __name__ == "__main__":
    sys.exit(main())

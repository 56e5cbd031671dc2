"""csm-voice: manage the voices stored by a csm-serve deployment.

    csm-voice create narrator --audio take1.wav --text "What take one says." \\
                              --audio take2.wav --text "What take two says." --description "studio, consented"
    csm-voice list
    csm-voice get narrator
    csm-voice delete narrator
    csm-say "Hello in the narrator's voice." --voice narrator -o hello.wav
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc
from google.protobuf.json_format import MessageToDict

from csm_client.connection_args import add_connection_args, connection_from_args
from csm_client.errors import explain
from csm_client.request import ContextTurn
from csm_client.speech_client import SpeechClient
from csm_client.version import add_version_flag
from csm_wire import voices_pb2 as vpb


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="csm-voice", description="Create, list, inspect and delete stored voices.")
    add_connection_args(p)
    add_version_flag(p)
    commands = p.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="store a voice made of one or more recorded segments")
    create.add_argument("name", help="1-64 characters of a-z, 0-9, '-' and '_'")
    create.add_argument("--audio", action="append", default=[], required=True, metavar="FILE",
                        help="a recording of the voice (WAV/FLAC/Ogg, mono); repeat for several segments")
    create.add_argument("--text", action="append", default=[], metavar="TEXT",
                        help="transcript of each --audio, in the same order")
    create.add_argument("--speaker", action="append", type=int, default=[], metavar="N",
                        help="speaker id of each --audio, in the same order (default 0)")
    create.add_argument("--description", default="", help="free text: source, consent, style")
    commands.add_parser("list", help="every stored voice, with the storage in use")
    get = commands.add_parser("get", help="one voice in detail")
    get.add_argument("name")
    delete = commands.add_parser("delete", help="delete a voice (running streams keep it)")
    delete.add_argument("name")
    delete.add_argument("--missing-ok", action="store_true", help="succeed when there is no such voice")
    for command in (create, get, commands.choices["list"]):
        command.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def segments_of(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[ContextTurn]:
    files, texts, speakers = args.audio, args.text, args.speaker or [0] * len(args.audio)
    if len(texts) != len(files):
        parser.error(f"give one --text per --audio ({len(files)} files, {len(texts)} texts)")
    if len(speakers) != len(files):
        parser.error(f"give one --speaker per --audio, or none ({len(files)} files, {len(speakers)} speakers)")
    for path in files:
        if not Path(path).is_file():
            parser.error(f"audio file {path!r} does not exist")
    return [ContextTurn.from_file(f, t, s) for f, t, s in zip(files, texts, speakers)]


def describe(voice: vpb.Voice) -> str:
    created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(voice.create_time.seconds))
    lines = [
        f"{voice.name}: {len(voice.segments)} segments, {voice.audio_ms / 1000:.1f} s of audio, "
        f"{voice.prompt_frames} prompt positions, {voice.size_bytes} bytes",
        f"  created {created}; {voice.content_hash}; codec {voice.codec}",
    ]
    if voice.description:
        lines.append(f"  {voice.description}")
    for i, seg in enumerate(voice.segments):
        lines.append(f"  [{i}] speaker {seg.speaker}, {seg.audio_ms / 1000:.1f} s: {seg.text}")
    return "\n".join(lines)


def as_json(message) -> str:
    return json.dumps(MessageToDict(message, always_print_fields_with_no_presence=True), indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    connection = connection_from_args(args, parser)
    segments = segments_of(args, parser) if args.command == "create" else []
    with SpeechClient(connection=connection) as client:
        try:
            if args.command == "create":
                voice = client.create_voice(args.name, segments, description=args.description, timeout=args.timeout)
                print(as_json(voice) if args.json else describe(voice))
            elif args.command == "get":
                voice = client.get_voice(args.name, timeout=args.timeout)
                print(as_json(voice) if args.json else describe(voice))
            elif args.command == "list":
                print_list(client, args)
            else:
                deleted = client.delete_voice(args.name, allow_missing=args.missing_ok, timeout=args.timeout)
                print(f"deleted {args.name}" if deleted else f"there was no voice {args.name}", file=sys.stderr)
        except grpc.RpcError as error:
            print(f"csm-voice: {explain(error)}", file=sys.stderr)
            return 1
    return 0


def print_list(client: SpeechClient, args: argparse.Namespace) -> None:
    voices, token, page = [], "", None
    while page is None or token:
        page = client.list_voices_page(token, timeout=args.timeout)
        voices.extend(page.voices)
        token = page.next_page_token
    if args.json:  # the fields of one ListVoicesResponse holding every page, as grpcurl prints them
        whole = vpb.ListVoicesResponse(voices=voices, total_voices=page.total_voices,
                                       total_size_bytes=page.total_size_bytes, max_voices=page.max_voices,
                                       max_size_bytes=page.max_size_bytes)
        print(as_json(whole))
        return
    for voice in voices:
        print(f"{voice.name:<32} {len(voice.segments):>3} seg {voice.audio_ms / 1000:>7.1f} s "
              f"{voice.prompt_frames:>5} pos  {voice.content_hash[:19]}")
    print(f"{page.total_voices} of at most {page.max_voices} voices, "
          f"{page.total_size_bytes} of at most {page.max_size_bytes} bytes", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

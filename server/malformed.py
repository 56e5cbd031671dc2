"""Request bytes that do not parse as the rpc's message: what a caller can be told about them.

protobuf's parser says only "wire format was corrupt" or "string field had bad UTF-8". This
module walks the bytes along the message's descriptor to name the field, so a caller hears
`context[1].text: not valid UTF-8` instead of an UNKNOWN status with a Python exception class.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from server.engine.types import Violation

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Corrupt(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Malformed:
    """Stands for a request message that could not be parsed (the handler answers INVALID_ARGUMENT)."""

    message_name: str
    violations: tuple[Violation, ...]


def explain(descriptor: Descriptor | None, data: bytes) -> Malformed:
    name = descriptor.full_name if descriptor is not None else "request"
    if descriptor is not None:
        try:
            found = _walk(descriptor, memoryview(data), "")
        except _Corrupt:
            found = []
        if found:
            return Malformed(name, tuple(found))
    return Malformed(name, (Violation("(request)", f"the bytes are not a valid {name} message: "
                                                   "send a message serialized with the csm.v1 protos"),))


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise _Corrupt
        b = buf[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7


def _walk(desc: Descriptor, buf: memoryview, prefix: str) -> list[Violation]:
    """Violations of string fields holding invalid UTF-8, recursing into messages."""
    found: list[Violation] = []
    seen: dict[int, int] = {}  # field number -> occurrences so far (indexes repeated fields)
    i = 0
    while i < len(buf):
        tag, i = _varint(buf, i)
        number, wire = tag >> 3, tag & 7
        if wire == _VARINT:
            _, i = _varint(buf, i)
            continue
        if wire in (_I64, _I32):
            i += 8 if wire == _I64 else 4
            continue
        if wire != _LEN:
            raise _Corrupt
        size, i = _varint(buf, i)
        if i + size > len(buf):
            raise _Corrupt
        payload, i = buf[i : i + size], i + size
        field = desc.fields_by_number.get(number)
        if field is None:
            continue
        index = seen.get(number, 0)
        seen[number] = index + 1
        path = prefix + field.name + (f"[{index}]" if field.is_repeated else "")
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                bytes(payload).decode("utf-8")
            except UnicodeDecodeError as e:
                found.append(Violation(path, f"not valid UTF-8 (byte {e.start}): string fields must be UTF-8 text"))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            found.extend(_walk(field.message_type, payload, path + "."))
    return found

"""The framed protocol between the local client and the remote agent.

After the bootstrap (see :mod:`tether.remote.bootstrap`), both directions of
the ssh channel carry frames: one type byte, a 4-byte big-endian length, the
payload. Control payloads are JSON; argv elements travel as base64 of their
exact bytes, so quotes, ``$()``, newlines and non-UTF-8 bytes arrive intact and
nothing is ever parsed by a remote shell.

client -> agent:  SPEC (once), CANCEL (reason; a second one skips to the last
                  policy step), STDIN (bytes for the job's stdin; empty: EOF)
agent  -> client: HELLO (once), STARTED, STDOUT, STDERR, ACK (a cancel was
                  received), STDIN_CREDIT (stdin bytes the job has taken, so
                  the client may send more), ERROR (the job could not
                  start), RESULT (last)
"""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

#: Bumped whenever frames or payloads change incompatibly.
PROTOCOL = 1

SPEC = b"S"
CANCEL = b"C"
HELLO = b"H"
STARTED = b"J"
STDOUT = b"O"
STDERR = b"E"
ACK = b"A"
ERROR = b"X"
RESULT = b"R"
STDIN = b"I"
STDIN_CREDIT = b"i"

#: Stdin bytes the client may have in flight before the agent credits them:
#: a job that does not read its stdin must not make the agent buffer it all.
STDIN_WINDOW = 1 << 20

_HEADER = struct.Struct(">cI")
HEADER_SIZE = _HEADER.size
#: Largest frame either side accepts (a report of a huge tree fits easily).
MAX_FRAME = 64 << 20


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def json_frame(kind: bytes, data: Any) -> bytes:
    return frame(kind, json.dumps(data, separators=(",", ":")).encode())


def parse_header(header: bytes) -> tuple[bytes, int]:
    kind, size = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ProtocolError(f"frame of {size} bytes is too large")
    return kind, size


class FrameBuffer:
    """Accumulates bytes; yields complete frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buf += data
        out = []
        while len(self._buf) >= HEADER_SIZE:
            kind, size = parse_header(bytes(self._buf[:HEADER_SIZE]))
            if len(self._buf) < HEADER_SIZE + size:
                break
            out.append((kind, bytes(self._buf[HEADER_SIZE : HEADER_SIZE + size])))
            del self._buf[: HEADER_SIZE + size]
        return out


def load_json(payload: bytes) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"bad JSON payload: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError("payload is not a JSON object")
    return data


def encode_argv(argv: Sequence[str | bytes]) -> list[str]:
    """argv -> base64 of each element's exact bytes (str through os.fsencode)."""
    return [
        base64.b64encode(a if isinstance(a, bytes) else os.fsencode(a)).decode("ascii")
        for a in argv
    ]


def decode_argv(data: object) -> list[bytes]:
    if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
        raise ProtocolError("argv is not a list of strings")
    try:
        return [base64.b64decode(a.encode("ascii"), validate=True) for a in data]
    except ValueError as err:
        raise ProtocolError(f"argv is not base64: {err}") from None


def encode_env(env: dict[str, str]) -> dict[str, str]:
    return {
        base64.b64encode(os.fsencode(k)).decode(): base64.b64encode(os.fsencode(v)).decode()
        for k, v in env.items()
    }


def decode_env(data: object) -> dict[bytes, bytes]:
    if not isinstance(data, dict):
        raise ProtocolError("env is not an object")
    try:
        return {
            base64.b64decode(str(k), validate=True): base64.b64decode(str(v), validate=True)
            for k, v in data.items()
        }
    except ValueError as err:
        raise ProtocolError(f"env is not base64: {err}") from None

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

from tether._compact_json import dumps as _compact_dumps

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: Bumped whenever frames or payloads change incompatibly.
PROTOCOL = 3

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

#: A frame's header: its kind (one byte), then its payload's length (4 bytes,
#: big-endian). Built by hand: struct is imported by nothing else a remote
#: host's engine loads.
HEADER_SIZE = 5
#: Largest frame either side accepts (a report of a huge tree fits easily).
MAX_FRAME = 64 << 20
#: Largest payload of the agent's small frames: the client parses them, and
#: a frame of nested JSON becomes objects ~25 times its size in memory.
MAX_CONTROL_FRAME = 64 << 10
CONTROL_FRAMES = frozenset({HELLO, STARTED, ACK, ERROR, STDIN_CREDIT})


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    if len(kind) != 1:
        raise ValueError(f"a frame's kind is one byte, not {kind!r}")
    return kind + len(payload).to_bytes(4, "big") + payload


def json_frame(kind: bytes, data: Any) -> bytes:
    # json.dumps(data, separators=(",", ":")), the same text, without the
    # json package (a remote host's engine would import it for nothing else).
    return frame(kind, _compact_dumps(data).encode())


def parse_header(header: bytes) -> tuple[bytes, int]:
    if len(header) != HEADER_SIZE:
        raise ValueError(f"a frame header is {HEADER_SIZE} bytes, not {len(header)}")
    kind, size = header[:1], int.from_bytes(header[1:], "big")
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


class _DecoderContext:
    """What ``json.JSONDecoder()`` hands its C scanner (``_json.make_scanner``
    reads these attributes), with json's defaults: strict strings, floats and
    ints as such, NaN and the infinities accepted."""

    def __init__(self) -> None:
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        inf = float("inf")
        self.parse_constant = {"-Infinity": -inf, "Infinity": inf, "NaN": float("nan")}.__getitem__
        self.memo: dict[str, str] = {}


#: json.loads's C scanner, made once ([None]: not available here).
_scanner: list[Any] = []
#: The fast path's "ask json.loads".
_SLOW = object()


def _fast_loads(payload: bytes) -> object:
    """``json.loads(payload)`` where it is plain: UTF-8, no whitespace around
    the one value, read whole by json's own C scanner; else :data:`_SLOW`.

    json.loads(bytes) picks another encoding only for a BOM or a NUL among
    the first bytes, which make this scan fail or stop short; whitespace
    around the value (json skips it) makes it fail or stop short too. So a value returned
    here is the one json.loads returns; everything else (errors included)
    is json's to say, and only then is the json package imported.
    """
    if not _scanner:
        try:
            from _json import make_scanner

            # typeshed's make_scanner wants a JSONDecoder; it reads only these.
            _scanner.append(make_scanner(_DecoderContext()))  # type: ignore[arg-type,unused-ignore]
        except ImportError:
            _scanner.append(None)
    scan = _scanner[0]
    if scan is None:
        return _SLOW
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return _SLOW
    try:
        value, end = scan(text, 0)
    except Exception:  # StopIteration, a JSONDecodeError, RecursionError: json says
        return _SLOW
    return value if end == len(text) else _SLOW


def load_json(payload: bytes) -> dict[str, Any]:
    data = _fast_loads(payload)
    if data is _SLOW:
        import json

        try:
            data = json.loads(payload)
        except (ValueError, RecursionError) as err:
            # ValueError: bad UTF-8 or JSON, an integer of too many digits;
            # RecursionError: nesting deeper than the interpreter's stack.
            raise ProtocolError(f"bad JSON payload: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise ProtocolError("payload is not a JSON object")
    return data

"""The remote agent's start-up shortcuts (issue 15), each with the guard it needs.

Stage 1 turns cyclic collection off while the engine loads (the collections
it made found nothing to free); the agent must turn it back on, frozen,
before anything that may run for hours: a job's supervision or an
out-of-band recovery. The engine reads JSON (the offer, the SPEC and every
control frame) without the json package, through json's own C scanner where
the text is plain: what it returns must be what json.loads returns, and
everything else json's answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tether.remote import bootstrap, protocol
from tether.spec import JobSpec

# Run as the engine runs on a host: collection off (as stage 1 leaves it),
# the agent's main on stdin/stdout; supervise() notes the collector's state.
_PROBE = """
import gc, json, os, sys
gc.disable()
import tether.supervise as S
from tether.remote import agent
seen = []
real = S.supervise
def probe(*args, **kwargs):
    seen.append([gc.isenabled(), gc.get_freeze_count() > 0])
    return real(*args, **kwargs)
S.supervise = probe
code = agent.main(dict(os.environ), "installed")
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "seen": seen}, f)
"""


def test_stage1_loads_the_engine_with_the_collector_off() -> None:
    code = compile(bootstrap.STAGE1, "<tether-stage1>", "exec", dont_inherit=True)
    # gc.disable() comes before any other import; json is not one of them.
    assert code.co_names[:3] == ("gc", "disable", "marshal"), code.co_names[:3]
    assert "json" not in code.co_names


def test_the_agent_supervises_with_the_collector_on_and_start_up_frozen(
    tmp_path: Path,
) -> None:
    """Without gc_back_on the job would run, for as long as it runs, with no
    cyclic collection at all (stage 1 turned it off)."""
    notes = tmp_path / "seen.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", _PROBE, str(notes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        spec = {"op": "run", "stdin": False, **JobSpec(argv=("true",)).to_wire()}
        proc.stdin.write(protocol.json_frame(protocol.SPEC, spec))
        proc.stdin.flush()
        frames = protocol.FrameBuffer()
        kinds: list[bytes] = []
        while protocol.RESULT not in kinds:
            data = os.read(proc.stdout.fileno(), 1 << 16)
            assert data, f"the agent ended before its RESULT (frames {kinds})"
            kinds += [kind for kind, _payload in frames.feed(data)]
        proc.stdin.close()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert kinds[0] == protocol.HELLO and protocol.STARTED in kinds, kinds
    assert json.loads(notes.read_text()) == {"code": 0, "seen": [[True, True]]}


def test_frames_keep_their_wire_format_without_struct() -> None:
    """The header is built by hand (struct is left unimported on the host):
    byte for byte what ``struct.pack(">cI")`` made, read back alike, and a
    malformed kind or header is refused."""
    import struct

    for size in (0, 1, 255, 256, 65536, 70000, (1 << 24) + 3):
        payload = b"x" * size
        data = protocol.frame(protocol.STDOUT, payload)
        assert data[: protocol.HEADER_SIZE] == struct.pack(">cI", b"O", size)
        assert protocol.parse_header(data[: protocol.HEADER_SIZE]) == (b"O", size)
        assert data[protocol.HEADER_SIZE :] == payload
    # Four distinct bytes: the length is big-endian.
    assert protocol.parse_header(b"R\x03\x02\x01\x04") == (b"R", 0x03020104)
    for kind in (b"", b"OO"):
        with pytest.raises(ValueError):
            protocol.frame(kind, b"")
    for header in (b"O\0\0\0", b"O\0\0\0\0\0"):
        with pytest.raises(ValueError):
            protocol.parse_header(header)
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_header(struct.pack(">cI", b"O", protocol.MAX_FRAME + 1))


# -- JSON without the json package ---------------------------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and the infinities too (json's defaults write and read them)
    | st.text(),  # control characters and lone surrogates included
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def _json_payloads(draw: st.DrawFn) -> bytes:
    """Texts as a peer may send them: json.dumps in any of its styles, then
    perhaps spoilt (whitespace or bytes around it, a cut, a byte changed)."""
    text = json.dumps(
        draw(_json_values),
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])),
        indent=draw(st.sampled_from([None, 1])),
    )
    data = text.encode("utf-8", "surrogatepass")
    how = draw(st.sampled_from(["as is", "around", "cut", "byte", "bytes"]))
    if how == "around":
        data = draw(st.binary(max_size=3)) + data + draw(st.binary(max_size=3))
    elif how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "byte" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif how == "bytes":
        data = draw(st.binary(max_size=12))
    return data


def _same(value: Any) -> str:
    # NaN is not equal to itself: compare what json writes (and the types).
    return repr(value) + json.dumps(value)


def _json_says(data: bytes) -> object:
    try:
        return _same(json.loads(data))
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return "error"


@given(_json_payloads())
@example(b'{"a":1}x')  # one value, then more: json's "Extra data"
@example(b' {"a":1}')  # whitespace before it: json skips it
@example(b'{"a":"\x01"}')  # a raw control character in a string: not strict JSON
@example(b'{"a":"\xc3\xa9"}')  # UTF-8, read as UTF-8
@example(b'{"a":"\xed\xa0\x80"}')  # a lone surrogate, as json reads it (surrogatepass)
@example(b"\xef\xbb\xbf{}")  # a UTF-8 BOM
@example(b'{\x00"a":1}')  # a NUL among the first bytes: UTF-16 to json
@example(b'{"a":NaN,"b":-Infinity}')
def test_the_frames_json_reader_says_what_json_loads_says(data: bytes) -> None:
    try:
        got: object = _same(protocol.load_json(data))
    except protocol.ProtocolError:
        got = "error"
    want = _json_says(data)
    if want != "error" and json.loads(data).__class__ is not dict:
        want = "error"  # load_json takes objects only
    assert got == want, data


def _stage1_offer() -> Any:
    # Stage 1's reader alone (running all of stage 1's top would turn this
    # process's collector off).
    text = bootstrap.STAGE1.split("\ndef _offer")[1].split("\ndef ")[0]
    namespace: dict[str, Any] = {}
    exec(compile("import os\ndef _offer" + text, "<stage1-offer>", "exec"), namespace)
    return namespace["_offer"]


@given(_json_payloads())
@example(b'{"version": "1.0", "protocol": 2, "sha256": "ab"}')
@example(b'{"a": 1} x')
@example(b'{"a": "\x01"}')  # a raw control character in a string: not strict JSON
@example(b'{"a": 1}  ')
@example(b"\xef\xbb\xbf{}")
def test_stage1_reads_the_offer_as_json_loads_does(data: bytes) -> None:
    offer = _stage1_offer()
    line = data + b"\n"  # as _line() returns it
    try:
        got: object = _same(offer(line))
    except ValueError:
        got = "error"
    assert got == _json_says(line), line

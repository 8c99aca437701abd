"""The remote agent's start-up shortcuts (issue 15), each with the guard it needs.

Stage 1 turns cyclic collection off while the engine loads (the collections
it made found nothing to free); the agent must turn it back on, frozen,
before anything that may run for hours: a job's supervision or an
out-of-band recovery.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    # gc.disable() comes before the first import of anything else.
    first = bootstrap.STAGE1.split("import json")[0]
    assert "gc.disable()" in first, first
    assert code.co_names[:3] == ("gc", "disable", "json"), code.co_names[:3]


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

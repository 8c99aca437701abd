"""Host list compression (the inverse of expand) and the fan-out's output sink (no sshd)."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.remote import client, protocol
from tether.remote.client import OutputSink
from tether.remote.hostlist import compress, expand


def test_compress_folds_runs_and_keeps_padding() -> None:
    assert compress(["node01", "node02", "node03", "node07"]) == "node[01-03,07]"
    assert compress(["n10", "n9", "n11"]) == "n[9-11]"
    assert compress(["n098", "n099", "n100"]) == "n[098-100]"
    assert compress(["h01"]) == "h01"
    assert compress(["b", "a", "a"]) == "a,b"
    assert compress(["r1-n1", "r1-n2", "r2-n1"]) == "r1-n[1-2],r2-n1"
    assert compress(["root@h01", "root@h02"]) == "root@h[01-02]"
    assert compress(["gpu1", "node2", "node1"]) == "gpu1,node[1-2]"
    # "9" and "010" are not one range: [9-10] would read back as 9,10.
    assert compress(["n9", "n010"]) == "n[9,010]"
    # An IPv6 label is kept as it is.
    assert compress(["[::1]:22"]) == "[::1]:22"


names = st.lists(
    st.builds(
        lambda prefix, number, width, suffix: f"{prefix}{str(number).zfill(width)}{suffix}",
        st.sampled_from(["n", "node", "r1-n", "a.b"]),
        st.integers(0, 120),
        st.integers(0, 3),
        st.sampled_from(["", "-ib", ".x"]),
    )
    | st.sampled_from(["login", "gpu", "root@h1"]),
    max_size=40,
)


@given(names)
def test_compress_round_trips_through_expand(hosts: list[str]) -> None:
    folded = compress(hosts)
    assert sorted(expand(folded) if hosts else []) == sorted(set(hosts))


def test_sink_without_labels_keeps_lines_whole() -> None:
    out = io.BytesIO()
    sink = OutputSink(True, stdout=out, stderr=io.BytesIO(), labels=False)
    sink.write("h1", protocol.STDOUT, b"par")
    sink.write("h2", protocol.STDOUT, b"other\n")
    sink.write("h1", protocol.STDOUT, b"tial\nrest")
    sink.finish("h1")
    assert out.getvalue() == b"other\npartial\nrest\n"


def test_gathering_sink_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "GATHER_LIMIT", 10)
    out, err = io.BytesIO(), io.BytesIO()
    sink = OutputSink(True, stdout=out, stderr=err, gather=True)
    sink.write("h1", protocol.STDOUT, b"123456")
    sink.write("h2", protocol.STDOUT, b"123456")
    sink.write("h2", protocol.STDERR, b"streams\n")
    assert sink.gathered() == {"h1": b"123456", "h2": b"1234"}
    assert sink.truncated == {"h2"}
    assert out.getvalue() == b""
    assert err.getvalue() == b"h2: streams\n"

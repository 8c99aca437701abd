"""tether.aio: cancelling the awaiting task, in every form asyncio and anyio
offer, terminates the whole tree with the policy — a grandchild that ignores
TERM included — before control returns to the canceller."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

import tether
import tether.aio
from helpers import SRC, alive, wait_for_file
from tether.process import read_process

POLICY = "TERM,0.5s,KILL"


def _stubborn(ready: Path) -> list[str]:
    """A leader whose child ignores TERM (only the policy's KILL ends it)."""
    inner = f"trap '' TERM; echo $$ >{ready}; exec sleep 3600"
    return ["sh", "-c", f'sh -c "{inner}" & wait']


async def _grandchild(ready: Path) -> tuple[int, int]:
    text = await asyncio.to_thread(wait_for_file, ready)
    info = read_process(int(text))
    assert info is not None
    return info.pid, info.starttime


async def _run_and_wait(ready: Path, seen: list[tuple[int, int]]) -> None:
    async def note() -> None:
        seen.append(await _grandchild(ready))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(note())
        tg.create_task(tether.aio.run(_stubborn(ready), policy=POLICY))


def _check_gone(seen: list[tuple[int, int]]) -> None:
    assert len(seen) == 1
    assert not alive(*seen[0]), "the TERM-ignoring grandchild outlived the cancellation"


def test_wait_for(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        await asyncio.wait_for(_run_and_wait(tmp_path / "r", seen), 1.0)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    _check_gone(seen)


def test_asyncio_timeout(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    async def main() -> None:
        async with asyncio.timeout(1.0):
            await _run_and_wait(tmp_path / "r", seen)

    with pytest.raises(TimeoutError):
        asyncio.run(main())
    _check_gone(seen)


def test_taskgroup_sibling_failing(tmp_path: Path) -> None:
    ready = tmp_path / "r"
    seen: list[tuple[int, int]] = []

    async def sibling() -> None:
        seen.append(await _grandchild(ready))
        raise RuntimeError("sibling failed")

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(tether.aio.run(_stubborn(ready), policy=POLICY))
            tg.create_task(sibling())

    with pytest.raises(ExceptionGroup) as info:
        asyncio.run(main())
    assert info.group_contains(RuntimeError)
    _check_gone(seen)


def test_task_cancel_reaches_the_async_job_context(tmp_path: Path) -> None:
    ready = tmp_path / "r"
    seen: list[tuple[int, int]] = []
    reports: list[tether.Report | None] = []

    inside = asyncio.Event()

    async def owner() -> None:
        job = await tether.aio.start(_stubborn(ready), policy=POLICY)
        try:
            async with job:
                inside.set()
                await job.wait()
        finally:
            reports.append(job.report)

    async def main() -> None:
        task = asyncio.create_task(owner())
        seen.append(await _grandchild(ready))
        # Cancelled inside `async with` (a cancel during start() is
        # test_cancelled_while_the_job_starts).
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _check_gone(seen)
    (report,) = reports
    assert report is not None and report.complete
    assert report.reason == "cancelled"
    assert any(m.ended_by == "KILL" for m in report.members)


def test_anyio_move_on_after_on_asyncio(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []

    async def main() -> bool:
        with anyio.move_on_after(1.0) as scope:
            await _run_and_wait(tmp_path / "r", seen)
        return scope.cancelled_caught

    assert anyio.run(main, backend="asyncio")
    _check_gone(seen)


def test_ctrl_c_under_asyncio_run(tmp_path: Path) -> None:
    ready = tmp_path / "r"
    started = tmp_path / "started"
    program = textwrap.dedent(
        f"""
        import asyncio, faulthandler, pathlib, tether.aio
        # Should it ever hang: every thread's stack on stderr, and an exit,
        # rather than the suite's timeout.
        faulthandler.dump_traceback_later(45, exit=True)
        async def main():
            pathlib.Path({str(started)!r}).write_text("x")
            await tether.aio.run({_stubborn(ready)!r}, policy={POLICY!r})
        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    caller = subprocess.Popen([sys.executable, "-c", program], env=env, stderr=subprocess.PIPE)
    try:
        wait_for_file(started)
        pid = int(wait_for_file(ready))
        info = read_process(pid)
        assert info is not None
        caller.send_signal(signal.SIGINT)
        _, err = caller.communicate(timeout=60)
    finally:
        if caller.poll() is None:
            caller.kill()  # our own child: its pid is its until we reap it
        caller.communicate()
    assert b"KeyboardInterrupt" in err, err.decode(errors="replace")
    assert caller.returncode != 0
    assert not alive(pid, info.starttime)


def test_async_job_streams_and_communicate() -> None:
    async def main() -> tuple[bytes, bytes | None, bytes | None, int | None]:
        async with await tether.aio.start(
            [sys.executable, "-c", "import sys; print(sys.stdin.readline().upper(), end='')"
             "; sys.stdout.flush(); sys.stdout.write(sys.stdin.read())"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        ) as job:  # fmt: skip
            assert job.stdin is not None and job.stdout is not None
            job.stdin.write(b"pear\n")
            await job.stdin.drain()
            line = await job.stdout.readline()
            out, err = await job.communicate(b"rest")
            return line, out, err, job.returncode

    assert asyncio.run(main()) == (b"PEAR\n", b"rest", None, 0)


def test_aio_run_captures_large_output_and_names_pipe_holders(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def main() -> tether.CompletedJob:
        return await tether.aio.run(
            ["sh", "-c", f"head -c 1048576 /dev/zero; sleep 3600 & echo $! >{pidfile}"],
            capture_output=True,
            policy=POLICY,
        )

    done = asyncio.run(main())
    assert len(done.stdout) == 1 << 20
    pid = int(pidfile.read_text())
    assert [m.outcome for m in done.report.members if m.pid == pid] == ["killed"]


def test_aio_run_check_and_text() -> None:
    async def main(coro: Callable[[], Awaitable[tether.CompletedJob]]) -> tether.CompletedJob:
        return await coro()

    done = asyncio.run(
        main(lambda: tether.aio.run(["sh", "-c", "printf 'a\\r\\nb'"], capture_output=True,
                                    text=True))
    )  # fmt: skip
    assert done.stdout == "a\nb"
    with pytest.raises(tether.JobFailedError) as info:
        asyncio.run(main(lambda: tether.aio.run(["false"], check=True)))
    assert info.value.returncode == 1
    with pytest.raises(tether.JobTimeoutError) as timeout:
        asyncio.run(main(lambda: tether.aio.run(["sleep", "3600"], timeout=0.2, check=True)))
    assert timeout.value.report is not None and timeout.value.report.reason == "timeout"


def test_cancelled_while_the_job_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task is cancelled while tether.aio.start's worker thread is still
    starting the job: the job must not be left running for nobody (it was
    once: the cancellation went on and the tree lived)."""
    import threading

    ready = tmp_path / "r"
    started, cancel_sent = threading.Event(), threading.Event()
    real_start = tether.aio._start
    seen: list[tuple[int, int]] = []

    def start_then_hold(*args: object, **options: object) -> object:
        job = real_start(*args, **options)  # type: ignore[arg-type]
        info = read_process(int(wait_for_file(ready)))
        assert info is not None
        seen.append((info.pid, info.starttime))
        started.set()
        cancel_sent.wait(30)  # still "starting" when the cancellation comes
        return job

    monkeypatch.setattr(tether.aio, "_start", start_then_hold)

    async def main() -> None:
        task = asyncio.create_task(tether.aio.start(_stubborn(ready), policy=POLICY))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        cancel_sent.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _check_gone(seen)

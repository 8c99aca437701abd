"""asyncio adapter over the same engine: no second implementation.

Waiting costs no thread: the leader's pidfd is watched by the event loop
(``add_reader``) and the job's pipes are asyncio streams. Only the blocking
moments of the engine run in a worker thread: the start (journal, cgroup,
exec) and a termination, whose grace periods must not block the loop.

Cancelling the task that awaits :func:`run` (``asyncio.wait_for``,
``asyncio.timeout``, a failing TaskGroup sibling, Ctrl-C under
``asyncio.run``) terminates the whole tree with the job's policy; the task
waits for the termination — the owner always waits, as trio's
``run_process`` does — then the cancellation goes on. anyio on the asyncio
backend gets the same. trio has no asyncio loop: trio users run the
synchronous API in a thread (see docs/pytest-fixture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import signal
import subprocess
from collections.abc import Callable, Sequence
from types import TracebackType

from tether.job import (
    CompletedJob,
    Job,
    JobTimeoutError,
)
from tether.job import start as _start
from tether.process import ProcessInfo
from tether.report import Report
from tether.spec import Arg

# Not typing.TYPE_CHECKING: typing stays unimported at run time (start-up;
# mypy treats any name TYPE_CHECKING as true).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar, Unpack

    from tether.job import JobOptions

__all__ = ["AsyncJob", "run", "start"]

if TYPE_CHECKING:
    _T = TypeVar("_T")
_LIMIT = 1 << 16


async def _owner_waits(work: Callable[[], _T], undo: Callable[[_T], object] | None = None) -> _T:
    """``work()`` in a worker thread, awaited to its end however often the
    awaiting task is cancelled meanwhile; a cancellation is re-raised after,
    once ``undo(result)`` (in a thread too) has undone what nobody will use:
    a job started for a task that was cancelled while it started."""
    future = asyncio.get_running_loop().run_in_executor(None, work)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError as err:
            # This task was cancelled, not the work (shielded): wait on.
            cancelled = err
            continue
        break
    if cancelled is not None:
        if undo is not None:
            await _owner_waits(functools.partial(undo, result))
        raise cancelled
    return result


def _protocol(reader: asyncio.StreamReader) -> Callable[[], asyncio.StreamReaderProtocol]:
    return lambda: asyncio.StreamReaderProtocol(reader)


class AsyncJob:
    """An asyncio view of a :class:`tether.Job`, shaped as
    :class:`asyncio.subprocess.Process`; ``async with`` terminates what is left.

    Attributes:
        job: the synchronous :class:`~tether.Job`.
        stdin: an :class:`asyncio.StreamWriter` when started with ``stdin=PIPE``.
        stdout, stderr: :class:`asyncio.StreamReader` for ``PIPE`` streams.
    """

    def __init__(self, job: Job) -> None:
        self.job = job
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._exited: asyncio.Future[None] | None = None
        self._transports: list[asyncio.BaseTransport] = []

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        popen = self.job._popen
        if popen.stdin is not None:
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop), popen.stdin
            )
            self._transports.append(transport)
            self.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        for name in ("stdout", "stderr"):
            pipe = getattr(popen, name)
            if pipe is not None:
                reader = asyncio.StreamReader(limit=_LIMIT, loop=loop)
                read_transport, _ = await loop.connect_read_pipe(_protocol(reader), pipe)
                self._transports.append(read_transport)
                setattr(self, name, reader)

    @property
    def pid(self) -> int:
        return self.job.pid

    @property
    def args(self) -> Any:
        return self.job.args

    @property
    def returncode(self) -> int | None:
        """The leader's status once it has exited (-N: killed by signal N)."""
        return self.job.returncode

    @property
    def report(self) -> Report | None:
        return self.job.report

    def send_signal(self, sig: int) -> None:
        """Signal the leader only (as asyncio's Process); :meth:`cancel` ends the tree."""
        self.job.send_signal(sig)

    def terminate(self) -> None:
        self.job.terminate()

    def kill(self) -> None:
        self.job.kill()

    async def wait(self) -> int:
        """Wait for the leader to exit; its status. No thread: the event loop
        watches the leader's pidfd. Cancelling this wait leaves the job running
        (leaving ``async with`` ends it)."""
        while True:
            rc = self.job.returncode
            if rc is not None:
                return rc
            fd = self.job.leader_fileno
            if fd < 0:
                await asyncio.sleep(0.05)  # no pidfd (psutil backend, or cancelled)
                continue
            if self._exited is None or self._exited.done():
                self._exited = self._watch(fd)
            await asyncio.shield(self._exited)

    def _watch(self, fd: int) -> asyncio.Future[None]:
        # One reader per fd: add_reader() replaces a previous one, so every
        # waiter shares this future.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            loop.remove_reader(fd)
            if not future.done():
                future.set_result(None)

        loop.add_reader(fd, readable)
        return future

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        """Send ``input``, read stdout and stderr to the end, wait for the leader.

        As :meth:`asyncio.subprocess.Process.communicate`, except that once the
        leader has exited, an output pipe a leftover still holds open has the
        tree terminated with the policy (``leftovers="terminate"``), never
        waited on forever.
        """
        readers = self._start_readers()
        try:
            await asyncio.gather(self._feed(input), self.wait())
            pending = [r for r in readers.values() if not r.done()]
            while pending:
                if not self._pipes_readable():
                    # Every byte the leader wrote is readable by now: an empty
                    # pipe still open is held by a live leftover.
                    if self.job.spec.leftovers == "terminate":
                        await self.cancel("a leftover held an output pipe after the leader exited")
                    break
                await asyncio.wait(pending, timeout=0)
                pending = [r for r in readers.values() if not r.done()]
            return await self._finish_readers(readers)
        finally:
            for task in readers.values():
                task.cancel()

    def _start_readers(self) -> dict[str, asyncio.Task[bytes]]:
        """A task per output stream reading it to EOF (so the job never blocks
        on a full pipe while nobody reads)."""
        return {
            name: asyncio.ensure_future(stream.read())
            for name, stream in (("stdout", self.stdout), ("stderr", self.stderr))
            if stream is not None
        }

    async def _finish_readers(
        self, readers: dict[str, asyncio.Task[bytes]]
    ) -> tuple[bytes | None, bytes | None]:
        """The output once the pipes reach EOF; bounded when the leader is gone
        (a survivor may hold a pipe forever)."""
        pending = [r for r in readers.values() if not r.done()]
        if pending and self.report is not None:
            await asyncio.wait(pending, timeout=5.0 if self.report.complete else 0.5)
        elif pending:
            await asyncio.wait(pending)
        out = {
            name: r.result() if r.done() and not r.cancelled() else b""
            for name, r in readers.items()
        }
        return out.get("stdout"), out.get("stderr")

    def _pipes_readable(self) -> bool:
        poller = select.poll()
        for name in ("stdout", "stderr"):
            pipe = getattr(self.job._popen, name)
            if pipe is not None and not pipe.closed:
                poller.register(pipe.fileno(), select.POLLIN)
        return bool(poller.poll(0))

    async def _feed(self, input: bytes | None) -> None:
        if self.stdin is None:
            if input:
                raise ValueError("input was given but the job's stdin is not a pipe")
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if input:
                self.stdin.write(input)
                await self.stdin.drain()
            self.stdin.close()

    async def members(self) -> list[ProcessInfo]:
        return await asyncio.to_thread(self.job.members)

    async def cancel(self, reason: str = "cancelled") -> Report:
        """Terminate the tree with the policy (in a worker thread, so the loop
        runs on); awaited to its end even if this task is cancelled meanwhile."""
        return await _owner_waits(lambda: self.job.cancel(reason))

    async def __aenter__(self) -> AsyncJob:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.job.report is None:
                why = (
                    "context exited"
                    if exc_type is None
                    else "cancelled"
                    if issubclass(exc_type, asyncio.CancelledError)
                    else f"context exited by {exc_type.__name__}"
                )
                await self.cancel(why)
        finally:
            self.close()

    def close(self) -> None:
        """Close the stream transports (their pipes with them)."""
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self.job._close_pipes()


async def start(args: Sequence[Arg] | str | bytes, **options: Unpack[JobOptions]) -> AsyncJob:
    """Start ``args`` on a tether (options as :func:`tether.start`; streams are
    bytes, as asyncio's subprocesses: no ``text``/``encoding``/``errors``)."""
    for name in ("text", "encoding", "errors"):
        if options.get(name):
            raise ValueError(f"{name} is not supported by tether.aio.start: streams are bytes")
    # Cancelled while the job started: its tree is terminated with the policy
    # (the Job's context exit) before the cancellation goes on, never left running.
    job = await _owner_waits(
        lambda: _start(args, **options), undo=lambda started: started.__exit__(None, None, None)
    )
    async_job = AsyncJob(job)
    try:
        await async_job._connect()
    except BaseException:
        await async_job.__aexit__(None, None, None)
        raise
    return async_job


async def run(
    args: Sequence[Arg] | str | bytes,
    *,
    input: str | bytes | None = None,
    capture_output: bool = False,
    check: bool = False,
    timeout: float | None = None,
    **options: Unpack[JobOptions],
) -> CompletedJob:
    """:func:`tether.run` for asyncio, with the same arguments and results.

    Cancelling the awaiting task terminates the whole tree with the policy
    and waits for it before the cancellation goes on.
    """
    text = bool(options.pop("text", None) or options.get("encoding") or options.get("errors"))
    encoding = options.pop("encoding", None) or "utf-8"
    errors = options.pop("errors", None) or "strict"
    if input is not None:
        if options.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used")
        options["stdin"] = subprocess.PIPE
        if isinstance(input, str):
            if not text:
                raise TypeError("input must be bytes unless text=True")
            input = input.encode(encoding, errors)
    if capture_output:
        if options.get("stdout") is not None or options.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output")
        options["stdout"] = options["stderr"] = subprocess.PIPE
    job = await start(args, **options)
    timed_out = False
    async with job:
        readers = job._start_readers()
        try:
            try:
                async with asyncio.timeout(timeout) as scope:
                    await asyncio.gather(job._feed(input), job.wait())
            except TimeoutError:
                if not scope.expired():
                    raise
                timed_out = True
            # The readers go on while the engine terminates what is left, so
            # a leftover's output cannot block it.
            report = await job.cancel(
                "timeout" if timed_out else "leftovers after the leader exited"
            )
            out, err = await job._finish_readers(readers)
        finally:
            for task in readers.values():
                task.cancel()
    spec = job.job.spec

    def decoded(data: bytes | None) -> Any:
        if data is None or not text:
            return data
        return data.decode(encoding, errors).replace("\r\n", "\n").replace("\r", "\n")

    rc = job.returncode
    done = CompletedJob(
        spec.argv,
        rc if rc is not None else -signal.SIGKILL,
        timed_out,
        report,
        stdout=decoded(out),
        stderr=decoded(err),
        args=args,
    )
    if check and timed_out:
        assert timeout is not None
        raise JobTimeoutError(args, timeout, done.stdout, done.stderr, report)
    if check:
        done.check_returncode()
    return done

"""asyncio adapter over the same engine: no second implementation.

Blocking calls of :class:`tether.Job` run in a worker thread, so the event loop
never blocks while a tree is being terminated.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Unpack

from tether.job import CompletedJob, Job, JobOptions
from tether.job import run as _run
from tether.job import start as _start
from tether.process import ProcessInfo
from tether.report import Report
from tether.spec import Arg


class AsyncJob:
    """An asyncio view of a :class:`tether.Job`; ``async with`` terminates what is left."""

    def __init__(self, job: Job) -> None:
        self.job = job

    @property
    def pid(self) -> int:
        return self.job.pid

    @property
    def report(self) -> Report | None:
        return self.job.report

    async def wait(self, timeout: float | None = None) -> int | None:
        return await asyncio.to_thread(self.job.wait, timeout)

    async def members(self) -> list[ProcessInfo]:
        return await asyncio.to_thread(self.job.members)

    async def cancel(self, reason: str = "cancelled") -> Report:
        # Shielded: the owner always waits for the tree, even if the awaiting
        # task is itself cancelled meanwhile.
        return await asyncio.shield(asyncio.to_thread(self.job.cancel, reason))

    async def __aenter__(self) -> AsyncJob:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.job.report is None:
            why = "context exited" if exc_type is None else f"context exited by {exc_type.__name__}"
            await self.cancel(why)


async def start(argv: Sequence[Arg], **options: Unpack[JobOptions]) -> AsyncJob:
    """Start ``argv`` on a tether (options as :func:`tether.start`)."""
    return AsyncJob(await asyncio.to_thread(lambda: _start(argv, **options)))


async def run(
    argv: Sequence[Arg], *, timeout: float | None = None, **options: Unpack[JobOptions]
) -> CompletedJob:
    """:func:`tether.run` without blocking the event loop."""
    return await asyncio.to_thread(lambda: _run(argv, timeout=timeout, **options))

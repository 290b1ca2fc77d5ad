"""Many small awaitables with a bound: the seeders' and benchmarks' bulk uploads and copies."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Iterable


async def run_bounded(jobs: Iterable[Awaitable], concurrency: int) -> None:
    """Await every job, at most ``concurrency`` at a time; the first failure raises.

    ``jobs`` is consumed lazily (a generator of coroutines), so memory stays bounded however
    many jobs there are.
    """
    pending: set[asyncio.Future] = set()
    for job in jobs:
        pending.add(asyncio.ensure_future(job))
        if len(pending) >= concurrency:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
    if pending:
        done, _ = await asyncio.wait(pending)
        for task in done:
            task.result()

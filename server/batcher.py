"""Dynamic batching: concurrent requests share one forward pass on the device.

Requests wait in a bounded queue. One worker takes the oldest and looks at every request
waiting with the same operation (waiting up to ``max_wait_ms`` for company while there is
less than one batch of it). The batch is the oldest request plus the waiting ones nearest
its length, up to ``max_batch_seconds`` of padded audio and ``max_batch_items``; the rest
wait for the next batch, in arrival order. A batch of similar lengths pads little: on a CPU
a batch in arrival order (clips of 0.7 to 8 s) spent about a third of its work on padding.
The batch runs in a single model thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from speechssl.audio import SAMPLE_RATE

log = logging.getLogger("speechssl.server")

RunBatch = Callable[[Hashable, list[np.ndarray]], list[Any]]


class QueueFull(Exception):
    """The queue is at its bound; the client should retry later."""


@dataclass
class Job:
    op: Hashable  # requests with equal ops may share a batch, e.g. ("embed", layer)
    wave: np.ndarray
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


def similar_lengths(seconds: list[float], max_seconds: float, max_items: int) -> list[int]:
    """Indices of a batch holding item 0 (the oldest request) and the items nearest its length.

    The batch grows one length-order neighbour at a time, the shorter or the longer one,
    whichever adds less padding, while the padded seconds (longest x count) stay within
    ``max_seconds``. Item 0 is always in, even alone over the bound.
    """
    order = sorted(range(len(seconds)), key=lambda i: (seconds[i], i))
    lo = hi = order.index(0)
    while hi - lo + 1 < max_items:
        longest, count, options = seconds[order[hi]], hi - lo + 1, []
        if lo > 0:  # a shorter item pads up to the longest
            options.append((longest - seconds[order[lo - 1]], lo - 1, hi, longest))
        if hi + 1 < len(order):  # a longer item pads every item already in
            grown = seconds[order[hi + 1]]
            options.append(((grown - longest) * count, lo, hi + 1, grown))
        fitting = [o for o in options if o[3] * (count + 1) <= max_seconds]
        if not fitting:
            break
        _, lo, hi, _ = min(fitting)
    return sorted(order[k] for k in range(lo, hi + 1))


class Batcher:
    def __init__(self, run_batch: RunBatch, *, max_batch_seconds: float, max_batch_items: int,
                 max_wait_ms: float, max_queue: int, on_batch: Callable[[int, float, float], None] | None = None):
        self.run_batch = run_batch
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_items = max_batch_items
        self.max_wait = max_wait_ms / 1000
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.pending: list[Job] = []  # taken from the queue but not batched yet (other op)
        self.task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return self.queue.qsize() + len(self.pending)

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker())

    async def submit(self, op: Hashable, wave: np.ndarray) -> Any:
        job = Job(op, wave, asyncio.get_running_loop().create_future())
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        return await job.future

    async def next_job(self, timeout: float | None) -> Job | None:
        if self.pending:
            return self.pending.pop(0)
        try:
            if timeout is None:
                return await self.queue.get()
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def gather(self) -> list[Job]:
        first = await self.next_job(None)
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while True:
            jobs += self.pending  # everything waiting now is a candidate
            self.pending = []
            while not self.queue.empty():
                jobs.append(self.queue.get_nowait())
            same = [job for job in jobs if job.op == first.op]
            if len(same) >= self.max_batch_items or sum(j.seconds for j in same) >= self.max_batch_seconds:
                break
            remaining = deadline - time.monotonic()
            job = await self.next_job(remaining) if remaining > 0 else None
            if job is None:
                break
            jobs.append(job)
        chosen = {id(same[i]) for i in similar_lengths([j.seconds for j in same], self.max_batch_seconds,
                                                         self.max_batch_items)}
        self.pending = sorted((j for j in jobs if id(j) not in chosen), key=lambda j: j.queued_at)
        return [j for j in same if id(j) in chosen]

    async def worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self.gather()
            live = [job for job in batch if not job.future.done()]  # the client may have gone
            if not live:
                continue
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, live[0].op, [j.wave for j in live])
            except Exception as exc:  # the worker lives on
                log.exception("batch of %d failed", len(live))
                if len(live) == 1:
                    self.fail(live[0], exc)
                else:  # run the jobs alone, so that one bad item fails only its own request
                    await self.run_alone(live)
                continue
            for job, result in zip(live, results):
                if not job.future.done():
                    job.future.set_result(result)
            if self.on_batch:
                self.on_batch(len(live), sum(j.seconds for j in live), time.monotonic() - started)

    async def run_alone(self, jobs: list[Job]) -> None:
        loop = asyncio.get_running_loop()
        for job in jobs:
            try:
                [result] = await loop.run_in_executor(self.executor, self.run_batch, job.op, [job.wave])
            except Exception as exc:
                log.exception("a job of %.1f s failed alone too", job.seconds)
                self.fail(job, exc)
                continue
            if not job.future.done():
                job.future.set_result(result)

    @staticmethod
    def fail(job: Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    async def drain(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: let queued requests finish, then stop the worker."""
        deadline = time.monotonic() + timeout
        while self.depth and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

"""Dynamic batching: concurrent requests share one forward pass on the device.

Requests wait in a bounded queue. One worker takes the oldest, gathers others with
the same operation for up to ``max_wait_ms`` (or until ``max_batch_seconds`` of
padded audio or ``max_batch_items``), and runs the batch in a single model thread
so the event loop stays free. Within a batch the pipeline sorts by length, so
padding stays small.
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
        batch, longest = [first], first.seconds
        deadline = time.monotonic() + self.max_wait
        skipped: list[Job] = []
        while len(batch) < self.max_batch_items:
            remaining = deadline - time.monotonic()
            job = self.queue.get_nowait() if not self.queue.empty() else (
                await self.next_job(remaining) if remaining > 0 else None)
            if job is None:
                break
            padded = max(longest, job.seconds) * (len(batch) + 1)  # padded seconds with this job in
            if job.op != first.op or padded > self.max_batch_seconds:
                skipped.append(job)
                if job.op == first.op:
                    break  # the batch is full; this one starts the next
                continue
            batch.append(job)
            longest = max(longest, job.seconds)
        self.pending = skipped + self.pending
        return batch

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

"""Dynamic batching of bounded pieces: concurrent requests share forward passes, and no
request holds the device for longer than one batch of pieces at a time.

A request arrives as a Job: its audio already cut into pieces of at most one chunk
(``server/work.py``) and a ``finish`` that stitches the pieces' outputs into its result.
Each round the worker takes the job served longest ago (arrival counts as service), so a
short request that arrives while a 300 s one runs waits for one batch, not the whole of
it. The batch is that job's next piece plus the waiting pieces of the same operation
nearest its length, up to ``max_batch_seconds`` of padded audio and ``max_batch_items``
(a batch of similar lengths pads little: on a CPU a batch in arrival order spent about a
third of its work on padding; ``SpeechModel`` then splits what the 16-odd pieces in flight
cannot match closely, at its ``max_padding``). A new job waits up to ``max_wait_ms`` for company.

``workers`` model threads run batches side by side. On a CPU, two threads of one torch
thread each beat one batch on two threads: intra-op threads meet at a barrier after every
op, so whenever the event loop takes a core from one of them both wait, while two separate
batches only slow down one at a time (docs/benchmarks-serving.md). A job's pieces may then
be in two batches at once; it is done when every piece has its output.

Cost is bounded in time too: a job past its deadline is dropped with DeadlineExceeded,
a job whose future was cancelled (its client left) is dropped before its next piece,
and ``close`` refuses queued work at shutdown. Batches run in model threads so the
event loop stays free.
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


class DeadlineExceeded(Exception):
    """The job was not done by its deadline and was dropped."""


class ShuttingDown(Exception):
    """The server is stopping; the job was refused or not finished in time."""


@dataclass(eq=False)
class Job:
    op: Hashable  # jobs with equal ops may share a batch, e.g. ("embed", layer)
    pieces: list[np.ndarray]  # each at most one chunk of 16 kHz audio
    finish: Callable[[list[Any]], Any]  # the pieces' outputs -> the result; runs in the model thread
    future: asyncio.Future
    deadline: float
    queued_at: float = field(default_factory=time.monotonic)
    served_at: float = 0.0  # when its last batch ended: the round-robin key
    todo: list[int] = field(default_factory=list)  # pieces not yet batched
    outputs: dict[int, Any] = field(default_factory=dict)
    # Called in the event loop as the done prefix of pieces grows: (first piece, their outputs).
    on_progress: Callable[[int, list[Any]], None] | None = None
    reported: int = 0  # pieces handed to on_progress
    running: int = 0  # pieces in batches now on the device

    def __post_init__(self):
        self.served_at = self.queued_at
        self.todo = list(range(len(self.pieces)))

    @property
    def started(self) -> bool:
        return len(self.todo) < len(self.pieces)

    @property
    def done(self) -> bool:
        return len(self.outputs) == len(self.pieces)

    @property
    def seconds(self) -> float:
        return sum(len(p) for p in self.pieces) / SAMPLE_RATE


def similar_lengths(seconds: list[float], max_seconds: float, max_items: int) -> list[int]:
    """Indices of a batch holding item 0 (the chosen piece) and the items nearest its length.

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
                 max_wait_ms: float, max_queue: int, deadline_s: float = 120.0,
                 on_batch: Callable[[int, float, float], None] | None = None, workers: int = 1,
                 worker_init: Callable[[], None] | None = None):
        self.run_batch = run_batch
        self.max_batch_seconds = max_batch_seconds
        self.max_batch_items = max_batch_items
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self.deadline_s = deadline_s
        self.on_batch = on_batch
        self.workers = workers
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="model", initializer=worker_init)
        self.jobs: list[Job] = []  # admitted and not finished, in arrival order
        self.arrived = asyncio.Event()  # a job came in, or a batch ended (a thread is free)
        self.running: set[asyncio.Task] = set()  # batches on the device
        self.closing = False
        self.task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        return len(self.jobs)

    def start(self) -> None:
        self.task = asyncio.create_task(self.worker())

    def submit(self, op: Hashable, pieces: list[np.ndarray], finish: Callable[[list[Any]], Any],
               on_progress: Callable[[int, list[Any]], None] | None = None) -> Job:
        """Admit a job (its ``future`` holds the result) or raise QueueFull / ShuttingDown."""
        if self.closing:
            raise ShuttingDown
        if len(self.jobs) >= self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        job = Job(op, pieces, finish, loop.create_future(), time.monotonic() + self.deadline_s, on_progress=on_progress)
        self.jobs.append(job)
        self.arrived.set()
        return job

    def drop_dead(self) -> None:
        """Forget jobs whose client left (future cancelled) and fail those past their deadline."""
        now = time.monotonic()
        for job in [j for j in self.jobs if j.future.done() or now > j.deadline]:
            self.jobs.remove(job)
            self.fail(job, DeadlineExceeded(f"not done within the {self.deadline_s:g} s deadline"))

    def company_wait(self, first: Job) -> float:
        """Seconds a new job should still wait for others to share its batch (0: go now)."""
        if first.started:
            return 0.0
        same = [j for j in self.jobs if j.op == first.op]
        pieces = sum(len(j.todo) for j in same)
        audio = sum(len(j.pieces[k]) for j in same for k in j.todo) / SAMPLE_RATE
        if pieces >= self.max_batch_items or audio >= self.max_batch_seconds:
            return 0.0
        return max(0.0, first.queued_at + self.max_wait - time.monotonic())

    def pick(self, first: Job) -> list[tuple[Job, int]]:
        """(job, piece) pairs of the next batch: ``first``'s next piece and its nearest neighbours."""
        items = [(first, first.todo[0])]
        items += [(j, k) for j in self.jobs if j.op == first.op for k in j.todo if (j, k) != items[0]]
        seconds = [len(j.pieces[k]) / SAMPLE_RATE for j, k in items]
        chosen = [items[i] for i in similar_lengths(seconds, self.max_batch_seconds, self.max_batch_items)]
        for job, k in chosen:
            job.todo.remove(k)
            job.running += 1
        return chosen

    async def worker(self) -> None:
        while True:
            self.drop_dead()
            # A job with pieces on the device already yields to those without: a long job
            # cannot take every model thread while a short one waits.
            waiting = [j for j in self.jobs if j.todo]
            if not waiting or len(self.running) >= self.workers:
                self.arrived.clear()
                await self.arrived.wait()
                continue
            first = min(waiting, key=lambda j: (j.running > 0, j.served_at))
            wait = self.company_wait(first)
            if wait > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                if self.company_wait(first) > 0:
                    continue
            task = asyncio.create_task(self.run(self.pick(first)))
            self.running.add(task)
            task.add_done_callback(self.batch_ended)

    def batch_ended(self, task: asyncio.Task) -> None:
        self.running.discard(task)
        self.arrived.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("a batch's bookkeeping failed", exc_info=task.exception())

    async def run(self, items: list[tuple[Job, int]]) -> None:
        loop = asyncio.get_running_loop()
        op, started = items[0][0].op, time.monotonic()
        try:
            outputs = await loop.run_in_executor(self.executor, self.run_batch, op, [j.pieces[k] for j, k in items])
        except Exception:  # run the pieces alone, so that one bad item fails only its own request
            log.exception("batch of %d pieces failed", len(items))
            outputs = [await self.run_alone(job, k) for job, k in items]
        if self.on_batch:
            self.on_batch(len(items), sum(len(j.pieces[k]) for j, k in items) / SAMPLE_RATE, time.monotonic() - started)
        ended = time.monotonic()
        for (job, k), out in zip(items, outputs):
            job.outputs[k] = out
            job.served_at = ended
            job.running -= 1
        for job in dict.fromkeys(job for job, _ in items):
            if job.on_progress is not None:
                self.progress(job)
            if job in self.jobs and any(isinstance(o, BaseException) for o in job.outputs.values()):
                self.jobs.remove(job)
                self.fail(job, next(o for o in job.outputs.values() if isinstance(o, BaseException)))
            elif job in self.jobs and job.done:
                self.jobs.remove(job)
                await self.finish(job)

    @staticmethod
    def progress(job: Job) -> None:
        done = job.reported
        while done in job.outputs and not isinstance(job.outputs[done], BaseException):
            done += 1
        if done > job.reported and not job.future.done():
            first, job.reported = job.reported, done
            try:
                job.on_progress(first, [job.outputs[k] for k in range(first, done)])
            except Exception:  # a listener's bug must not stop the batcher
                log.exception("progress callback failed")

    async def run_alone(self, job: Job, k: int) -> Any:
        loop = asyncio.get_running_loop()
        try:
            [out] = await loop.run_in_executor(self.executor, self.run_batch, job.op, [job.pieces[k]])
            return out
        except Exception as exc:
            log.exception("a piece of %.1f s failed alone too", len(job.pieces[k]) / SAMPLE_RATE)
            return exc

    async def finish(self, job: Job) -> None:
        if job.future.done():
            return
        outputs = [job.outputs[k] for k in range(len(job.pieces))]
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, job.finish, outputs)
        except Exception as exc:
            log.exception("stitching a job of %.1f s failed", job.seconds)
            self.fail(job, exc)
            return
        if not job.future.done():
            job.future.set_result(result)

    @staticmethod
    def fail(job: Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    def close(self, grace_s: float) -> None:
        """Shutdown begins: refuse new and queued jobs now; those already running get until
        ``grace_s`` from now, then are refused too, so each client gets an answer in time."""
        self.closing = True
        for job in [j for j in self.jobs if not j.started]:
            self.jobs.remove(job)
            self.fail(job, ShuttingDown("the server is shutting down"))
        asyncio.get_running_loop().call_later(grace_s, self.refuse_all)

    def refuse_all(self) -> None:
        for job in list(self.jobs):
            self.jobs.remove(job)
            self.fail(job, ShuttingDown("the server is shutting down; this request did not finish in time"))

    async def drain(self, timeout: float = 30.0) -> None:
        """Stop: let admitted jobs finish (up to ``timeout``), then stop the worker and the model thread."""
        deadline = time.monotonic() + timeout
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.refuse_all()
        if self.task:
            self.task.cancel()
        for task in list(self.running):
            task.cancel()
        self.executor.shutdown(wait=True)

"""The dynamic batcher on its own: which waiting requests share a batch, and in what order."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from server.batcher import Batcher, DeadlineExceeded, ShuttingDown, similar_lengths


def submit(batcher: Batcher, op, *pieces: np.ndarray) -> asyncio.Future:
    """A job whose result is its pieces' outputs, as a list when it has several."""
    return batcher.submit(op, list(pieces), lambda outputs: outputs[0] if len(outputs) == 1 else outputs).future


def test_similar_lengths_keeps_the_oldest_and_its_nearest_neighbours():
    # item 0 (1.0 s, the oldest) batches with the other short clips, not with the 6 s ones
    assert similar_lengths([1.0, 6.0, 1.1, 6.2, 1.05, 5.9], max_seconds=8, max_items=64) == [0, 2, 4]
    # the long oldest item takes the long ones; 3 x 6.2 s padded fits in 20 s, a fourth would not
    assert similar_lengths([6.0, 1.0, 6.2, 1.1, 5.9], max_seconds=20, max_items=64) == [0, 2, 4]
    assert similar_lengths([1.0, 1.0, 1.0, 1.0], max_seconds=100, max_items=2) == [0, 1]
    # over the bound alone: still served, alone
    assert similar_lengths([50.0, 1.0], max_seconds=32, max_items=64) == [0]
    # the cheaper side: one 2.1 s clip pads three 2.0 s ones by 0.3 s in all, a 1.0 s clip pads itself by 1.1 s
    assert similar_lengths([2.0, 2.0, 2.0, 1.0, 2.1], max_seconds=100, max_items=4) == [0, 1, 2, 4]


def test_waiting_requests_are_batched_by_length_and_none_is_lost():
    """While the model thread is busy, requests of two lengths pile up; each later batch holds
    one length only, every request gets its own answer, and the oldest goes first."""
    release, batches = threading.Event(), []

    def run(op, waves):
        if not batches:
            release.wait(5)  # the first batch holds the model while the rest arrive
        batches.append([len(w) for w in waves])
        return [len(w) for w in waves]

    async def scenario():
        batcher = Batcher(run, max_batch_seconds=8.0, max_batch_items=64, max_wait_ms=1, max_queue=64)
        batcher.start()
        first = submit(batcher, "embed", np.zeros(100, np.float32))
        await asyncio.sleep(0.05)
        lengths = [16000, 96000, 17600, 99200, 16800, 94400]  # 1.0, 6.0, 1.1, 6.2, 1.05, 5.9 s
        waiting = [submit(batcher, "embed", np.zeros(n, np.float32)) for n in lengths]
        await asyncio.sleep(0.05)
        release.set()
        answers = await asyncio.gather(first, *waiting)
        await batcher.drain()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [100, 16000, 96000, 17600, 99200, 16800, 94400]
    assert batches[0] == [100]
    assert batches[1] == [16000, 17600, 16800]  # the oldest waiting request (1.0 s) and the short ones
    assert sorted(map(sorted, batches[2:])) == [[94400], [96000], [99200]]  # 2 x 6.2 s > 8 s: one each


def test_a_short_request_waits_one_batch_not_a_whole_long_one():
    """A 10-piece job is running; a short job that arrives goes next, then the long one resumes."""
    order = []

    def run(op, waves):
        order.append([len(w) for w in waves])
        time.sleep(0.02)  # one chunk's compute
        return [len(w) for w in waves]

    async def scenario():
        batcher = Batcher(run, max_batch_seconds=32.0, max_batch_items=64, max_wait_ms=0, max_queue=8)
        batcher.start()
        long = submit(batcher, "embed", *[np.zeros(480000, np.float32)] * 10)  # 10 x 30 s pieces
        await asyncio.sleep(0.03)  # the first piece runs
        short = submit(batcher, "embed", np.zeros(16000, np.float32))
        assert await short == 16000
        assert await long == [480000] * 10
        await batcher.drain()

    asyncio.run(scenario())
    short_at = order.index([16000])
    assert 1 <= short_at <= 2, order  # after at most the batch that was running, and one more


def test_cancelled_and_late_jobs_are_dropped_and_shutdown_refuses_the_queue():
    ran = []

    def run(op, waves):
        ran.append(len(waves))
        time.sleep(0.05)
        return [len(w) for w in waves]

    async def scenario():
        batcher = Batcher(run, max_batch_seconds=1.0, max_batch_items=1, max_wait_ms=0, max_queue=8, deadline_s=0.12)
        batcher.start()
        gone = submit(batcher, "embed", *[np.zeros(16000, np.float32)] * 20)  # 20 pieces, 50 ms each
        await asyncio.sleep(0.07)
        gone.cancel()  # the client left: the rest of its pieces never run
        await asyncio.sleep(0.1)
        pieces_run = len(ran)
        late = submit(batcher, "embed", *[np.zeros(16000, np.float32)] * 20)  # over its 0.12 s deadline
        with pytest.raises(DeadlineExceeded):
            await late
        running = submit(batcher, "embed", *[np.zeros(16000, np.float32)] * 3)
        await asyncio.sleep(0.01)
        queued = submit(batcher, "embed", np.zeros(16000, np.float32))
        batcher.close(grace_s=0.5)
        with pytest.raises(ShuttingDown):
            await queued  # refused at once
        assert await running == [16000] * 3  # already running and within the grace: finished
        with pytest.raises(ShuttingDown):
            batcher.submit("embed", [np.zeros(16000, np.float32)], lambda o: o)
        await batcher.drain()
        return pieces_run

    assert asyncio.run(scenario()) <= 3


def test_two_model_threads_run_batches_side_by_side_and_a_long_job_cannot_take_both():
    """With two workers, a 6-piece job's pieces run in both threads at once (the barrier below
    needs two batches on the device together), its result keeps the pieces' order, and a short
    job that arrives meanwhile takes the next free thread before the long job's later pieces."""
    both_running, order, lock = threading.Barrier(2, timeout=5), [], threading.Lock()

    def run(op, waves):
        with lock:
            order.append([int(w[0]) for w in waves])
            first_two = len(order) <= 2
        if first_two:
            both_running.wait()  # raises BrokenBarrierError unless the two batches overlap
        time.sleep(0.03)
        return [int(w[0]) for w in waves]

    async def scenario():
        batcher = Batcher(run, max_batch_seconds=1.0, max_batch_items=1, max_wait_ms=0, max_queue=8, workers=2)
        batcher.start()
        long = submit(batcher, "embed", *[np.full(16000, k, np.float32) for k in range(6)])
        await asyncio.sleep(0.01)
        short = submit(batcher, "embed", np.full(16000, 99, np.float32))
        assert await short == 99
        assert await long == list(range(6))
        await batcher.drain()

    asyncio.run(scenario())
    assert order[:2] in ([[0], [1]], [[1], [0]])
    assert order.index([99]) <= 3, order  # the next batch after the two that were running (or one more)
    assert sorted(order) == [[k] for k in range(6)] + [[99]]

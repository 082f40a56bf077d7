"""The dynamic batcher on its own: which waiting requests share a batch, and in what order."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from server.batcher import Batcher, similar_lengths


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
        first = asyncio.ensure_future(batcher.submit("embed", np.zeros(100, np.float32)))
        await asyncio.sleep(0.05)
        lengths = [16000, 96000, 17600, 99200, 16800, 94400]  # 1.0, 6.0, 1.1, 6.2, 1.05, 5.9 s
        waiting = [asyncio.ensure_future(batcher.submit("embed", np.zeros(n, np.float32))) for n in lengths]
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

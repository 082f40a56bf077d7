"""Batches bounded by padded audio seconds, bucketed by length, sharded across ranks.

The sampler alone decides what goes in a batch (lhotse-style): the dataset only loads
and collates. Everything here is a pure function of (durations, seed, epoch), so every
rank and every restart computes the same batches without talking to each other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

log = logging.getLogger(__name__)


class SecondsBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices whose *padded* length is at most `max_batch_seconds`.

    Padded length = batch size x the longest effective duration in the batch, where the
    effective duration is `min(duration, crop_seconds)` when the dataset crops. An
    utterance whose effective duration alone exceeds `max_batch_seconds` is NOT dropped:
    it forms a batch of its own (the only case where the bound is exceeded), so
    validation sees every file; when shuffling (training) a warning at construction says how many.

    Batches are built by sorting on duration, so similar lengths share a batch and
    padding stays small. With `max_padding` (inference on a CPU), a batch also closes
    before its padding would pass that fraction of its audio. With `shuffle`, durations
    are grouped into buckets about `bucket_width` wide (relative, 0.1 = 10 %) and the
    order inside a bucket is random, so batch membership changes between epochs; the
    batch order is shuffled too. Both depend only on (seed, epoch): call `set_epoch`
    before each epoch.

    With `num_replicas` R > 1 rank r takes every R-th batch of the epoch's list. All
    ranks get the same number of batches (otherwise DDP hangs in an all-reduce): the
    list is padded by repeating its first batches, or truncated when `drop_last`.

    To resume mid-epoch call `set_position(batches_done)` after `set_epoch`: iteration
    then skips this rank's first `batches_done` batches. `len()` counts the batches the
    next iteration yields (after the skip); `batches_per_epoch` counts all of them.
    """

    def __init__(
        self,
        durations: Sequence[float],
        max_batch_seconds: float,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        crop_seconds: float | None = None,
        drop_last: bool = False,
        bucket_width: float = 0.1,
        max_padding: float | None = None,
    ):
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be > 0, got {max_batch_seconds}")
        if crop_seconds is not None and crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be > 0 or None, got {crop_seconds}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank={rank}, num_replicas={num_replicas}")
        if bucket_width <= 0:
            raise ValueError(f"bucket_width must be > 0, got {bucket_width}")
        if max_padding is not None and max_padding < 0:
            raise ValueError(f"max_padding must be >= 0 or None, got {max_padding}")
        effective = np.asarray(durations, dtype=np.float64)
        if effective.ndim != 1 or (effective.size and (not np.isfinite(effective).all() or effective.min() < 0)):
            raise ValueError("durations must be a 1-D sequence of finite, non-negative seconds")
        if crop_seconds is not None:
            effective = np.minimum(effective, crop_seconds)
        self.effective = effective  # seconds each item occupies in a batch
        self.max_batch_seconds = float(max_batch_seconds)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.bucket_width = bucket_width
        self.max_padding = max_padding
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None  # (epoch, this rank's batches)
        oversized = int((effective > self.max_batch_seconds).sum())
        if oversized:
            # Worth a warning when training (it breaks the batch budget); routine for inference.
            (log.warning if shuffle else log.debug)("%d utterance(s) longer than max_batch_seconds=%.1f each form a batch of their own",
                        oversized, self.max_batch_seconds)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; also resets the resume position to 0."""
        self.epoch, self.position = int(epoch), 0

    def set_position(self, batches_done: int) -> None:
        """Skip this rank's first `batches_done` batches of the current epoch (resume)."""
        if batches_done < 0:
            raise ValueError(f"batches_done must be >= 0, got {batches_done}")
        self.position = int(batches_done)

    @property
    def batches_per_epoch(self) -> int:
        """Batches this rank gets in the current epoch, ignoring the resume position."""
        return len(self._rank_batches())

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.position)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._rank_batches()[self.position:]:
            yield list(batch)  # a copy: callers may mutate what they get

    def _rank_batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._shard(self._global_batches()))
        return self._cache[1]

    def _global_batches(self) -> list[list[int]]:
        """The epoch's batches for all ranks together, in the order they are consumed."""
        rng = np.random.default_rng((self.seed, self.epoch))
        if self.shuffle:
            # Relative buckets: a 10 % wide bucket costs at most ~10 % padding, and
            # random order inside it lets batch membership change between epochs.
            bucket = np.floor(np.log(np.maximum(self.effective, 1e-3)) / math.log1p(self.bucket_width))
            order = np.lexsort((rng.random(len(self.effective)), bucket))
        else:
            order = np.argsort(self.effective, kind="stable")
        batches = self._pack(order)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _pack(self, order: np.ndarray) -> list[list[int]]:
        """Greedy: extend the batch while size x longest still fits (and, with ``max_padding``,
        while the padding stays within that fraction of the batch's audio)."""
        batches: list[list[int]] = []
        current: list[int] = []
        longest = total = 0.0
        for index in order.tolist():
            seconds = self.effective[index]
            padded = (len(current) + 1) * max(longest, seconds)
            if current and (padded > self.max_batch_seconds or
                            (self.max_padding is not None and padded > (1 + self.max_padding) * (total + seconds))):
                batches.append(current)
                current, longest, total = [], 0.0, 0.0
            current.append(index)
            longest = max(longest, seconds)
            total += seconds
        if current:
            batches.append(current)
        return batches

    def _shard(self, batches: list[list[int]]) -> list[list[int]]:
        """Rank r takes batches r, r+R, ...; pad or truncate so every rank gets as many."""
        replicas, total = self.num_replicas, len(batches)
        if replicas == 1 or total == 0:
            return batches
        if self.drop_last:
            batches = batches[: total - total % replicas]
        else:
            need = math.ceil(total / replicas) * replicas
            batches = batches + [batches[i % total] for i in range(need - total)]
        return batches[self.rank :: replicas]

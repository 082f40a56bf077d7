"""Batches for the training loop: the resumable stream of training batches and the fixed validation loader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from speechssl.data.dataset import AudioDataset, Batch, collate
from speechssl.data.manifest import ManifestError, Utterance
from speechssl.data.sampler import SecondsBatchSampler
from speechssl.train.settings import DataConfig


class BatchStream:
    """Endless batches over epochs, with (epoch, position) as its whole resumable state."""

    def __init__(self, utterances: list[Utterance], data: DataConfig, seed: int, rank: int, world: int):
        self.dataset = AudioDataset(utterances, crop_seconds=data.crop_seconds, min_seconds=data.min_seconds, seed=seed,
                                    augment=data.augment)
        if not self.dataset.utterances:  # else next() would look for a first batch forever
            raise ManifestError(f"the training manifest holds no utterances of at least data.min_seconds="
                                f"{data.min_seconds} s ({len(utterances)} before that filter); nothing to train on")
        durations = [u.duration for u in self.dataset.utterances]
        self.sampler = SecondsBatchSampler(
            durations, data.max_batch_seconds, shuffle=True, seed=seed,
            num_replicas=world, rank=rank, crop_seconds=data.crop_seconds,
        )
        self.num_workers = data.num_workers
        self.epoch, self.position = 0, 0
        self._iter = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._iter = state["epoch"], state["position"], None

    def next(self) -> Batch:
        while True:
            if self._iter is None:
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_position(self.position)
                self.dataset.set_epoch(self.epoch)
                # Its own generator: a new iterator must not draw from the global RNG that seeds dropout.
                loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate,
                                    num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.epoch))
                self._iter = iter(loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                if self.position == 0:
                    raise ManifestError("the training data gave no batch in a whole epoch; nothing to train on") from None
                self.epoch, self.position, self._iter = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch


def valid_loader(utterances: list[Utterance], data: DataConfig) -> DataLoader | None:
    if not utterances:
        return None
    # A fixed subset and a fixed crop, so validation figures compare across steps.
    dataset = AudioDataset(utterances[: data.max_valid_utterances], crop_seconds=data.crop_seconds,
                           min_seconds=data.min_seconds, seed=12345)
    sampler = SecondsBatchSampler([u.duration for u in dataset.utterances], data.max_batch_seconds,
                                  shuffle=False, crop_seconds=data.crop_seconds)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)

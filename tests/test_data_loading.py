"""Sampler (bounds, coverage, sharding, determinism, resume) and dataset (load, crop, collate, workers)."""

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from speechssl.data.dataset import AudioDataset, AudioItem, Batch, collate, make_loader
from speechssl.data.manifest import Utterance
from speechssl.data.sampler import SecondsBatchSampler

SR = 16000


def padded_seconds(batch: list[int], effective: np.ndarray) -> float:
    return len(batch) * float(effective[batch].max())


def random_durations(n: int = 300, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).uniform(0.3, 12.0, n).round(3).tolist()


@pytest.fixture(scope="module")
def utterances(tmp_path_factory) -> list[Utterance]:
    """20 real 16 kHz wav files of 0.2-2.5 s (noise plus a sine, so crops differ)."""
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(1)
    rows = []
    for i, seconds in enumerate(np.linspace(0.2, 2.5, 20)):
        n = int(seconds * SR)
        t = np.arange(n) / SR
        wave = 0.3 * np.sin(2 * np.pi * (200 + 20 * i) * t) + 0.05 * rng.standard_normal(n)
        path = root / f"u{i:02d}.wav"
        sf.write(path, wave.astype(np.float32), SR, subtype="FLOAT")
        rows.append(Utterance(id=f"u{i:02d}", path=str(path), duration=n / SR, text=f"text {i}", speaker=f"s{i % 3}"))
    return rows


# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize("crop", [None, 3.0])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_batch_within_padded_seconds(crop, shuffle):
    durations = random_durations()
    sampler = SecondsBatchSampler(durations, 30.0, shuffle=shuffle, seed=3, crop_seconds=crop)
    effective = np.minimum(durations, crop) if crop else np.asarray(durations)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for batch in batches:
            assert padded_seconds(batch, effective) <= 30.0
        # Bucketing should keep padding waste small, not just legal.
        real = sum(effective[b].sum() for b in batches)
        assert real / sum(padded_seconds(b, effective) for b in batches) > 0.8
    if crop:  # batches of cropped items pad to exactly the crop: 30 s / 3 s = 10 items
        assert max(len(b) for b in batches if effective[b].max() == crop) == 10


def test_oversized_utterance_forms_its_own_batch(caplog):
    durations = [1.0] * 10 + [50.0] + [1.0] * 5
    with caplog.at_level(logging.WARNING):
        sampler = SecondsBatchSampler(durations, 8.0, seed=0)
    assert "1 utterance(s) longer than max_batch_seconds" in caplog.text
    batches = list(sampler)
    assert [10] in batches
    assert all(padded_seconds(b, np.asarray(durations)) <= 8.0 for b in batches if b != [10])
    caplog.clear()  # cropping below the bound makes it an ordinary item again
    cropped = SecondsBatchSampler(durations, 8.0, crop_seconds=2.0)
    assert all(padded_seconds(b, np.minimum(durations, 2.0)) <= 8.0 for b in cropped)
    assert "longer than max_batch_seconds" not in caplog.text


def test_max_padding_splits_a_batch_where_its_padding_would_pass_the_bound():
    """Inference on a CPU: sorted clips of mixed lengths, each batch's padding within 10% of its
    audio; without the bound, the same clips share one padded batch."""
    durations = [1.0, 1.05, 1.1, 2.0, 2.1, 6.0, 6.3]
    assert list(SecondsBatchSampler(durations, 100.0, shuffle=False)) == [list(range(7))]
    bounded = list(SecondsBatchSampler(durations, 100.0, shuffle=False, max_padding=0.1))
    assert bounded == [[0, 1, 2], [3, 4], [5, 6]]
    for batch in bounded:
        assert padded_seconds(batch, np.asarray(durations)) <= 1.1 * sum(durations[i] for i in batch)
    # 0 pads nothing: only equal lengths share a batch
    assert list(SecondsBatchSampler([1.0, 1.0, 1.5], 100.0, shuffle=False, max_padding=0.0)) == [[0, 1], [2]]
    with pytest.raises(ValueError, match="max_padding"):
        SecondsBatchSampler(durations, 10.0, max_padding=-0.1)


@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_exactly_once_per_epoch(shuffle):
    durations = random_durations(157)
    sampler = SecondsBatchSampler(durations, 25.0, shuffle=shuffle, seed=1)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        flat = [i for batch in sampler for i in batch]
        assert sorted(flat) == list(range(len(durations)))


def test_empty_dataset_gives_no_batches():
    sampler = SecondsBatchSampler([], 10.0, num_replicas=2, rank=1)
    assert len(sampler) == 0 and list(sampler) == []


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("replicas", [2, 3, 4])
def test_shards_equal_length_disjoint_and_covering(replicas, drop_last):
    durations = random_durations(101)
    full = SecondsBatchSampler(durations, 20.0, seed=5)
    full.set_epoch(2)
    everything, total = list(full), len(full)
    shards = []
    for rank in range(replicas):
        s = SecondsBatchSampler(durations, 20.0, seed=5, num_replicas=replicas, rank=rank, drop_last=drop_last)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == len(shards[-1])
    per_rank = total // replicas if drop_last else -(-total // replicas)
    assert [len(shard) for shard in shards] == [per_rank] * replicas  # all ranks step together: no DDP hang
    # Round-robin over ranks rebuilds the unsharded epoch: rank r holds batches r, r+R, ...
    interleaved = [shards[r][k] for k in range(per_rank) for r in range(replicas)]
    kept = min(total, len(interleaved))
    assert interleaved[:kept] == everything[:kept]
    real = [i for b in interleaved[:kept] for i in b]
    assert len(real) == len(set(real))  # disjoint
    if drop_last:
        assert kept == total - total % replicas
    else:  # covers the data; the < R padding batches repeat the epoch's first ones
        assert sorted(real) == list(range(len(durations)))
        assert interleaved[total:] == everything[: len(interleaved) - total]
        assert len(interleaved) - total < replicas


@pytest.mark.parametrize("drop_last", [False, True])
def test_more_ranks_than_batches_still_equal(drop_last):
    shards = [list(SecondsBatchSampler([1.0, 1.0], 10.0, num_replicas=3, rank=r, drop_last=drop_last))
              for r in range(3)]
    assert [[sorted(b) for b in shard] for shard in shards] == ([[]] * 3 if drop_last else [[[0, 1]]] * 3)


def test_deterministic_per_seed_and_epoch():
    durations = random_durations()

    def order(seed: int, epoch: int) -> list[list[int]]:
        s = SecondsBatchSampler(durations, 30.0, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 4) == order(0, 4)
    assert order(0, 4) != order(0, 5)
    assert order(0, 4) != order(1, 4)
    # Batch membership changes too, not only the order of fixed batches.
    assert {tuple(sorted(b)) for b in order(0, 4)} != {tuple(sorted(b)) for b in order(0, 5)}
    unshuffled = SecondsBatchSampler(durations, 30.0, shuffle=False)
    first = list(unshuffled)
    unshuffled.set_epoch(7)
    assert list(unshuffled) == first


def test_resume_skips_exactly_the_consumed_batches():
    durations = random_durations()
    sampler = SecondsBatchSampler(durations, 30.0, seed=2, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    full = list(sampler)
    for done in (0, 1, 7, len(full), len(full) + 3):
        restarted = SecondsBatchSampler(durations, 30.0, seed=2, num_replicas=2, rank=1)
        restarted.set_epoch(3)
        restarted.set_position(done)
        assert list(restarted) == full[done:]
        assert len(restarted) == len(full[done:])
    sampler.set_position(5)
    sampler.set_epoch(4)  # a new epoch starts at its first batch
    assert len(sampler) == sampler.batches_per_epoch
    with pytest.raises(ValueError, match="batches_done must be >= 0"):
        sampler.set_position(-1)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="max_batch_seconds must be > 0"):
        SecondsBatchSampler([1.0], 0)
    with pytest.raises(ValueError, match="need 0 <= rank < num_replicas"):
        SecondsBatchSampler([1.0], 5.0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="finite, non-negative"):
        SecondsBatchSampler([1.0, float("nan")], 5.0)


# ---------------------------------------------------------------- dataset


def test_collate_pads_with_zeros_and_reports_lengths():
    items = [AudioItem(torch.full((n,), float(n)), f"id{n}", None, "spk") for n in (3, 7, 5)]
    batch = collate(items)
    assert batch.waves.shape == (3, 7) and batch.waves.dtype == torch.float32
    assert batch.lengths.tolist() == [3, 7, 5] and batch.lengths.dtype == torch.int64
    for row, n in enumerate((3, 7, 5)):
        assert torch.all(batch.waves[row, :n] == n) and torch.all(batch.waves[row, n:] == 0)
    assert batch.ids == ["id3", "id7", "id5"] and batch.texts == [None] * 3 and len(batch) == 3
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.waves, batch.waves)
    with pytest.raises(ValueError, match="at least one item"):
        collate([])


def test_dataset_loads_real_files(utterances):
    dataset = AudioDataset(utterances)
    item = dataset[5]
    expected, _ = sf.read(utterances[5].path, dtype="float32")
    assert item.wave.dtype == torch.float32 and item.wave.shape == (len(expected),)
    np.testing.assert_allclose(item.wave.numpy(), expected, atol=1e-6)
    assert (item.id, item.text, item.speaker) == ("u05", "text 5", "s2")


def test_min_seconds_filters_at_construction(utterances, caplog):
    with caplog.at_level(logging.INFO):
        dataset = AudioDataset(utterances, min_seconds=1.0)
    short = sum(u.duration < 1.0 for u in utterances)
    assert len(dataset) == len(utterances) - short and all(u.duration >= 1.0 for u in dataset.utterances)
    assert f"dropped {short} of {len(utterances)} utterances" in caplog.text


def test_crop_is_reproducible_and_a_real_window(utterances):
    index = len(utterances) - 1  # the 2.5 s file
    full = AudioDataset(utterances)[index].wave
    a, b = (AudioDataset(utterances, crop_seconds=0.5, seed=9) for _ in range(2))
    assert torch.equal(a[index].wave, b[index].wave) and a[index].wave.numel() == SR // 2
    start = a.crop_offset(full.numel(), index)
    assert torch.equal(a[index].wave, full[start : start + SR // 2])
    offsets = set()
    for epoch in range(5):
        a.set_epoch(epoch)
        offsets.add(a.crop_offset(full.numel(), index))
    assert len(offsets) > 1  # a new window each epoch
    assert AudioDataset(utterances, crop_seconds=5.0)[index].wave.numel() == full.numel()  # short: kept whole


def test_bad_file_error_names_the_utterance(tmp_path):
    from speechssl.audio import AudioInvalidError

    path = tmp_path / "nan.wav"
    sf.write(path, np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    dataset = AudioDataset([Utterance(id="bad1", path=str(path), duration=1.0)])
    with pytest.raises(AudioInvalidError, match="NaN") as info:
        dataset[0]
    assert "utterance 'bad1'" in "".join(info.value.__notes__)


def loader_batches(utterances, num_workers: int, epoch: int) -> list[Batch]:
    loader = make_loader(utterances, 4.0, crop_seconds=0.8, seed=11, num_workers=num_workers)
    loader.batch_sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    return list(loader)


def test_loader_with_workers_matches_single_process(utterances):
    serial, parallel = loader_batches(utterances, 0, epoch=1), loader_batches(utterances, 2, epoch=1)
    assert [b.ids for b in serial] == [b.ids for b in parallel]
    for s, p in zip(serial, parallel):
        assert torch.equal(s.waves, p.waves) and torch.equal(s.lengths, p.lengths)
    assert sorted(i for b in serial for i in b.ids) == sorted(u.id for u in utterances)
    for batch in serial:  # the bound holds on the real tensors, not only on manifest durations
        assert batch.waves.shape[0] * batch.waves.shape[1] <= 4.0 * SR
        assert batch.lengths.max() == batch.waves.shape[1]
    other_epoch = loader_batches(utterances, 0, epoch=2)
    assert [b.ids for b in other_epoch] != [b.ids for b in serial]


def test_loader_shards_across_ranks(utterances):
    shards = [list(make_loader(utterances, 3.0, shuffle=False, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    ids = [i for shard in shards for b in shard for i in b.ids]
    assert set(ids) == {u.id for u in utterances}

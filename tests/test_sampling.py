"""Training batches: shapes, masks, the three sampling modes, seeding and resume."""

import json
import time

import numpy as np
import pytest
import torch

from wtal.data.annotations import Annotations, Video
from wtal.data.readers import FeatureDataset
from wtal.data.sampling import TrainBatches, hold_out, pad_batch, sample_indices
from wtal.errors import WtalError

LENGTHS = {"a": 3, "b": 10, "c": 25, "d": 40, "e": 7, "bg": 12}


def make_dataset(lengths=LENGTHS, width=4):
    videos, arrays = {}, {}
    for k, (name, t) in enumerate(lengths.items()):
        labels = () if name == "bg" else (("X",) if k % 2 else ("X", "Y"))
        videos[name] = Video(name, "train", t * 1.0, np.zeros((len(labels), 2)), labels)
        # Column 0 holds the snippet index, so sampled indices can be read back.
        arrays[name] = np.repeat(np.arange(t, dtype=np.float32)[:, None], width, axis=1) + 1000 * k
    return FeatureDataset.from_arrays(Annotations(("X", "Y"), videos), arrays, snippet_seconds=1.0)


def test_batch_shapes_masks_and_labels():
    dataset = make_dataset()
    batches = TrainBatches(dataset, "train", batch_size=4, max_seqlen=16, sampling="random_perturb", seed=0)
    seen = set()
    for _ in range(5):
        batch = next(batches)
        features, mask, labels = batch["features"], batch["mask"], batch["labels"]
        assert features.dtype == torch.float32 and mask.dtype == torch.bool and labels.dtype == torch.float32
        assert features.shape[:2] == mask.shape and features.shape[0] == 4 and features.shape[2] == 4
        expected = [min(LENGTHS[n], 16) for n in batch["videos"]]
        assert mask.sum(1).tolist() == expected and mask.shape[1] == max(expected)
        assert not features[~mask].any()
        for row, name in enumerate(batch["videos"]):
            assert labels[row].tolist() == dataset.label_matrix([dataset.annotations.videos[name]])[0].tolist()
        seen.update(batch["videos"])
    assert seen == set(LENGTHS) - {"bg"}  # unlabelled videos are never drawn


def test_epochs_cover_every_video_once():
    batches = TrainBatches(make_dataset(), "train", batch_size=5, max_seqlen=8, sampling="uniform", seed=3)
    assert sorted(next(batches)["videos"]) == sorted(set(LENGTHS) - {"bg"})


@pytest.mark.parametrize("mode", ["random_perturb", "uniform", "crop"])
def test_sample_indices_modes(mode):
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sample_indices(5, 8, mode, rng), np.arange(5))
    for length in (9, 17, 100, 1001):
        idx = sample_indices(length, 8, mode, rng)
        assert idx.shape == (8,) and idx.min() >= 0 and idx.max() < length and np.all(np.diff(idx) > 0)
        if mode == "crop":
            assert np.all(np.diff(idx) == 1)
        else:  # one index in each of the 8 bins [floor(i T / 8), floor((i + 1) T / 8))
            bounds = np.arange(9) * length // 8
            assert np.all(idx >= bounds[:-1]) and np.all(idx < bounds[1:])
    if mode == "uniform":
        np.testing.assert_array_equal(sample_indices(80, 8, mode, rng), np.arange(5, 80, 10))
    else:
        draws = {tuple(sample_indices(100, 8, mode, rng)) for _ in range(10)}
        assert len(draws) > 1


def test_sampled_snippets_come_from_the_indices():
    batches = TrainBatches(make_dataset(), "train", batch_size=5, max_seqlen=8, sampling="crop", seed=1)
    batch = next(batches)
    for row, name in enumerate(batch["videos"]):
        picked = batch["features"][row, batch["mask"][row], 0] % 1000
        assert torch.all(picked[1:] - picked[:-1] == 1)


def _stream(batches, count):
    return [next(batches) for _ in range(count)]


def _same(first, second):
    return all(
        a["videos"] == b["videos"] and torch.equal(a["features"], b["features"]) and torch.equal(a["mask"], b["mask"])
        for a, b in zip(first, second)
    )


def test_seed_determinism_and_resume():
    dataset = make_dataset()
    make = lambda seed: TrainBatches(dataset, "train", 3, 8, "random_perturb", seed)  # noqa: E731
    assert _same(_stream(make(7), 6), _stream(make(7), 6))
    assert not _same(_stream(make(7), 6), _stream(make(8), 6))

    original = make(7)
    _stream(original, 4)  # mid-epoch (5 videos, 3 per batch)
    state = json.loads(json.dumps(original.state_dict()))
    expected = _stream(original, 5)
    resumed = make(123)
    resumed.load_state_dict(state)
    assert _same(_stream(resumed, 5), expected) and resumed.epoch == original.epoch


def test_resume_refuses_another_dataset():
    state = TrainBatches(make_dataset(), "train", 2, 8, "uniform", 0).state_dict()
    other = TrainBatches(make_dataset({"a": 3, "b": 4}), "train", 2, 8, "uniform", 0)
    with pytest.raises(WtalError, match="saved for 5 training videos"):
        other.load_state_dict(state)


def test_bad_arguments_and_unlabelled_subset():
    dataset = make_dataset()
    with pytest.raises(WtalError, match="data.sampling"):
        TrainBatches(dataset, "train", 2, 8, "random", 0)
    with pytest.raises(WtalError, match="train.batch_size"):
        TrainBatches(dataset, "train", 0, 8, "uniform", 0)
    with pytest.raises(WtalError, match="subset 'test'"):
        TrainBatches(dataset, "test", 2, 8, "uniform", 0)


def test_pad_batch():
    features, mask = pad_batch([np.ones((2, 3)), np.full((4, 3), 2.0)])
    assert features.dtype == torch.float32 and features.shape == (2, 4, 3)
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert features[0, 2:].abs().sum() == 0 and torch.all(features[1] == 2)


def test_sampling_is_cheap():
    dataset = make_dataset({f"v{i}": 2000 + 37 * i for i in range(10)}, width=2048)
    batches = TrainBatches(dataset, "train", 10, 320, "random_perturb", 0)
    next(batches)  # fills the feature cache
    started = time.perf_counter()
    for _ in range(5):
        next(batches)
    assert (time.perf_counter() - started) / 5 < 0.05


def test_held_out_videos_are_seeded_and_never_sampled():
    names = [f"v{i}" for i in range(10)]
    split = hold_out(names, 0.3, seed=0)
    assert len(split) == 3 and split == sorted(split) and set(split) <= set(names)
    assert hold_out(names[::-1], 0.3, seed=0) == split  # the order given does not matter
    assert any(hold_out(names, 0.3, seed=s) != split for s in range(1, 5))
    assert len(hold_out(names, 0.01, seed=0)) == 1 and len(hold_out(names, 0.99, seed=0)) == 9
    with pytest.raises(WtalError, match="at least 2 training videos"):
        hold_out(["a"], 0.5, seed=0)

    dataset = make_dataset()
    batches = TrainBatches(dataset, "train", 2, 16, seed=0, held_out=frozenset({"b", "d"}))
    seen = {name for _ in range(20) for name in next(batches)["videos"]}
    assert seen == {"a", "c", "e"}  # "bg" has no label, "b" and "d" are held out


def _authors_ranges(length, count):
    """The UM / CO2-Net rule as a plain loop (an independent reference): each position's
    inclusive range of snippet indices."""
    position = np.arange(count) * length / count
    ranges = []
    for i in range(count):
        low = int(position[i])
        high = int(position[i + 1]) if i < count - 1 else length - 1
        ranges.append((low, max(low, high)))
    return ranges


@pytest.mark.parametrize("length", [1, 5, 16, 17, 40, 1000])
def test_resample_gives_exactly_max_seqlen_within_the_authors_ranges(length):
    rng = np.random.default_rng(0)
    draws = np.stack([sample_indices(length, 16, "resample", rng) for _ in range(400)])  # [400, 16]
    assert draws.shape == (400, 16) and (np.diff(draws, axis=1) >= 0).all()
    if length == 16:
        assert (draws == np.arange(16)).all()
        return
    for i, (low, high) in enumerate(_authors_ranges(length, 16)):
        assert low <= draws[:, i].min() and draws[:, i].max() <= high, i
        if high - low < 10:  # every value of a small range is drawn, roughly uniformly
            counts = np.bincount(draws[:, i] - low, minlength=high - low + 1)
            assert counts.min() > 0.5 * 400 / (high - low + 1), i
        else:
            assert abs(draws[:, i].mean() - (low + high) / 2) < 0.1 * (high - low), i


def test_resample_batches_are_full_length_and_repeat_short_videos():
    batches = TrainBatches(make_dataset(), "train", batch_size=5, max_seqlen=16, sampling="resample", seed=0)
    batch = next(batches)
    assert batch["features"].shape[1] == 16 and batch["mask"].all()
    for row, name in enumerate(batch["videos"]):
        index = batch["features"][row, :, 0].numpy() % 1000  # column 0 holds the snippet index
        assert index.max() < LENGTHS[name] and (np.diff(index) >= 0).all()


def test_similar_pairs_lead_each_batch_and_resume_exactly():
    dataset = make_dataset()
    make = lambda: TrainBatches(dataset, "train", 5, 8, "resample", 3, similar_pairs=2)  # noqa: E731
    batches = make()
    for _ in range(20):
        batch = next(batches)
        labels, videos = batch["labels"], batch["videos"]
        assert len(videos) == 5
        for i in (0, 2):
            assert videos[i] != videos[i + 1] and (labels[i] * labels[i + 1]).sum() > 0
    state = json.loads(json.dumps(batches.state_dict()))
    expected = [next(batches)["videos"] for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(state)
    assert [next(resumed)["videos"] for _ in range(3)] == expected


def test_similar_pairs_refuse_a_batch_too_small_or_no_class_with_two_videos():
    with pytest.raises(WtalError, match="train.batch_size.*similar_pairs=3"):
        TrainBatches(make_dataset(), "train", 5, 8, "resample", 0, similar_pairs=3)
    with pytest.raises(WtalError, match="no class has two training videos"):
        TrainBatches(make_dataset({"a": 3, "bg": 4}), "train", 2, 8, "resample", 0, similar_pairs=1)


def test_batch_draw_with_replacement_draws_every_row_uniformly_at_each_step():
    """CO2-Net's and DELU's code: np.random.choice over all training videos at every step, so a
    batch may hold a video twice and nothing follows epochs."""
    names = sorted(set(LENGTHS) - {"bg"})
    batches = TrainBatches(make_dataset(), "train", 4, 8, "uniform", seed=0, draw="with_replacement")
    counts = dict.fromkeys(names, 0)
    repeated = 0
    for _ in range(2000):
        videos = next(batches)["videos"]
        repeated += len(set(videos)) < len(videos)
        for name in videos:
            counts[name] += 1
    assert repeated > 0 and batches.epoch == 0
    assert all(abs(n / 8000 - 1 / len(names)) < 0.02 for n in counts.values())
    state = json.loads(json.dumps(batches.state_dict()))
    expected = _stream(batches, 3)
    resumed = TrainBatches(make_dataset(), "train", 4, 8, "uniform", seed=9, draw="with_replacement")
    resumed.load_state_dict(state)
    assert _same(_stream(resumed, 3), expected)


def test_batch_draw_epochs_short_last_ends_each_epoch_with_what_is_left():
    """UM's DataLoader (shuffle, drop_last=False): 5 videos in batches of 2 give 2, 2, 1 per epoch,
    each epoch every video once; the default epochs draw fills every batch, across epochs."""
    short = TrainBatches(make_dataset(), "train", 2, 8, "uniform", seed=0, draw="epochs_short_last")
    epochs = [[next(short)["videos"] for _ in range(3)] for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [2, 2, 1]
        assert sorted(sum(batches, [])) == sorted(set(LENGTHS) - {"bg"})
    full = TrainBatches(make_dataset(), "train", 2, 8, "uniform", seed=0)
    assert [len(next(full)["videos"]) for _ in range(6)] == [2] * 6
    with pytest.raises(WtalError, match=r"data.batch_draw: expected one of \['epochs', 'with_replacement'"):
        TrainBatches(make_dataset(), "train", 2, 8, "uniform", seed=0, draw="cyclic")

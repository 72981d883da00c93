"""Training batches of snippet sequences, and padding for full-length evaluation.

A training video of T snippets contributes L = ``max_seqlen`` snippets, chosen by one of
four modes:

* ``resample`` (the code of UM and CO2-Net): every video, long or short, becomes exactly L
  snippets. Position i covers ``[floor(i T / L), floor((i + 1) T / L)]`` (both ends included,
  so neighbouring picks may meet; the last position runs to T - 1) and one index is drawn
  uniformly from it. A short video repeats snippets; T = L gives every snippet once.
* ``random_perturb``: split ``[0, T)`` into L equal bins and draw one random index per bin
  (sorted, every bin represented);
* ``uniform``: the middle snippet of each bin (deterministic);
* ``crop``: a random contiguous window of L snippets.

In the last three modes a video with ``T <= max_seqlen`` contributes all its T snippets.

Batches may start with same-class pairs (``similar_pairs``): rows 2i and 2i+1 share a class,
as the co-activity losses of W-TALC and CO2-Net need.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wtal.errors import WtalError

SAMPLINGS = ("resample", "random_perturb", "uniform", "crop")
BATCH_DRAWS = ("epochs", "with_replacement", "epochs_short_last")


def resample_indices(length: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` non-decreasing snippet indices int64 into ``[0, length)`` (mode ``resample``)."""
    if length == count:
        return np.arange(count)
    low = (np.arange(count) * length / count).astype(np.int64)
    high = np.append(low[1:], length - 1)  # inclusive upper end of each position's range
    return low + (rng.random(count) * (high - low + 1)).astype(np.int64)


def sample_indices(length: int, count: int, mode: str, rng: np.random.Generator) -> np.ndarray:
    """Sorted snippet indices int64 into ``[0, length)``: ``count`` of them in mode ``resample``,
    else ``min(length, count)``."""
    if mode == "resample":
        return resample_indices(length, count, rng)
    if length <= count:
        return np.arange(length)
    if mode == "crop":
        return rng.integers(0, length - count + 1) + np.arange(count)
    # Integer bin bounds: with length > count every bin is non-empty, so picks stay inside it.
    edges = np.arange(count + 1) * length // count
    starts, stops = edges[:-1], edges[1:]
    if mode == "uniform":
        return (starts + stops) // 2
    return starts + (rng.random(count) * (stops - starts)).astype(np.int64)


def pad_batch(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[T_i, D]`` arrays into features ``[B, T_max, D]`` float32 (zero padded)
    and mask ``[B, T_max]`` bool (True on real snippets)."""
    if not arrays:
        raise ValueError("pad_batch: no arrays")
    width = arrays[0].shape[1]
    lengths = [len(a) for a in arrays]
    features = np.zeros((len(arrays), max(lengths), width), dtype=np.float32)
    mask = np.zeros((len(arrays), max(lengths)), dtype=bool)
    for row, array in enumerate(arrays):
        if array.ndim != 2 or array.shape[1] != width:
            raise ValueError(f"pad_batch: array {row} has shape {array.shape}, expected [T, {width}]")
        features[row, : len(array)] = array
        mask[row, : len(array)] = True
    return torch.from_numpy(features), torch.from_numpy(mask)


def hold_out(names: list[str], fraction: float, seed: int) -> list[str]:
    """A seeded draw of ``round(fraction * len(names))`` names (at least one, never all).

    The draw depends on ``seed`` and the set of names only, so every training seed
    of a sweep shares one validation split.
    """
    if not 0.0 < fraction < 1.0:
        raise WtalError(f"data.val_fraction: expected a value in (0, 1), found {fraction!r}")
    if len(names) < 2:
        raise WtalError(f"data.val_fraction: needs at least 2 training videos to hold some out, found {len(names)}")
    count = min(max(1, round(fraction * len(names))), len(names) - 1)
    ordered = sorted(names)
    picks = np.random.default_rng(seed).permutation(len(ordered))[:count]
    return sorted(ordered[i] for i in picks)


class TrainBatches:
    """Infinite iterator of training batches over the labelled videos of ``subset``
    (less ``held_out``, the videos kept for checkpoint selection).

    ``next(batches)`` gives ``{"features": [B, L, D] float32, "mask": [B, L]
    bool, "labels": [B, C] float32 multi-hot, "videos": list of B names}``
    with L the longest sampled length in the batch (``<= max_seqlen``).
    ``draw`` says how the videos of a batch are drawn: ``epochs``, shuffled epochs, a batch
    spanning two epochs where one runs out (every batch full); ``with_replacement``, each
    video uniformly from all of them at every step, no epochs (W-TALC's, CO2-Net's and DELU's
    code); ``epochs_short_last``, shuffled epochs whose last batch holds what is left (a torch
    DataLoader with ``shuffle=True, drop_last=False``: BaS-Net's and UM's code). With
    ``similar_pairs`` = P > 0 the first 2P rows are P pairs: a class drawn uniformly
    (with replacement) among the classes with at least two training videos, then two
    distinct videos of that class (as CO2-Net's code draws them; W-TALC's may draw one video
    twice); the other
    rows are drawn as ``draw`` says. All randomness comes from one numpy Generator seeded by
    ``seed``, and :meth:`state_dict` (JSON-serialisable) resumes the exact same stream.
    """

    def __init__(
        self,
        dataset,
        subset: str,
        batch_size: int,
        max_seqlen: int,
        sampling: str = "random_perturb",
        seed: int = 0,
        held_out: frozenset[str] = frozenset(),
        similar_pairs: int = 0,
        draw: str = "epochs",
    ):
        if sampling not in SAMPLINGS:
            raise WtalError(f"data.sampling: expected one of {list(SAMPLINGS)}, found {sampling!r}")
        if draw not in BATCH_DRAWS:
            raise WtalError(f"data.batch_draw: expected one of {list(BATCH_DRAWS)}, found {draw!r}")
        for key, value in (("train.batch_size", batch_size), ("data.max_seqlen", max_seqlen)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise WtalError(f"{key}: expected a positive integer, found {value!r}")
        videos = [v for v in dataset.videos(subset) if v.name not in held_out]
        labels = dataset.label_matrix(videos)
        labelled = labels.sum(axis=1) > 0
        if not labelled.any():
            raise WtalError(f"{dataset.source}: subset {subset!r}: no video with an action label to train on")
        self.dataset = dataset
        self.names = [v.name for v, keep in zip(videos, labelled) if keep]
        self.lengths = np.array([dataset.num_snippets(n) for n in self.names])
        self.batch_size = batch_size
        self.max_seqlen = max_seqlen
        self.sampling = sampling
        self.draw = draw
        self._labels = labels[labelled]
        self.similar_pairs = similar_pairs
        self._by_class = [np.flatnonzero(column) for column in self._labels.T > 0]
        self._pair_classes = np.flatnonzero([len(videos) >= 2 for videos in self._by_class])
        if similar_pairs:
            if 2 * similar_pairs > batch_size:
                raise WtalError(
                    f"train.batch_size: {batch_size} videos cannot hold model.similar_pairs={similar_pairs} "
                    f"same-class pairs; expected a batch of at least {2 * similar_pairs}"
                )
            if not self._pair_classes.size:
                raise WtalError(
                    f"{dataset.source}: subset {subset!r}: no class has two training videos to form the "
                    f"model.similar_pairs={similar_pairs} same-class pairs; set model.similar_pairs=0"
                )
        self._rng = np.random.default_rng(seed)
        self._order = np.zeros(0, dtype=np.int64)
        self._position = 0
        self.epoch = 0

    def __iter__(self) -> "TrainBatches":
        return self

    def _draw(self) -> np.ndarray:
        """Indices of the next batch's videos: the same-class pairs, then the other rows as
        ``draw`` says."""
        picks = []
        for c in self._rng.choice(self._pair_classes, size=self.similar_pairs) if self.similar_pairs else ():
            picks.append(self._rng.choice(self._by_class[c], size=2, replace=False))
        needed = self.batch_size - 2 * self.similar_pairs
        if self.draw == "with_replacement":
            return np.concatenate([*picks, self._rng.integers(0, len(self.names), size=needed)])
        while needed:
            if self._position == len(self._order):  # a new epoch
                self._order = self._rng.permutation(len(self.names))
                self._position = 0
                self.epoch += 1
            taken = self._order[self._position : self._position + needed]
            picks.append(taken)
            self._position += len(taken)
            needed -= len(taken)
            if self.draw == "epochs_short_last":  # what is left of the epoch, however few
                break
        return np.concatenate(picks)

    def __next__(self) -> dict[str, Any]:
        picks = self._draw()
        indices = [sample_indices(int(self.lengths[i]), self.max_seqlen, self.sampling, self._rng) for i in picks]
        longest = max(len(idx) for idx in indices)
        features = np.zeros((len(picks), longest, self.dataset.feature_dim), dtype=np.float32)
        mask = np.zeros((len(picks), longest), dtype=bool)
        for row, (i, idx) in enumerate(zip(picks, indices)):
            # Indices are in range; mode="clip" lets take write straight into the batch.
            np.take(self.dataset.features(self.names[i]), idx, axis=0, out=features[row, : len(idx)], mode="clip")
            mask[row, : len(idx)] = True
        return {
            "features": torch.from_numpy(features),
            "mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(self._labels[picks]),
            "videos": [self.names[i] for i in picks],
        }

    def state_dict(self) -> dict[str, Any]:
        """The rng state and epoch position (plain ints, lists and dicts)."""
        return {
            "rng": self._rng.bit_generator.state,
            "order": self._order.tolist(),
            "position": self._position,
            "epoch": self.epoch,
            "num_videos": len(self.names),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`; the following batches equal the saved run's."""
        if state.get("num_videos") != len(self.names):
            raise WtalError(
                f"sampler state: saved for {state.get('num_videos')} training videos, this dataset has "
                f"{len(self.names)}; resume with the same data configuration"
            )
        self._rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state["order"], dtype=np.int64)
        self._position = int(state["position"])
        self.epoch = int(state["epoch"])

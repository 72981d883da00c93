"""File input/output shared by every stage.

* Atomic writes: a file appears under its final name only when complete
  (written to a temporary file in the same folder, flushed, fsynced, renamed).
* Safe loading of ``.npy`` object arrays: the community's W-TALC bundles and
  the I3D weights are pickles, and ``np.load(allow_pickle=True)`` executes
  whatever a pickle asks for. ``load_npy`` uses a restricted unpickler that
  only rebuilds numpy arrays, dtypes, scalars, lists, tuples, dicts and strings.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from wtal.errors import WtalError

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "dict"),
    ("builtins", "str"),
    ("builtins", "bytes"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "set"),
    ("_codecs", "encode"),
}
_DTYPE_MODULES = {"numpy.dtypes", "numpy"}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global outside a short allow-list."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (
            module in _DTYPE_MODULES and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise WtalError(
            f"{self._source}: refused to load: the pickle asks for '{module}.{name}', "
            "but only numpy arrays, dtypes, scalars, lists, dicts and strings are allowed"
        )


def safe_unpickle(data: bytes, source: str) -> Any:
    """Unpickle ``data`` allowing only plain numpy/python containers."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except WtalError:
        raise
    except Exception as exc:
        raise WtalError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _read_npy_header(handle, path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(handle)
    except Exception as exc:
        raise WtalError(f"{path}: not a .npy file ({exc})") from None
    return shape, dtype


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, read from its header only."""
    with open(path, "rb") as handle:
        return _read_npy_header(handle, path)


def load_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file; object arrays go through the restricted unpickler.

    Plain numeric arrays are loaded without pickle (memory-mapped when ``mmap``).
    """
    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: file not found")
    with open(path, "rb") as handle:
        _, dtype = _read_npy_header(handle, path)
        if dtype.hasobject:
            array = safe_unpickle(handle.read(), str(path))
    if not dtype.hasobject:
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except Exception as exc:
            raise WtalError(f"{path}: cannot read array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise WtalError(f"{path}: expected a numpy array, found {type(array).__name__}")
    return array


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    If the block raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a numeric array as ``.npy`` atomically (never pickled)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array), allow_pickle=False)


def read_yaml_mapping(path: str | os.PathLike, expected: str) -> dict:
    """Read a YAML file that must hold a mapping; ``expected`` names its keys for the error."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WtalError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise WtalError(f"{path}: expected a mapping ({expected})")
    return values


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file and position on a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WtalError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise WtalError(f"{path}: not a UTF-8 text file") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file (a run's ``metrics.jsonl``) into its records, naming the file and
    line of one that is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: file not found")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise WtalError(f"{path}: line {number}: expected a JSON object, found {line[:80]!r}")
        records.append(record)
    return records

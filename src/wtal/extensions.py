"""Code of the user's own that a config imports before it is built (its ``imports:`` list).

A method of one's own is one Python file that registers its model and config
(:func:`wtal.models.register_model`); a config lists the file, or an importable module, under
``imports`` and names the model as any other (``docs/adding_a_method.md``). Every command that
loads a config imports its entries first, a run directory's ``config.yaml`` included, so a run
trained with a model of one's own is localised, resumed and swept the same way.

An entry ending in ``.py`` or holding a path separator is a file, read relative to the working
directory as ``data.root`` is; any other entry is a module name on ``sys.path``. A file is
imported once per process whatever it is called in the list.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path

from wtal.errors import WtalError


def _is_file_entry(entry: str) -> bool:
    """Whether an ``imports`` entry names a file (rather than a module)."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def _module_name(path: Path) -> str:
    """A module name for the file at ``path`` (resolved), the same for every spelling of the path."""
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return f"wtal_imports_{stem}_{digest}"


def _import_file(path: Path) -> None:
    """Run the file at ``path`` (resolved) as a module, once per process; a failed run leaves no module."""
    name = _module_name(path)
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def import_extensions(entries: list, where: str = "config") -> None:
    """Import each entry of a config's ``imports`` list (files or module names), in order; an
    error names ``<where>: imports[i]``, what was found and what was expected. An exception raised
    by the imported code itself propagates with its own traceback."""
    if not isinstance(entries, list):
        raise WtalError(f"{where}: imports: expected a list of .py files or module names, found {entries!r}")
    for i, entry in enumerate(entries):
        field = f"{where}: imports[{i}]"
        if not isinstance(entry, str) or not entry.strip():
            raise WtalError(f"{field}: expected a .py file or a module name, found {entry!r}")
        if _is_file_entry(entry):
            path = Path(entry).expanduser()
            if not path.is_file():
                raise WtalError(
                    f"{field}: no file {entry!r} (relative paths are read from the working directory, "
                    f"{Path.cwd()}); expected a .py file that registers a model"
                )
            _import_file(path.resolve())
            continue
        try:
            importlib.import_module(entry)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (entry == exc.name or entry.startswith(exc.name + ".")):
                raise
            raise WtalError(
                f"{field}: no module {entry!r} on the Python path; expected an importable module name, "
                "or a path ending in .py"
            ) from None

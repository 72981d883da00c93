"""Shared pieces of the benchmark scripts: import path, machine info, timing, output.

Every script prints its figures as it goes, writes the same figures (plus the machine
info and its arguments) as JSON with ``--json PATH``, and prints a one-line summary last.
Nothing here asserts a timing: the figures are for people to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("WTAL_BENCH_CACHE", Path(os.environ.get("TMPDIR", "/tmp")) / "wtal-bench"))

try:  # an installed wtal (pip install -e .) wins; else the working tree's src/
    import wtal  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO / "src"))
    import wtal  # noqa: F401


def wtal_pythonpath() -> dict[str, str]:
    """Environment for a child ``python -m wtal`` that imports the same wtal as this process."""
    env = dict(os.environ)
    root = str(Path(wtal.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke", action="store_true", help="tiny CI-sized run (seconds; figures are meaningless)")
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--repeat", type=int, default=None, help="timed repetitions; the best is reported (best-of-N)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave torch's default)")
    return p


def apply_threads(threads: int) -> None:
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def machine_info(device: str | None = None) -> dict[str, Any]:
    """CPU count, torch threads, device and library versions of this process."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "device": device or "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        info["load_avg_1min"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpus_usable']}/{info['cpu_count']} CPUs ({info['cpu_model']}), torch threads "
        f"{info['torch_threads']}, device {info['device']}"
        + (f" ({info['cuda_device']})" if info.get("cuda_device") else "")
        + f", load {info.get('load_avg_1min', '?')}; python {info['python']}, torch {info['torch']}, "
        f"numpy {info['numpy']}"
    )


def best_of(fn: Callable[[], Any], repeat: int) -> tuple[dict[str, Any], Any]:
    """Call ``fn`` ``repeat`` times -> ({"best_s", "median_s", "runs_s"}, last return value).

    The machine may be shared, so the best run is the figure to quote; the median shows the noise.
    """
    runs, value = [], None
    for _ in range(max(1, repeat)):
        started = time.perf_counter()
        value = fn()
        runs.append(time.perf_counter() - started)
    return {"best_s": min(runs), "median_s": statistics.median(runs), "runs_s": runs}, value


def finish(name: str, args: argparse.Namespace, machine: dict[str, Any], results: dict[str, Any], summary: str) -> int:
    """Write the JSON (when asked) and print the one-line summary, last."""
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"benchmark": name, "summary": summary, "args": vars(args), "machine": machine, "results": results}
        path.write_text(json.dumps(record, indent=2, default=_jsonable) + "\n")
        print(f"wrote {path}")
    print(f"{name}: {summary}")
    return 0


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")

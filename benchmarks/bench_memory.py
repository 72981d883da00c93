"""Peak memory of serving a dataset to training, with and without the feature cache.

One epoch of training batches (``TrainBatches``: every training video drawn once) is read
from the synthetic ActivityNet preset (1,500 videos of ActivityNet1.3's real structure,
2048-d), and then every test video once (as an evaluation does). Each setting runs in its
own child process so that its peak RSS (``resource.getrusage``) is its own:

* ``data.cache=false``: canonical features are memory-mapped and copied per batch; memory
  stays flat whatever the number of videos (what an ActivityNet-sized run should use);
* ``data.cache=true`` (the default, right for THUMOS14's 1.1 GB): every video read stays
  in memory, so the peak grows with the dataset.

    python benchmarks/bench_memory.py [--data DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import _common

from wtal.config import load_config
from wtal.data.readers import load_dataset
from wtal.data.sampling import TrainBatches
from wtal.data.synthetic import generate
from wtal.io import read_yaml_mapping


def dataset_folder(args) -> Path:
    if args.data:
        return Path(args.data)
    preset = "tiny" if args.smoke else "activitynet"
    folder = _common.CACHE / f"{preset}-seed0"
    if not (folder / "dataset.yaml").is_file():
        print(f"generating the {preset} preset into {folder} ...", flush=True)
        generate(preset, folder, seed=0, overwrite=True)
    return folder


def measure(data: Path, cache: bool) -> dict:
    """Child process: one epoch of batches plus one pass over the test videos."""
    subsets = read_yaml_mapping(data / "dataset.yaml", "the canonical dataset description")["subsets"]
    cfg = load_config(None, [
        f"data.root={data}", f"data.cache={str(cache).lower()}", "data.max_seqlen=60",
        f"data.train_subset={subsets['train']}", f"data.test_subset={subsets['test']}",
    ])
    started = time.perf_counter()
    dataset = load_dataset(cfg.data)
    train = dataset.videos(cfg.data.train_subset)
    batches = TrainBatches(dataset, cfg.data.train_subset, 10, cfg.data.max_seqlen, cfg.data.sampling, 0)
    for _ in range((len(train) + 9) // 10):
        next(batches)
    test = dataset.videos(cfg.data.test_subset)
    snippets = sum(len(dataset.features(v.name)) for v in test)
    return {
        "cache": cache,
        "videos": len(train) + len(test),
        "test_snippets": snippets,
        "seconds": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", help="canonical dataset folder (default: the synthetic ActivityNet preset, cached)")
    p.add_argument("--child", choices=["true", "false"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    data = dataset_folder(args)
    if args.child:
        print(json.dumps(measure(data, args.child == "true")))
        return 0
    machine = _common.machine_info()
    _common.print_machine(machine)
    size_gb = sum(f.stat().st_size for f in (data / "features").glob("*.npy")) / 1e9
    print(f"dataset: {data} ({size_gb:.2f} GB of features)")
    results = {"dataset_gb": round(size_gb, 3)}
    for cache in ("false", "true"):
        out = subprocess.run(
            [sys.executable, __file__, "--data", str(data), "--child", cache],
            check=True, capture_output=True, text=True, env=_common.wtal_pythonpath(),
        ).stdout.strip().splitlines()[-1]
        record = json.loads(out)
        results[f"cache_{cache}"] = record
        print(f"data.cache={cache}: peak RSS {record['peak_rss_mb']} MB for {record['videos']} videos "
              f"({record['seconds']} s)")
    summary = (f"peak RSS {results['cache_false']['peak_rss_mb']} MB without the feature cache, "
               f"{results['cache_true']['peak_rss_mb']} MB with it, for {size_gb:.2f} GB of features")
    return _common.finish("bench_memory", args, machine, results, summary)


if __name__ == "__main__":
    raise SystemExit(main())

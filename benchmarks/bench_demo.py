"""Wall time of ``wtal demo`` run as a user runs it (a child ``python -m wtal demo``).

Full run: ``wtal demo --out <temp> --quiet``: generates the synthetic THUMOS14 preset,
trains the paper model with the demo cut (``wtal.cli.DEMO_OVERRIDES``), evaluates and
plots. ``--data DIR`` reuses a generated preset (the time then excludes generation).
The figures: the child's wall time; from the run's ``metrics.json`` the training
seconds (train loop + evaluations) and the mAP; from ``metrics.jsonl`` the seconds into
training at each evaluation.

``--smoke``: the tiny preset (generated into a temp folder) with a few iterations of a
small model; seconds.

    python benchmarks/bench_demo.py [--data DIR] [--json out.json] [-- KEY=VALUE ...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common

from wtal.cli import DEMO_OVERRIDES

SMOKE_OVERRIDES = [
    "train.threads=1",
    "model.base.embed_dim=32",
    "model.base.attention_dim=16",
    "data.max_seqlen=64",
    "train.batch_size=8",
    "train.iterations=4",
    "train.eval_every=0",
    "train.lr=1e-3",
]


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", help="canonical dataset to pass to `wtal demo --data` (default: the demo generates one)")
    p.add_argument("--keep", metavar="DIR", help="demo output folder to keep (default: a temp folder, removed)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="extra config overrides for the demo")
    args = p.parse_args(argv)
    repeat = args.repeat or 1
    machine = _common.machine_info()
    _common.print_machine(machine)

    with tempfile.TemporaryDirectory(prefix="wtal-bench-demo-") as tmp:
        data = args.data
        overrides = list(args.overrides)
        if args.smoke:
            overrides = SMOKE_OVERRIDES + overrides
            if not data:
                from wtal.data.synthetic import generate

                data = str(generate("tiny", Path(tmp) / "tiny", seed=0))
        base = Path(args.keep) if args.keep else Path(tmp) / "demo"
        print(f"demo cut: {' '.join(DEMO_OVERRIDES)}" + (f"; then {' '.join(overrides)}" if overrides else ""))
        runs = []
        for index in range(repeat):
            out = base / f"run{index}"
            command = [sys.executable, "-m", "wtal", "demo", "--out", str(out), "--quiet", "--overwrite"]
            command += (["--data", data] if data else []) + overrides
            started = time.perf_counter()
            completed = subprocess.run(command, env=_common.wtal_pythonpath(), capture_output=True, text=True)
            wall = time.perf_counter() - started
            if completed.returncode != 0:
                print(completed.stdout + completed.stderr, file=sys.stderr)
                print(f"ERROR: `{' '.join(command)}` exited {completed.returncode}", file=sys.stderr)
                return 1
            run_dir = next(out.glob("run-*/"))
            metrics = json.loads((run_dir / "metrics.json").read_text())
            lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
            evaluations = {r["step"]: r["seconds"] for r in lines if r.get("split") == "test"}
            run = {
                "wall_s": wall,
                "train_seconds": metrics.get("train_seconds"),
                "mAP_avg": metrics.get("averages", {}).get("avg(0.1:0.7)"),
                "generated": data is None,
                "seconds_at_evaluation": evaluations,  # seconds since training started, by step
            }
            print(
                f"run {index + 1}/{repeat}: wall {wall:.1f} s (train + evaluations {run['train_seconds']} s"
                f"{', data generation included' if run['generated'] else ''}); mAP avg(0.1:0.7) "
                f"{run['mAP_avg']:.2f}%; seconds into training at each evaluation: "
                + ", ".join(f"step {k}: {v}" for k, v in evaluations.items())
            )
            runs.append(run)

    best = min(r["wall_s"] for r in runs)
    results = {"command": command, "data": data, "overrides": overrides, "runs": runs, "best_wall_s": best}
    summary = f"wtal demo wall {best:.1f} s (best of {repeat})" + (" [smoke]" if args.smoke else "")
    return _common.finish("bench_demo", args, machine, results, summary)


if __name__ == "__main__":
    sys.exit(main())

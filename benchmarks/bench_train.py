"""Training throughput: iterations per second, peak memory and where a step's time goes.

Runs the optimizer step of ``wtal.engine.trainer.train`` (sample a batch, move it to the
device, forward, loss, backward, Adam step) on the synthetic THUMOS14 preset at the
config's batch (10) and max_seqlen (320), for each ``--embed-dims`` width of the model
(default: the paper model ``whole_video_bg`` at 2048, and 256 as in ``wtal demo``).
Each width runs in its own child process so that its peak RSS is its own.

Per width: iterations/s over the measured steps (after warm-up, with every training
video's features already cached in memory, as from the second epoch of a run), the share
of a step spent in the data path (``next(TrainBatches)`` + ``.to(device)``) vs
forward/backward/step, the peak RSS (``resource.getrusage``), the RSS after the feature
cache was filled, and ``torch.cuda.max_memory_allocated`` on CUDA. The time to fill the
cache (first epoch's disk reads) is reported on its own; ``--eval-pass`` also times one
evaluation of the test subset (what the trainer does every ``train.eval_every`` steps).

    python benchmarks/bench_train.py [--data DIR] [--model whole_video_bg] [--embed-dims 2048,256]
                                     [--iterations 20] [--device auto] [--json out.json]

``--model`` takes any registered model name (``--config`` a YAML for it); ``--set KEY=VALUE``
adds config overrides. Without ``--data`` the preset is generated once into the cache
folder (``$WTAL_BENCH_CACHE``, default ``$TMPDIR/wtal-bench``) and reused.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import torch

from wtal.config import load_config
from wtal.data.readers import load_dataset
from wtal.data.sampling import TrainBatches
from wtal.data.synthetic import generate
from wtal.engine.inference import detect, predict, resolve_device, score_detections
from wtal.engine.trainer import seed_everything
from wtal.errors import WtalError
from wtal.models import build_model


def dataset_folder(args) -> Path:
    """``--data``, else the preset in the cache folder (generated on first use)."""
    if args.data:
        return Path(args.data)
    folder = _common.CACHE / f"{args.preset}-seed0"
    if not (folder / "dataset.yaml").is_file():
        print(f"generating the {args.preset!r} synthetic preset in {folder} ...", flush=True)
        started = time.perf_counter()
        generate(args.preset, folder, seed=0, overwrite=True)
        print(f"generated in {time.perf_counter() - started:.1f} s")
    return folder


def overrides(args, data: Path, embed_dim: str) -> list[str]:
    items = [f"data.root={data}", f"model.name={args.model}", f"train.device={args.device}"]
    if args.batch_size:
        items.append(f"train.batch_size={args.batch_size}")
    if args.max_seqlen:
        items.append(f"data.max_seqlen={args.max_seqlen}")
    if embed_dim:
        # The paper's model takes its base's width (model.base.embed_dim).
        on_base = hasattr(load_config(args.config, items + list(args.set)).model, "base")
        items.append(f"model.{'base.' if on_base else ''}embed_dim={embed_dim}")
    return items + list(args.set)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(args, data: Path, embed_dim: str) -> dict:
    """Time ``args.iterations`` training steps of one configuration in this process."""
    cfg = load_config(args.config, overrides(args, data, embed_dim))
    seed_everything(cfg.train.seed)
    if cfg.train.threads > 0:  # as the trainer does (--set train.threads=N)
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    dataset = load_dataset(cfg.data)
    batches = TrainBatches(
        dataset, cfg.data.train_subset, cfg.train.batch_size, cfg.data.max_seqlen, cfg.data.sampling, cfg.train.seed
    )
    started = time.perf_counter()
    cached = batches.names + ([v.name for v in dataset.videos(cfg.data.test_subset)] if args.eval_pass else [])
    for name in cached:  # fill the feature cache: the steps below measure steady state
        dataset.features(name)
    cache_fill_s = time.perf_counter() - started
    rss_data_mb = _rss_mb()

    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    total_steps = args.warmup + args.iterations
    data_s, compute_s = [], []
    model.train()
    for step in range(total_steps):
        # The body of the loop in wtal.engine.trainer.train, split in two timed parts.
        model.progress = step / total_steps
        sync()
        t0 = time.perf_counter()
        batch = next(batches)
        features, mask, labels = (batch[k].to(device) for k in ("features", "mask", "labels"))
        sync()
        t1 = time.perf_counter()
        outputs = model(features, mask)
        losses = model.loss(outputs, labels, mask)
        total = losses["total"]
        if not torch.isfinite(total):  # the trainer checks every step (a device sync on CUDA)
            raise RuntimeError(f"loss is {total.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        sync()
        t2 = time.perf_counter()
        if step >= args.warmup:
            data_s.append(t1 - t0)
            compute_s.append(t2 - t1)

    step_s = [d + c for d, c in zip(data_s, compute_s)]
    eval_s = None
    if args.eval_pass:  # what the trainer does every train.eval_every steps
        started = time.perf_counter()
        scores = predict(model, dataset, dataset.videos(cfg.data.test_subset), device, cfg.inference)
        score_detections(detect(scores, dataset, cfg), scores, dataset, cfg)
        sync()
        eval_s = time.perf_counter() - started
    widths = getattr(cfg.model, "base", cfg.model)  # the paper's model: its base's widths
    return {
        "model": cfg.model.name,
        "embed_dim": getattr(widths, "embed_dim", None),
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": cfg.train.batch_size,
        "max_seqlen": cfg.data.max_seqlen,
        "feature_dim": dataset.feature_dim,
        "train_videos": len(batches.names),
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "warmup": args.warmup,
        "iterations": args.iterations,
        "it_per_s": len(step_s) / sum(step_s),
        "step_median_s": statistics.median(step_s),
        "data_median_s": statistics.median(data_s),
        "compute_median_s": statistics.median(compute_s),
        "data_share": sum(data_s) / sum(step_s),
        "cache_fill_s": cache_fill_s,
        "rss_after_cache_mb": rss_data_mb,
        "peak_rss_mb": _rss_mb(),
        "eval_pass_s": eval_s,
        "cuda_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
    }


def describe(r: dict) -> str:
    evaluation = f"; one evaluation pass {r['eval_pass_s']:.1f} s" if r.get("eval_pass_s") is not None else ""
    cuda = f", CUDA peak {r['cuda_peak_mb']:.0f} MB" if r["cuda_peak_mb"] is not None else ""
    return (
        f"{r['model']} embed {r['embed_dim']} ({r['parameters'] / 1e6:.1f} M params), batch {r['batch_size']} x "
        f"{r['max_seqlen']} x {r['feature_dim']} on {r['device']}: {r['it_per_s']:.2f} it/s "
        f"({r['step_median_s'] * 1000:.0f} ms/step median over {r['iterations']}; data path "
        f"{r['data_median_s'] * 1000:.1f} ms = {100 * r['data_share']:.1f}%, forward/backward/step "
        f"{r['compute_median_s'] * 1000:.0f} ms); peak RSS {r['peak_rss_mb']:.0f} MB "
        f"(after feature cache {r['rss_after_cache_mb']:.0f} MB, filled in {r['cache_fill_s']:.1f} s){cuda}{evaluation}"
    )


def run_child(argv: list[str], data: Path, embed_dim: str) -> dict:
    """Measure one width in a fresh process (its own peak RSS) and read back its JSON."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--data", str(data),
                   "--embed-dims", embed_dim, "--in-process", "--child", "--json", str(out)]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--data", help="canonical dataset folder to use (default: the preset in the cache folder)")
    p.add_argument("--preset", default=None, help="synthetic preset to generate without --data (default thumos14; smoke tiny)")
    p.add_argument("--config", default=None, help="YAML config to start from (default: wtal's THUMOS14 defaults)")
    p.add_argument("--model", default="whole_video_bg", help="any registered model name")
    p.add_argument("--embed-dims", default=None, help="comma list of model.embed_dim values (the paper's model on a registered base: "
                   "model.base.embed_dim; default 2048,256; smoke 32; '' keeps the config's)")
    p.add_argument("--iterations", type=int, default=None, help="measured steps per width (default 20; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default 2; smoke 1)")
    p.add_argument("--batch-size", type=int, default=None, help="train.batch_size (default: the config's, 10; smoke 8)")
    p.add_argument("--max-seqlen", type=int, default=None, help="data.max_seqlen (default: the config's, 320; smoke 64)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override (repeatable)")
    p.add_argument("--eval-pass", action="store_true", help="also time one evaluation pass over the test subset (predict, localize, mAP)")
    p.add_argument("--in-process", action="store_true", help="measure every width in this process (peak RSS is then cumulative)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    _common.apply_threads(args.threads)
    args.preset = args.preset or ("tiny" if args.smoke else "thumos14")
    args.embed_dims = ("32" if args.smoke else "2048,256") if args.embed_dims is None else args.embed_dims
    args.iterations = args.iterations or (3 if args.smoke else 20)
    args.warmup = (1 if args.smoke else 2) if args.warmup is None else args.warmup
    if args.smoke:
        args.batch_size, args.max_seqlen = args.batch_size or 8, args.max_seqlen or 64
    device = str(resolve_device(args.device))
    machine = _common.machine_info(device)
    if not args.child:
        _common.print_machine(machine)
    widths = args.embed_dims.split(",") if args.embed_dims else [""]
    try:
        data = dataset_folder(args)
        for width in widths:  # a bad model name or override fails here, before any child starts
            load_config(args.config, overrides(args, data, width.strip()))
    except WtalError as exc:
        print(f"bench_train: error: {exc}", file=sys.stderr)
        return 2
    runs = []
    for width in widths:
        if args.in_process:
            result = measure(args, data, width.strip())
        else:
            result = run_child(_strip(argv, ("--data", "--embed-dims", "--json")), data, width.strip())
        if args.child:  # the parent prints it
            Path(args.json).write_text(json.dumps(result))
            return 0
        print(describe(result), flush=True)
        runs.append(result)
    summary = "; ".join(
        f"{r['model']} embed {r['embed_dim']}: {r['it_per_s']:.2f} it/s, data {100 * r['data_share']:.1f}%, "
        f"peak RSS {r['peak_rss_mb']:.0f} MB" for r in runs
    ) + f" (batch {runs[0]['batch_size']} x {runs[0]['max_seqlen']}, {runs[0]['device']})"
    return _common.finish("bench_train", args, machine, {"data": str(data), "runs": runs}, summary)


def _strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without ``options`` (given as ``--opt value`` or ``--opt=value``)."""
    kept, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item in options:
            skip = True
        elif not item.startswith(tuple(o + "=" for o in options)):
            kept.append(item)
    return kept


if __name__ == "__main__":
    sys.exit(main())

"""Command-line interface: ``wtal {synth,train,localize,eval,sweep,curves,demo,extract,detect}``.

Every user-input problem ends in one line ``wtal: error: <file or video>: <field>: <what>``
and exit status 2; nothing a user owns is overwritten without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wtal.errors import WtalError

# The paper's reported THUMOS14 row: mAP at tIoU 0.1..0.7, then avg(0.1:0.5), avg(0.3:0.7)
# (not reported) and avg(0.1:0.7) as printed (46.1; the seven values average 46.19).
PAPER_THUMOS14 = {"paper (Li et al. 2022)": [69.7, 64.5, 58.1, 49.9, 39.6, 27.3, 14.2, None, None, 46.1]}
# ActivityNet1.2: mAP at 0.5, 0.75, 0.95 and the average over 0.5:0.05:0.95.
PAPER_ANET12 = {"paper (Li et al. 2022)": [41.6, None, None, None, None, 24.8, None, None, None, 5.4, 25.2]}

# The demo's cut of the default protocol: the THUMOS14 preset (412 real video structures) at
# the CPU budget of configs/thumos14_synthetic_cpu.yaml (512-d features, the CO2-Net base's
# widths / 4, CO2-Net's batch of 10 with 3 same-class pairs) with a schedule short enough for
# generation, training and evaluation to take a few minutes on 2 CPU cores: every video resampled
# to 250 snippets (CO2-Net: 500), 150 iterations at lr 3e-4, one evaluation at the end.
# README gives what it scores and how long it takes.
DEMO_FEATURE_DIM = 512
DEMO_OVERRIDES = [
    "data.sampling=resample",
    "data.max_seqlen=250",
    "model.base.embed_dim=512",
    "model.base.attention_dim=128",
    "train.iterations=150",
    "train.eval_every=0",
    "train.lr=3e-4",
    "train.select=last",
]


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, found {text!r}")
    return value


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.iterations=2000")


def _cmd_synth(args) -> int:
    from wtal.data.synthetic import generate

    knobs = dict(item.split("=", 1) for item in args.knobs) if args.knobs else {}
    started = time.time()
    out = generate(args.preset, Path(args.out), seed=args.seed, overwrite=args.overwrite, **_parse_knobs(knobs))
    print(f"wrote the {args.preset!r} synthetic dataset to {out} in {time.time() - started:.1f} s")
    return 0


def _parse_knobs(knobs: dict) -> dict:
    import yaml

    return {key: yaml.safe_load(value) for key, value in knobs.items()}


def _cmd_train(args) -> int:
    from wtal.config import load_config
    from wtal.engine.distributed import is_main_process
    from wtal.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    if args.resume and args.overwrite:
        raise WtalError("wtal train: --resume continues a run directory and --overwrite replaces it; give one")
    result = train(cfg, overwrite=args.overwrite, progress=not args.quiet, resume=args.resume)
    if is_main_process():  # under torchrun, rank 0 alone reports
        _print_result(result.metrics, cfg.eval.thresholds)
        print(f"run directory: {result.run_dir}")
    return 0


def _cmd_export(args) -> int:
    from wtal.config import load_config
    from wtal.data.export import export_per_video, export_wtalc

    data = load_config(args.config, args.overrides).data
    started = time.time()
    if args.layout == "wtalc":
        out = export_wtalc(data, args.out, name=args.name, overwrite=args.overwrite)
    else:
        out = export_per_video(data, args.out, overwrite=args.overwrite)
    print(f"wrote {data.root} in the {args.layout} layout to {out} in {time.time() - started:.1f} s")
    return 0


def _reference_for(thresholds) -> dict | None:
    import numpy as np

    from wtal.evaluate import resolve_thresholds

    values = resolve_thresholds(thresholds)
    if len(values) == 7 and np.allclose(values, np.linspace(0.1, 0.7, 7)):
        return PAPER_THUMOS14
    if len(values) == 10 and np.allclose(values, np.linspace(0.5, 0.95, 10)):
        return PAPER_ANET12
    return None


def _print_result(metrics: dict, thresholds) -> None:
    from wtal.evaluate import DetectionResult

    result = DetectionResult.from_json(metrics)
    print(result.format_table(reference=_reference_for(thresholds)))
    if "cls_mAP" in metrics:
        print(f"video classification mAP: {metrics['cls_mAP']:.2f}")
    if "checkpoint" in metrics:
        print(f"checkpoint: {metrics['checkpoint']} (step {metrics.get('step')})")


def _cmd_localize(args) -> int:
    from wtal.engine.inference import detect, predict, resolve_device, score_detections
    from wtal.engine.trainer import load_run

    cfg, dataset, model = load_run(args.run, args.checkpoint, args.device, args.overrides)
    subset = args.subset or cfg.data.test_subset
    out = Path(args.out) if args.out else Path(args.run) / f"detections-{subset}.json"
    if out.exists() and not args.overwrite:
        raise WtalError(f"{out}: exists; pass --overwrite to replace it")
    videos = dataset.videos(subset)
    if not videos:
        raise WtalError(f"{dataset.source}: --subset: no videos in subset {subset!r}")
    scores = predict(model, dataset, videos, resolve_device(args.device), cfg.inference)
    detections = detect(scores, dataset, cfg)
    detections.save(out)
    print(f"wrote {len(detections)} detections for {len(videos)} videos to {out}")
    if any(len(video.segments) for video in videos):
        result, cls_map = score_detections(detections, scores, dataset, cfg, subset)
        _print_result({**result.to_json(), "cls_mAP": cls_map}, cfg.eval.thresholds)
        print(_attention_line(scores, dataset.annotations, f"subset {subset!r}"))
    return 0


def _attention_line(scores, annotations, where: str) -> str:
    """The mean attention inside and outside the ground-truth segments of the scored videos."""
    from wtal.evaluate import attention_inside_outside

    inside, outside = attention_inside_outside(
        [annotations.videos[s.name].segments for s in scores],
        [s.attention for s in scores],
        [s.snippet_seconds for s in scores],
    )
    return f"mean attention on {where}: {inside:.3f} inside ground truth, {outside:.3f} outside"


def _load_ground_truth(path: Path):
    from wtal.data.annotations import Annotations
    from wtal.data.wtalc import read_wtalc_annotations
    from wtal.io import read_json

    if path.is_dir():
        return read_wtalc_annotations(path)
    return Annotations.from_activitynet(read_json(path), str(path))


def _cmd_eval(args) -> int:
    from wtal.detections import Detections
    from wtal.evaluate import evaluate_detection, resolve_thresholds
    from wtal.io import write_json

    if args.run:
        from wtal.engine.trainer import read_metrics

        metrics = read_metrics(args.run)
        _print_result(metrics, metrics.get("thresholds", "thumos"))
        if args.per_class:
            from wtal.evaluate import DetectionResult

            print(DetectionResult.from_json(metrics).format_table(per_class=True))
        return 0
    if not args.gt or not args.pred:
        raise WtalError("wtal eval: give either --run RUN or both --gt and --pred")
    annotations = _load_ground_truth(Path(args.gt))
    detections = Detections.load(args.pred, annotations.classes)
    thresholds = resolve_thresholds(args.thresholds)
    result = evaluate_detection(
        annotations,
        detections,
        args.subset,
        thresholds,
        ambiguous_filter=args.ambiguous_filter,
        units=args.units,
        snippet_seconds=args.snippet_seconds,
    )
    print(result.format_table(per_class=args.per_class, reference=_reference_for(args.thresholds)))
    if args.out:
        write_json(args.out, result.to_json())
        print(f"wrote {args.out}")
    return 0


def _cmd_demo(args) -> int:
    from wtal.config import load_config
    from wtal.data.synthetic import generate
    from wtal.engine.trainer import timestamped_run_name, train
    from wtal.io import read_yaml_mapping
    from wtal.plots import plot_timelines, readable_videos

    started = time.time()
    out = Path(args.out)
    data_dir = Path(args.data) if args.data else out / "data"
    found = data_dir / "dataset.yaml"
    meta = read_yaml_mapping(found, "a canonical dataset") if found.is_file() else None
    # An older demo's own dataset (another width or an older preset) is regenerated on --overwrite;
    # a --data folder is used as it is.
    differs = [] if meta is None or args.data else _knobs_differing(meta)
    if meta is None or (differs and args.overwrite):
        print(f"generating the synthetic THUMOS14 preset (real annotation structure) in {data_dir} ...")
        generate("thumos14", data_dir, seed=0, overwrite=args.overwrite, feature_dim=DEMO_FEATURE_DIM)
    else:
        print(f"using the synthetic dataset already in {data_dir} ({meta.get('feature_dim')}-d features)")
        if differs:
            shown = ", ".join(differs[:4]) + (f" and {len(differs) - 4} more" if len(differs) > 4 else "")
            print(f"note: an older demo wrote these features; today's preset at {DEMO_FEATURE_DIM}-d differs in "
                  f"{shown}; wtal demo --overwrite regenerates them")
    overrides = [
        f"data.root={data_dir}",
        f"output_dir={out}",
        f"run_name={timestamped_run_name(out, 'run')}",
        f"train.seed={args.seed}",
        *DEMO_OVERRIDES,
        *args.overrides,
    ]
    cfg = load_config(None, overrides)
    print("training the paper's model (demo cut: " + ", ".join(DEMO_OVERRIDES) + ") ...")
    result = train(cfg, overwrite=args.overwrite, progress=not args.quiet)
    _print_result(result.metrics, cfg.eval.thresholds)
    print(_attention_line(result.scores, result.dataset.annotations, "the test videos"))
    print("note: synthetic features laid over THUMOS14's real annotations; the paper's row is on real I3D features.")

    videos = result.dataset.annotations.videos
    picked = {v.name for v in readable_videos([videos[s.name] for s in result.scores])}
    shown = [s for s in result.scores if s.name in picked]
    png = plot_timelines(
        result.run_dir / "timeline.png",
        [result.dataset.annotations.videos[s.name] for s in shown],
        [s.name for s in shown],
        [s.attention for s in shown],
        [s.cas for s in shown],
        result.dataset.classes,
        [s.snippet_seconds for s in shown],
        result.detections,
    )
    print(f"run directory: {result.run_dir} (detections.json, metrics.json, {png.name})")
    print(f"demo finished in {time.time() - started:.0f} s")
    return 0


def _knobs_differing(meta: dict) -> list[str]:
    """Generator knobs in which a dataset.yaml differs from the demo's preset today, sorted."""
    from wtal.data.synthetic import SynthConfig, configure, written_knobs

    written = (meta.get("generator") or {}).get("knobs") or {}
    today = written_knobs(configure("thumos14", {"feature_dim": DEMO_FEATURE_DIM}))
    default = written_knobs(SynthConfig())  # what a knob newer than the file did when it was written
    return sorted(key for key, value in today.items() if written.get(key, default[key]) != value)


def _cmd_curves(args) -> int:
    from wtal.plots import evaluation_curve, plot_curves

    if args.group:
        return _curve_groups(args)
    if not args.runs:
        raise WtalError("wtal curves: give run directories, or --group NAME=RUN,RUN,...")
    curves = {str(run): evaluation_curve(run, args.metric) for run in args.runs}
    print(f"test {args.metric} per evaluation (best marked *)")
    for name, (steps, values) in curves.items():
        best = int(values.argmax())
        row = " ".join(f"{s}:{v:.2f}{'*' if i == best else ''}" for i, (s, v) in enumerate(zip(steps, values)))
        print(f"{name}: {row}")
        tail = values[-args.tail :]
        print(f"  best {values[best]:.2f} at step {steps[best]}; last {values[-1]:.2f} at step {steps[-1]} "
              f"({values[-1] - values[best]:+.2f} from the best); the last {len(tail)}: mean {tail.mean():.2f}, "
              f"spread {tail.max() - tail.min():.2f}, lowest {tail.min() - values[best]:+.2f} from the best")
    print(f"wrote {plot_curves(args.out, curves, args.metric)}")
    return 0


def _curve_groups(args) -> int:
    """Mean curves of groups of runs with their seed spread; for two groups, the difference at each
    evaluation with Welch's 95 % interval, and whether the first group's mean lies within the second's
    lowest and highest run."""
    import numpy as np

    from wtal.plots import evaluation_curve, plot_curve_groups
    from wtal.stats import welch_interval

    groups = {}
    for item in args.group:
        name, _, runs = item.partition("=")
        if not name or not runs:
            raise WtalError(f"--group {item!r}: expected NAME=RUN,RUN,...")
        curves = [evaluation_curve(run, args.metric) for run in runs.split(",") if run]
        common = sorted(set.intersection(*(set(steps.tolist()) for steps, _ in curves)))
        if not common:
            raise WtalError(f"--group {name}: its runs share no evaluation step")
        values = np.array([[dict(zip(steps.tolist(), v))[s] for s in common] for steps, v in curves])
        groups[name] = (np.array(common), values)
    names = list(groups)
    steps = sorted(set.intersection(*(set(g[0].tolist()) for g in groups.values())))
    at = {name: np.array([[dict(zip(groups[name][0].tolist(), run))[s] for s in steps] for run in groups[name][1]])
          for name in names}
    header = " | ".join(f"{name} mean ± std [min, max]" for name in names)
    pair = len(names) == 2 and all(len(v) > 1 for v in at.values())
    print(f"test {args.metric} per evaluation | {header}" + (f" | {names[0]} - {names[1]} [95 % Welch] | within" if pair else ""))
    inside = []
    for i, step in enumerate(steps):
        cells = [f"{v[:, i].mean():.2f} ± {v[:, i].std(ddof=1) if len(v) > 1 else 0.0:.2f} "
                 f"[{v[:, i].min():.2f}, {v[:, i].max():.2f}]" for v in at.values()]
        line = f"{step}: " + " | ".join(cells)
        if pair:
            a, b = at[names[0]][:, i], at[names[1]][:, i]
            d = welch_interval(a, b)
            inside.append(b.min() <= a.mean() <= b.max())
            line += f" | {d.diff:+.2f} [{d.low:+.2f}, {d.high:+.2f}] | {'yes' if inside[-1] else 'NO'}"
        print(line)
    if pair:
        print(f"{names[0]}'s mean within {names[1]}'s seed range at {sum(inside)} of {len(inside)} evaluations")
    plotted = {name: (groups[name][0], groups[name][1]) for name in names}
    print(f"wrote {plot_curve_groups(args.out, plotted, args.metric)}")
    return 0


def _cmd_sweep(args) -> int:
    from wtal.engine.sweep import parse_grid, read_variants, run_sweep, select_rows

    if args.rows and not args.variants:
        raise WtalError("--rows: names rows of a --variants file; give --variants")
    rows = read_variants(args.variants) if args.variants else []
    if args.rows:
        rows = select_rows(rows, args.rows, args.variants)
    if args.grid or not rows:
        rows += parse_grid(args.grid or [])
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    report = run_sweep(
        args.config,
        args.overrides,
        rows,
        seeds,
        Path(args.out),
        progress=not args.quiet,
        report_only=args.report_only,
        compare=args.compare,
        jobs=args.jobs,
        contrasts=[tuple(pair) for pair in args.contrast or []],
    )
    print(Path(args.out, "report.md").read_text())
    print(f"report: {args.out}/report.md, report.json, report.png ({len(report['rows'])} rows)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wtal", description="Weakly-supervised temporal action localization.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset over real annotation structures")
    p.add_argument("--preset", default="thumos14", help="thumos14 | thumos14_k3 | tiny | activitynet")
    p.add_argument("--out", required=True, help="output folder (canonical layout)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    p.add_argument("knobs", nargs="*", metavar="KNOB=VALUE", help="generator knobs (see wtal.data.synthetic.SynthConfig)")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser(
        "export", help="write a dataset in the W-TALC bundle layout (CO2-Net, DELU) or the per-video one (BaS-Net, UM)"
    )
    p.add_argument("--layout", required=True, choices=("wtalc", "per_video"))
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config", help="YAML config whose data section names the dataset (or data.root=DIR)")
    p.add_argument("--name", default="Thumos14reduced", help="wtalc: the bundle prefix <name>-I3D-JOINTFeatures.npy")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    _add_overrides(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("train", help="train a model and write a run directory")
    p.add_argument("--config", help="YAML config (defaults: THUMOS14 protocol, the paper's model)")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty run directory")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue output_dir/run_name from its last.pt (same config; only train.iterations, train.threads and train.device may change)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_overrides(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("localize", help="write detections (ActivityNet results JSON) from a trained run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", default="selected", choices=["selected", "best", "last"])
    p.add_argument("--subset", help="subset to localize (default: the run's test subset)")
    p.add_argument("--out", help="output JSON (default: RUN/detections-<subset>.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=_cmd_localize)

    p = sub.add_parser("eval", help="detection mAP exactly as the official ActivityNet evaluator")
    p.add_argument("--run", help="score a trained run (reads RUN/metrics.json)")
    p.add_argument("--gt", help="ground truth: ActivityNet-style JSON or a W-TALC annotation folder")
    p.add_argument("--pred", help="detections: ActivityNet results JSON")
    p.add_argument("--subset", default="test", help="ground-truth subset to score")
    p.add_argument("--thresholds", default="thumos", help="thumos | anet | comma list of tIoU")
    p.add_argument("--ambiguous-filter", action="store_true", help="drop detections overlapping Ambiguous regions")
    p.add_argument("--units", default="seconds", choices=["seconds", "snippets"])
    p.add_argument("--snippet-seconds", type=float, default=16 / 25, help="for --units snippets")
    p.add_argument("--per-class", action="store_true", help="also print per-class AP")
    p.add_argument("--out", help="write the results as JSON")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("sweep", help="train a grid of configurations over seeds; report mean ± std")
    p.add_argument("--config", help="base YAML config")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="an axis of the grid (repeatable)")
    p.add_argument("--variants", help="YAML file: row name -> list of key=value overrides")
    p.add_argument("--rows", metavar="NAME,NAME", help="only these rows of the --variants file")
    p.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    p.add_argument("--out", required=True, help="sweep folder (runs/ and the report)")
    p.add_argument("--report-only", action="store_true", help="train nothing; report the runs finished so far")
    p.add_argument("--compare", metavar="ROW", help="report each row's difference to this row with its 95 %% interval, paired by seed (selected, last and best test evaluation)")
    p.add_argument("--contrast", nargs=2, action="append", metavar=("ROW", "REFERENCE"),
                   help="report ROW - REFERENCE paired by seed, with its 95 %% interval and per-seed differences (repeatable)")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="runs trained at once, each its own process (default 1: one after another, in this process)")
    p.add_argument("--quiet", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("curves", help="plot and print a test metric over training steps for runs")
    p.add_argument("runs", nargs="*", help="run directories (each with metrics.jsonl)")
    p.add_argument("--group", action="append", default=[], metavar="NAME=RUN,RUN,...",
                   help="a group of runs (e.g. seeds) shown as its mean and range; two groups also get their "
                   "difference at each evaluation with its 95 %% interval")
    p.add_argument("--metric", default="avg", help="a key of the test lines of metrics.jsonl (default avg)")
    p.add_argument("--out", default="curves.png", help="PNG to write")
    p.add_argument("--tail", type=_positive_int, default=5, help="the last evaluations summarised by their mean and spread (default 5)")
    p.set_defaults(func=_cmd_curves)

    p = sub.add_parser("demo", help="synthetic THUMOS14 -> train the paper's model -> mAP table and timeline")
    p.add_argument("--out", default="runs/demo", help="demo folder (data and run)")
    p.add_argument("--data", help="use this canonical dataset instead of generating one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a previous demo run")
    p.add_argument("--quiet", action="store_true")
    _add_overrides(p)
    p.set_defaults(func=_cmd_demo)

    from wtal.features.commands import add_parsers

    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # KEY=VALUE overrides may stand anywhere, also after options: collect the ones
    # argparse left over into the command's positional list.
    args, extra = parser.parse_known_args(argv)
    field = "overrides" if hasattr(args, "overrides") else "knobs" if hasattr(args, "knobs") else None
    stray = [a for a in extra if a.startswith("-") or "=" not in a or field is None]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        setattr(args, field, [*getattr(args, field), *extra])
    try:
        return args.func(args)
    except WtalError as exc:
        print(f"wtal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wtal: interrupted", file=sys.stderr)
        return 130

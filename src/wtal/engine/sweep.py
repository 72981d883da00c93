"""Sweeps: every combination of a grid (or named variants) over several seeds, and a report.

Runs live in ``<out>/runs/<row>-seed<k>/``; a run whose ``metrics.json`` exists is
skipped and one that was stopped before it finished continues from its ``last.pt``
(``wtal train --resume``), so an interrupted sweep resumes where it stopped. The report gives every
metric as mean ± std over seeds at the checkpoint the runs' rule chose (``train.select``), beside
the averages at the last evaluation and at the best test evaluation (read from each run's
``metrics.jsonl``): best-test selection flatters a method by however much the test mAP wanders
during training, and the columns side by side show by how much. ``--compare ROW`` adds each row's
difference to ROW with its 95 % interval, paired by seed (:mod:`wtal.stats`); ``--contrast ROW
REFERENCE`` (repeatable) adds a table of chosen pairs, each with its per-seed differences, for
comparisons that share no single reference (a variant against its own baseline). The report names
the exact command that reproduces each run; ``report.json`` holds every run's own values.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wtal.config import load_config
from wtal.errors import WtalError
from wtal.io import read_json, read_jsonl, read_yaml_mapping, write_json, write_text
from wtal.plots import save_figure
from wtal.stats import paired_interval, welch_interval


@dataclass
class Row:
    """One configuration of the sweep: a name and the overrides that make it."""

    name: str
    overrides: list[str]


def parse_grid(items: list[str]) -> list[Row]:
    """``["model.lam=1,5", "model.ten=base,both"]`` -> the cartesian product as rows."""
    axes = []
    for item in items:
        if "=" not in item:
            raise WtalError(f"--grid {item!r}: expected key=v1,v2,...")
        key, values = item.split("=", 1)
        choices = [v for v in values.split(",") if v != ""]
        if not choices:
            raise WtalError(f"--grid {item!r}: no values after '='")
        axes.append([f"{key}={v}" for v in choices])
    rows = []
    for combo in itertools.product(*axes) if axes else [()]:
        name = ",".join(combo) or "base"
        rows.append(Row(name=name, overrides=list(combo)))
    return rows


def read_variants(path: str | Path) -> list[Row]:
    """A YAML mapping ``name: [key=value, ...]`` -> rows (file order)."""
    values = read_yaml_mapping(path, "variant name -> list of key=value overrides")
    rows = []
    for name, overrides in values.items():
        if overrides is None:
            overrides = []
        if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
            raise WtalError(f"{path}: {name}: expected a list of key=value strings")
        rows.append(Row(name=str(name), overrides=overrides))
    return rows


def select_rows(rows: list[Row], names: str, source: str | Path) -> list[Row]:
    """The rows named in the comma list ``names``, in the file's order (``source`` names the file)."""
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [r.name for r in rows]
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise WtalError(f"{source}: --rows {names!r}: expected row names among {known}, found {unknown or 'none'}")
    return [r for r in rows if r.name in wanted]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)[:120]


def run_dirs(out: Path, row: Row, seed: int) -> Path:
    return out / "runs" / f"{_slug(row.name)}-seed{seed}"


def run_command(
    config: str | None, base: list[str], row: Row, seed: int, run_dir: Path, flags: tuple[str, ...] = ()
) -> list[str]:
    """The ``wtal train`` command line that reproduces one run (``flags``, e.g. ``--resume``, after ``train``)."""
    command = ["wtal", "train", *flags, "--quiet"]
    if config:
        command += ["--config", str(config)]
    command += [*base, *row.overrides, f"train.seed={seed}", f"output_dir={run_dir.parent}", f"run_name={run_dir.name}"]
    return command


def run_sweep(
    config: str | None,
    base: list[str],
    rows: list[Row],
    seeds: list[int],
    out: Path,
    progress: bool = False,
    report_only: bool = False,
    compare: str | None = None,
    jobs: int = 1,
    contrasts: Sequence[tuple[str, str]] = (),
) -> dict:
    """Train every (row, seed) not finished yet, then write the report; returns the report dict.

    ``report_only`` trains nothing and reports the runs finished so far (a row lists
    the seeds it has; rows without any finished run are left out). ``compare`` names
    a row; the report then gives every row's difference to it; ``contrasts`` lists (row,
    reference) pairs reported on their own (see :func:`summarize`).
    ``jobs`` > 1 trains that many runs at once, each a ``wtal train`` child process
    (see :func:`_train_in_parallel`).
    """
    names = [row.name for row in rows]
    if compare is not None and compare not in names:
        raise WtalError(f"--compare {compare!r}: not a row of this sweep (rows: {names})")
    for pair in contrasts:
        unknown = [name for name in pair if name not in names]
        if unknown or pair[0] == pair[1]:
            raise WtalError(f"--contrast {' '.join(pair)}: expected two different rows of this sweep (rows: {names})")
    if jobs < 1:
        raise WtalError(f"--jobs: expected >= 1, found {jobs}")
    if not rows or not seeds:
        raise WtalError("wtal sweep: nothing to run (give --grid or --variants, and --seeds)")
    out.mkdir(parents=True, exist_ok=True)
    todo = []  # (row, seed, run_dir, config) of the runs to train, each config checked here
    for row in [] if report_only else rows:
        for seed in seeds:
            run_dir = run_dirs(out, row, seed)
            if not (run_dir / "metrics.json").is_file():
                todo.append((row, seed, run_dir, load_config(config, [*base, *row.overrides, f"train.seed={seed}"])))
    if jobs > 1 and len(todo) > 1:
        _train_in_parallel(config, base, todo, out, jobs)
    else:
        for row, seed, run_dir, cfg in todo:
            _train_one(row, seed, run_dir, cfg, progress)
    report = summarize(config, base, rows, seeds, out, compare, contrasts)
    write_report(report, out)
    return report


def _train_one(row: Row, seed: int, run_dir: Path, cfg, progress: bool) -> None:
    """Train one run in this process; a run stopped before it finished continues from its last.pt."""
    from wtal.engine.trainer import train

    cfg.output_dir, cfg.run_name = str(run_dir.parent), run_dir.name
    resume = (run_dir / "last.pt").is_file()
    print(f"[sweep] {row.name} seed {seed} -> {run_dir}{' (resumed)' if resume else ''}", flush=True)
    try:
        train(cfg, overwrite=not resume, progress=progress, resume=resume)
    except WtalError as exc:
        if not resume:
            raise
        raise WtalError(f"{exc} (the sweep's runs must keep one config: delete {run_dir} to train it again)") from None


def _train_in_parallel(config: str | None, base: list[str], todo: list, out: Path, jobs: int) -> None:
    """Train the runs ``jobs`` at a time, each as ``python -m wtal train`` (the command the
    report gives, plus ``--resume`` for a stopped run), its output in ``<out>/logs/<run>.log``.

    Each child gets ``train.threads`` = CPU cores // jobs unless the sweep sets it, so that
    the children do not oversubscribe the cores. A failed run does not stop the others; the
    sweep then raises naming every failed run and its log.
    """
    given = any(o.startswith("train.threads=") for o in base)
    threads = [] if given else [f"train.threads={max(1, (os.cpu_count() or 1) // jobs)}"]
    (out / "logs").mkdir(exist_ok=True)
    pending, running, failed = list(todo), [], []
    try:
        while pending or running:
            while pending and len(running) < jobs:
                row, seed, run_dir, _ = pending.pop(0)
                resume = (run_dir / "last.pt").is_file()
                flag = "--resume" if resume else "--overwrite"
                command = [sys.executable, "-m", *run_command(config, [*base, *threads], row, seed, run_dir, (flag,))]
                log = out / "logs" / f"{run_dir.name}.log"
                with open(log, "w") as stream:
                    child = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                print(f"[sweep] {row.name} seed {seed} -> {run_dir}{' (resumed)' if resume else ''}, log {log}", flush=True)
                running.append((child, row, seed, log))
            time.sleep(0.2)
            for item in [r for r in running if r[0].poll() is not None]:
                running.remove(item)
                child, row, seed, log = item
                status = "done" if child.returncode == 0 else f"failed (exit {child.returncode})"
                print(f"[sweep] {row.name} seed {seed}: {status}", flush=True)
                if child.returncode:
                    failed.append(f"{row.name} seed {seed} (exit {child.returncode}; log {log})")
    finally:
        for child, *_ in running:  # interrupted: stop the children, whose last.pt lets a rerun continue
            child.terminate()
        for child, *_ in running:
            child.wait()
    if failed:
        raise WtalError(f"{out}: {len(failed)} of {len(todo)} runs failed: " + "; ".join(failed))


RULES = ("selected", "last", "best-test")  # the checkpoint rule of the runs, the last evaluation, the best test one


def summarize(
    config: str | None,
    base: list[str],
    rows: list[Row],
    seeds: list[int],
    out: Path,
    compare: str | None = None,
    contrasts: Sequence[tuple[str, str]] = (),
) -> dict:
    """Mean and std over seeds of every scalar metric, per row, and each run's own values.

    Each run gives its table at the checkpoint its rule selected (``train.select``: metrics.json),
    and from its metrics.jsonl the averages at the last evaluation (``last <key>``) and at the
    evaluation with the best test average (``best-test <key>``, the field's practice).
    With ``compare`` (a row name), each row gets ``delta``: for each of those three, the mean of
    the per-seed differences to that row over the seeds both have, with its 95 % t-interval
    (:func:`wtal.stats.paired_interval`; a seed fixes the initial weights and the batches of
    both rows), where they share two seeds or more; and Welch's interval of the difference of
    the selected averages where each row has two seeds or more. Each ``contrasts`` pair (row,
    reference) whose rows both have finished runs goes into ``contrasts`` with the same paired
    differences; a pair with a row not run yet is left out.
    """
    table = []
    checkpoint_rules = set()
    for row in rows:
        finished = [s for s in seeds if (run_dirs(out, row, s) / "metrics.json").is_file()]
        if not finished:
            continue
        runs = [read_json(run_dirs(out, row, seed) / "metrics.json") for seed in finished]
        checkpoint_rules.update(r.get("checkpoint", "?") for r in runs)
        metrics: dict[str, list[float]] = {}
        tests = [_test_records(run_dirs(out, row, seed) / "metrics.jsonl") for seed in finished]
        for run, evaluations in zip(runs, tests):
            for key, value in [*_scalars(run).items(), *_evaluations(evaluations).items()]:
                metrics.setdefault(key, []).append(value)
        # a "last" or "best-test" key is kept only when every finished seed has it
        metrics = {k: v for k, v in metrics.items() if len(v) == len(finished)}
        main = _average_keys(metrics)[-1]
        table.append({
            "row": row.name,
            "overrides": row.overrides,
            "seeds": finished,
            "mean": {k: float(np.mean(v)) for k, v in metrics.items()},
            "std": {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in metrics.items()},
            "per_seed": {k: v for k, v in metrics.items() if k.startswith(("avg", "last avg", "best-test avg"))},
            "runs": [_run_course(run, evaluations, main) | {"seed": seed} for run, evaluations, seed in zip(runs, tests, finished)],
            "commands": [shlex.join(run_command(config, base, row, s, run_dirs(out, row, s))) for s in finished],
        })
    if not table:
        raise WtalError(f"{out}: no finished run to report")
    if compare is not None:
        reference = next((row for row in table if row["row"] == compare), None)
        if reference is None:
            raise WtalError(f"{out}: --compare {compare!r}: that row has no finished run yet")
        for row in table:
            row["delta"] = _delta(row, reference)
            if len(row["seeds"]) > 1 and len(reference["seeds"]) > 1:
                key = row["delta"]["key"]
                row["delta"]["welch"] = welch_interval(row["per_seed"][key], reference["per_seed"][key]).to_json()
    by_name = {row["row"]: row for row in table}
    report = {"config": config, "base_overrides": base, "seeds": seeds, "checkpoint": sorted(checkpoint_rules), "rows": table}
    if contrasts:
        report["contrasts"] = [
            {"row": name} | _delta(by_name[name], by_name[vs]) for name, vs in contrasts if name in by_name and vs in by_name
        ]
    return report


def _delta(row: dict, reference: dict) -> dict:
    """``row - reference`` in the protocol's widest average, paired by seed, for each rule of RULES
    that both rows have over two shared seeds or more."""
    key = _main_key(reference)
    paired = {rule: _paired_difference(row, reference, _rule_key(rule, key)) for rule in RULES}
    return {"vs": reference["row"], "key": key, "paired": {rule: p for rule, p in paired.items() if p is not None}}


def _rule_key(rule: str, key: str) -> str:
    return key if rule == "selected" else f"{rule} {key}"


def _paired_difference(row: dict, reference: dict, key: str) -> dict | None:
    """``row - reference`` seed by seed over their shared seeds, with its paired 95 % interval
    (None where they share fewer than two or a row lacks ``key``)."""
    shared = [s for s in row["seeds"] if s in reference["seeds"]]
    if len(shared) < 2 or key not in row["per_seed"] or key not in reference["per_seed"]:
        return None
    mine = dict(zip(row["seeds"], row["per_seed"][key]))
    theirs = dict(zip(reference["seeds"], reference["per_seed"][key]))
    interval = paired_interval([mine[s] for s in shared], [theirs[s] for s in shared])
    return {**interval.to_json(), "seeds": shared, "per_seed": [mine[s] - theirs[s] for s in shared]}


def _average_keys(mean: dict) -> list[str]:
    """The protocol's named averages (``avg(...)`` keys, narrowest first); ["avg"] (all
    thresholds) when the thresholds match no named average."""
    return [k for k in mean if k.startswith("avg(")] or ["avg"]


def _main_key(row: dict) -> str:
    """The widest average of the protocol (avg(0.1:0.7) on THUMOS14)."""
    return _average_keys(row["mean"])[-1]


def _scalars(metrics: dict) -> dict[str, float]:
    """Per-threshold mAP, averages and classification mAP of one run's metrics.json (in %)."""
    values = {f"mAP@{t:g}": m for t, m in zip(metrics["thresholds"], metrics["mAP"])}
    values.update(metrics.get("averages", {}))
    if "cls_mAP" in metrics:
        values["cls_mAP"] = metrics["cls_mAP"]
    return values


def _test_records(path: Path) -> list[dict]:
    """A run's test evaluations, in order, from its metrics.jsonl ([] if none)."""
    return [record for record in read_jsonl(path) if record.get("split") == "test"] if path.is_file() else []


def _best(tests: list[dict]) -> int:
    """The index of the evaluation with the best ``avg`` (the first of equal bests)."""
    return max(range(len(tests)), key=lambda i: tests[i]["avg"])


def _evaluations(tests: list[dict]) -> dict[str, float]:
    """The averages (``avg(...)`` and ``avg``) of a run's last test evaluation (``last <key>``) and of
    its evaluation with the best ``avg`` (``best-test <key>``) ({} if none)."""
    if not tests:
        return {}
    return {f"{name} {k}": float(v) for name, record in (("last", tests[-1]), ("best-test", tests[_best(tests)]))
            for k, v in record.items() if k.startswith("avg")}


def _run_course(metrics: dict, tests: list[dict], key: str) -> dict:
    """One run's ``key`` at its selected checkpoint (and that step), at the last test evaluation, at
    its best one (and that step), the spread of its last three test evaluations and how far the last
    lies below the best: the flatness a convergence budget asks of every run."""
    course = {"selected": metrics.get("averages", {}).get(key), "selected_step": metrics.get("step")}
    if tests and all(key in record for record in tests):
        values, best = [record[key] for record in tests], tests[_best(tests)]
        course |= {
            "last": values[-1], "best_test": best[key], "best_test_step": best["step"],
            "last_three_spread": max(values[-3:]) - min(values[-3:]), "last_below_best": best[key] - values[-1],
        }
    return course


def write_report(report: dict, out: Path) -> None:
    """``report.json``, ``report.md`` (mean ± std table, differences with their intervals, commands)
    and ``report.png``."""
    write_json(out / "report.json", report)
    rows = report["rows"]
    keys = [k for k in rows[0]["mean"] if k.startswith("mAP@")] + _average_keys(rows[0]["mean"])
    main = _main_key(rows[0])
    delta = rows[0].get("delta")
    paired = [rule for rule in RULES if any(rule in row.get("delta", {}).get("paired", {}) for row in rows)]
    welch = any("welch" in row.get("delta", {}) for row in rows)
    lines = [
        f"# Sweep report: {len(rows)} configurations x seeds {report['seeds']}",
        "",
        f"Config: `{report['config'] or 'defaults'}`; base overrides: `{' '.join(report['base_overrides']) or 'none'}`; "
        f"checkpoint: {', '.join(report['checkpoint'])}. Values are mAP (%) mean ± std over seeds at that checkpoint; "
        f"'{main} last' is {main} at the last evaluation (end of training) and '{main} best-test' at the "
        "evaluation with the best test average (what papers in this field report), whatever the checkpoint rule."
        + (
            f" 'Δ' columns are differences of {main} to {delta['vs']} with their 95 % interval, * where it excludes 0:"
            " 'paired' is the mean of the per-seed differences over the seeds both rows have, with its t-interval"
            " (a seed fixes the initial weights and the batches of both rows alike; n = those seeds), for the"
            " checkpoint rule, the last and the best test evaluation; 'Welch' treats the rows' seeds as independent."
            if delta
            else ""
        ),
        "",
        "| configuration | seeds | " + " | ".join(keys) + f" | cls mAP | {main} last | {main} best-test |"
        + "".join(f" Δ paired, {rule} |" for rule in paired)
        + (f" Δ vs {delta['vs']} (Welch) |" if welch else ""),
        "|---|---|" + "---|" * (len(keys) + 3 + len(paired) + welch),
    ]
    for row in rows:
        cells = [f"{row['mean'][k]:.2f} ± {row['std'][k]:.2f}" for k in keys]
        cells.append(f"{row['mean'].get('cls_mAP', float('nan')):.2f}")
        for rule in ("last", "best-test"):
            k = _rule_key(rule, main)
            cells.append(f"{row['mean'][k]:.2f} ± {row['std'][k]:.2f}" if k in row["mean"] else "-")
        differences = row.get("delta", {})
        cells += [_difference(differences["paired"][rule]) if rule in differences.get("paired", {}) else "-" for rule in paired]
        if welch:
            cells.append(_difference(differences["welch"]) if "welch" in differences else "-")
        seeds = ",".join(str(seed) for seed in row["seeds"])
        lines.append(f"| {row['row']} | {seeds} | " + " | ".join(cells) + " |")
    lines += _contrast_table(report.get("contrasts", []))
    lines += _course_table(rows, main)
    lines += ["", "## Commands", ""]
    for row in rows:
        lines += [f"- {row['row']}:"] + [f"  - `{c}`" for c in row["commands"]]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    _plot(rows, main, out / "report.png")


def _contrast_table(contrasts: list[dict]) -> list[str]:
    """The ``--contrast`` section of report.md: each pair's paired difference under each rule, and
    its per-seed differences at the selected checkpoint."""
    if not contrasts:
        return []
    lines = [
        "", "## Contrasts", "",
        "Each row minus its reference, paired by seed over the seeds both have: the mean difference with its 95 % "
        "t-interval (* where it excludes 0) at the checkpoint rule, the last and the best test evaluation, and the "
        "per-seed differences at the checkpoint rule.",
        "", "| row | reference | key | " + " | ".join(f"Δ paired, {rule}" for rule in RULES) + " | per seed, selected |",
        "|---|---|---|" + "---|" * (len(RULES) + 1),
    ]
    for contrast in contrasts:
        paired = contrast["paired"]
        cells = [_difference(paired[rule]) if rule in paired else "-" for rule in RULES]
        selected = paired.get("selected")
        per_seed = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(selected["seeds"], selected["per_seed"])) if selected else "-"
        lines.append(f"| {contrast['row']} | {contrast['vs']} | {contrast['key']} | " + " | ".join(cells) + f" | {per_seed} |")
    return lines


def _course_table(rows: list[dict], key: str) -> list[str]:
    """The per-run section of report.md: each run's course over its test evaluations."""
    runs = [(row["row"], run) for row in rows for run in row.get("runs", []) if "last" in run]
    if not runs:
        return []
    lines = [
        "", "## Runs", "",
        f"{key} of each run at its selected checkpoint, at the last and at the best test evaluation (step), with"
        " the spread of its last three test evaluations and how far the last lies below the best (a flat end: both small).",
        "", "| configuration | seed | selected (step) | last | best-test (step) | last three: spread | last below best |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in runs:
        selected = "-" if run["selected"] is None else f"{run['selected']:.2f} ({run['selected_step']})"
        lines.append(
            f"| {name} | {run['seed']} | {selected} | {run['last']:.2f} | {run['best_test']:.2f} ({run['best_test_step']}) "
            f"| {run['last_three_spread']:.2f} | {run['last_below_best']:.2f} |"
        )
    return lines


def _difference(interval: dict) -> str:
    """``+d [low, high] (n)``, with * where the interval excludes 0."""
    marked = "*" if interval["low"] > 0 or interval["high"] < 0 else ""
    return f"{interval['diff']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]{marked} (n={interval['n']})"


def _plot(rows: list[dict], key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    for shift, name, label, color in ((-0.2, key, "checkpoint rule", "tab:blue"), (0.2, f"last {key}", "last evaluation", "tab:gray")):
        means = [r["mean"].get(name, np.nan) for r in rows]
        stds = [r["std"].get(name, 0.0) for r in rows]
        ax.bar(x + shift, means, width=0.4, yerr=stds, capsize=3, color=color, alpha=0.85, label=label)
    ax.legend(fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels([r["row"] for r in rows], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(f"{key} mAP (%)")
    ax.set_title(f"{key}: mean ± std over seeds")
    save_figure(fig, path)

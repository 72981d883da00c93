"""Sweeps: grid expansion, resumable runs, the report."""

import json
from pathlib import Path

import pytest

from wtal.cli import main
from wtal.config import load_config
from wtal.engine.sweep import Row, parse_grid, read_variants, run_dirs, select_rows
from wtal.errors import WtalError


def test_grid_is_the_cartesian_product():
    rows = parse_grid(["model.lam=1,5", "model.ten=base,both"])
    assert [r.overrides for r in rows] == [
        ["model.lam=1", "model.ten=base"], ["model.lam=1", "model.ten=both"],
        ["model.lam=5", "model.ten=base"], ["model.lam=5", "model.ten=both"],
    ]
    with pytest.raises(WtalError, match="expected key=v1,v2"):
        parse_grid(["model.lam"])


def test_variants_file(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("B0: [model.bg_loss=false, model.ten=base]\nB4: []\n")
    rows = read_variants(path)
    assert [(r.name, r.overrides) for r in rows] == [("B0", ["model.bg_loss=false", "model.ten=base"]), ("B4", [])]
    path.write_text("B0: model.bg_loss\n")
    with pytest.raises(WtalError, match="v.yaml: B0: expected a list"):
        read_variants(path)


def test_rows_selects_named_variants_in_file_order(tmp_path, capsys):
    path = tmp_path / "v.yaml"
    path.write_text("B0: [model.ten=off]\nB3: [model.bg_loss=false]\nB4: []\n")
    rows = read_variants(path)
    assert [r.name for r in select_rows(rows, "B4,B0", path)] == ["B0", "B4"]
    with pytest.raises(WtalError, match=r"v.yaml: --rows 'B0,B9': expected row names among \['B0', 'B3', 'B4'\], found \['B9'\]"):
        select_rows(rows, "B0,B9", path)
    assert main(["sweep", "--rows", "B0", "--out", str(tmp_path / "s")]) == 2
    assert "give --variants" in capsys.readouterr().err


@pytest.fixture
def base(tiny_overrides):
    """The tiny-preset overrides without the run location, which the sweep sets per run."""
    return [o for o in tiny_overrides if not o.startswith(("output_dir", "run_name"))]


def test_sweep_runs_every_row_and_seed_and_resumes(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--quiet", "--grid", "model.lam=1,2", "--seeds", "0,1", "--out", str(out), *base,
            "train.iterations=3", "train.eval_every=0"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["row"] for r in report["rows"]] == ["model.lam=1", "model.lam=2"]
    assert all(r["std"]["avg(0.1:0.7)"] >= 0 for r in report["rows"])
    assert "± " in (out / "report.md").read_text() and (out / "report.png").stat().st_size > 5000
    assert "wtal train --quiet" in report["rows"][0]["commands"][0]
    first = capsys.readouterr().out
    assert first.count("[sweep]") == 4
    assert main(args) == 0
    assert "[sweep]" not in capsys.readouterr().out


def _interrupted_sweep(out, args, monkeypatch) -> Path:
    """Run the sweep ``args`` into ``out`` and kill it right after its first run's step-2 checkpoint."""
    import wtal.engine.trainer as trainer

    save = trainer.save_checkpoint

    def killed_after_step_2(path, *rest):
        save(path, *rest)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", killed_after_step_2)
    assert main(["sweep", "--out", str(out), *args]) == 130
    monkeypatch.setattr(trainer, "save_checkpoint", save)
    run = out / "runs" / "model.lam=1-seed0"
    assert (run / "last.pt").is_file() and not (run / "metrics.json").exists()
    return run


@pytest.fixture
def short(base):
    """Sweep arguments for 4-step runs evaluated at steps 2 and 4, on one thread (exact on CPU)."""
    return ["--quiet", "--seeds", "0", *base, "train.iterations=4", "train.eval_every=2", "train.threads=1"]


def test_an_interrupted_run_continues_from_its_last_checkpoint(short, tmp_path, monkeypatch, capsys):
    args = ["--grid", "model.lam=1", *short]
    assert main(["sweep", "--out", str(tmp_path / "whole"), *args]) == 0
    whole = json.loads((tmp_path / "whole" / "runs" / "model.lam=1-seed0" / "metrics.json").read_text())
    run = _interrupted_sweep(tmp_path / "cut", args, monkeypatch)
    capsys.readouterr()
    assert main(["sweep", "--out", str(tmp_path / "cut"), *args]) == 0
    assert f"-> {run} (resumed)" in capsys.readouterr().out
    resumed = json.loads((run / "metrics.json").read_text())
    assert resumed["mAP"] == pytest.approx(whole["mAP"]) and resumed["step"] == whole["step"]

    (run / "metrics.json").unlink()
    assert main(["sweep", "--out", str(tmp_path / "cut"), *args, "train.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "train.lr" in err and f"delete {run} to train it again" in err


def test_jobs_continue_an_interrupted_run_too(short, tmp_path, monkeypatch, capsys):
    assert main(["sweep", "--out", str(tmp_path / "whole"), "--grid", "model.lam=1", *short]) == 0
    whole = json.loads((tmp_path / "whole" / "runs" / "model.lam=1-seed0" / "metrics.json").read_text())
    run = _interrupted_sweep(tmp_path / "cut", ["--grid", "model.lam=1", *short], monkeypatch)
    capsys.readouterr()
    assert main(["sweep", "--out", str(tmp_path / "cut"), "--jobs", "2", "--grid", "model.lam=1,2", *short]) == 0
    printed = capsys.readouterr().out
    assert f"-> {run} (resumed), log" in printed and printed.count("(resumed)") == 1
    assert json.loads((run / "metrics.json").read_text())["mAP"] == pytest.approx(whole["mAP"])


def test_jobs_train_runs_side_by_side_in_child_processes_with_the_same_results(base, tmp_path, capsys):
    args = ["--quiet", "--grid", "model.lam=1,2", "--seeds", "0", *base, "train.iterations=3", "train.eval_every=0",
            "train.threads=1"]
    assert main(["sweep", "--out", str(tmp_path / "one"), *args]) == 0
    capsys.readouterr()
    assert main(["sweep", "--out", str(tmp_path / "two"), "--jobs", "2", *args]) == 0
    printed = capsys.readouterr().out
    assert printed.count("[sweep]") == 4 and printed.count(": done") == 2
    for name in ("model.lam=1-seed0", "model.lam=2-seed0"):
        alone, side_by_side = (json.loads((tmp_path / d / "runs" / name / "metrics.json").read_text()) for d in ("one", "two"))
        assert side_by_side["mAP"] == pytest.approx(alone["mAP"])
        assert (tmp_path / "two" / "logs" / f"{name}.log").is_file()
    one, two = (json.loads((tmp_path / d / "report.json").read_text())["rows"] for d in ("one", "two"))
    assert [r["row"] for r in two] == [r["row"] for r in one]
    for side_by_side, alone in zip(two, one):
        assert side_by_side["mean"] == pytest.approx(alone["mean"])


def test_a_failed_parallel_run_names_its_log_and_the_others_finish(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    real = next(o for o in base if o.startswith("data.root=")).split("=", 1)[1]
    missing = tmp_path / "no-such-dataset"
    args = ["sweep", "--quiet", "--jobs", "2", "--grid", f"data.root={missing},{real}", "--seeds", "0", "--out", str(out),
            *base, "train.iterations=2", "train.eval_every=0", "train.threads=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "1 of 2 runs failed" in err and f"data.root={missing} seed 0 (exit 2; log {out / 'logs'}" in err
    failed, finished = (run_dirs(out, Row(f"data.root={root}", []), 0) for root in (missing, real))
    assert str(missing) in (out / "logs" / f"{failed.name}.log").read_text()
    assert (finished / "metrics.json").is_file() and not (failed / "metrics.json").exists()
    with pytest.raises(SystemExit):
        main(["sweep", "--jobs", "0", "--out", str(out), *base])
    assert "argument --jobs: expected an integer >= 1, found '0'" in capsys.readouterr().err


def test_report_only_covers_the_finished_runs(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    run = ["sweep", "--quiet", "--grid", "model.lam=1", "--seeds", "0", "--out", str(out), *base,
           "train.iterations=2", "train.eval_every=0"]
    assert main(run) == 0
    capsys.readouterr()
    report = ["sweep", "--quiet", "--report-only", "--grid", "model.lam=1,2", "--seeds", "0,1", "--out", str(out), *base,
              "train.iterations=2", "train.eval_every=0"]
    assert main(report) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["row"], r["seeds"]) for r in rows] == [("model.lam=1", [0])]
    assert "[sweep]" not in capsys.readouterr().out
    assert main([*report[:3], "--grid", "model.lam=5", *report[5:]]) == 2
    assert "no finished run to report" in capsys.readouterr().err


def test_report_gives_the_last_and_best_test_evaluations_beside_the_checkpoint_rule(base, tmp_path):
    def sweep(out, select):
        args = ["sweep", "--quiet", "--grid", "model.lam=1", "--seeds", "0,1", "--out", str(out), *base,
                "train.iterations=4", "train.eval_every=1", f"train.select={select}"]
        assert main(args) == 0
        return json.loads((out / "report.json").read_text())["rows"][0]

    last = sweep(tmp_path / "last", "last")
    assert last["mean"]["last avg(0.1:0.7)"] == pytest.approx(last["mean"]["avg(0.1:0.7)"])
    best = sweep(tmp_path / "best", "best_test")
    assert best["mean"]["last avg(0.1:0.7)"] == pytest.approx(last["mean"]["avg(0.1:0.7)"])
    assert best["mean"]["avg(0.1:0.7)"] >= best["mean"]["last avg(0.1:0.7)"] - 1e-9
    run = tmp_path / "best" / "runs" / "model.lam=1-seed0"
    tests = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"test"' in line]
    assert best["per_seed"]["best-test avg(0.1:0.7)"][0] == max(t["avg(0.1:0.7)"] for t in tests if t["avg"] == max(u["avg"] for u in tests))
    table = (tmp_path / "best" / "report.md").read_text()
    assert "avg(0.1:0.7) last | avg(0.1:0.7) best-test |" in table and f"{best['mean']['last avg(0.1:0.7)']:.2f} ±" in table
    values = [t["avg(0.1:0.7)"] for t in tests]
    course = best["runs"][0]
    assert course["seed"] == 0 and course["selected_step"] == json.loads((run / "metrics.json").read_text())["step"]
    assert course["last"] == values[-1] and course["best_test"] == max(values) == best["per_seed"]["avg(0.1:0.7)"][0]
    assert course["best_test_step"] == tests[values.index(max(values))]["step"]
    assert course["last_three_spread"] == pytest.approx(max(values[-3:]) - min(values[-3:]))
    assert course["last_below_best"] == pytest.approx(max(values) - values[-1]) and course["last_below_best"] >= 0
    assert "## Runs" in table and f"| model.lam=1 | 1 | {best['runs'][1]['selected']:.2f} ({best['runs'][1]['selected_step']}) |" in table


def test_compare_gives_each_rows_paired_difference_with_its_interval(base, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", "--quiet", "--grid", "model.lam=1,3", "--seeds", "0,1,2", "--out", str(out), *base,
            "train.iterations=3", "train.eval_every=0"]
    assert main([*args, "--compare", "model.lam=1"]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    key = "avg(0.1:0.7)"
    ref, other = rows
    assert other["delta"]["vs"] == "model.lam=1" and other["delta"]["key"] == key
    welch = other["delta"]["welch"]
    assert welch["diff"] == pytest.approx(other["mean"][key] - ref["mean"][key])
    assert welch["se"] == pytest.approx((other["std"][key] ** 2 / 3 + ref["std"][key] ** 2 / 3) ** 0.5)
    for rule, metric in (("selected", key), ("last", f"last {key}"), ("best-test", f"best-test {key}")):
        per_seed = [a - b for a, b in zip(other["per_seed"][metric], ref["per_seed"][metric])]
        paired = other["delta"]["paired"][rule]
        assert paired["seeds"] == [0, 1, 2] and paired["n"] == 3 and paired["per_seed"] == pytest.approx(per_seed)
        mean = sum(per_seed) / 3
        se = (sum((d - mean) ** 2 for d in per_seed) / 2) ** 0.5 / 3**0.5
        assert (paired["diff"], paired["se"], paired["df"]) == pytest.approx((mean, se, 2))
        assert paired["high"] - paired["diff"] == pytest.approx(4.3027 * se, abs=1e-3)  # t(0.975, 2 df)
        assert ref["delta"]["paired"][rule]["diff"] == 0.0
    table = (out / "report.md").read_text()
    paired = other["delta"]["paired"]["selected"]
    assert "Δ paired, selected | Δ paired, last | Δ paired, best-test | Δ vs model.lam=1 (Welch) |" in table
    assert f"{paired['diff']:+.2f} [{paired['low']:+.2f}, {paired['high']:+.2f}]" in table and "(n=3)" in table
    capsys.readouterr()
    assert main([*args, "--report-only", "--compare", "model.lam=9"]) == 2
    assert "--compare 'model.lam=9': not a row of this sweep" in capsys.readouterr().err

    # --contrast: chosen pairs, each the same paired difference as --compare gives, with its per-seed values
    assert main([*args, "--report-only", "--contrast", "model.lam=3", "model.lam=1", "--contrast", "model.lam=1", "model.lam=3"]) == 0
    report = json.loads((out / "report.json").read_text())
    forward, backward = report["contrasts"]
    assert (forward["row"], forward["vs"], forward["key"]) == ("model.lam=3", "model.lam=1", key)
    assert forward["paired"] == other["delta"]["paired"]
    assert backward["paired"]["last"]["per_seed"] == pytest.approx([-d for d in forward["paired"]["last"]["per_seed"]])
    assert "delta" not in report["rows"][0]  # no --compare this time
    table = (out / "report.md").read_text()
    selected = forward["paired"]["selected"]
    seeds = ", ".join(f"{s}: {d:+.2f}" for s, d in zip(selected["seeds"], selected["per_seed"]))
    assert "## Contrasts" in table and f"| model.lam=3 | model.lam=1 | {key} | {_cell(selected)} |" in table and seeds in table
    capsys.readouterr()
    assert main([*args, "--report-only", "--contrast", "model.lam=3", "model.lam=3"]) == 2
    assert main([*args, "--report-only", "--contrast", "model.lam=3", "B0"]) == 2
    assert "--contrast model.lam=3 B0: expected two different rows of this sweep" in capsys.readouterr().err


def _cell(interval: dict) -> str:
    marked = "*" if interval["low"] > 0 or interval["high"] < 0 else ""
    return f"{interval['diff']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}]{marked} (n={interval['n']})"


def test_compare_and_last_column_without_a_named_average(base, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", "--quiet", "--grid", "model.lam=1,3", "--seeds", "0", "--out", str(out), *base,
            "train.iterations=2", "train.eval_every=0", "eval.thresholds=0.3,0.5", "--compare", "model.lam=1"]
    assert main(args) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert rows[1]["delta"]["key"] == "avg"
    assert rows[1]["delta"]["paired"] == {} and "welch" not in rows[1]["delta"]  # one seed: no spread to read
    assert rows[1]["mean"]["last avg"] == pytest.approx(rows[1]["mean"]["avg"])  # one evaluation, at the end
    assert "| mAP@0.3 | mAP@0.5 | avg | cls mAP | avg last | avg best-test |" in (out / "report.md").read_text()


@pytest.mark.parametrize("method", ["wtalc", "basnet", "um", "co2net"])
def test_full_width_rows_are_the_authors_configs(method):
    """configs/sweeps/baselines_full.yaml, which confirms the CPU-budget order at full width, must
    train each baseline exactly as its configs/<method>_thumos14.yaml does."""
    configs = Path(__file__).parents[1] / "configs"
    rows = {row.name: row.overrides for row in read_variants(configs / "sweeps" / "baselines_full.yaml")}
    swept = load_config(configs / "thumos14_synthetic.yaml", rows[method])
    authors = load_config(configs / f"{method}_thumos14.yaml", [])
    assert (swept.model, swept.data, swept.train) == (authors.model, authors.data, authors.train)

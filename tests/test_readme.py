"""README.md as a user reads it: the "your own features" recipe runs as written."""

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

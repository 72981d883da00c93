"""Training end to end on the tiny synthetic preset."""

import json

import numpy as np
import pytest
import torch

from wtal.config import load_config
from wtal.engine.inference import detect, predict, score_detections
from wtal.engine.trainer import load_checkpoint, load_run, timestamped_run_name, train
from wtal.errors import WtalError
from wtal.models import build_model


def _untrained_map(cfg):
    from wtal.data.readers import load_dataset

    torch.manual_seed(cfg.train.seed)
    dataset = load_dataset(cfg.data)
    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes)
    scores = predict(model, dataset, dataset.videos(cfg.data.test_subset), torch.device("cpu"), cfg.inference)
    result, _ = score_detections(detect(scores, dataset, cfg), scores, dataset, cfg)
    return result.summary()["avg"]


def test_short_training_beats_untrained_model(tiny_overrides):
    cfg = load_config(None, tiny_overrides)
    before = _untrained_map(cfg)
    result = train(cfg, progress=False)
    after = result.metrics["averages"]["avg"]
    assert after > before + 5.0, (before, after)

    run = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "detections.json", "metrics.json"):
        assert (run / name).is_file(), name
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {line["split"] for line in lines} == {"train", "test"}
    assert [line["step"] for line in lines if line["split"] == "test"] == [30, 60]
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 60
    cfg2, dataset, model = load_run(run)
    assert cfg2 == cfg
    env = result.metrics["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads()
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["processor"]
    assert json.loads((run / "metrics.json").read_text())["environment"] == env


def test_training_is_deterministic_on_cpu(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "train.iterations=20", "train.eval_every=0"]  # later overrides win
    first = train(load_config(None, overrides), progress=False).metrics
    second = train(load_config(None, overrides + ["run_name=again"]), progress=False).metrics
    assert first["mAP"] == second["mAP"]
    assert np.isfinite(first["averages"]["avg"])


def test_run_directory_is_not_overwritten(tiny_overrides):
    overrides = [*tiny_overrides, "train.iterations=2"]
    cfg = load_config(None, overrides)
    train(cfg, progress=False)
    with pytest.raises(WtalError, match="--overwrite"):
        train(cfg, progress=False)
    train(cfg, overwrite=True, progress=False)


def test_best_val_selects_on_held_out_training_videos(tiny_overrides):
    overrides = [*tiny_overrides, "train.iterations=8", "train.eval_every=2", "train.select=best_val", "data.val_fraction=0.25"]
    result = train(load_config(None, overrides), progress=False)
    metrics, run = result.metrics, result.run_dir
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [line for line in lines if line["split"] == "val"]
    test = {line["step"]: line for line in lines if line["split"] == "test"}
    assert [line["step"] for line in val] == [2, 4, 6, 8]
    best_val = max(val, key=lambda line: line["avg"])  # the first of equal maxima, as training keeps
    assert metrics["step"] == best_val["step"]
    assert metrics["averages"]["avg"] == pytest.approx(test[best_val["step"]]["avg"])
    assert metrics["checkpoint"] == f"best validation mAP ({len(metrics['held_out'])} held-out validation videos)"
    assert load_checkpoint(run / "best.pt")["step"] == best_val["step"]

    from wtal.data.readers import load_dataset

    dataset = load_dataset(load_config(None, overrides).data)
    train_names = {v.name for v in dataset.videos("validation")}
    assert set(metrics["held_out"]) < train_names
    assert len(metrics["held_out"]) == round(0.25 * len(train_names))


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    """Two default run names taken within one second must not collide (the second run would be refused)."""
    monkeypatch.setattr("wtal.engine.trainer.time.strftime", lambda fmt: "20261130-211450")
    first = timestamped_run_name(tmp_path, "run")
    assert first == "run-20261130-211450"
    (tmp_path / first).mkdir()
    second = timestamped_run_name(tmp_path, "run")
    assert second == "run-20261130-211450-2"
    (tmp_path / second).mkdir()
    assert timestamped_run_name(tmp_path, "run") == "run-20261130-211450-3"
    assert timestamped_run_name(tmp_path / "absent", "run") == first

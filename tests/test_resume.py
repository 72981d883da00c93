"""Resuming a killed run: it ends exactly where an uninterrupted run ends (CPU).

Faults: a SIGKILLed ``wtal train`` subprocess, and in-process crashes injected
at chosen moments (before a step, inside a checkpoint write, between best.pt and
last.pt). Also atomic writes, config checks on resume and the NaN-loss stop.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import wtal.engine.trainer as trainer
from wtal.config import load_config
from wtal.data.sampling import TrainBatches
from wtal.engine.trainer import load_checkpoint, train
from wtal.errors import WtalError
from wtal.io import atomic_path, write_json, write_text

SRC = Path(__file__).resolve().parents[1] / "src"
ITERATIONS = 40


def _overrides(data, out, name, iterations=ITERATIONS):
    return [
        f"data.root={data}",
        f"output_dir={out}",
        f"run_name={name}",
        "model.base.embed_dim=32",
        "model.base.attention_dim=16",
        "data.max_seqlen=64",
        "train.batch_size=8",
        f"train.iterations={iterations}",
        "train.eval_every=10",
        "train.checkpoint_every=4",
        "train.log_every=3",
        "train.lr=1e-3",
        "train.threads=1",
        "train.device=cpu",
    ]


class Crash(Exception):
    """An injected fault standing in for the process dying."""


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """An uninterrupted run, the yardstick for every resumed one."""
    out = tmp_path_factory.mktemp("reference")
    return train(load_config(None, _overrides(tiny_dataset, out, "ref")), progress=False).run_dir


def _without_times(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


def _log(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(run: Path, ref: Path) -> None:
    metrics, expected = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert _without_times(metrics) == _without_times(expected)
    assert (run / "detections.json").read_bytes() == (ref / "detections.json").read_bytes()
    assert _log(run) == _log(ref)  # no duplicated or missing lines
    for name in ("last.pt", "best.pt"):
        got, want = load_checkpoint(run / name), load_checkpoint(ref / name)
        assert got["step"] == want["step"] and got["best"] == want["best"], name
        for key, tensor in want["model"].items():
            assert torch.equal(got["model"][key], tensor), (name, key)
    assert not list(run.glob(".*.tmp")), "temporary files left behind"


def _env():
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return env


def _lines(path: Path) -> int:
    try:
        return path.read_text().count("\n")
    except FileNotFoundError:
        return 0


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_dataset, tmp_path, reference):
    command = [sys.executable, "-m", "wtal", "train", "--quiet", *_overrides(tiny_dataset, tmp_path, "run")]
    run = tmp_path / "run"
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        # Wait for a checkpoint, then for one more log line, and kill between two checkpoints.
        while not (run / "last.pt").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.002)
        seen = _lines(run / "metrics.jsonl")
        while _lines(run / "metrics.jsonl") <= seen and proc.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (run / "metrics.json").exists()
    killed_at = load_checkpoint(run / "last.pt")["step"]
    assert 0 < killed_at < ITERATIONS

    done = subprocess.run(command + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "run directory" in done.stdout
    assert_same_run(run, reference)


def _crash_on(monkeypatch, target, attribute, when):
    """Make ``target.attribute`` raise :class:`Crash` on its ``when``-th call (1-based)."""
    original = getattr(target, attribute)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == when:
            raise Crash(f"{attribute} call {when}")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, attribute, wrapper)
    return calls


# torch.save call order with eval_every=10, checkpoint_every=4: 1 last@4, 2 last@8,
# 3 best@10, 4 last@10, 5 last@12, ... A crash in call 4 leaves best.pt newer than last.pt.
FAULTS = [
    ("batch", 1),  # before the first step: no checkpoint, resume must refuse
    ("batch", 7),  # mid-interval, log lines after the checkpoint
    ("batch", 11),  # right after an evaluation
    ("batch", 40),  # the last step
    ("save", 2),  # inside a last.pt write
    ("save", 3),  # inside a best.pt write
    ("save", 4),  # between best.pt and last.pt
]


@pytest.mark.parametrize("kind, when", FAULTS)
def test_injected_crash_then_resume_matches_uninterrupted(tiny_dataset, tmp_path, reference, monkeypatch, kind, when):
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run"))
    with monkeypatch.context() as patch:
        if kind == "batch":
            _crash_on(patch, TrainBatches, "__next__", when)
        else:
            _crash_on(patch, torch, "save", when)
        with pytest.raises(Crash):
            train(cfg, progress=False)
    run = tmp_path / "run"
    assert not list(run.glob(".*.tmp"))
    (run / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as SIGKILL inside atomic_path leaves it
    if not (run / "last.pt").exists():
        with pytest.raises(WtalError, match="no checkpoint to continue from"):
            train(cfg, progress=False, resume=True)
        return
    train(cfg, progress=False, resume=True)
    assert_same_run(run, reference)


def test_resume_of_a_finished_run_rewrites_the_same_results(tiny_dataset, tmp_path, reference):
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run"))
    train(cfg, progress=False)
    (tmp_path / "run" / "metrics.json").unlink()
    train(cfg, progress=False, resume=True)
    assert_same_run(tmp_path / "run", reference)


def test_rng_states_matter(tiny_dataset, tmp_path, reference, monkeypatch):
    """Control: without restoring the RNG states (dropout) the resumed run differs."""
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run"))
    with monkeypatch.context() as patch:
        _crash_on(patch, TrainBatches, "__next__", 7)
        with pytest.raises(Crash):
            train(cfg, progress=False)
    monkeypatch.setattr(trainer, "restore_rng", lambda state, source: torch.manual_seed(123))
    train(cfg, progress=False, resume=True)
    got, want = load_checkpoint(tmp_path / "run" / "last.pt"), load_checkpoint(reference / "last.pt")
    assert any(not torch.equal(got["model"][k], v) for k, v in want["model"].items())


def test_resume_with_more_iterations_continues(tiny_dataset, tmp_path):
    short = load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=12))
    train(short, progress=False)
    longer = load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=20) + ["train.threads=2"])
    result = train(longer, progress=False, resume=True)
    torch.set_num_threads(1)  # the suite's setting (conftest), which train.threads=2 changed
    assert "threads: 2" in (result.run_dir / "config.yaml").read_text()
    assert load_checkpoint(result.run_dir / "last.pt")["step"] == 20
    steps = [line["step"] for line in _log(result.run_dir) if line["split"] == "test"]
    assert steps == [10, 12, 20]


def test_resume_refuses_a_different_config(tiny_dataset, tmp_path):
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=4))
    train(cfg, progress=False)
    changed = load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=4) + ["train.lr=0.01", "model.bg_weight=0.2"])
    with pytest.raises(WtalError, match=r"differing keys: model\.bg_weight: .*train\.lr: checkpoint 0\.001, now 0\.01"):
        train(changed, progress=False, resume=True)
    fewer = load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=2))
    with pytest.raises(WtalError, match="past train.iterations=2"):
        train(fewer, progress=False, resume=True)


def test_resume_reads_a_key_the_checkpoint_predates_as_its_default(tiny_dataset, tmp_path):
    """A run saved before a config key existed resumes when the key is at its default, and not
    when the key is set otherwise."""
    import yaml

    train(load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=4)), progress=False)
    path = tmp_path / "run" / "last.pt"
    state = torch.load(path, weights_only=False)
    saved = yaml.safe_load(state["config"])
    del saved["imports"]
    state["config"] = yaml.safe_dump(saved, sort_keys=False)
    torch.save(state, path)
    with pytest.raises(WtalError, match=r"differing keys: imports: checkpoint \[\], now \['x.py'\]"):
        cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=6))
        cfg.imports = ["x.py"]
        train(cfg, progress=False, resume=True)
    result = train(load_config(None, _overrides(tiny_dataset, tmp_path, "run", iterations=6)), progress=False, resume=True)
    assert load_checkpoint(result.run_dir / "last.pt")["step"] == 6


def test_resume_without_checkpoint_is_a_clear_error(tiny_dataset, tmp_path, capsys):
    from wtal.cli import main

    args = ["train", "--quiet", "--resume", *_overrides(tiny_dataset, tmp_path, "nothing")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wtal: error:") and "last.pt" in err and "--resume" in err
    assert main(["train", "--quiet", "--resume", "--overwrite", *_overrides(tiny_dataset, tmp_path, "x")]) == 2
    with pytest.raises(WtalError, match="run_name"):
        train(load_config(None, [f"data.root={tiny_dataset}", f"output_dir={tmp_path}"]), progress=False, resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, monkeypatch):
    calls = {"n": 0}
    build = trainer.build_model

    def poisoned_model(*args, **kwargs):
        model = build(*args, **kwargs)
        loss = model.loss

        def poisoned(*a, **k):
            calls["n"] += 1
            losses = loss(*a, **k)
            if calls["n"] == 15:
                losses["total"] = losses["total"] * float("nan")
            return losses

        model.loss = poisoned
        return model

    monkeypatch.setattr(trainer, "build_model", poisoned_model)
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run"))
    with pytest.raises(WtalError, match=r"stopped at step 15: the loss is nan.*last good checkpoint is .*last\.pt \(step 12"):
        train(cfg, progress=False)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["step"] == 12
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_atomic_path_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "file.json"
    write_json(target, {"old": 1})
    before = target.read_bytes()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"new": ')  # half written
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == before
    with pytest.raises(TypeError):
        write_json(target, {"bad": object()})  # fails inside the block, during serialisation
    assert target.read_bytes() == before
    write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.json"]


def test_resume_under_a_cosine_schedule_with_clipping_matches_uninterrupted(tiny_dataset, tmp_path):
    schedule = ["train.scheduler=cosine", "train.warmup=6", "train.min_lr=1e-5", "train.grad_clip=0.5",
                "train.optimizer=adamw"]
    reference = train(load_config(None, _overrides(tiny_dataset, tmp_path, "ref") + schedule), progress=False).run_dir
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "run") + schedule)
    with pytest.MonkeyPatch.context() as patch:
        _crash_on(patch, TrainBatches, "__next__", 23)  # past the warm-up, between two checkpoints
        with pytest.raises(Crash):
            train(cfg, progress=False)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 20
    train(cfg, progress=False, resume=True)
    assert_same_run(tmp_path / "run", reference)

"""train.optimizer, train.scheduler, train.grad_clip: what each computes, and exact resume under a schedule."""

import json
import math
import re

import pytest
import torch

from wtal.config import load_config
from wtal.engine.optim import make_optimizer, make_scheduler
from wtal.engine.trainer import load_checkpoint, train
from wtal.errors import WtalError


def _train_cfg(*overrides):
    return load_config(None, list(overrides)).train


def test_the_default_is_the_authors_constant_adam():
    cfg = _train_cfg()
    assert make_scheduler(cfg) is None
    optimizer = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.param_groups[0]["lr"] == cfg.lr and optimizer.param_groups[0]["weight_decay"] == cfg.weight_decay


@pytest.mark.parametrize("name, kind", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_other_optimizers(name, kind):
    cfg = _train_cfg(f"train.optimizer={name}", "train.momentum=0.5")
    optimizer = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer) is kind
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == 0.5


def test_cosine_with_warmup():
    lr_at = make_scheduler(_train_cfg("train.scheduler=cosine", "train.warmup=10", "train.iterations=110",
                                      "train.lr=1e-3", "train.min_lr=1e-5"))
    assert [lr_at(s) for s in (1, 5, 10)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert lr_at(11) == pytest.approx(1e-3)  # first step after the warm-up: the peak
    assert lr_at(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 49 / 99)))
    assert lr_at(110) == pytest.approx(1e-5)  # last step: min_lr
    values = [lr_at(s) for s in range(11, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_step_schedule_and_warmup_alone():
    lr_at = make_scheduler(_train_cfg("train.scheduler=step", "train.milestones=[30,20]", "train.gamma=0.5",
                                      "train.lr=1.0"))
    assert [lr_at(s) for s in (1, 19, 20, 29, 30, 500)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    warm = make_scheduler(_train_cfg("train.warmup=4", "train.lr=2.0"))
    assert [warm(s) for s in (1, 2, 4, 5, 1000)] == [0.5, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.optimizer=lion", "train.optimizer: expected one of ['adam', 'adamw', 'sgd']"),
        ("train.scheduler=linear", "train.scheduler: expected one of ['none', 'cosine', 'step']"),
        ("train.scheduler=step", "train.milestones: expected at least one step with train.scheduler=step"),
        ("train.grad_clip=-1", "train.grad_clip: expected >= 0"),
        ("train.warmup=-5", "train.warmup: expected >= 0"),
        ("train.gamma=0", "train.gamma: expected a factor in (0, 1]"),
        ("train.milestones=[0]", "train.milestones: expected steps >= 1"),
    ],
)
def test_bad_optimizer_settings_are_refused_at_load(override, message):
    with pytest.raises(WtalError, match=re.escape(message)):
        load_config(None, [override])


def _run(overrides, tmp_path, name, *extra):
    cfg = load_config(None, [*overrides, f"output_dir={tmp_path}", f"run_name={name}", "train.iterations=20",
                             "train.eval_every=10", "train.log_every=1", *extra])
    return train(cfg, progress=False).run_dir


def test_the_logged_learning_rate_follows_the_schedule(tiny_overrides, tmp_path):
    run = _run(tiny_overrides, tmp_path, "cos", "train.scheduler=cosine", "train.warmup=5", "train.lr=1e-3")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in lines if r["split"] == "train"}
    lr_at = make_scheduler(load_config(run / "config.yaml").train)
    assert lrs == {step: pytest.approx(lr_at(step)) for step in range(1, 21)}
    assert lrs[20] == pytest.approx(0.0)
    plain = _run(tiny_overrides, tmp_path, "plain")
    assert all("lr" not in json.loads(line) for line in (plain / "metrics.jsonl").read_text().splitlines())


def test_grad_clip_changes_the_steps(tiny_overrides, tmp_path):
    free = load_checkpoint(_run(tiny_overrides, tmp_path, "free") / "last.pt")["model"]
    clipped = load_checkpoint(_run(tiny_overrides, tmp_path, "clip", "train.grad_clip=1e-3") / "last.pt")["model"]
    loose = load_checkpoint(_run(tiny_overrides, tmp_path, "loose", "train.grad_clip=1e9") / "last.pt")["model"]
    assert any(not torch.equal(free[k], clipped[k]) for k in free)
    assert all(torch.equal(free[k], loose[k]) for k in free)  # a bound never reached changes nothing

"""Multi-process training (torchrun, DistributedDataParallel, gloo on CPU).

Two ranks, each on half of every global batch, follow the training-loss
trajectory of one process on the whole batch; rank 0 alone writes the run
directory, whose checkpoints load without DDP; ``--resume`` continues it.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.config import load_config
from wtal.engine import distributed
from wtal.engine.trainer import load_checkpoint, load_run, train
from wtal.errors import WtalError

SRC = Path(__file__).resolve().parents[1] / "src"


def _overrides(data, out, name, iterations=6, batch_size=8):
    return [
        f"data.root={data}",
        f"output_dir={out}",
        f"run_name={name}",
        "model.base=plain",  # every loss a mean over videos (CO2-Net's co-activity term is one over pairs)
        "model.base.embed_dim=32",
        "model.base.dropout=0",
        "model.base.attention_dropout=0",
        "data.max_seqlen=64",
        f"train.batch_size={batch_size}",
        f"train.iterations={iterations}",
        "train.eval_every=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.lr=1e-3",
        "train.threads=1",
        "train.device=cpu",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args, nproc=2, timeout=90):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", f"--nproc_per_node={nproc}",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "wtal", "train", "--quiet", *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def _train_log(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == "train"]


def _assert_same_trajectory(got: list[dict], want: list[dict]) -> float:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    worst = 0.0
    for a, b in zip(got, want):
        for key in b:
            if key in ("step", "split"):
                continue
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=2e-6, err_msg=f"step {b['step']} {key}")
            worst = max(worst, abs(a[key] - b[key]) / max(abs(b[key]), 1e-12))
    return worst


def test_two_ranks_follow_the_single_process_loss_trajectory(tiny_dataset, tmp_path):
    # Both runs stop at step 4 and resume to step 6 (schedules read step / train.iterations).
    single = train(load_config(None, _overrides(tiny_dataset, tmp_path, "single", iterations=4)), progress=False).run_dir
    train(load_config(None, _overrides(tiny_dataset, tmp_path, "single", iterations=6)), progress=False, resume=True)

    done = _torchrun(_overrides(tiny_dataset, tmp_path, "ddp", iterations=4))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "ddp"
    # --resume under torchrun: every rank loads last.pt (step 4) and continues to step 6.
    done = _torchrun([*_overrides(tiny_dataset, tmp_path, "ddp", iterations=6), "--resume"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    worst = _assert_same_trajectory(_train_log(run), _train_log(single))
    print(f"largest relative difference of a logged training loss: {worst:.2e}")
    assert len(_train_log(run)) == 6  # rank 0 alone logs, once per step

    # Rank 0's checkpoints hold the plain model (no DDP "module." prefix) and load without DDP.
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 6
    assert not any(key.startswith("module.") for key in state["model"])
    reference = load_checkpoint(single / "last.pt")["model"]
    for key, tensor in reference.items():
        torch.testing.assert_close(state["model"][key], tensor, rtol=1e-3, atol=1e-5, msg=key)
    _, _, model = load_run(run, "last")
    assert not model.training
    assert json.loads((run / "metrics.json").read_text())["step"] in (4, 6)
    assert (run / "detections.json").is_file() and not list(run.glob(".*.tmp"))


def test_batch_size_must_divide_by_the_number_of_processes(tiny_dataset, tmp_path, monkeypatch):
    # setup() refuses before it joins any process group, so one process can play rank 0 of 2.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    cfg = load_config(None, _overrides(tiny_dataset, tmp_path, "odd", batch_size=7))
    with pytest.raises(WtalError, match=r"train.batch_size: 7 is the global batch and must be divisible by .*\(2\)"):
        train(cfg, progress=False)
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "odd").exists()


def test_single_process_has_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    dist, device = distributed.setup(torch.device("cpu"), 7)
    assert not dist.enabled and dist.is_main and device == torch.device("cpu")
    batch = {"videos": ["a", "b"], "features": torch.zeros(2, 3)}
    assert dist.shard(batch) is batch
    assert distributed.is_main_process()


def test_shard_takes_contiguous_equal_slices():
    batch = {"videos": list("abcdef"), "features": torch.arange(6)[:, None], "labels": torch.arange(6)}
    slices = [distributed.DistContext(world_size=3, rank=r).shard(batch) for r in range(3)]
    assert [s["videos"] for s in slices] == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert torch.equal(torch.cat([s["features"] for s in slices]), batch["features"])

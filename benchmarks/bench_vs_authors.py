"""Seconds per training step of each wtal baseline beside its authors' implementation.

For CO2-Net (``co2net``), UM (``um``), BaS-Net (``basnet``) and W-TALC (``wtalc``): one
training step (zero the gradients, forward, loss, backward, Adam step) of wtal's model and of
the authors' code, in this process, on the same seeded batch, at the same widths, with the
same torch threads and the same Adam learning rate and weight decay (the authors'). The two
alternate step by step after the warm-up steps (and which of them goes first alternates), so
a change of the machine's load falls on both. Per method: the median seconds per step of
each, the ratio wtal / authors, and the losses both compute on the batch with the same weights
and dropout off: the authors' freshly initialised weights are loaded into wtal's model through
its name mapping (``model.load_authors_state_dict``, each model's ``AUTHORS_STATE_DICT_NAMES``),
which also makes the timed steps start from the same weights.

Batches: each method's own THUMOS14 training batch, from the authors' run scripts: CO2-Net
10 videos x 500 snippets, the first 6 in 3 same-class pairs; UM and BaS-Net 16 x 750;
W-TALC 10 x 750 with 3 pairs; 2048-d features (RGB then flow), 20 classes. Features are
seeded Gaussians through a ReLU (non-negative, as I3D features); labels are multi-hot (one
class per video, a second one for about one video in four; the videos of a pair share one).
Every snippet is real: wtal gets a mask of ones, and the authors' code, which takes a video's
length from its non-zero feature rows, sees full lengths. ``--batch-size`` and ``--snippets``
replace every method's batch size and length.

The authors' code is not part of wtal. ``--authors co2net=DIR um=DIR basnet=DIR wtalc=DIR``
names checkouts of their repositories (harlanhong/MM2021-CO2-Net,
Pilhyeon/WTAL-Uncertainty-Modeling, Pilhyeon/BaSNet-pytorch, sujoyp/wtalc-pytorch), used as
they are: their modules are imported from DIR one method at a time (they share module names
such as ``model``, ``train``, ``utils``), and afterwards every module imported from DIR leaves
``sys.modules`` and any module of the same name that was there comes back. Their code is
written for CUDA. To run it on the CPU without editing it, while a method with DIR is built
and timed, ``torch.set_default_tensor_type`` does nothing (their modules set the CUDA tensor
type at import) and ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return the tensor or
module itself (their forward passes and losses move new tensors with ``.cuda()``); all three
are restored afterwards. ``tensorboard_logger``, which W-TALC's train.py imports for
logging, is a stub module while importing if it is not installed. What this script calls:

* CO2-Net: ``options.parser`` parsed with the THUMOS14 line of their run.sh (max-seqlen 500,
  lr 5e-5, k 7, weight_decay 1e-3, model CO2, consensus BWA_fusion_dropout_feat_v2);
  ``model.CO2(D, C, opt=args)``; ``net.criterion(net(x, is_training=True, opt=args),
  labels, seq_len=seq_len, opt=args)``, seq_len from the non-zero rows as their train.py;
* UM: ``model.Model(D, C, 9, 4)`` (r_act, r_bkg as integers: their options give floats,
  which torch 2 no longer takes as slice bounds); ``train.UM_loss(5e-4, 1, 100)`` on the
  first four outputs of the model; Adam lr 1e-4, weight decay 5e-4 (their main.py);
* BaS-Net: ``model.BaS_Net(D, C, T)``; ``train.BaS_Net_loss(1e-4)``; Adam as UM;
* W-TALC: ``model.Model(D, C)``; ``0.5 * train.MILL(...) + 0.5 * train.CASL(...)`` with
  3 similar pairs and seq_len from the non-zero rows, as their train(); Adam lr 1e-4,
  weight decay 5e-4.

Widths: ``--scale F`` (or ``--width D``, F = D / 2048) multiplies the feature width and every
hidden width. The authors' W-TALC takes its width from the features, so it shrinks. CO2-Net,
UM and BaS-Net hard-code their hidden widths in their constructors (CO2-Net also the 1024 +
1024 split of its input), so with DIR they run at full width on both sides whatever
``--scale`` says (the run prints a note); without DIR, wtal's side follows ``--scale``.

Without ``--authors`` only wtal's side is timed; ``--smoke`` makes that tiny (6 x 32 snippets,
widths / 64), as ``tests/test_benchmarks.py`` runs it.

    python benchmarks/bench_vs_authors.py --authors co2net=DIR um=DIR basnet=DIR wtalc=DIR
                                          [--threads 2] [--iterations 5] [--json out.json]
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import _common
import numpy as np
import torch
from torch import Tensor, nn

from wtal.models import build_model
from wtal.models.registry import model_config_class

FULL_WIDTH = 2048  # I3D RGB + flow features, the width every method's paper uses
NUM_CLASSES = 20  # THUMOS14
SECOND_CLASS = 0.25  # chance that a video has a second class


class Batch(NamedTuple):
    """One training batch: features [B, T, D] (numpy, as the authors' loaders give it, and torch), labels [B, C]."""

    array: np.ndarray
    features: Tensor
    labels: Tensor
    mask: Tensor
    pairs: int

    @property
    def lengths(self) -> np.ndarray:
        """Each video's length the way the authors' train loops take it: its non-zero feature rows."""
        return np.sum(np.max(np.abs(self.array), axis=2) > 0, axis=1)


class Authors(NamedTuple):
    """The authors' side of a method: their model and their forward + loss.

    ``forward_loss(training)`` -> (total loss, {wtal's term name: value}); ``training`` is
    False for the dropout-off comparison (the model is then in eval mode as well).
    """

    model: nn.Module
    forward_loss: Callable[[bool], tuple[Tensor, dict[str, Tensor]]]


class Method(NamedTuple):
    """A baseline: its wtal name, its THUMOS14 training batch and optimizer, how to build both sides."""

    name: str
    title: str
    batch_size: int
    snippets: int
    pairs: int  # same-class pairs at the start of the batch
    lr: float  # Adam learning rate of the authors' THUMOS14 run
    weight_decay: float  # Adam weight decay of the authors' THUMOS14 run
    shrinks: bool  # whether the authors' constructor takes every width (else full width only)
    widths: Callable[[int], dict[str, int]]  # feature width D -> wtal's model.* width fields
    authors: Callable[[Path, Batch], Authors]


# -- the authors' code on the CPU --------------------------------------------------------------


@contextlib.contextmanager
def on_cpu() -> Iterator[None]:
    """The authors' CUDA-only calls made harmless: ``torch.set_default_tensor_type`` does nothing,
    ``Tensor.cuda`` / ``Module.cuda`` return their object. Everything is restored on exit."""
    set_default = torch.set_default_tensor_type
    module_cuda = nn.Module.cuda
    tensor_cuda = torch.Tensor.__dict__.get("cuda")  # None: inherited from the C base class
    torch.set_default_tensor_type = lambda *args, **kwargs: None
    nn.Module.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.set_default_tensor_type = set_default
        nn.Module.cuda = module_cuda
        if tensor_cuda is None:
            del torch.Tensor.cuda
        else:
            torch.Tensor.cuda = tensor_cuda


def _logging_stub() -> types.ModuleType:
    """A ``tensorboard_logger`` that logs nothing."""
    stub = types.ModuleType("tensorboard_logger")
    stub.log_value = lambda *args, **kwargs: None
    stub.Logger = type("Logger", (), {"__init__": lambda self, *a, **k: None, "log_value": lambda self, *a, **k: None})
    return stub


@contextlib.contextmanager
def their_modules(folder: Path) -> Iterator[Callable[[str], types.ModuleType]]:
    """Yield ``load(name)``, which imports the module ``name`` from ``folder``.

    Inside, ``folder`` leads ``sys.path`` and modules named after a file or folder of it are out
    of ``sys.modules``; on exit every such module leaves ``sys.modules``, what was there before
    comes back, and so does ``sys.path``.
    """
    folder = folder.resolve()
    names = {p.stem for p in folder.glob("*.py")} | {p.name for p in folder.iterdir() if p.is_dir()}

    def theirs(module: str) -> bool:
        return module.split(".")[0] in names

    shadowed = {name: sys.modules.pop(name) for name in list(sys.modules) if theirs(name)}
    stub = "tensorboard_logger" not in sys.modules and importlib.util.find_spec("tensorboard_logger") is None
    if stub:
        sys.modules["tensorboard_logger"] = _logging_stub()
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if theirs(name)]:
            del sys.modules[name]
        sys.modules.update(shadowed)
        if stub:
            del sys.modules["tensorboard_logger"]


def co2net_authors(folder: Path, batch: Batch) -> Authors:
    """CO2-Net: ``model.CO2`` and its ``criterion`` with the options of the authors' THUMOS14 run."""
    with their_modules(folder) as load:
        options, model = load("options"), load("model")
    _, t, d = batch.features.shape
    args = options.parser.parse_args(
        ["--max-seqlen", str(t), "--lr", "0.00005", "--k", "7", "--dataset-name", "Thumos14reduced",
         "--num-class", str(NUM_CLASSES), "--use-model", "CO2", "--weight_decay", "0.001",
         "--AWM", "BWA_fusion_dropout_feat_v2"]
    )
    net = model.CO2(d, NUM_CLASSES, opt=args)
    lengths = batch.lengths

    def forward_loss(training: bool):
        outputs = net(batch.features, is_training=training, opt=args)
        total = net.criterion(outputs, batch.labels, seq_len=lengths, opt=args)
        return total, {"total": total}

    return Authors(net, forward_loss)


def um_authors(folder: Path, batch: Batch) -> Authors:
    """UM: ``model.Model`` and ``train.UM_loss`` with the defaults of the authors' options."""
    with their_modules(folder) as load:
        model, train = load("model"), load("train")
    net = model.Model(batch.features.shape[2], NUM_CLASSES, 9, 4)
    criterion = train.UM_loss(0.0005, 1.0, 100)

    def forward_loss(training: bool):
        score_act, score_bkg, feat_act, feat_bkg, _, _ = net(batch.features)
        total, terms = criterion(score_act, score_bkg, feat_act, feat_bkg, batch.labels)
        return total, {"cls": terms["loss_cls"], "um": terms["loss_um"], "be": terms["loss_be"], "total": total}

    return Authors(net, forward_loss)


def basnet_authors(folder: Path, batch: Batch) -> Authors:
    """BaS-Net: ``model.BaS_Net`` and ``train.BaS_Net_loss`` with the authors' default alpha."""
    with their_modules(folder) as load:
        model, train = load("model"), load("train")
    _, t, d = batch.features.shape
    net = model.BaS_Net(d, NUM_CLASSES, t)
    criterion = train.BaS_Net_loss(0.0001)

    def forward_loss(training: bool):
        score_base, _, score_supp, _, fore_weights = net(batch.features)
        total, terms = criterion(score_base, score_supp, fore_weights, batch.labels)
        return total, {"base": terms["loss_base"], "supp": terms["loss_supp"], "norm": terms["loss_norm"], "total": total}

    return Authors(net, forward_loss)


def wtalc_authors(folder: Path, batch: Batch) -> Authors:
    """W-TALC: ``model.Model`` and Lambda ``MILL`` + (1 - Lambda) ``CASL`` as the authors' train()."""
    with their_modules(folder) as load:
        model, train = load("model"), load("train")
    b, _, d = batch.features.shape
    net = model.Model(d, NUM_CLASSES)
    lengths, device = batch.lengths, torch.device("cpu")

    def forward_loss(training: bool):
        embedding, logits = net(batch.features, is_training=training)
        mil = train.MILL(logits, lengths, b, batch.labels, device)
        casl = train.CASL(embedding, logits, lengths, batch.pairs, batch.labels, device)
        total = 0.5 * mil + 0.5 * casl
        return total, {"mil": mil, "casl": casl, "total": total}

    return Authors(net, forward_loss)


def _scaled(base: int, d: int) -> int:
    return max(1, round(base * d / FULL_WIDTH))


METHODS = {
    m.name: m
    for m in (
        Method("co2net", "CO2-Net", 10, 500, 3, 5e-5, 1e-3, False,
               lambda d: {"embed_dim": d, "attention_dim": _scaled(512, d)}, co2net_authors),
        Method("um", "UM", 16, 750, 0, 1e-4, 5e-4, False,
               lambda d: {"embed_dim": d}, um_authors),
        Method("basnet", "BaS-Net", 16, 750, 0, 1e-4, 5e-4, False,
               lambda d: {"embed_dim": d, "attention_dim": _scaled(512, d)}, basnet_authors),
        Method("wtalc", "W-TALC", 10, 750, 3, 1e-4, 5e-4, True,
               lambda d: {"embed_dim": d}, wtalc_authors),
    )
}


# -- the benchmark ----------------------------------------------------------------------------


def make_batch(batch_size: int, snippets: int, width: int, pairs: int, seed: int) -> Batch:
    """Seeded non-negative features and multi-hot labels; videos 2i and 2i+1 (i < pairs) share a class."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((batch_size, NUM_CLASSES), np.float32)
    for i in range(0, 2 * pairs, 2):
        labels[i : i + 2, rng.integers(NUM_CLASSES)] = 1
    for i in range(2 * pairs, batch_size):
        labels[i, rng.integers(NUM_CLASSES)] = 1
    second = rng.random(batch_size) < SECOND_CLASS
    labels[second, rng.integers(NUM_CLASSES, size=batch_size)[second]] = 1
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(batch_size, snippets, width, generator=generator).clamp_(min=0)
    return Batch(
        array=features.numpy(),
        features=features,
        labels=torch.from_numpy(labels),
        mask=torch.ones(batch_size, snippets, dtype=torch.bool),
        pairs=pairs,
    )


def timed_step(model: nn.Module, optimizer: torch.optim.Optimizer, forward_loss: Callable[[], Tensor]) -> tuple[float, float]:
    """One training step -> (seconds, loss)."""
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    total = forward_loss()
    total.backward()
    optimizer.step()
    seconds = time.perf_counter() - started
    return seconds, float(total.detach())


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure(method: Method, args, folder: Path | None) -> dict[str, Any]:
    """Time ``args.iterations`` alternating steps of wtal (and of the authors when ``folder``)."""
    full_only = folder is not None and not method.shrinks
    width = FULL_WIDTH if full_only else args.width
    if method.name == "co2net":
        width += width % 2  # RGB and flow halves
    batch_size, snippets = args.batch_size or method.batch_size, args.snippets or method.snippets
    pairs = min(method.pairs, batch_size // 2)
    batch = make_batch(batch_size, snippets, width, pairs, args.seed)
    fields = method.widths(width)
    extra = {"similar_pairs": pairs} if method.pairs else {}
    cfg = model_config_class(method.name)(name=method.name, **fields, **extra)
    torch.manual_seed(args.seed)
    ours = build_model(cfg, width, NUM_CLASSES)

    def ours_loss() -> dict[str, Tensor]:
        return ours.loss(ours(batch.features, batch.mask), batch.labels, batch.mask)

    record: dict[str, Any] = {
        "method": method.name,
        "title": method.title,
        "batch_size": batch_size,
        "snippets": snippets,
        "feature_dim": width,
        "similar_pairs": pairs,
        "widths": fields,
        "full_width_only": full_only,
        "lr": method.lr,
        "weight_decay": method.weight_decay,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "wtal_parameters": sum(p.numel() for p in ours.parameters()),
        "authors_parameters": None,
        "authors_dir": str(folder) if folder else None,
        "same_weights": False,
        "losses_wtal": None,
        "losses_authors": None,
        "loss_abs_diff": None,
        "term_abs_diff": None,
    }
    with on_cpu() if folder else contextlib.nullcontext():
        sides = [("wtal", ours, lambda: ours_loss()["total"])]
        if folder:
            torch.manual_seed(args.seed)
            theirs = method.authors(folder, batch)
            record["authors_parameters"] = sum(p.numel() for p in theirs.model.parameters())
            ours.load_authors_state_dict({k: v.detach().clone() for k, v in theirs.model.state_dict().items()})
            record["same_weights"] = True
            record.update(compare_losses(ours_loss, ours, theirs))
            sides.append(("authors", theirs.model, lambda: theirs.forward_loss(True)[0]))
        optimizers = {
            name: torch.optim.Adam(model.parameters(), lr=method.lr, weight_decay=method.weight_decay)
            for name, model, _ in sides
        }
        times: dict[str, list[float]] = {name: [] for name, _, _ in sides}
        first_loss: dict[str, float] = {}
        for _, model, _ in sides:
            model.train()
        for step in range(args.warmup + args.iterations):
            order = sides if step % 2 == 0 else sides[::-1]  # who goes first alternates
            for name, model, forward_loss in order:
                seconds, loss = timed_step(model, optimizers[name], forward_loss)
                first_loss.setdefault(name, loss)
                if step >= args.warmup:
                    times[name].append(seconds)
    for name in ("wtal", "authors"):
        record[f"{name}_step_s"] = times.get(name)
        record[f"{name}_median_s"] = statistics.median(times[name]) if name in times else None
        record[f"{name}_first_train_loss"] = first_loss.get(name)
    record["ratio"] = record["wtal_median_s"] / record["authors_median_s"] if folder else None
    record["load_avg_1min"] = _load_avg()
    return record


def compare_losses(ours_loss, ours: nn.Module, theirs: Authors) -> dict[str, Any]:
    """Both losses on the batch with the same weights and dropout off (eval mode, no gradient)."""
    ours.eval()
    theirs.model.eval()
    with torch.no_grad():
        mine = ours_loss()
        _, reference = theirs.forward_loss(False)
    mine = {k: float(mine[k]) for k in reference}
    reference = {k: float(v) for k, v in reference.items()}
    terms = {k: abs(mine[k] - reference[k]) for k in reference}
    return {"losses_wtal": mine, "losses_authors": reference, "loss_abs_diff": terms["total"], "term_abs_diff": terms}


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 1 else f"{value * 1000:.0f} ms"


def describe(r: dict[str, Any]) -> str:
    pairs = f", {r['similar_pairs']} same-class pairs" if r["similar_pairs"] else ""
    head = (
        f"{r['method']} ({r['title']}), batch {r['batch_size']} x {r['snippets']} x {r['feature_dim']}{pairs}, "
        f"widths {r['widths']}, Adam lr {r['lr']:g} wd {r['weight_decay']:g}: wtal {r['wtal_median_s']:.3f} s/step"
    )
    if r["authors_median_s"] is None:
        return f"{head} (median of {r['iterations']}; wtal only); load {r['load_avg_1min']}"
    losses = ", ".join(
        f"{k} {r['losses_wtal'][k]:.6g} vs {r['losses_authors'][k]:.6g}" for k in r["losses_authors"]
    )
    return (
        f"{head}, authors {r['authors_median_s']:.3f} s/step (medians of {r['iterations']} alternating steps), "
        f"wtal / authors x{r['ratio']:.2f}; same weights, dropout off: |loss difference| {r['loss_abs_diff']:.2e} "
        f"(max over terms {max(r['term_abs_diff'].values()):.2e}; {losses}); "
        f"parameters {r['wtal_parameters']:,} vs {r['authors_parameters']:,}; load {r['load_avg_1min']}"
    )


def parse_authors(items: list[str]) -> dict[str, Path]:
    """``METHOD=DIR`` items -> {method: folder}; ValueError naming what is wrong."""
    folders = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or name not in METHODS:
            raise ValueError(f"--authors: expected METHOD=DIR with METHOD one of {sorted(METHODS)}, found {item!r}")
        if not Path(folder).is_dir():
            raise ValueError(f"--authors: {name}: no folder {folder!r}")
        folders[name] = Path(folder)
    return folders


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--authors", nargs="+", default=[], metavar="METHOD=DIR",
                   help="checkouts of the authors' repositories (co2net, um, basnet, wtalc); without, wtal only")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of methods (default {','.join(METHODS)})")
    widths = p.add_mutually_exclusive_group()
    widths.add_argument("--scale", type=float, default=None, help="multiply every width by F (default 1; smoke 1/64)")
    widths.add_argument("--width", type=int, default=None, help="feature width D, every hidden width scaled by D / 2048")
    p.add_argument("--batch-size", type=int, default=None, help="videos per batch for every method (default each method's own; smoke 6)")
    p.add_argument("--snippets", type=int, default=None, help="snippets per video for every method (default each method's own; smoke 32)")
    p.add_argument("--iterations", type=int, default=None, help="measured steps of each implementation (default 5; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps of each first (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seeds the batch and both models' initialisation")
    args = p.parse_args(argv)
    _common.apply_threads(args.threads)
    if args.smoke:
        args.batch_size, args.snippets = args.batch_size or 6, args.snippets or 32
    scale = args.width / FULL_WIDTH if args.width else (args.scale or (1 / 64 if args.smoke else 1.0))
    args.width = max(2, round(FULL_WIDTH * scale))
    args.iterations = args.iterations or (2 if args.smoke else 5)
    args.warmup = 1 if args.warmup is None else args.warmup
    try:
        folders = parse_authors(args.authors)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise ValueError(f"--methods: unknown {unknown}; expected some of {sorted(METHODS)}")
        if "co2net" in folders and "co2net" in methods and (args.batch_size or 6) < 6:
            raise ValueError("--batch-size: CO2-Net's loss takes 3 same-class pairs: expected at least 6")
    except ValueError as exc:
        print(f"bench_vs_authors: error: {exc}", file=sys.stderr)
        return 2
    machine = _common.machine_info("cpu")
    _common.print_machine(machine)
    runs = {}
    for name in methods:
        method, folder = METHODS[name], folders.get(name)
        if folder and not method.shrinks and args.width != FULL_WIDTH:
            print(f"note: the authors' {method.title} hard-codes its hidden widths: both sides at full width {FULL_WIDTH}")
        runs[name] = measure(method, args, folder)
        print(describe(runs[name]), flush=True)
        gc.collect()
    threads = f"{torch.get_num_threads()} threads, load {_load_avg()}"
    if any(r["authors_median_s"] is not None for r in runs.values()):
        summary = "; ".join(
            f"{n} x{r['ratio']:.2f} ({_seconds(r['wtal_median_s'])} vs {_seconds(r['authors_median_s'])}, "
            f"|loss diff| {r['loss_abs_diff']:.1e})" if r["ratio"] is not None else f"{n} {_seconds(r['wtal_median_s'])} (wtal only)"
            for n, r in runs.items()
        ) + f" (wtal / authors, per step, medians of {args.iterations} alternating steps; {threads})"
    else:
        summary = "; ".join(
            f"{n} {_seconds(r['wtal_median_s'])}" for n, r in runs.items()
        ) + f" (wtal only, per step, widths x{args.width / FULL_WIDTH:g}; {threads})"
    return _common.finish("bench_vs_authors", args, machine, {"methods": runs}, summary)


if __name__ == "__main__":
    sys.exit(main())

"""A method of one's own is one file: a config's ``imports`` registers it for every command.

The example is ``examples/stpn.py``, which nothing in ``src/wtal`` imports.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_checks import C, D, assert_gradients_reach_every_parameter, assert_scores_contract, make_batch
from wtal.cli import main
from wtal.config import load_config
from wtal.errors import WtalError
from wtal.io import read_json, read_jsonl, read_yaml_mapping
from wtal.models import build_model, registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "stpn.py"
MODULE = "my_wtal_method"  # a method imported by its module name


@pytest.fixture
def fresh_registry(monkeypatch):
    """Models and modules a test imports are forgotten after it, so no other test sees them."""
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    yield
    for name in [n for n in sys.modules if n.startswith("wtal_imports_") or n == MODULE]:
        del sys.modules[name]


def _method_file(path: Path, name: str) -> Path:
    """A one-file method registering ``name``: the example's network under another name."""
    source = EXAMPLE.read_text().replace('"stpn"', f'"{name}"')
    path.write_text(source)
    return path


def test_the_example_method_trains_and_a_fresh_process_localises_its_run(fresh_registry, tiny_run_overrides, tmp_path):
    assert "stpn" not in registry.available_models()
    args = ["train", "--quiet", f"imports=[{EXAMPLE}]", "model=stpn", "train.threads=1", *tiny_run_overrides]
    assert main(args) == 0
    run = tmp_path / "runs" / "run"
    saved = read_yaml_mapping(run / "config.yaml", "a run's resolved config")
    assert saved["imports"] == [str(EXAMPLE)] and saved["model"]["name"] == "stpn"
    assert saved["model"]["sparsity_weight"] == 1e-4
    losses = [line for line in read_jsonl(run / "metrics.jsonl") if line["split"] == "train"]
    assert set(losses[0]) >= {"total", "cls", "sparsity"} and losses[-1]["cls"] < losses[0]["cls"]

    # A process that has never imported the file localises the run from its config.yaml alone.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "detections.json"
    done = subprocess.run(
        [sys.executable, "-m", "wtal", "localize", "--run", str(run), "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert len(read_json(out)["results"]) > 0


def test_the_papers_parts_sit_on_the_example_method(fresh_registry):
    cfg = load_config(None, [f"imports=[{EXAMPLE}]", "model.base=stpn", "model.base.attention_dim=8", "model.ten=both"]).model
    assert type(cfg.base).__name__ == "STPNConfig" and cfg.base.attention_dim == 8
    torch.manual_seed(0)
    model = build_model(cfg, in_dim=D, num_classes=C)
    assert model.base.classifier.out_features == C + 1  # the background row the background loss forces
    assert model.ten.base_branch.in_channels == D
    features, mask, labels = make_batch()
    out = model(features, mask)
    losses = model.loss(out, labels, mask)
    assert {"total", "cls", "sparsity", "bg"} <= set(losses) and losses["bg"] > 0
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    with torch.no_grad():
        assert_scores_contract(model.scores(model(features, mask), mask), mask, C)


def test_a_file_is_imported_once_whatever_it_is_called(fresh_registry, tmp_path, monkeypatch):
    _method_file(tmp_path / "mine.py", "mine")
    monkeypatch.chdir(tmp_path)
    for spelling in ("mine.py", "./mine.py", str(tmp_path / "mine.py")):
        assert load_config(None, [f"imports=[{spelling}]", "model=mine"]).model.name == "mine"
    assert load_config(None, ["imports=[mine.py, ./mine.py]", "model=mine"]).imports == ["mine.py", "./mine.py"]


def test_a_module_on_the_python_path_is_imported_by_name(fresh_registry, tmp_path, monkeypatch):
    _method_file(tmp_path / f"{MODULE}.py", "by_module")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_config(None, [f"imports=[{MODULE}]", "model=by_module"]).model.name == "by_module"


@pytest.mark.parametrize(
    "imports, message",
    [
        ("[missing.py]", r"config: imports\[0\]: no file 'missing.py' \(relative paths are read from the working directory"),
        ("[no_such_wtal_module]", r"config: imports\[0\]: no module 'no_such_wtal_module' on the Python path"),
        ("[stpn.py, '']", r"config: imports\[1\]: expected a .py file or a module name, found ''"),
        ("stpn.py", r"config: imports: expected a list of .py files or module names, found 'stpn.py'"),
    ],
)
def test_import_errors_name_the_entry(fresh_registry, tmp_path, monkeypatch, imports, message):
    _method_file(tmp_path / "stpn.py", "stpn")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WtalError, match=message):
        load_config(None, [f"imports={imports}"])


def test_a_name_taken_by_another_model_is_refused_naming_both(fresh_registry, tmp_path):
    path = _method_file(tmp_path / "clash.py", "co2net")
    with pytest.raises(WtalError, match=r"'co2net' is registered already \(by wtal.models.co2net.CO2Net\); .*STPN needs a name of its own"):
        load_config(None, [f"imports=[{path}]"])


def test_an_unknown_model_points_to_imports_and_the_files_own_errors_keep_their_traceback(fresh_registry, tmp_path):
    with pytest.raises(WtalError, match=r"unknown model 'stpn'.*listing its file under imports"):
        load_config(None, ["model=stpn"])
    broken = tmp_path / "broken.py"
    broken.write_text("import a_dependency_that_is_not_installed_xyz\n")
    with pytest.raises(ModuleNotFoundError, match="a_dependency_that_is_not_installed_xyz"):
        load_config(None, [f"imports=[{broken}]"])
    assert not any(name.startswith("wtal_imports_broken") for name in sys.modules)
